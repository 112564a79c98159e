"""The host end of a TCP channel: frames over a socket, bulk data straight into this worker's arena.

The worker owns an arena of its own (anonymous memory the backend registers like a guest's shm
arena), so sessions see the same thing on every channel: data at arena offsets. ARENA_WRITE
payloads are received straight into the arena and ARENA_READ answers are sent straight from it
(no intermediate copies: large copies run at the link's speed); everything else goes to the session.
"""
from __future__ import annotations

import mmap
import socket
import threading

from ..protocol import messages as m
from ..protocol.codec import HEADER_SIZE, Frame, Malformed, decode_parts, encode, encode_error, encode_parts, peek_header
from ..protocol.errors import Error
from ..protocol.tcp import send_all, tune

TCP_ARENA = 64 << 20
HANDLED = object()  # what receive() returns for arena traffic it already served
_OFFSET = 8  # ARENA_WRITE's fixed part: the u64 offset


class TcpHostChannel:
    """One guest's socket: frames in, answers out (from any thread)."""

    def __init__(self, conn: socket.socket, arena_size: int = TCP_ARENA) -> None:
        self.conn = conn
        tune(conn)
        self._region = mmap.mmap(-1, arena_size)
        self.arena = memoryview(self._region)
        self._file = conn.makefile("rb", buffering=1 << 20)
        self._send_lock = threading.Lock()
        self.closed = False

    def receive(self) -> Frame | Malformed | object | None:
        """The next request, HANDLED for arena traffic, None when the guest has gone."""
        try:
            head = self._file.read(HEADER_SIZE)
            if len(head) < HEADER_SIZE:
                return None
            header = peek_header(head)
            if isinstance(header, Malformed):
                return header
            version, command, flags, status, request_id, length = header
            if command == m.Cmd.ARENA_WRITE and not flags & m.Flags.REPLY and length >= _OFFSET:
                return self._arena_write(header)
            payload = self._file.read(length)
            if len(payload) < length:
                return None
        except OSError:
            return None
        frame = decode_parts(header, payload)
        if isinstance(frame, Frame) and isinstance(frame.message, m.ArenaRead):
            self._arena_read(frame)
            return HANDLED
        return frame

    def _arena_write(self, header) -> object | None:
        _, command, flags, _, request_id, length = header
        offset = int.from_bytes(self._file.read(_OFFSET), "little")
        size = length - _OFFSET
        if offset + size > len(self.arena):
            self._file.read(size)
            self._refuse(command, flags, request_id, f"arena write [{offset}, +{size}) is outside the "
                                                     f"{len(self.arena)}-byte arena")
            return HANDLED
        target = self.arena[offset:offset + size]
        got = 0
        while got < size:
            n = self._file.readinto(target[got:])
            if not n:
                return None
            got += n
        if not flags & m.Flags.NO_REPLY:
            self.post(encode(m.Empty(), request_id, command=command))
        return HANDLED

    def _arena_read(self, frame: Frame) -> None:
        msg = frame.message
        assert isinstance(msg, m.ArenaRead)
        end = msg.offset + msg.size
        if end > len(self.arena):
            self._refuse(frame.command, frame.flags, frame.request_id,
                         f"arena read [{msg.offset}, {end}) is outside the {len(self.arena)}-byte arena")
            return
        self.post(*encode_parts(m.ArenaReadReply(self.arena[msg.offset:end]), frame.request_id))

    def _refuse(self, command: int, flags: int, request_id: int, why: str) -> None:
        if flags & m.Flags.NO_REPLY:
            self.post(encode(m.DeferredError(request_id, Error.cudaErrorInvalidValue, why), flags=m.Flags.HOST_MESSAGE))
        else:
            self.post(encode_error(command, request_id, Error.cudaErrorInvalidValue, why))

    def post(self, frame: bytes, tail: bytes | memoryview = b"") -> None:
        """Send one frame (and a tail sent without joining it to the frame) from any thread."""
        with self._send_lock:
            if self.closed:
                return
            try:
                send_all(self.conn, frame, tail)
            except OSError:
                self.closed = True
