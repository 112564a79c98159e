"""The guest end of a shared-memory channel: create the region, hand it to the daemon, move frames.

The guest creates the region itself (a sealed memfd: private to this process and the daemon it
is passed to, and impossible to shrink under the daemon), with two eventfd doorbells, and
sends all three over the daemon's Unix socket with its hello. After that the socket carries
nothing; its EOF tells each side that the other is gone.
"""
from __future__ import annotations

import array
import fcntl
import mmap
import os
import select
import socket
import threading
import time

from ..protocol import messages as m
from ..protocol.codec import Frame, Malformed, decode, encode
from ..protocol.errors import CudaError, Error
from ..protocol.ranges import RangeAllocator
from ..protocol.region import (
    CQ_HEAD, CQ_TAIL, GUEST_SLEEPING, HOST_SLEEPING, INDIRECT, SQ_HEAD, SQ_TAIL, TAG_INDIRECT, Geometry, RingReader,
    RingWriter, control_words,
)
from ..protocol.urls import DeviceUrl

DEFAULT_ARENA = 256 << 20
ARENA_ALIGNMENT = 4096
SPIN_SECONDS = 200e-6
MAX_SLEEP = 0.05
CONNECT_TIMEOUT = 10.0


class ChannelClosed(Exception):
    """The daemon end is gone."""


