"""First-fit allocation of ranges within one space: device memory, and the guest's arena.

Pure bookkeeping over integers; whoever owns the bytes does the rest.
"""
from __future__ import annotations

import bisect


class RangeAllocator:
    """Hands out aligned [offset, offset+size) ranges of a space of `capacity` bytes."""

    def __init__(self, capacity: int, alignment: int) -> None:
        self.capacity = capacity
        self.alignment = alignment
        self.used = 0
        self._free: list[tuple[int, int]] = [(0, capacity)] if capacity else []  # (offset, size) by offset
        self._sizes: dict[int, int] = {}  # offset -> rounded size

    def rounded(self, size: int) -> int:
        return max(self.alignment, -(-size // self.alignment) * self.alignment)

    def alloc(self, size: int) -> int | None:
        """The offset of a new range, or None when no free range is large enough."""
        need = self.rounded(size)
        for i, (off, avail) in enumerate(self._free):
            if avail >= need:
                if avail == need:
                    del self._free[i]
                else:
                    self._free[i] = (off + need, avail - need)
                self._sizes[off] = need
                self.used += need
                return off
        return None

    def free(self, offset: int) -> int | None:
        """Return a range; its rounded size, or None if `offset` starts no range."""
        size = self._sizes.pop(offset, None)
        if size is None:
            return None
        i = bisect.bisect(self._free, (offset, size))
        self._free.insert(i, (offset, size))
        if i + 1 < len(self._free) and offset + size == self._free[i + 1][0]:
            self._free[i] = (offset, size + self._free[i + 1][1])
            del self._free[i + 1]
        if i > 0 and self._free[i - 1][0] + self._free[i - 1][1] == offset:
            self._free[i - 1] = (self._free[i - 1][0], self._free[i - 1][1] + self._free[i][1])
            del self._free[i]
        self.used -= size
        return size

    def largest_free(self) -> int:
        return max((size for _, size in self._free), default=0)
