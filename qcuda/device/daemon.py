"""The device daemon: accepts guests, forks one worker per guest, answers operators.

Single-threaded on purpose: it forks workers, and it never touches CUDA itself (a `cuInit`
before fork breaks CUDA in the children; the GPU probe runs in a child process). It does not
daemonize itself and exits cleanly on SIGTERM: let systemd or the caller supervise it.
"""
from __future__ import annotations

import array
import hmac
import ipaddress
import json
import mmap
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from ..protocol import messages as m
from ..protocol.codec import VERSION, Frame, FrameReader, Malformed, decode, encode, encode_error
from ..protocol.errors import Error, VersionMismatch
from ..protocol.urls import DeviceUrl
from .backends.base import Backend
from .session import Limits
from .worker import STATS, run_shm_guest, run_tcp_guest

HELLO_FDS = 3  # region, host doorbell, guest doorbell
HELLO_TIMEOUT = 5.0
HELLO_MAX = 1 << 16


@dataclass
class SessionRecord:
    id: int
    pid: int  # the worker process
    peer: str  # a local guest's pid, or a remote guest's address
    uid: int  # -1 for remote guests
    started: float
    stats: mmap.mmap
    transport: str

    def to_json(self) -> dict:
        memory, calls, allocations, serving, streams = STATS.unpack_from(self.stats, 0)
        return {
            "session": self.id, "worker_pid": self.pid, "peer": self.peer, "uid": self.uid,
            "transport": self.transport, "memory": memory, "allocations": allocations, "streams": streams,
            "calls": calls,
            "serving": bool(serving), "seconds": round(time.time() - self.started, 1),
        }


@dataclass
class _Pending:
    """An accepted connection that has not said hello yet."""

    conn: socket.socket
    url: DeviceUrl
    deadline: float
    reader: FrameReader = field(default_factory=lambda: FrameReader(HELLO_MAX))


@dataclass
class BackendChoice:
    """Which backend the workers create, and why (for the log line and `status`)."""

    name: str
    make: Callable[[], Backend]
    reason: str = ""
    options: dict = field(default_factory=dict)


def probe_gpu() -> tuple[bool, str]:
    """Ask a child process whether CUDA works here (never initialise CUDA in the daemon itself)."""
    code = (
        "from cuda.bindings import driver as d\n"
        "e,=d.cuInit(0)\n"
        "assert e==d.CUresult.CUDA_SUCCESS, e.name\n"
        "e,n=d.cuDeviceGetCount()\n"
        "assert e==d.CUresult.CUDA_SUCCESS and n>0, 'no CUDA device'\n"
        "print(n)\n"
    )
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"GPU probe failed: {exc}"
    if out.returncode == 0:
        return True, f"{out.stdout.strip()} GPU(s) found"
    last = (out.stderr.strip().splitlines() or ["unknown failure"])[-1]
    if "DynamicLibNotFoundError" in last or "libcuda" in last:
        return False, "no NVIDIA driver (libcuda.so.1) on this machine"
    return False, last.replace("AssertionError: ", "").replace("ModuleNotFoundError: ", "")[:200]


def choose_backend(kind: str, emulated_devices: int = 1, emulated_memory: int = 4 << 30) -> BackendChoice:
    """`auto` takes the GPU when a child process can use one, else the emulated device."""

    def emulated() -> Backend:
        from .backends.emulated import EmulatedBackend

        return EmulatedBackend(emulated_devices, emulated_memory)

    def gpu() -> Backend:
        from .backends.gpu import GpuBackend

        return GpuBackend()

    try:
        emulated()  # checks the options now, in the daemon, rather than in every worker
    except ValueError as exc:
        raise SystemExit(f"qcuda serve: {exc}") from None
    if kind == "emulated":
        return BackendChoice("emulated", emulated, "asked for")
    ok, why = probe_gpu()
    if kind == "gpu":
        if not ok:
            raise SystemExit(f"qcuda serve: --backend gpu, but no usable GPU: {why}")
        return BackendChoice("gpu", gpu, why)
    if ok:
        return BackendChoice("gpu", gpu, why)
    return BackendChoice("emulated", emulated, f"no usable GPU ({why})")