class ShmChannel:
    """Frames to and from one daemon through a shared region; bulk data lives in its arena."""

    shared_arena = True

    def __init__(self, url: DeviceUrl, arena_size: int = DEFAULT_ARENA, ring_size: int = 1 << 20) -> None:
        self.url = url
        self.geometry = Geometry.plan(arena_size, ring_size)
        self._fd = os.memfd_create("qcuda-channel", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(self._fd, self.geometry.region_size)
        fcntl.fcntl(self._fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
        self.region = mmap.mmap(self._fd, self.geometry.region_size, flags=mmap.MAP_SHARED)
        self.geometry.write(self.region)
        g = self.geometry
        self._words = control_words(self.region)
        self._sq = RingWriter(self.region, g.sq_offset, g.sq_size, SQ_TAIL, SQ_HEAD)
        self._cq = RingReader(self.region, g.cq_offset, g.cq_size, CQ_TAIL, CQ_HEAD)
        self.arena = memoryview(self.region)[g.arena_offset:g.arena_offset + g.arena_size]
        self.arena_allocator = RangeAllocator(g.arena_size, ARENA_ALIGNMENT)
        self.arena_lock = threading.Lock()
        self._wake_host = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._wake_guest = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._send_lock = threading.Lock()
        self._receiver_sleeping = False
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.closed = False

    def connect(self, hello: m.Hello) -> Frame:
        """Connect, pass the region and doorbells, and return the daemon's answer to `hello`."""
        path = self.url.socket_path
        self._sock.settimeout(CONNECT_TIMEOUT)
        try:
            self._sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise CudaError(Error.cudaErrorNoDevice, f"no qcuda daemon at {self.url} ({path}): {exc.strerror}") from None
        fds = array.array("i", [self._fd, self._wake_host, self._wake_guest])
        self._sock.sendmsg([encode(hello, 1)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
        data = b""
        while True:
            chunk = self._sock.recv(1 << 16)
            if not chunk:
                raise CudaError(Error.cudaErrorDevicesUnavailable, f"the daemon at {self.url} closed the connection")
            data += chunk
            frame = decode(data)
            if isinstance(frame, Frame):
                break
            if frame.fatal:
                raise CudaError(Error.cudaErrorDevicesUnavailable, f"bad hello answer from {self.url}: {frame.reason}")
        self._sock.settimeout(None)
        self._sock.setblocking(False)
        return frame

    # -- sending --------------------------------------------------------------------------
    def send_message(self, msg: m.Message, request_id: int, flags: int = 0) -> int | None:
        """Queue one request. Returns an arena offset to free once it is answered, if it went indirect."""
        return self.send(encode(msg, request_id, flags))

    def send(self, frame: bytes) -> int | None:
        """Queue one encoded frame (see send_message)."""
        indirect = None
        if len(frame) + 8 > self._sq.max_record:
            indirect = self.arena_alloc(len(frame))
            self.arena[indirect:indirect + len(frame)] = frame
            record, tag = INDIRECT.pack(indirect, len(frame)), TAG_INDIRECT
        else:
            record, tag = frame, 0
        with self._send_lock:
            delay = 1e-5
            while not self._sq.try_push(record, tag):
                self._check_alive()
                self._ring(self._wake_host)
                time.sleep(delay)
                delay = min(2 * delay, 0.01)
            if self._words[HOST_SLEEPING]:
                self._ring(self._wake_host)
        return indirect

    # -- receiving (one thread at a time: the client's poll lock) -----------------------------
    def poll(self) -> Frame | Malformed | None:
        """The next frame from the daemon if one is there; never blocks."""
        record = self._cq.pop()
        if record is not None:
            return decode(record[1])
        if self.closed:
            raise ChannelClosed
        return None

    def hush(self) -> None:
        """A caller is polling: the daemon need not ring (and wake the sleeping receiver) for now."""
        self._words[GUEST_SLEEPING] = 0

    def unhush(self) -> None:
        """The caller stopped polling: ring again if the receiver sleeps."""
        if self._receiver_sleeping:
            self._words[GUEST_SLEEPING] = 1

    def sleep(self, timeout: float) -> None:
        """Sleep until the daemon rings (or `timeout`); ChannelClosed when it is gone."""
        self._receiver_sleeping = True
        self._words[GUEST_SLEEPING] = 1
        try:
            if self._cq.pending():
                return
            try:
                ready, _, _ = select.select([self._wake_guest, self._sock], [], [], timeout)
            except (OSError, ValueError):  # closed under us by close()
                raise ChannelClosed from None
        finally:
            self._receiver_sleeping = False
            self._words[GUEST_SLEEPING] = 0
        if self._wake_guest in ready:
            try:
                os.eventfd_read(self._wake_guest)
            except BlockingIOError:
                pass
        if self._sock in ready:
            self._check_alive()

    def receive(self) -> Frame | Malformed:
        """The next frame from the daemon; spins briefly, then sleeps. ChannelClosed when it is gone."""
        idle_since = time.perf_counter()
        while True:
            frame = self.poll()
            if frame is not None:
                return frame
            idle = time.perf_counter() - idle_since
            if idle >= SPIN_SECONDS:
                self.sleep(min(MAX_SLEEP, max(1e-3, idle)))

    def _check_alive(self) -> None:
        try:
            if self._sock.recv(1, socket.MSG_PEEK) == b"":
                raise ChannelClosed
        except BlockingIOError:
            return
        except OSError:
            raise ChannelClosed from None

    # -- arena ------------------------------------------------------------------------------
    def arena_alloc(self, size: int) -> int:
        with self.arena_lock:
            offset = self.arena_allocator.alloc(size)
        if offset is None:
            raise CudaError(Error.cudaErrorMemoryAllocation, f"the channel arena has no {size} free bytes")
        return offset

    def arena_free(self, offset: int) -> None:
        with self.arena_lock:
            self.arena_allocator.free(offset)

    # staging is the arena itself: the daemon reads it in place
    stage_alloc = arena_alloc
    stage_free = arena_free

    def stage_largest_free(self) -> int:
        with self.arena_lock:
            return self.arena_allocator.largest_free()

    @staticmethod
    def _ring(fd: int) -> None:
        try:
            os.eventfd_write(fd, 1)
        except OSError:
            pass

    def close(self) -> None:
        """Hang up: the daemon's worker sees EOF and frees the session."""
        if self.closed:
            return
        self.closed = True
        self._sock.close()
        self._ring(self._wake_guest)
