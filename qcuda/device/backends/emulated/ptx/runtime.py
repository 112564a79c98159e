"""Device runtime functions the emulator provides itself: printf, assert, malloc and free.

Calls to them reach here as `qcuda.<name>` instructions (see inline.py); their arguments are in
the call sequence's per-thread parameter slots.
"""
from __future__ import annotations

import re
from typing import Callable

import numpy as np

from .....protocol.errors import CudaError, Error
from .frame import SINT, UINT, Frame, Unsupported
from .memops import load_space, store_space
from .parser import Instruction
from .shapes import Factory, Run


_FORMAT = re.compile(r"%([-+ #0]*)(\*|\d+)?(?:\.(\*|\d+))?(hh|h|ll|l|j|z|t|L)?([diouxXeEfFgGaAcsp%])")
MAX_STRING = 4096


def _read_bytes(fr: Frame, addr: int, thread: int, size: int) -> bytes:
    """`size` bytes at a generic address as one thread sees it."""
    values = load_space(fr, None, np.arange(addr, addr + size, dtype=np.uint64),
                        np.full(size, thread, dtype=np.int64), np.dtype(np.uint8))
    return values.tobytes()


def read_cstring(fr: Frame, addr: int, thread: int) -> str:
    out = bytearray()
    while len(out) < MAX_STRING:
        byte = _read_bytes(fr, addr + len(out), thread, 1)
        if byte == b"\0":
            break
        out += byte
    return out.decode("utf-8", errors="replace")


def format_printf(fr: Frame, fmt_addr: int, args_addr: int, thread: int) -> str:
    """C printf of a format string and vprintf's packed argument buffer (each argument aligned
    to its size; float arguments were promoted to double)."""
    fmt = read_cstring(fr, fmt_addr, thread)
    pos = 0

    def take(size: int, kind: str):
        nonlocal pos
        pos = _align_up(pos, size)
        raw = _read_bytes(fr, args_addr + pos, thread, size)
        pos += size
        return np.frombuffer(raw, {"i": SINT, "u": UINT}[kind][size] if kind != "f" else np.float64)[0].item()

    def convert(m: re.Match) -> str:
        flags, width, precision, length, conv = m.groups()
        if conv == "%":
            return "%"
        if width == "*":
            width = str(take(4, "i"))
        if precision == "*":
            precision = str(take(4, "i"))
        spec = "%" + flags + (width or "") + ("." + precision if precision is not None else "")
        if conv in "diouxXc":
            size = 8 if length in ("l", "ll", "j", "z", "t") else 4
            value = take(size, "i" if conv in "di" else "u")
            if conv == "c":
                return (spec + "c") % chr(value & 0xFF)
            return (spec + ("d" if conv in "iu" else conv)) % value
        if conv in "eEfFgGaA":
            value = take(8, "f")
            return value.hex() if conv in "aA" else (spec + conv) % value
        address = take(8, "u")
        if conv == "p":
            return (spec + "s") % f"0x{address:x}"
        return (spec + "s") % (read_cstring(fr, address, thread) if address else "(null)")
    return _FORMAT.sub(convert, fmt)


def _align_up(n: int, a: int) -> int:
    return -(-n // a) * a


def _builtin(fn: Callable, nargs: int) -> Callable[[Instruction, list[str]], Factory]:
    """A libdevice function the emulator implements itself (see inline.BUILTINS): `fn(fr, ids,
    args)` gets the calling threads and their arguments (one uint64 array per argument) and
    returns their return values, or None."""
    def make(inst: Instruction, mods: list[str]) -> Factory:
        rets, args = inst.operands
        if len(args.items) != nargs:
            raise Unsupported(f"{mods[0]} with {len(args.items)} arguments")
        u64 = np.dtype(np.uint64)

        def factory(fr: Frame) -> Run:
            slots = [fr.kernel.symbol_address(a.name) for a in args.items]
            ret_slot = fr.kernel.symbol_address(rets.items[0].name) if rets.items else None

            def run(m):
                ids = fr.thread_index if m is True else fr.thread_index[m.mask]
                if ids.size == 0:
                    return
                values = [load_space(fr, "local", np.full(ids.size, slot, np.uint64), ids, u64) for slot in slots]
                result = fn(fr, ids, values)
                if ret_slot is not None and result is not None:
                    store_space(fr, "local", np.full(ids.size, ret_slot, np.uint64), ids, result)
            return run
        return factory
    return make


def _vprintf(fr: Frame, ids, args):
    texts = [format_printf(fr, int(f), int(b), int(t)) for f, b, t in zip(*args, ids)]
    fr.kernel.output("".join(texts))
    return np.array([len(t) for t in texts], dtype=np.int32)


def _assertfail(fr: Frame, ids, args):
    """A failed device assert: print the GPU's message for the first failing thread and fail the
    launch with cudaErrorAssert."""
    t = int(ids[0])
    pos = int(np.searchsorted(fr.thread_index, t))  # thread ids ascend with position
    msg, file, func = (read_cstring(fr, int(args[k][0]), t) for k in (0, 1, 3))
    line = int(args[2][0]) & 0xFFFFFFFF
    block = ",".join(str(int(fr.sregs[f"%ctaid.{c}"][pos])) for c in "xyz")
    thread = ",".join(str(int(fr.sregs[f"%tid.{c}"][pos])) for c in "xyz")
    text = f"{file}:{line}: {func}: block: [{block}], thread: [{thread}] Assertion `{msg}` failed.\n"
    fr.kernel.output(text)
    raise CudaError(Error.cudaErrorAssert, text.strip())


def _malloc(fr: Frame, ids, args):
    """Device-side malloc: one allocation per calling thread; NULL when memory runs out."""
    out = np.zeros(ids.size, np.uint64)
    for k, size in enumerate(args[0]):
        try:
            out[k] = fr.memory.alloc(int(size))
        except CudaError:
            out[k] = 0
    return out


def _free(fr: Frame, ids, args):
    for ptr in args[0]:
        if int(ptr):
            try:
                fr.memory.free(int(ptr))
            except CudaError:
                raise CudaError(Error.cudaErrorIllegalAddress,
                                f"free(0x{int(ptr):x}) of memory that device malloc did not return") from None
    return None


_BUILTINS = {"vprintf": _builtin(_vprintf, 2), "__assertfail": _builtin(_assertfail, 5),
             "malloc": _builtin(_malloc, 1), "free": _builtin(_free, 1)}


def make_builtin(inst: Instruction, mods: list[str]) -> Factory:
    make = _BUILTINS.get(mods[0]) if len(mods) == 1 else None
    if make is None:
        raise Unsupported(f"instruction {inst.opcode}")
    return make(inst, mods)
