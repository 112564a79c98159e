"""A guest's worker process: one session, one CUDA context per device, one guest.

Forked by the daemon per guest, so a faulting kernel or a sticky CUDA error ends only this
guest's work. The worker owns the guest's socket: EOF on it means the guest is gone, and the
worker frees everything and exits.
"""
from __future__ import annotations

import ctypes
import os
import select
import socket
import struct
import sys
import threading
import time
from typing import Callable

from ..protocol import messages as m
from ..protocol.codec import VERSION, Frame, Malformed, decode, encode, encode_error
from ..protocol.errors import CudaError, Error, RemoteProtocolError
from .backends.base import Backend
from .session import Limits, Session
from .shm import HostChannel, map_region
from .tcp import HANDLED, TcpHostChannel

STATS = struct.Struct("<QQQQQ")  # memory in use, calls, allocations, state (1 = serving), streams
EOF_CHECK_SECONDS = 0.02
# The loop busy-polls while holding the GIL; waiter and stream threads must get it within this long,
# not after Python's default 5 ms. (A sleep(0) in the loop instead yields the CPU to other processes.)
SWITCH_INTERVAL = 50e-6


class OutputForwarder:
    """The worker's stdout becomes the guest's: device printf output travels as PRINTF messages.

    Both backends write device printf to the process's stdout (the CUDA driver at synchronisation
    points, the emulator as kernels run). The worker points fd 1 at a pipe; a thread forwards what
    arrives, and `drain()` forwards everything written so far before a synchronous answer, so the
    output reaches the guest before its synchronising call returns, as CUDA orders it.
    """

    def __init__(self, post: Callable[[bytes], None]) -> None:
        self._post = post
        self._read, write = os.pipe()
        os.set_blocking(self._read, False)
        sys.stdout.flush()
        os.dup2(write, 1)
        os.close(write)
        self._libc = ctypes.CDLL(None)
        self._lock = threading.Lock()
        threading.Thread(target=self._run, name="qcuda-printf", daemon=True).start()

    def _run(self) -> None:
        while True:
            select.select([self._read], [], [])
            if not self._forward():
                return

    def _forward(self) -> bool:
        with self._lock:
            chunks = []
            while True:
                try:
                    chunk = os.read(self._read, 1 << 16)
                except BlockingIOError:
                    break
                if not chunk:
                    return False
                chunks.append(chunk)
            if chunks:
                self._post(encode(m.Printf(b"".join(chunks)), flags=m.Flags.HOST_MESSAGE))
            return True

    def drain(self) -> None:
        """Forward all output written so far (C stdio and Python buffers included)."""
        sys.stdout.flush()
        self._libc.fflush(None)
        self._forward()


def publish(stats_buf, session: Session | None, serving: bool) -> None:
    """Write this session's figures where the daemon reads them for `qcuda status`."""
    s = session.stats if session is not None else None
    STATS.pack_into(stats_buf, 0, s.memory if s else 0, s.calls if s else 0, s.allocations if s else 0, int(serving),
                    session.stream_count if session is not None else 0)


