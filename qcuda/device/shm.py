"""The host end of a shared-memory channel: map a guest's region, read its requests, post answers.

The region comes from the guest (a sealed memfd passed over the Unix socket) or, for a VM, from
QEMU's ivshmem backing file. It is hostile input: its geometry is read and checked once, ring
records are copied out before they are decoded, and the region cannot shrink under us (the
memfd must carry F_SEAL_SHRINK, so a guest cannot make the worker fault with SIGBUS).
"""
from __future__ import annotations

import fcntl
import mmap
import os
import select
import threading
import time

from ..protocol.errors import RemoteProtocolError
from ..protocol.region import (
    CQ_HEAD, CQ_TAIL, GUEST_SLEEPING, HOST_SLEEPING, INDIRECT, SQ_HEAD, SQ_TAIL, TAG_FRAME, TAG_INDIRECT,
    Geometry, RingCorrupt, RingReader, RingWriter, control_words,
)

SPIN_SECONDS = 200e-6  # busy-poll this long after the last request before sleeping
MAX_SLEEP = 0.05  # a lost wake-up (no fence in Python) costs at most this much


def map_region(fd: int, max_size: int, require_seals: bool = True) -> tuple[mmap.mmap, Geometry]:
    """Map a guest's region and check its geometry; RemoteProtocolError if it is unusable."""
    size = os.fstat(fd).st_size
    if not 0 < size <= max_size:
        raise RemoteProtocolError(f"region of {size} bytes; this daemon accepts at most {max_size} "
                                  "(a smaller QCUDA_ARENA, or ask the operator for --max-arena)")
    if require_seals:
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError:
            raise RemoteProtocolError("region is not a memfd: it could shrink under the daemon") from None
        if not seals & fcntl.F_SEAL_SHRINK:
            raise RemoteProtocolError("region memfd lacks F_SEAL_SHRINK")
    region = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    try:
        return region, Geometry.read(region, size)
    except RingCorrupt:
        region.close()
        raise


class HostChannel:
    """Requests in through the submission ring, answers out through the completion ring."""

    def __init__(self, region: mmap.mmap, geometry: Geometry, wake_host: int, wake_guest: int) -> None:
        self.region = region
        self.geometry = geometry
        self._wake_host, self._wake_guest = wake_host, wake_guest
        self._words = control_words(region)
        self._sq = RingReader(region, geometry.sq_offset, geometry.sq_size, SQ_TAIL, SQ_HEAD)
        self._cq = RingWriter(region, geometry.cq_offset, geometry.cq_size, CQ_TAIL, CQ_HEAD)
        self.arena = memoryview(region)[geometry.arena_offset:geometry.arena_offset + geometry.arena_size]
        self._post_lock = threading.Lock()
        self.closed = False

    def receive(self) -> bytes | None:
        """The next request frame, copied out of the region, or None when there is none."""
        record = self._sq.pop()
        if record is None:
            return None
        tag, payload = record
        if tag == TAG_FRAME:
            return payload
        if tag == TAG_INDIRECT and len(payload) == INDIRECT.size:
            offset, length = INDIRECT.unpack(payload)
            if offset + length <= len(self.arena):
                return bytes(self.arena[offset:offset + length])
            raise RingCorrupt(f"indirect frame [{offset}, +{length}) lies outside the arena")
        raise RingCorrupt(f"unknown record tag {tag}")

    def post(self, frame: bytes) -> None:
        """Queue one answer or host message for the guest; waits while the guest's ring is full."""
        with self._post_lock:
            delay = 1e-5
            while not self._cq.try_push(frame):
                if self.closed:
                    return
                self._ring(self._wake_guest)
                time.sleep(delay)
                delay = min(delay * 2, 0.01)
            if self._words[GUEST_SLEEPING]:
                self._ring(self._wake_guest)

    def wait(self, watch: int, idle_since: float) -> bool:
        """Wait for requests: spin briefly, then sleep on the doorbell. False if `watch` (the guest's socket) is readable."""
        if time.perf_counter() - idle_since < SPIN_SECONDS:
            return True  # busy-poll; other threads get the GIL by the worker's short switch interval
        self._words[HOST_SLEEPING] = 1
        try:
            if self._sq.pending():
                return True
            timeout = min(MAX_SLEEP, max(1e-3, time.perf_counter() - idle_since))
            ready, _, _ = select.select([self._wake_host, watch], [], [], timeout)
        finally:
            self._words[HOST_SLEEPING] = 0
        if self._wake_host in ready:
            try:
                os.eventfd_read(self._wake_host)
            except BlockingIOError:
                pass
        return watch not in ready

    @staticmethod
    def _ring(fd: int) -> None:
        try:
            os.eventfd_write(fd, 1)
        except OSError:
            pass

    def close(self) -> None:
        """Stop posting; the mapping goes with the worker process."""
        self.closed = True
        for fd in (self._wake_host, self._wake_guest):
            os.close(fd)
