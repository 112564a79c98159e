"""The channel region's layout and its two rings, over any buffer: pure data, no I/O.

The same bytes work as a /dev/shm or memfd mapping shared by two processes and as a QEMU
ivshmem BAR: everything is an offset from the region's start, never a pointer.

    0        header page: magic, layout version, sizes and offsets, ring indices, wake flags
    4096     submission ring (guest -> host)
    ...      completion ring (host -> guest)
    ...      arena: bulk data and pinned host memory (an arena offset is the guest's "physical address")

Ring indices are free-running u64 byte counts, each on its own cache line, written by one side
only. A record is {u32 length, u32 tag} then `length` bytes, padded to 8; a record that would
cross the ring's end is preceded by a PAD record. The reader copies a record out before
anything looks at it, and checks every index it reads from the other side.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import LocalProtocolError, RemoteProtocolError

REGION_MAGIC = 0x31484355_44435131  # "1QCDUCH1"
LAYOUT_VERSION = 1
HEADER_BYTES = 4096
_GEOMETRY = struct.Struct("<QIIQQQQQQQ")  # magic, layout version, header bytes, region size, sq off/size, cq off/size, arena off/size

# u64 word indices of the control words (8 words = one 64-byte cache line apart)
SQ_TAIL, SQ_HEAD, CQ_TAIL, CQ_HEAD, HOST_SLEEPING, GUEST_SLEEPING = (16 + 8 * i for i in range(6))

RECORD_HEADER = struct.Struct("<II")
TAG_FRAME = 0  # the record holds one protocol frame
TAG_INDIRECT = 1  # the record holds {arena offset u64, length u64} of a frame stored in the arena
TAG_PAD = 0xFFFFFFFF
INDIRECT = struct.Struct("<QQ")


class RingCorrupt(RemoteProtocolError):
    """The other side wrote indices or records that cannot be right: end the channel."""


@dataclass(frozen=True)
class Geometry:
    """Where each part of a region lies. Built by the creator, read and checked by the other side."""

    region_size: int
    sq_offset: int
    sq_size: int
    cq_offset: int
    cq_size: int
    arena_offset: int
    arena_size: int

    @classmethod
    def plan(cls, arena_size: int, ring_size: int = 1 << 20) -> "Geometry":
        """A layout with rings of `ring_size` bytes and an arena of `arena_size` bytes (page multiples)."""
        if ring_size & (ring_size - 1) or ring_size < 4096:
            raise LocalProtocolError("ring size must be a power of two of at least 4096")
        if arena_size % 4096:
            raise LocalProtocolError("arena size must be a multiple of 4096")
        sq = HEADER_BYTES
        cq = sq + ring_size
        arena = cq + ring_size
        return cls(arena + arena_size, sq, ring_size, cq, ring_size, arena, arena_size)

    def write(self, buf) -> None:
        _GEOMETRY.pack_into(
            buf, 0, REGION_MAGIC, LAYOUT_VERSION, HEADER_BYTES, self.region_size,
            self.sq_offset, self.sq_size, self.cq_offset, self.cq_size, self.arena_offset, self.arena_size,
        )

    @classmethod
    def read(cls, buf, actual_size: int) -> "Geometry":
        """The geometry in a region's header, checked against the region's real size."""
        if actual_size < HEADER_BYTES:
            raise RingCorrupt(f"region of {actual_size} bytes is smaller than its header")
        magic, version, header, size, sqo, sqs, cqo, cqs, ao, asz = _GEOMETRY.unpack_from(buf, 0)
        if magic != REGION_MAGIC:
            raise RingCorrupt("region has no qcuda channel header")
        if version != LAYOUT_VERSION:
            raise RingCorrupt(f"region layout version {version}, this side reads version {LAYOUT_VERSION}")
        geo = cls(size, sqo, sqs, cqo, cqs, ao, asz)
        parts = sorted([(sqo, sqs), (cqo, cqs), (ao, asz)])
        end = HEADER_BYTES
        for off, sz in parts:
            if off < end or off % 8:
                raise RingCorrupt("region parts overlap or are misaligned")
            end = off + sz
        if header != HEADER_BYTES or size != actual_size or end > size:
            raise RingCorrupt("region sizes disagree with the region")
        for ring in (sqs, cqs):
            if ring < 4096 or ring & (ring - 1):
                raise RingCorrupt("ring size is not a power of two")
        return geo


def control_words(buf) -> memoryview:
    """The header's u64 words: aligned 8-byte accesses, each a single load or store."""
    return memoryview(buf)[:HEADER_BYTES].cast("B").cast("Q")


class RingWriter:
    """The producing side of one ring. Only one thread may push at a time (callers lock)."""

    def __init__(self, buf, offset: int, size: int, tail_word: int, head_word: int) -> None:
        self._data = memoryview(buf)[offset:offset + size]
        self._size = size
        self._words = control_words(buf)
        self._tail_word, self._head_word = tail_word, head_word
        self._tail = self._words[tail_word]
        self.max_record = size // 4

    def try_push(self, payload: bytes, tag: int = TAG_FRAME) -> bool:
        """Append one record; False when the ring has no room now."""
        length = len(payload)
        need = RECORD_HEADER.size + ((length + 7) & ~7)
        if need > self.max_record:
            raise LocalProtocolError(f"record of {length} bytes exceeds the ring's {self.max_record}-byte limit")
        head = self._words[self._head_word]
        used = self._tail - head
        if not 0 <= used <= self._size:
            raise RingCorrupt(f"ring head {head} is inconsistent with tail {self._tail}")
        pos = self._tail % self._size
        pad = self._size - pos if pos + need > self._size else 0
        if self._size - used < pad + need:
            return False
        if pad:
            RECORD_HEADER.pack_into(self._data, pos, TAG_PAD, TAG_PAD)
            pos = 0
        RECORD_HEADER.pack_into(self._data, pos, length, tag)
        self._data[pos + 8:pos + 8 + length] = payload
        self._tail += pad + need
        self._words[self._tail_word] = self._tail
        return True

    def empty(self) -> bool:
        """True when the reader has consumed everything pushed."""
        return self._words[self._head_word] == self._tail


class RingReader:
    """The consuming side of one ring. Only one thread may pop at a time."""

    def __init__(self, buf, offset: int, size: int, tail_word: int, head_word: int) -> None:
        self._data = memoryview(buf)[offset:offset + size]
        self._size = size
        self._words = control_words(buf)
        self._tail_word, self._head_word = tail_word, head_word
        self._head = self._words[head_word]

    def pending(self) -> bool:
        return self._words[self._tail_word] != self._head

    def pop(self) -> tuple[int, bytes] | None:
        """(tag, payload copied out of the ring), or None when empty; RingCorrupt on garbage."""
        tail = self._words[self._tail_word]
        while True:
            avail = tail - self._head
            if avail == 0:
                return None
            if not 0 < avail <= self._size or avail % 8:
                raise RingCorrupt(f"ring tail {tail} is inconsistent with head {self._head}")
            pos = self._head % self._size
            length, tag = RECORD_HEADER.unpack_from(self._data, pos)
            if length == TAG_PAD and tag == TAG_PAD:
                skip = self._size - pos
                if skip > avail:
                    raise RingCorrupt("pad record runs past the ring's tail")
                self._head += skip
                continue
            need = RECORD_HEADER.size + ((length + 7) & ~7)
            if need > avail or pos + need > self._size:
                raise RingCorrupt(f"record of {length} bytes runs past the ring's tail")
            payload = bytes(self._data[pos + 8:pos + 8 + length])
            self._head += need
            self._words[self._head_word] = self._head
            return tag, payload