def _check_runtime_dir(path) -> None:
    """Guests trust the socket in this directory with their memory: only we (or root) may write there."""
    st = os.stat(path)
    if st.st_uid not in (0, os.getuid()) or st.st_mode & 0o022:
        raise SystemExit(f"qcuda serve: {path} is writable by others or owned by uid {st.st_uid}: another user could "
                         "replace the daemon's socket; remove it or set QCUDA_RUNTIME_DIR to a directory of yours")


class Daemon:
    def __init__(self, urls: list[DeviceUrl], backend: BackendChoice, log=print, token: bytes | None = None,
                 limits: Limits = Limits()) -> None:
        self.urls = urls
        self.limits = limits
        self.backend = backend
        self.log = log
        self.token = token or None
        self.sessions: dict[int, SessionRecord] = {}
        self._next_session = 1
        self._selector = selectors.DefaultSelector()
        self._listeners: list[tuple[socket.socket, DeviceUrl]] = []
        self._pending: dict[socket.socket, _Pending] = {}
        self._stopping = False

    # -- lifecycle --------------------------------------------------------------------------
    def listen(self) -> None:
        for url in self.urls:
            if url.scheme == "shm":
                path = url.socket_path
                path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                _check_runtime_dir(path.parent)
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    probe.connect(str(path))
                    probe.close()
                    raise SystemExit(f"qcuda serve: a daemon already serves {url} ({path})")
                except (FileNotFoundError, ConnectionRefusedError):
                    probe.close()
                    path.unlink(missing_ok=True)
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.bind(str(path))
                os.chmod(path, 0o666)  # any local user may connect; SO_PEERCRED says who did
            else:
                sock = self._tcp_listener(url)
            sock.listen(128)
            sock.setblocking(False)
            self._listeners.append((sock, url))
            self._selector.register(sock, selectors.EVENT_READ, ("listen", url))

    def _tcp_listener(self, url: DeviceUrl) -> socket.socket:
        """Loopback by default; any other address only with an access token that guests must present."""
        try:
            infos = socket.getaddrinfo(url.host, url.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise SystemExit(f"qcuda serve: cannot resolve {url.host}: {exc.strerror}") from None
        family, _, _, _, address = infos[0]
        ip = ipaddress.ip_address(address[0])
        if not ip.is_loopback and self.token is None:
            raise SystemExit(f"qcuda serve: refusing to listen on {url} (not loopback) without an access token: "
                             "set QCUDA_TOKEN or --token-file, and give guests the same token")
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise SystemExit(f"qcuda serve: cannot listen on {url}: {exc.strerror}") from None
        return sock

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT."""
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.log(
            f"qcuda daemon {os.getpid()}: backend {self.backend.name} ({self.backend.reason}); listening on "
            + ", ".join(str(u) for u in self.urls),
        )
        try:
            while not self._stopping:
                for key, _ in self._selector.select(timeout=0.2):
                    kind, data = key.data
                    if kind == "listen":
                        self._accept(key.fileobj, data)
                    else:
                        self._hello(key.fileobj)
                self._reap()
                self._expire_pending()
        finally:
            self.shutdown()

    def _stop(self, signum, frame) -> None:
        self._stopping = True

    def shutdown(self) -> None:
        for record in self.sessions.values():
            try:
                os.kill(record.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while self.sessions and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.02)
        for record in self.sessions.values():
            try:
                os.kill(record.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for sock, url in self._listeners:
            sock.close()
            if url.scheme == "shm":
                url.socket_path.unlink(missing_ok=True)
        self._listeners.clear()

    # -- connections ------------------------------------------------------------------------
    def _accept(self, listener: socket.socket, url: DeviceUrl) -> None:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(False)
        self._pending[conn] = _Pending(conn, url, time.monotonic() + HELLO_TIMEOUT)
        self._selector.register(conn, selectors.EVENT_READ, ("hello", url))

    def _expire_pending(self) -> None:
        now = time.monotonic()
        for conn, pending in list(self._pending.items()):
            if now > pending.deadline:
                self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        self._pending.pop(conn, None)
        try:
            self._selector.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()

    def _hello(self, conn: socket.socket) -> None:
        pending = self._pending.get(conn)
        if pending is None:
            return
        if pending.url.scheme == "tcp":
            self._tcp_hello(conn, pending)
            return
        fds = array.array("i")
        try:
            data, ancdata, _, _ = conn.recvmsg(1 << 16, socket.CMSG_SPACE(HELLO_FDS * fds.itemsize))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        fd_list = list(fds)
        try:
            self._handle_hello(conn, pending.url, data, fd_list)
        finally:
            for fd in fd_list:
                os.close(fd)

    def _tcp_hello(self, conn: socket.socket, pending: _Pending) -> None:
        try:
            data = conn.recv(HELLO_MAX)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        pending.reader.feed(data)
        frame = pending.reader.next()
        if frame is None:
            return
        if isinstance(frame, Malformed):
            self._send_and_drop(conn, encode_error(m.Cmd.HELLO, frame.request_id or 0, Error.cudaErrorInvalidValue,
                                                   f"malformed hello: {frame.reason}"))
            return
        self._handle_hello(conn, pending.url, frame, [])

    def _handle_hello(self, conn: socket.socket, url: DeviceUrl, data: bytes | Frame, fds: list[int]) -> None:
        if not data:
            self._drop(conn)
            return
        frame = data if isinstance(data, Frame) else decode(data)
        refusal = self._check_hello(frame)
        if refusal is not None:
            request_id = frame.request_id if isinstance(frame, Frame) else 0
            self._send_and_drop(conn, encode_error(m.Cmd.HELLO, request_id or 0, refusal[0], refusal[1]))
            return
        assert isinstance(frame, Frame) and isinstance(frame.message, m.Hello)
        if url.scheme == "tcp":
            self._admit_remote(conn, url, frame)
            return
        pid, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        if frame.message.kind == m.Kind.CONTROL:
            self._control(conn, frame, uid)
            return
        if len(fds) != HELLO_FDS:
            self._send_and_drop(conn, encode_error(
                m.Cmd.HELLO, frame.request_id, Error.cudaErrorInvalidValue,
                f"a guest hello carries {HELLO_FDS} file descriptors (region, two doorbells), got {len(fds)}"))
            return
        self._start_worker(conn, url, frame, fds, str(pid), uid)

    def _admit_remote(self, conn: socket.socket, url: DeviceUrl, hello: Frame) -> None:
        """A TCP guest: the token (when one is set) decides; operators use the local socket only."""
        assert isinstance(hello.message, m.Hello)
        host, port = conn.getpeername()[:2]
        peer = f"{host}:{port}"
        if hello.message.kind != m.Kind.GUEST:
            self._send_and_drop(conn, encode_error(m.Cmd.HELLO, hello.request_id, Error.cudaErrorNotPermitted,
                                                   "control requests are accepted on the daemon's Unix socket only"))
            return
        if self.token is not None and not hmac.compare_digest(self.token, hello.message.token):
            self.log(f"refused guest {peer} on {url}: {'no' if not hello.message.token else 'wrong'} access token")
            self._send_and_drop(conn, encode_error(m.Cmd.HELLO, hello.request_id, Error.cudaErrorNotPermitted,
                                                   "access token missing or wrong (set QCUDA_TOKEN)"))
            return
        self._start_worker(conn, url, hello, [], peer, -1)

    def _check_hello(self, frame) -> tuple[int, str] | None:
        if not isinstance(frame, Frame):
            return Error.cudaErrorInvalidValue, f"malformed hello: {frame.reason}"
        hello = frame.message
        if frame.version != VERSION or (isinstance(hello, m.Hello) and hello.version != VERSION):
            theirs = frame.version if frame.version != VERSION else hello.version  # type: ignore[union-attr]
            return Error.cudaErrorInvalidValue, str(VersionMismatch(VERSION, theirs))
        if not isinstance(hello, m.Hello):
            return Error.cudaErrorInvalidValue, "the first message must be a hello"
        if hello.kind not in (m.Kind.GUEST, m.Kind.CONTROL):
            return Error.cudaErrorInvalidValue, f"unknown peer kind {hello.kind}"
        return None

    def _send_and_drop(self, conn: socket.socket, data: bytes) -> None:
        try:
            conn.setblocking(True)
            conn.settimeout(1.0)
            conn.sendall(data)
        except OSError:
            pass
        self._drop(conn)

    # -- guests -----------------------------------------------------------------------------
    def _start_worker(self, conn, url: DeviceUrl, hello: Frame, fds: list[int], peer: str, uid: int) -> None:
        session_id = self._next_session
        self._next_session += 1
        stats = mmap.mmap(-1, STATS.size)
        self._pending.pop(conn, None)
        self._selector.unregister(conn)
        worker = os.fork()
        if worker == 0:
            code = 0
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                for sock, _ in self._listeners:
                    sock.close()
                for other in list(self._pending):
                    other.close()
                self._selector.close()
                conn.setblocking(True)
                if url.scheme == "tcp":
                    run_tcp_guest(conn, hello, self.backend.make, session_id, stats, self.limits)
                else:
                    run_shm_guest(conn, hello, fds, self.backend.make, session_id, stats, self.limits)
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        conn.close()
        self.sessions[session_id] = SessionRecord(session_id, worker, peer, uid, time.time(), stats, url.scheme)
        self.log(f"session {session_id}: guest {peer} on {url}, worker {worker}")

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for sid, record in list(self.sessions.items()):
                if record.pid == pid:
                    del self.sessions[sid]
                    record.stats.close()
                    how = f"exit {os.waitstatus_to_exitcode(status)}"
                    self.log(f"session {sid}: ended ({how}); its memory and handles are freed")

    # -- operators --------------------------------------------------------------------------
    def _control(self, conn: socket.socket, hello: Frame, uid: int) -> None:
        """Operators' requests: status and kill, for the daemon's own user or root."""
        if uid not in (0, os.getuid()):
            self._send_and_drop(conn, encode_error(m.Cmd.HELLO, hello.request_id, Error.cudaErrorNotPermitted,
                                                   "only the daemon's user or root may control it"))
            return
        self._pending.pop(conn, None)
        self._selector.unregister(conn)
        conn.setblocking(True)
        conn.settimeout(2.0)
        try:
            conn.sendall(encode(m.HelloReply(VERSION, 0, 0, 0, 0), hello.request_id))
            data = conn.recv(1 << 16)
            frame = decode(data)
            if isinstance(frame, Frame) and isinstance(frame.message, m.ControlStatus):
                conn.sendall(encode(m.ControlStatusReply(json.dumps(self.status())), frame.request_id))
            elif isinstance(frame, Frame) and isinstance(frame.message, m.ControlKill):
                record = self.sessions.get(frame.message.session)
                if record is None:
                    conn.sendall(encode_error(m.Cmd.CONTROL_KILL, frame.request_id, Error.cudaErrorInvalidValue,
                                              f"no session {frame.message.session}"))
                else:
                    os.kill(record.pid, signal.SIGKILL)
                    self.log(f"session {record.id}: killed by an operator")
                    conn.sendall(encode(m.Empty(), frame.request_id, command=frame.command))
        except OSError:
            pass
        finally:
            conn.close()

    def status(self) -> dict:
        self._reap()
        sessions = [r.to_json() for r in self.sessions.values()]
        return {
            "daemon_pid": os.getpid(), "backend": self.backend.name, "backend_reason": self.backend.reason,
            "listen": [str(u) for u in self.urls], "sessions": sessions,
            "memory": sum(s["memory"] for s in sessions),
        }
