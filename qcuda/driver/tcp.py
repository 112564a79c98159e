"""The guest end of a TCP channel: the same frames as shared memory, over a socket to another machine.

There is no shared arena: bulk data travels in ARENA_WRITE / ARENA_READ frames into the worker's
staging arena, in chunks that the client pipelines with the device's copies. A local arena (plain
memory) still backs pinned host buffers so the API is the same on every channel.
"""
from __future__ import annotations

import socket
import threading

from ..protocol import messages as m
from ..protocol.codec import HEADER_SIZE, Frame, Malformed, decode_parts, encode, encode_parts, peek_header
from ..protocol.errors import CudaError, Error
from ..protocol.ranges import RangeAllocator
from ..protocol.tcp import send_all, tune
from ..protocol.urls import DeviceUrl
from .shm import ARENA_ALIGNMENT, ChannelClosed

CONNECT_TIMEOUT = 10.0


class TcpChannel:
    """Frames to and from one daemon over TCP."""

    shared_arena = False

    def __init__(self, url: DeviceUrl, arena_size: int) -> None:
        self.url = url
        self.arena = memoryview(bytearray(arena_size))
        self.arena_allocator = RangeAllocator(arena_size, ARENA_ALIGNMENT)
        self.arena_lock = threading.Lock()
        self.remote = RangeAllocator(0, ARENA_ALIGNMENT)
        self._file = None
        self._send_lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._sinks: dict[int, memoryview] = {}  # request id -> where its ARENA_READ answer's data goes
        self.closed = False

    def connect(self, hello: m.Hello) -> Frame:
        try:
            sock = socket.create_connection((self.url.host, self.url.port), timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            raise CudaError(Error.cudaErrorNoDevice, f"no qcuda daemon at {self.url}: {exc.strerror or exc}") from None
        tune(sock)
        self._sock = sock
        self._file = sock.makefile("rb", buffering=1 << 20)
        sock.sendall(encode(hello, 1))
        try:
            frame = self.receive()
        except ChannelClosed:
            raise CudaError(Error.cudaErrorDevicesUnavailable, f"the daemon at {self.url} closed the connection") from None
        if isinstance(frame, Malformed):
            raise CudaError(Error.cudaErrorDevicesUnavailable, f"bad answer from {self.url}: {frame.reason}")
        sock.settimeout(None)
        if isinstance(frame.message, m.HelloReply):
            self.remote = RangeAllocator(frame.message.arena_size, ARENA_ALIGNMENT)
        return frame

    def send_message(self, msg: m.Message, request_id: int, flags: int = 0, into: memoryview | None = None) -> None:
        """Send one request; a large tail (an ARENA_WRITE's data) goes out without being copied into the frame.
        `into`: an ARENA_READ's data is received straight into it (its reply then carries no data)."""
        head, tail = encode_parts(msg, request_id, flags)
        if into is not None:
            self._sinks[request_id] = into
        if self.closed or self._sock is None:
            raise ChannelClosed
        with self._send_lock:
            try:
                send_all(self._sock, head, tail)
            except OSError:
                raise ChannelClosed from None

    def receive(self) -> Frame | Malformed:
        """The next frame; blocks in recv (the GIL is released there). ChannelClosed at EOF."""
        assert self._file is not None
        try:
            head = self._file.read(HEADER_SIZE)
            if len(head) < HEADER_SIZE:
                raise ChannelClosed
            header = peek_header(head)
            if isinstance(header, Malformed):
                raise ChannelClosed  # the byte stream cannot be trusted any more
            sink = self._sinks.pop(header[4], None) if header[2] & m.Flags.REPLY else None
            if sink is not None and header[1] == m.Cmd.ARENA_READ and not header[3] and header[5] == len(sink):
                self._read_into(sink)
                return Frame(header[1], header[2], 0, header[4], m.ArenaReadReply(b""), version=header[0])
            payload = self._file.read(header[5])
        except (OSError, ValueError):
            raise ChannelClosed from None
        if len(payload) < header[5]:
            raise ChannelClosed
        return decode_parts(header, payload)

    def _read_into(self, sink: memoryview) -> None:
        got = 0
        while got < len(sink):
            n = self._file.readinto(sink[got:])
            if not n:
                raise ChannelClosed
            got += n

    def arena_alloc(self, size: int) -> int:
        return _take(self.arena_allocator, self.arena_lock, size, "local pinned-memory arena")

    def arena_free(self, offset: int) -> None:
        with self.arena_lock:
            self.arena_allocator.free(offset)

    def stage_alloc(self, size: int) -> int:
        return _take(self.remote, self.arena_lock, size, "daemon's staging arena")

    def stage_free(self, offset: int) -> None:
        with self.arena_lock:
            self.remote.free(offset)

    def stage_largest_free(self) -> int:
        with self.arena_lock:
            return self.remote.largest_free()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()


def _take(allocator: RangeAllocator, lock: threading.Lock, size: int, what: str) -> int:
    with lock:
        offset = allocator.alloc(size)
    if offset is None:
        raise CudaError(Error.cudaErrorMemoryAllocation, f"the {what} has no {size} free bytes")
    return offset
