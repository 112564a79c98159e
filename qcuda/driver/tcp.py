"""The guest end of a TCP channel: the same frames as shared memory, over a socket to another machine.

There is no shared arena: bulk data travels in ARENA_WRITE / ARENA_READ frames into the worker's
staging arena, in chunks that the client pipelines with the device's copies. A local arena (plain
memory) still backs pinned host buffers so the API is the same on every channel.

Receiving works as on a shared-memory channel: `poll()` returns a frame that has arrived, without
waiting for one to start, so a caller can read its own answer (no hand-over from the receiver thread),
and `sleep()` waits for the socket. Frames are cut from this channel's own buffer; an ARENA_READ answer
with a destination goes straight into it.
"""
from __future__ import annotations

import select
import socket
import threading
import time

from ..protocol import messages as m
from ..protocol.codec import HEADER_SIZE, Frame, Malformed, decode_parts, encode, encode_parts, peek_header
from ..protocol.errors import CudaError, Error
from ..protocol.ranges import RangeAllocator
from ..protocol.tcp import send_all, tune
from ..protocol.urls import DeviceUrl
from .shm import ARENA_ALIGNMENT, ChannelClosed

CONNECT_TIMEOUT = 10.0
RECEIVE_CHUNK = 1 << 20  # what one recv may take into the channel's buffer


class TcpChannel:
    """Frames to and from one daemon over TCP."""

    shared_arena = False

    def __init__(self, url: DeviceUrl, arena_size: int) -> None:
        self.url = url
        self.arena = memoryview(bytearray(arena_size))
        self.arena_allocator = RangeAllocator(arena_size, ARENA_ALIGNMENT)
        self.arena_lock = threading.Lock()
        self.remote = RangeAllocator(0, ARENA_ALIGNMENT)
        self._inbox = bytearray()  # received bytes not yet cut into frames
        self._chunk = memoryview(bytearray(RECEIVE_CHUNK))
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
        sock.sendall(encode(hello, 1))
        try:
            frame = self.receive(CONNECT_TIMEOUT)
        except ChannelClosed:
            raise CudaError(Error.cudaErrorDevicesUnavailable, f"the daemon at {self.url} closed the connection") from None
        if frame is None:
            raise CudaError(Error.cudaErrorDevicesUnavailable, f"the daemon at {self.url} did not answer within "
                                                               f"{CONNECT_TIMEOUT:.0f} s")
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

    # -- receiving (one thread at a time: the client's poll lock) -----------------------------
    def receive(self, timeout: float) -> Frame | Malformed | None:
        """The next frame, waiting for it up to `timeout` seconds (None then). ChannelClosed when the daemon is gone."""
        deadline = time.monotonic() + timeout
        while (frame := self.poll()) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sleep(left)
        return frame

    def poll(self) -> Frame | Malformed | None:
        """The next frame if it has arrived (a large one already arriving is read to its end); never waits
        for one to start. ChannelClosed when the daemon is gone."""
        frame = self._take()
        if frame is None and self._fill():
            frame = self._take()
        return frame

    def sleep(self, timeout: float) -> None:
        """Wait until the socket has something to read (or `timeout`)."""
        if self.closed or self._sock is None:
            raise ChannelClosed
        if self._has_frame():
            return
        try:
            select.select([self._sock], [], [], timeout)
        except (OSError, ValueError):  # closed under us by close()
            raise ChannelClosed from None

    def hush(self) -> None:
        """(A shared-memory channel's: nothing rings here.)"""

    def unhush(self) -> None:
        """(A shared-memory channel's: nothing rings here.)"""

    def _fill(self) -> bool:
        """Append what the socket has now to the buffer; False when it has nothing."""
        if self.closed or self._sock is None:
            raise ChannelClosed
        try:
            n = self._sock.recv_into(self._chunk, RECEIVE_CHUNK, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except (OSError, ValueError):
            raise ChannelClosed from None
        if n == 0:
            raise ChannelClosed
        self._inbox += self._chunk[:n]
        return True

    def _has_frame(self) -> bool:
        """Whether the buffer holds a whole frame (or a bad header, which poll() reports)."""
        if len(self._inbox) < HEADER_SIZE:
            return False
        header = peek_header(self._inbox)
        return isinstance(header, Malformed) or len(self._inbox) >= HEADER_SIZE + header[5]

    def _take(self) -> Frame | Malformed | None:
        """Cut the first frame off the buffer, if it is all there."""
        inbox = self._inbox
        if len(inbox) < HEADER_SIZE:
            return None
        header = peek_header(inbox)
        if isinstance(header, Malformed):
            raise ChannelClosed  # the byte stream cannot be trusted any more
        version, command, flags, status, request_id, length = header
        if flags & m.Flags.REPLY and command == m.Cmd.ARENA_READ and not status:
            sink = self._sinks.pop(request_id, None)
            if sink is not None and length == len(sink):
                self._read_into(sink)
                return Frame(command, flags, 0, request_id, m.ArenaReadReply(b""), version=version)
        end = HEADER_SIZE + length
        if len(inbox) < end:
            return None
        payload = bytes(inbox[HEADER_SIZE:end])
        del inbox[:end]
        return decode_parts(header, payload)

    def _read_into(self, sink: memoryview) -> None:
        """An answer's data straight into `sink`: what is buffered, then the rest from the socket."""
        have = min(len(self._inbox) - HEADER_SIZE, len(sink))
        sink[:have] = self._inbox[HEADER_SIZE:HEADER_SIZE + have]
        del self._inbox[:HEADER_SIZE + have]
        assert self._sock is not None
        while have < len(sink):
            try:
                n = self._sock.recv_into(sink[have:])
            except (OSError, ValueError):
                raise ChannelClosed from None
            if n == 0:
                raise ChannelClosed
            have += n

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
