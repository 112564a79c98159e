"""Keep this process's own memory out of device addresses: the guest reserves the layout's span.

`cudaMemcpyDefault` and `cudaPointerGetAttributes` tell device from host pointers by address, so
no host allocation of the guest may ever sit where a device hands out addresses
(qcuda.protocol.addresses). The span is reserved once per process, before the first connection:
PROT_NONE and MAP_NORESERVE, so it commits no memory; mmap then never places anything there.
qcuda's libcudart.so.13 reserves the same span before `main`; a reservation found in place counts.
"""
from __future__ import annotations

import ctypes
import os
import threading

from ..protocol.addresses import RESERVED
from ..protocol.errors import CudaError, Error

MAP_PRIVATE, MAP_ANONYMOUS, MAP_NORESERVE, MAP_FIXED_NOREPLACE = 0x02, 0x20, 0x4000, 0x100000
_MAP_FAILED = 2**64 - 1
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]

_lock = threading.Lock()
_reserved = False


def reserve_device_addresses() -> None:
    """Reserve the device address span in this process (once); raise CudaError naming whatever already holds it."""
    global _reserved
    with _lock:
        if not _reserved:
            base, size = RESERVED
            for start, end in _holes(base, base + size):
                _reserve(start, end - start)
            _reserved = True


def _holes(start: int, end: int) -> list[tuple[int, int]]:
    """The parts of [start, end) no mapping covers; an earlier reservation (PROT_NONE, anonymous) may lie there."""
    holes, at = [], start
    for low, high, line in _mappings():
        if high <= start or low >= end:
            continue
        fields = line.split()
        if fields[1] != "---p" or len(fields) > 5:  # readable, writable, executable, shared or a file
            raise CudaError(Error.cudaErrorInitializationError,
                            f"this process already uses [0x{low:x}, 0x{high:x}), inside qcuda's device address "
                            f"span [0x{start:x}, 0x{end:x}), so device and host pointers could collide: {line}")
        if low > at:
            holes.append((at, low))
        at = max(at, high)
    if at < end:
        holes.append((at, end))
    return holes


def _mappings() -> list[tuple[int, int, str]]:
    """(start, end, line) of each mapping of this process, from /proc/self/maps."""
    with open("/proc/self/maps") as maps:
        lines = maps.read().splitlines()
    out = []
    for line in lines:
        low, high = line.split(None, 1)[0].split("-")
        out.append((int(low, 16), int(high, 16), line))
    return out


def _reserve(address: int, size: int) -> None:
    placed = _libc.mmap(address, size, 0, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0)
    if placed == address:
        return
    if placed in (None, _MAP_FAILED):
        raise CudaError(Error.cudaErrorInitializationError,
                        f"cannot reserve qcuda's device addresses [0x{address:x}, +{size}): "
                        f"{os.strerror(ctypes.get_errno())}")
    _libc.munmap(placed, size)  # a kernel before Linux 4.17 takes MAP_FIXED_NOREPLACE as a hint
    raise CudaError(Error.cudaErrorInitializationError,
                    "cannot reserve qcuda's device addresses: this kernel lacks MAP_FIXED_NOREPLACE (Linux 4.17)")
