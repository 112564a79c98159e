"""Device memory carved from one fixed address range: granules mapped on demand, small requests sharing them.

The GPU backend backs its device's address range (qcuda.protocol.addresses) with physical memory
one mapping at a time, in multiples of the driver's granularity (2 MiB on an H100). A request of
a granule or more gets a mapping of its own, given back when freed; smaller ones are carved from
granule-sized chunks, so a thousand 4-byte cudaMallocs share one granule as they do under
cuMemAlloc. Pure bookkeeping: the backend passes the functions that map and unmap.
"""
from __future__ import annotations

from typing import Callable

from ...protocol.errors import CudaError, Error
from ...protocol.ranges import RangeAllocator

ALIGNMENT = 256  # cudaMalloc's guaranteed alignment


class Heap:
    """Allocations in [base, base+size); `map(address, size)` backs a range, `unmap(address, size)` gives it back.

    One emptied chunk stays mapped, so a loop that allocates and frees a small buffer does not map
    and unmap a granule every time.
    """

    def __init__(self, base: int, size: int, granularity: int,
                 map: Callable[[int, int], None], unmap: Callable[[int, int], None]) -> None:
        if granularity % ALIGNMENT or base % granularity:
            raise ValueError(f"granularity {granularity} and base 0x{base:x} must be aligned")
        self.base, self.size, self.granularity = base, size, granularity
        self._map, self._unmap = map, unmap
        self._space = RangeAllocator(size, granularity)  # where mappings lie
        self._mappings: dict[int, int] = {}  # address -> size of each mapping
        self._chunks: dict[int, RangeAllocator] = {}  # chunk address -> what is carved from it
        self._owner: dict[int, int | None] = {}  # allocation -> its chunk (None: a mapping of its own)

    @property
    def mapped(self) -> int:
        """Bytes backed by physical memory."""
        return sum(self._mappings.values())

    def alloc(self, size: int) -> int:
        """An address for `size` bytes (256-byte aligned; 0 bytes still get a distinct address)."""
        if size < 0:
            raise CudaError(Error.cudaErrorInvalidValue, "negative allocation size")
        size = max(size, 1)
        if size >= self.granularity:
            address = self._new_mapping(-(-size // self.granularity) * self.granularity)
            self._owner[address] = None
            return address
        for chunk, ranges in self._chunks.items():
            offset = ranges.alloc(size)
            if offset is not None:
                self._owner[chunk + offset] = chunk
                return chunk + offset
        chunk = self._new_mapping(self.granularity)
        ranges = self._chunks[chunk] = RangeAllocator(self.granularity, ALIGNMENT)
        offset = ranges.alloc(size)
        assert offset is not None
        self._owner[chunk + offset] = chunk
        return chunk + offset

    def free(self, address: int) -> None:
        if address not in self._owner:
            raise CudaError(Error.cudaErrorInvalidValue, f"0x{address:x} is not an allocation of this device")
        chunk = self._owner[address]
        if chunk is None:
            self._drop_mapping(address)
            del self._owner[address]
            return
        del self._owner[address]
        ranges = self._chunks[chunk]
        ranges.free(address - chunk)
        if ranges.used == 0 and any(c != chunk and r.used == 0 for c, r in self._chunks.items()):
            self._drop_mapping(chunk)
            del self._chunks[chunk]

    def release_all(self) -> None:
        """Unmap everything (the context is closing); a mapping the driver will not unmap is left to the reset."""
        for address, size in self._mappings.items():
            try:
                self._unmap(address, size)
            except CudaError:
                pass
        self._mappings.clear()
        self._chunks.clear()
        self._owner.clear()
        self._space = RangeAllocator(self.size, self.granularity)

    def _new_mapping(self, size: int) -> int:
        offset = self._space.alloc(size)
        if offset is None:
            raise CudaError(Error.cudaErrorMemoryAllocation,
                            f"{size} bytes: the device's address range has no free run that long")
        address = self.base + offset
        try:
            self._map(address, size)
        except BaseException:
            self._space.free(offset)
            raise
        self._mappings[address] = size
        return address

    def _drop_mapping(self, address: int) -> None:
        self._unmap(address, self._mappings[address])  # first: a mapping the driver keeps stays on the books
        del self._mappings[address]
        self._space.free(address - self.base)
