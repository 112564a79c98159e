"""Emulated device memory: one flat address space over host memory, checked like a GPU checks it.

Device allocations live in one large anonymous mapping reserved up front (pages are only
committed when touched, and given back with MADV_DONTNEED when freed), so every device
address is `base + offset` and a kernel's vectorised loads and stores are single numpy
fancy-indexing operations. Host memory that is mapped into the device (the channel arena,
for zero-copy `cudaHostGetDevicePointer`) is added as further segments.
"""
from __future__ import annotations

import bisect
import mmap
import threading
from dataclasses import dataclass

import numpy as np

from ....protocol.addresses import HEAP_BASE
from ....protocol.errors import CudaError, Error
from ....protocol.ranges import RangeAllocator

MAP_NORESERVE = 0x4000  # Linux; Python 3.11's mmap module does not export it
ALIGNMENT = 256  # cudaMalloc's guaranteed alignment


@dataclass
class Segment:
    """A contiguous range of device addresses backed by host bytes."""

    base: int
    size: int
    data: np.ndarray  # uint8 view of the backing memory
    checked: bool  # True: only allocated ranges inside are valid (device heap)


class DeviceMemory:
    """The address space of one emulated device context.

    Thread-safe for allocation; loads and stores run without a lock (like a GPU, racing
    accesses to the same bytes are the program's business).
    """

    def __init__(self, capacity: int, base: int = HEAP_BASE) -> None:
        self.capacity = capacity
        self._map = mmap.mmap(-1, capacity, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE)
        heap = Segment(base, capacity, np.frombuffer(self._map, dtype=np.uint8), checked=True)
        self._segments: list[Segment] = [heap]
        self._heap = heap
        self._lock = threading.Lock()
        self._starts: list[int] = []  # sorted allocation starts (device addresses)
        self._sizes: dict[int, int] = {}  # start -> size
        self._ranges = RangeAllocator(capacity, ALIGNMENT)
        self._arr_starts = np.zeros(0, dtype=np.uint64)
        self._arr_ends = np.zeros(0, dtype=np.uint64)

    @property
    def used(self) -> int:
        return self._ranges.used

    # -- allocation -------------------------------------------------------------------------
    def alloc(self, size: int) -> int:
        """Reserve `size` bytes (first fit); raises cudaErrorMemoryAllocation when full."""
        if size < 0:
            raise CudaError(Error.cudaErrorInvalidValue, "negative allocation size")
        with self._lock:
            off = self._ranges.alloc(size)
            if off is not None:
                addr = self._heap.base + off
                bisect.insort(self._starts, addr)
                self._sizes[addr] = size
                self._reindex()
                return addr
        raise CudaError(Error.cudaErrorMemoryAllocation, f"{size} bytes requested, {self.capacity - self.used} free")

    def free(self, addr: int) -> None:
        """Give an allocation back; its pages return to the host."""
        with self._lock:
            size = self._sizes.pop(addr, None)
            if size is None:
                raise CudaError(Error.cudaErrorInvalidValue, f"0x{addr:x} is not an allocation of this context")
            self._starts.remove(addr)
            off = addr - self._heap.base
            self._release_pages(off, self._ranges.free(off) or 0)
            self._reindex()

    def allocation_size(self, addr: int) -> int | None:
        """The requested size of the allocation starting at `addr`, if there is one."""
        return self._sizes.get(addr)

    def _release_pages(self, off: int, size: int) -> None:
        page = mmap.PAGESIZE
        start = -(-off // page) * page
        end = (off + size) // page * page
        if end > start:
            self._map.madvise(mmap.MADV_DONTNEED, start, end - start)

    def _reindex(self) -> None:
        self._arr_starts = np.array(self._starts, dtype=np.uint64)
        self._arr_ends = self._arr_starts + np.array(
            [max(1, self._sizes[s]) for s in self._starts], dtype=np.uint64
        )

    # -- host memory mapped into the device ---------------------------------------------------
    def map_host(self, buffer, base: int) -> None:
        """Make host memory (the channel arena) addressable by kernels at `base`."""
        data = np.frombuffer(buffer, dtype=np.uint8)
        seg = Segment(base, data.size, data, checked=False)
        with self._lock:
            self._segments.append(seg)
            self._segments.sort(key=lambda s: s.base)

    # -- scalar range access (copies, memset) -------------------------------------------------
    def view(self, addr: int, size: int) -> np.ndarray:
        """A writable uint8 view of [addr, addr+size); raises unless it lies in one allocation."""
        seg = self._segment_of(addr, size)
        if seg.checked:
            i = bisect.bisect_right(self._starts, addr) - 1
            start = self._starts[i] if i >= 0 else None
            if start is None or addr + size > start + self._sizes[start]:
                raise CudaError(Error.cudaErrorInvalidValue, f"[0x{addr:x}, +{size}) is not inside one allocation")
        off = addr - seg.base
        return seg.data[off:off + size]

    def read(self, addr: int, size: int) -> bytes:
        return self.view(addr, size).tobytes()

    def write(self, addr: int, data) -> None:
        src = np.frombuffer(data, dtype=np.uint8)
        self.view(addr, src.size)[:] = src

    def contains(self, addr: int, size: int) -> bool:
        """True when [addr, addr+size) is valid device memory (an allocation or mapped host memory)."""
        try:
            self.view(addr, size)
        except CudaError:
            return False
        return True

    def _segment_of(self, addr: int, size: int) -> Segment:
        for seg in self._segments:
            if seg.base <= addr and addr + size <= seg.base + seg.size:
                return seg
        raise CudaError(Error.cudaErrorInvalidValue, f"0x{addr:x} (+{size}) is not device memory")

    # -- vectorised access for kernels --------------------------------------------------------
    def load(self, addrs: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """One value of `dtype` from each address (uint64 array). Faults like a GPU does."""
        dtype = np.dtype(dtype)
        parts = self._locate(addrs, dtype.itemsize)
        if len(parts) == 1 and parts[0][1] is None:
            seg, _, offs = parts[0]
            return _typed(seg, dtype)[offs // dtype.itemsize]
        out = np.empty(len(addrs), dtype=dtype)
        for seg, mask, offs in parts:
            out[mask] = _typed(seg, dtype)[offs // dtype.itemsize]
        return out

    def store(self, addrs: np.ndarray, values: np.ndarray) -> None:
        """Store values[i] at addrs[i]; the width is the values' dtype."""
        values = np.asarray(values)
        dtype = values.dtype
        for seg, mask, offs in self._locate(addrs, dtype.itemsize):
            _typed(seg, dtype)[offs // dtype.itemsize] = values if mask is None else values[mask]

    def _locate(self, addrs: np.ndarray, width: int) -> list[tuple[Segment, np.ndarray | None, np.ndarray]]:
        """(segment, which addresses, their offsets) for every segment the addresses touch; faults if any is invalid."""
        addrs = np.asarray(addrs, dtype=np.uint64)
        if addrs.size == 0:
            return [(self._heap, None, np.zeros(0, dtype=np.int64))]
        if np.any(addrs % np.uint64(width)):
            raise CudaError(Error.cudaErrorMisalignedAddress, f"{width}-byte access at a misaligned address")
        lo, hi = int(addrs.min()), int(addrs.max()) + width
        for seg in self._segments:
            if seg.base <= lo and hi <= seg.base + seg.size:
                self._check_allocated(seg, addrs, width)
                return [(seg, None, (addrs - np.uint64(seg.base)).astype(np.int64))]
        parts = []
        covered = np.zeros(addrs.size, dtype=bool)
        for seg in self._segments:
            mask = (addrs >= np.uint64(seg.base)) & (addrs + np.uint64(width) <= np.uint64(seg.base + seg.size))
            if mask.any():
                inside = addrs[mask]
                self._check_allocated(seg, inside, width)
                parts.append((seg, mask, (inside - np.uint64(seg.base)).astype(np.int64)))
                covered |= mask
        if not covered.all():
            first = int(addrs[np.argmin(covered)])
            raise CudaError(Error.cudaErrorIllegalAddress, f"{width}-byte access at 0x{first:x} is outside device memory")
        return parts

    def _check_allocated(self, seg: Segment, addrs: np.ndarray, width: int) -> None:
        if not seg.checked:
            return
        starts, ends = self._arr_starts, self._arr_ends
        if not starts.size:
            raise CudaError(Error.cudaErrorIllegalAddress, f"access at 0x{int(addrs[0]):x}: nothing is allocated")
        idx = np.searchsorted(starts, addrs, side="right").astype(np.int64) - 1
        bad = (idx < 0) | (addrs + np.uint64(width) > ends[np.maximum(idx, 0)])
        if np.any(bad):
            first = int(addrs[np.argmax(bad)])
            raise CudaError(Error.cudaErrorIllegalAddress, f"{width}-byte access at 0x{first:x} is outside every allocation")


def _typed(seg: Segment, dtype: np.dtype) -> np.ndarray:
    """The segment's bytes as an array of `dtype` (accesses are aligned, so offsets divide evenly)."""
    return seg.data[: seg.data.size - seg.data.size % dtype.itemsize].view(dtype)