def run_shm_guest(
    conn: socket.socket, hello: Frame, fds: list[int], make_backend: Callable[[], Backend], session_id: int,
    stats_buf, limits: Limits,
) -> None:
    """Serve one guest on an shm channel until it leaves; never raises."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    channel = None
    session = None
    try:
        region, geometry = map_region(fds[0], limits.max_region)
        channel = HostChannel(region, geometry, fds[1], fds[2])
        backend = make_backend()
        session = Session(backend, channel.arena, channel.post, OutputForwarder(channel.post).drain, limits,
                          hello.message.slot)
        conn.sendall(encode(m.HelloReply(VERSION, 0, session_id, backend.device_count(), 0), hello.request_id))
    except (RemoteProtocolError, OSError, CudaError) as exc:
        code = exc.code if isinstance(exc, CudaError) else Error.cudaErrorInvalidValue
        _refuse(conn, hello, code, str(exc))
        return
    publish(stats_buf, session, True)
    try:
        _loop(conn, channel, session, stats_buf)
    finally:
        channel.closed = True
        session.close()
        publish(stats_buf, session, False)


def run_tcp_guest(
    conn: socket.socket, hello: Frame, make_backend: Callable[[], Backend], session_id: int, stats_buf,
    limits: Limits,
) -> None:
    """Serve one guest over TCP until it leaves; never raises."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    channel = TcpHostChannel(conn)
    try:
        backend = make_backend()
        session = Session(backend, channel.arena, channel.post, OutputForwarder(channel.post).drain, limits,
                          hello.message.slot)
        conn.sendall(encode(m.HelloReply(VERSION, 0, session_id, backend.device_count(), len(channel.arena)),
                            hello.request_id))
    except (OSError, CudaError) as exc:
        _refuse(conn, hello, exc.code if isinstance(exc, CudaError) else Error.cudaErrorUnknown, str(exc))
        return
    publish(stats_buf, session, True)
    try:
        while (frame := channel.receive()) is not None:
            if isinstance(frame, Malformed) and frame.fatal:
                _say(f"session {session_id}: guest sent an unreadable stream ({frame.reason}); ending the session")
                channel.post(encode(m.DeferredError(0, Error.cudaErrorInvalidValue, f"malformed stream: {frame.reason}"),
                                    flags=m.Flags.HOST_MESSAGE))
                return
            if frame is not HANDLED:
                _dispatch(frame, channel.post, session)
            publish(stats_buf, session, True)
    finally:
        channel.closed = True
        session.close()
        publish(stats_buf, session, False)


def _loop(conn: socket.socket, channel: HostChannel, session: Session, stats_buf) -> None:
    conn.setblocking(False)
    idle_since = time.perf_counter()
    last_eof_check = 0.0
    while True:
        try:
            data = channel.receive()
        except RemoteProtocolError as exc:
            _say(f"guest corrupted its channel ({exc}); ending its session")
            return
        now = time.perf_counter()
        if data is not None:
            _dispatch(decode(data), channel.post, session)
            idle_since = now
            if now - last_eof_check > EOF_CHECK_SECONDS:
                last_eof_check = now
                publish(stats_buf, session, True)
                if _guest_gone(conn):
                    return
            continue
        if now - last_eof_check > EOF_CHECK_SECONDS:  # while idle too, but not on every spin
            last_eof_check = now
            publish(stats_buf, session, True)
        if not channel.wait(conn.fileno(), idle_since) and _guest_gone(conn):
            return


def _dispatch(frame: Frame | Malformed, post: Callable[[bytes], None], session: Session) -> None:
    """Answer a malformed request, or hand a sound one to the session."""
    if isinstance(frame, Malformed):
        if frame.request_id is not None:
            post(encode_error(frame.command or 0, frame.request_id, Error.cudaErrorInvalidValue,
                              f"malformed request: {frame.reason}"))
        else:
            post(encode(m.DeferredError(0, Error.cudaErrorInvalidValue, f"malformed request: {frame.reason}"),
                        flags=m.Flags.HOST_MESSAGE))
        return
    if frame.is_reply:
        post(encode_error(frame.command, frame.request_id, Error.cudaErrorInvalidValue, "a guest sent a reply"))
        return
    if isinstance(frame.message, m.Goodbye):
        post(encode(m.Empty(), frame.request_id, command=frame.command))
        return
    session.handle(frame)


def _guest_gone(conn: socket.socket) -> bool:
    """EOF on the guest's socket: the guest process has exited or closed its channel."""
    try:
        ready, _, _ = select.select([conn], [], [], 0)
        if not ready:
            return False
        return conn.recv(1, socket.MSG_PEEK) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


def _refuse(conn: socket.socket, hello: Frame, code: int, why: str) -> None:
    try:
        conn.sendall(encode_error(m.Cmd.HELLO, hello.request_id, code, why))
    except OSError:
        pass


def _say(line: str) -> None:
    os.write(2, f"qcuda worker {os.getpid()}: {line}\n".encode())
