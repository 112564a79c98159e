"""The host end of a TCP channel: frames over a socket, bulk data into this worker's staging arena.

The worker owns an arena of its own (anonymous memory the backend registers like a guest's shm
arena), so sessions see the same thing on every channel: data at arena offsets. ARENA_WRITE and
ARENA_READ frames are served here, before the session; everything else goes to the session.
"""
from __future__ import annotations

import mmap
import socket
import threading

from ..protocol import messages as m
from ..protocol.codec import Frame, FrameReader, Malformed, encode, encode_error
from ..protocol.errors import Error

TCP_ARENA = 64 << 20


class TcpHostChannel:
    """One guest's socket: frames in, answers out (from any thread)."""

    def __init__(self, conn: socket.socket, arena_size: int = TCP_ARENA) -> None:
        self.conn = conn
        self._region = mmap.mmap(-1, arena_size)
        self.arena = memoryview(self._region)
        self._reader = FrameReader()
        self._send_lock = threading.Lock()
        self.closed = False

    def receive(self) -> bytes | Malformed | None:
        """The next frame's bytes; None when the guest has gone; Malformed when its stream is garbage."""
        while True:
            data = self._reader.next_bytes()
            if data is not None:
                return data
            try:
                chunk = self.conn.recv(1 << 20)
            except OSError:
                return None
            if not chunk:
                return None
            self._reader.feed(chunk)

    def post(self, frame: bytes) -> None:
        with self._send_lock:
            if self.closed:
                return
            try:
                self.conn.sendall(frame)
            except OSError:
                self.closed = True

    def serve_arena(self, frame: Frame) -> bool:
        """Answer ARENA_WRITE / ARENA_READ; False for every other request."""
        msg = frame.message
        if isinstance(msg, m.ArenaWrite):
            end = msg.offset + len(msg.data)
            if end > len(self.arena):
                self._refuse(frame, f"arena write [{msg.offset}, {end}) is outside the {len(self.arena)}-byte arena")
            else:
                self.arena[msg.offset:end] = msg.data
                if not frame.flags & m.Flags.NO_REPLY:
                    self.post(encode(m.Empty(), frame.request_id, command=frame.command))
            return True
        if isinstance(msg, m.ArenaRead):
            end = msg.offset + msg.size
            if end > len(self.arena):
                self._refuse(frame, f"arena read [{msg.offset}, {end}) is outside the {len(self.arena)}-byte arena")
            else:
                self.post(encode(m.ArenaReadReply(bytes(self.arena[msg.offset:end])), frame.request_id))
            return True
        return False

    def _refuse(self, frame: Frame, why: str) -> None:
        if frame.flags & m.Flags.NO_REPLY:
            self.post(encode(m.DeferredError(frame.request_id, Error.cudaErrorInvalidValue, why),
                             flags=m.Flags.HOST_MESSAGE))
        else:
            self.post(encode_error(frame.command, frame.request_id, Error.cudaErrorInvalidValue, why))
