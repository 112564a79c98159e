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

from ....protocol.errors import CudaError, Error
from ....protocol.ranges import RangeAllocator

MAP_NORESERVE = 0x4000  # Linux; Python 3.11's mmap module does not export it
ALIGNMENT = 256  # cudaMalloc's guaranteed alignment
DEVICE_BASE = 0x7A00_0000_0000  # a range host allocators leave alone; guests reserve it too


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

    def __init__(self, capacity: int, base: int = DEVICE_BASE) -> None:
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
        seg, offs = self._locate(addrs, dtype.itemsize)
        return seg.data[: seg.data.size - seg.data.size % dtype.itemsize].view(dtype)[offs // dtype.itemsize]

    def store(self, addrs: np.ndarray, values: np.ndarray) -> None:
        """Store values[i] at addrs[i]; the width is the values' dtype."""
        values = np.asarray(values)
        seg, offs = self._locate(addrs, values.dtype.itemsize)
        seg.data[: seg.data.size - seg.data.size % values.dtype.itemsize].view(values.dtype)[
            offs // values.dtype.itemsize
        ] = values

    def _locate(self, addrs: np.ndarray, width: int) -> tuple[Segment, np.ndarray]:
        addrs = np.asarray(addrs, dtype=np.uint64)
        if addrs.size == 0:
            return self._heap, np.zeros(0, dtype=np.int64)
        if np.any(addrs % np.uint64(width)):
            raise CudaError(Error.cudaErrorMisalignedAddress, f"{width}-byte access at a misaligned address")
        lo, hi = int(addrs.min()), int(addrs.max()) + width
        seg = None
        for s in self._segments:
            if s.base <= lo and hi <= s.base + s.size:
                seg = s
                break
        if seg is None:
            if len(self._segments) > 1:
                return self._locate_mixed(addrs, width)
            raise CudaError(Error.cudaErrorIllegalAddress, f"access at 0x{lo:x} is outside device memory")
        if seg.checked:
            starts, ends = self._arr_starts, self._arr_ends
            idx = np.searchsorted(starts, addrs, side="right").astype(np.int64) - 1
            bad = (idx < 0) | (addrs + np.uint64(width) > ends[np.maximum(idx, 0)]) if starts.size else None
            if bad is None or np.any(bad):
                first = int(addrs[np.argmax(bad)]) if bad is not None else lo
                raise CudaError(Error.cudaErrorIllegalAddress, f"{width}-byte access at 0x{first:x} is outside every allocation")
        return seg, (addrs - np.uint64(seg.base)).astype(np.int64)

    def _locate_mixed(self, addrs: np.ndarray, width: int):
        raise CudaError(
            Error.cudaErrorNotSupported,
            "one vectorised access spanning device memory and mapped host memory is not supported by the emulator",
        )
