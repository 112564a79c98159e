"""`qcuda run`: start an unmodified CUDA program with qcuda's libcudart.so.13 in place of CUDA's.

The program must load the CUDA runtime dynamically (`nvcc -cudart shared`): the loader then finds
qcuda's library first on LD_LIBRARY_PATH. A program that links the runtime statically never
loads it and would talk to a local GPU driver instead, so it is refused, never run.
"""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

from . import LIBRARY, LIBRARY_DIR

ELF_MAGIC = b"\x7fELF"
SHT_DYNAMIC, DT_NEEDED = 6, 1
STATIC_CUDA_MARKS = (b"__cudaRegisterFatBinary", b"libcuda.so.1")


class NotRunnable(Exception):
    """The program cannot run through qcuda; the message says what to do."""


def needed_libraries(data: bytes) -> list[str] | None:
    """DT_NEEDED entries of a 64-bit little-endian ELF file, or None if `data` is no such file."""
    if data[:4] != ELF_MAGIC or data[4] != 2 or data[5] != 1:
        return None
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    needed = []
    for _, kind, _, _, offset, size, link, _, _, entsize in sections:
        if kind != SHT_DYNAMIC:
            continue
        strtab_offset = sections[link][4]
        for pos in range(offset, offset + size, entsize or 16):
            tag, value = struct.unpack_from("<qQ", data, pos)
            if tag == DT_NEEDED:
                start = strtab_offset + value
                needed.append(data[start:data.index(b"\0", start)].decode())
    return needed


def check_program(program: str) -> None:
    """Refuse an ELF program that carries CUDA's runtime statically (it would bypass qcuda)."""
    path = shutil.which(program)
    if path is None:
        raise NotRunnable(f"{program}: no such program")
    data = Path(path).read_bytes()
    needed = needed_libraries(data)
    if needed is None or any(n.startswith("libcudart.so") for n in needed):
        return
    if any(mark in data for mark in STATIC_CUDA_MARKS):
        raise NotRunnable(
            f"{program} links the CUDA runtime statically (plain nvcc does), so qcuda cannot see its CUDA calls "
            "yet and will not let it use a local GPU behind qcuda's back. Rebuild it with `nvcc -cudart shared ...` "
            "(or link with -lcudart instead of -lcudart_static) and run it again."
        )


def prepare(command: list[str]) -> None:
    """Check, before any daemon starts, that `command` can run through qcuda."""
    if not LIBRARY.exists():
        raise NotRunnable(f"qcuda's {LIBRARY.name} is not built: reinstall qcuda (pip install -e .) or run "
                          "`python -m qcuda.library.interposer.build`")
    check_program(command[0])


def program_environment() -> dict[str, str]:
    """The environment that makes the program load qcuda's runtime, and lets it find qcuda's Python."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(LIBRARY_DIR), env.get("LD_LIBRARY_PATH")]))
    env["QCUDA_PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
    return env


def run_program(command: list[str]) -> int:
    """Run `command` (checked by `prepare`) through qcuda; its exit status (128 + N when signal N ended it, as
    shells report it)."""
    status = subprocess.run(command, env=program_environment()).returncode
    return 128 - status if status < 0 else status
