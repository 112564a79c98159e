"""Compile the test kernels once per session with the machine's nvcc, and run them on the emulator.

Tests that need nvcc take the `built` fixture, which skips them where nvcc is missing."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from qcuda.device.backends.emulated.memory import DeviceMemory
from qcuda.device.backends.emulated.ptx import Kernel, Module, kernel

KERNELS = Path(__file__).parent / "kernels"
NVCC = shutil.which("nvcc")
# e.g. QCUDA_PTX_FLAGS="-arch=sm_100 -G" runs the suite on other code generation
PTX_FLAGS = tuple(os.environ.get("QCUDA_PTX_FLAGS", "-arch=sm_90").split())


class Built:
    """Paths of the compiled forms of every kernels/*.cu."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def compile(self, source: str, *flags: str, suffix: str) -> Path:
        tag = "_".join(re.sub(r"\W", "", f) for f in flags)
        out = self.root / f"{Path(source).stem}_{tag}.{suffix}"
        if not out.exists():
            kind = "-ptx" if suffix == "ptx" else "-fatbin"
            subprocess.run([NVCC, kind, *flags, str(KERNELS / source), "-o", str(out)], check=True,
                           capture_output=True)
        return out

    def ptx(self, source: str, *flags: str) -> bytes:
        """PTX of `source`; `flags` add to the suite's code-generation flags."""
        return self.compile(source, *PTX_FLAGS, *flags, suffix="ptx").read_bytes()

    def fatbin(self, source: str, *flags: str) -> bytes:
        return self.compile(source, *(flags or ("-arch=sm_90",)), suffix="fatbin").read_bytes()


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Built:
    if NVCC is None:
        pytest.skip("nvcc is not installed")
    b = Built(tmp_path_factory.mktemp("kernels"))
    for cu in sorted(KERNELS.glob("*.cu")):  # compile everything up front: a broken .cu fails here
        b.ptx(cu.name)
    return b


class Emu:
    """An emulated device context: load modules, launch kernels with numpy arrays as arguments."""

    def __init__(self) -> None:
        self.memory = DeviceMemory(1 << 32)
        self.modules: list[Module] = []

    def load(self, image: bytes) -> Module:
        module = Module.load(image, self.memory)
        self.modules.append(module)
        return module

    def pack(self, kernel: Kernel, args) -> tuple[bytes, list]:
        """Parameters by the kernel's layout; arrays go to device memory and come back after."""
        buf = bytearray(kernel.param_size)
        copies = []
        if len(args) != len(kernel.param_layout):
            raise TypeError(f"{kernel.name} takes {len(kernel.param_layout)} arguments, got {len(args)}")
        for (offset, size), arg in zip(kernel.param_layout, args):
            if isinstance(arg, np.ndarray):
                addr = self.memory.alloc(max(arg.nbytes, 1))
                self.memory.write(addr, arg.tobytes())
                copies.append((addr, arg))
                raw = np.uint64(addr).tobytes()
            elif isinstance(arg, (bytes, bytearray)):
                raw = bytes(arg)
            else:
                raw = np.asarray(arg).tobytes()
            if len(raw) != size:
                raise TypeError(f"argument of {len(raw)} bytes for a {size}-byte parameter")
            buf[offset:offset + size] = raw
        return bytes(buf), copies

    def run(self, module: Module, name: str, grid, block, *args, shared: int = 0) -> None:
        kernel = module.functions[name]
        params, copies = self.pack(kernel, args)
        grid = tuple(grid) + (1,) * (3 - len(grid)) if isinstance(grid, tuple) else (grid, 1, 1)
        block = tuple(block) + (1,) * (3 - len(block)) if isinstance(block, tuple) else (block, 1, 1)
        try:
            kernel.launch(grid, block, shared, params)
        finally:
            for addr, arr in copies:
                arr[...] = np.frombuffer(self.memory.read(addr, arr.nbytes), arr.dtype).reshape(arr.shape)
                self.memory.free(addr)


@pytest.fixture(params=["batched", "compacting"])
def emu(request, monkeypatch) -> Emu:
    """Every kernel test runs twice: as the emulator runs it, and with a loop entered by any
    at most half of the threads always moved into a compacted frame (normally only big, sparse ones).
    Half, not any subset: a contended CAS loop that lets one thread out per round would nest a
    compacted frame per thread, deeper than Python's recursion limit."""
    if request.param == "compacting":
        monkeypatch.setattr(kernel, "COMPACT_MIN_THREADS", 1)
        monkeypatch.setattr(kernel, "COMPACT_RATIO", 2)
    return Emu()
