"""The guest's front-end: numbered requests, their answers, host messages, and data movement.

One receiver thread reads everything the daemon sends; callers wait on their own request's
answer, so several host threads can have calls in flight at once and no lock is held while
waiting. Errors of asynchronous requests arrive as DEFERRED_ERROR and are raised by the next
call that synchronises, as CUDA reports them.
"""
from __future__ import annotations

import itertools
import os
import queue
import sys
import threading
import time
import traceback
from collections import deque
from typing import Callable

import numpy as np

from ..protocol import messages as m
from ..protocol.codec import VERSION, Frame, Malformed
from ..protocol.errors import CudaError, Error, VersionMismatch
from ..protocol.messages import Flags
from ..protocol.urls import DeviceUrl
from .addresses import reserve_device_addresses
from .shm import DEFAULT_ARENA, MAX_SLEEP, ChannelClosed, ShmChannel
from .tcp import TcpChannel

TCP_LOCAL_ARENA = 64 << 20  # pinned host buffers of a TCP guest live here (no zero copy over a network)

STAGING_CHUNK = 16 << 20
STAGING_BUFFERS = 4  # chunks in flight in a staged copy


SPIN_SECONDS = 200e-6  # a caller polls the completion ring itself this long before leaving it to the receiver


class Pending:
    """An answer still to come. Most answers arrive while their caller polls for them itself: the Event a
    waiting caller sleeps on is made only when the caller stops polling (resolve() sets `frame` before it
    looks for the Event, the caller makes the Event before it looks at `frame` again: one always sees the other)."""

    __slots__ = ("frame", "indirect", "_client", "_waiter")

    def __init__(self, client: "Client") -> None:
        self.frame: Frame | CudaError | None = None
        self.indirect: int | None = None
        self._client = client
        self._waiter: threading.Event | None = None

    def resolve(self, frame: Frame | CudaError) -> None:
        self.frame = frame
        waiter = self._waiter
        if waiter is not None:
            waiter.set()

    def result(self) -> m.Message:
        """The reply message; raises CudaError if the request failed."""
        if self.frame is None:
            self._client._poll_for(self)
            if self.frame is None:
                self._waiter = threading.Event()
                if self.frame is None:
                    self._waiter.wait()
        frame = self.frame
        if isinstance(frame, CudaError):
            raise frame
        assert frame is not None
        if frame.status:
            raise CudaError(frame.status, frame.detail)
        assert frame.message is not None
        return frame.message


class Client:
    """One connection to one daemon."""

    def __init__(self, url: DeviceUrl, arena_size: int | None = None, first_slot: int = 0) -> None:
        """`first_slot`: the guest's global number for this daemon's device 0 (its place in the address layout)."""
        self.url = url
        self._pid = os.getpid()
        reserve_device_addresses()  # before any device pointer reaches this process
        size = arena_size if arena_size is not None else _arena_size_from_env()
        self.channel: ShmChannel | TcpChannel = (
            ShmChannel(url, size) if url.scheme == "shm" else TcpChannel(url, arena_size or TCP_LOCAL_ARENA)
        )
        token = os.environ.get("QCUDA_TOKEN", "").encode()
        hello = self.channel.connect(m.Hello(VERSION, m.Kind.GUEST, 0, first_slot, token))
        if hello.status:
            self.channel.close()
            raise CudaError(hello.status, f"{url} refused this guest: {hello.detail}")
        if not isinstance(hello.message, m.HelloReply):
            raise CudaError(Error.cudaErrorDevicesUnavailable, f"{url} answered hello with {hello.message}")
        if hello.message.version != VERSION:
            raise CudaError(Error.cudaErrorInvalidValue, str(VersionMismatch(VERSION, hello.message.version)))
        self.session = hello.message.session
        self.device_count = hello.message.device_count
        self._ids = itertools.count(2)
        self._pending: dict[int, Pending] = {}
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()  # one thread at a time reads the channel
        self.deferred: list[CudaError] = []
        self.broken: CudaError | None = None
        self._arena_address = np.frombuffer(self.channel.arena, dtype=np.uint8).ctypes.data
        self._callbacks: dict[int, Callable[[int], None]] = {}
        self._callback_ids = itertools.count(1)
        self._callback_queue: queue.SimpleQueue = queue.SimpleQueue()
        self._receiver = threading.Thread(target=self._receive_loop, name="qcuda-receiver", daemon=True)
        self._receiver.start()
        threading.Thread(target=self._callback_loop, name="qcuda-callbacks", daemon=True).start()

    # -- requests ---------------------------------------------------------------------------
    def _usable(self) -> None:
        if self.broken is not None:
            raise self.broken
        if os.getpid() != self._pid:  # e.g. a finalizer running in a forked child at its exit
            raise CudaError(Error.cudaErrorInitializationError, "this connection belongs to the parent process")

    def submit(self, msg: m.Message) -> Pending:
        """Send a request whose answer the caller will wait for."""
        return self._submit(msg, None)

    def _submit(self, msg: m.Message, into: memoryview | None) -> Pending:
        pending = Pending(self)
        with self._lock:
            self._usable()
            rid = next(self._ids)
            self._pending[rid] = pending
        try:
            pending.indirect = (self.channel.send_message(msg, rid) if into is None
                                else self.channel.send_message(msg, rid, into=into))
        except ChannelClosed:
            self._lose_daemon()
            raise self.broken from None
        return pending

    def call(self, msg: m.Message) -> m.Message:
        """Send a request and wait for its answer."""
        return self.submit(msg).result()

    def post(self, msg: m.Message) -> None:
        """Send an asynchronous request: no answer unless it fails (then at the next synchronisation)."""
        with self._lock:
            self._usable()
            rid = next(self._ids)
        try:
            self.channel.send_message(msg, rid, Flags.NO_REPLY)
        except ChannelClosed:
            self._lose_daemon()
            raise self.broken from None

    def add_callback(self, stream: int, device: int, fn: Callable[[int], None]) -> None:
        """Run `fn(status)` in this process when `stream` reaches this point; the stream waits for it."""
        with self._lock:
            callback_id = next(self._callback_ids)
            self._callbacks[callback_id] = fn
        try:
            self.call(m.StreamCallback(stream, callback_id, device))
        except CudaError:
            with self._lock:
                self._callbacks.pop(callback_id, None)
            raise

    def _callback_loop(self) -> None:
        """Guest callbacks run here, one at a time in arrival order, so they may call CUDA themselves."""
        while True:
            item = self._callback_queue.get()
            if item is None:
                return
            callback_id, status = item
            with self._lock:
                fn = self._callbacks.pop(callback_id, None)
            if fn is not None:
                try:
                    fn(status)
                except Exception:
                    traceback.print_exc()
            try:
                self.post(m.CallbackDone(callback_id))
            except CudaError:
                return

    def raise_deferred(self) -> None:
        """Raise the oldest error of an earlier asynchronous request, once."""
        with self._lock:
            if self.deferred:
                raise self.deferred.pop(0)

    # -- the receiver thread ---------------------------------------------------------------
    def _poll_for(self, pending: Pending) -> None:
        """Wait for `pending` by reading the completion ring in this thread: no hand-over between threads.

        After a short spin the receiver thread takes over. While another thread holds the channel (the
        receiver between its sleeps, or another caller), this one yields and tries again rather than falling
        back at once to a hand-over (two thread wake-ups).
        """
        deadline = time.perf_counter() + SPIN_SECONDS
        while pending.frame is None:
            if self._poll_lock.acquire(blocking=False):
                self.channel.hush()
                try:  # everything that has arrived is delivered, what came after this answer too
                    while time.perf_counter() < deadline:
                        frame = self.channel.poll()
                        if frame is not None:
                            self._deliver(frame)
                        elif pending.frame is not None:
                            break
                except ChannelClosed:
                    self._lose_daemon()
                finally:
                    self.channel.unhush()
                    self._poll_lock.release()
                return
            if time.perf_counter() >= deadline:
                return
            time.sleep(0)  # the ring's holder may deliver this answer meanwhile

    def _receive_loop(self) -> None:
        """Reads what no caller is polling for: long waits, host messages, the daemon's end."""
        try:
            idle_since = time.perf_counter()
            while True:
                with self._poll_lock:
                    while (frame := self.channel.poll()) is not None:
                        self._deliver(frame)
                        idle_since = time.perf_counter()
                idle = time.perf_counter() - idle_since
                self.channel.sleep(min(MAX_SLEEP, max(1e-3, idle)))
        except ChannelClosed:
            self._lose_daemon()

    def _deliver(self, frame: Frame | Malformed) -> None:
        if isinstance(frame, Malformed):
            print(f"qcuda: ignored a malformed message from {self.url}: {frame.reason}", file=sys.stderr)
        elif frame.is_reply:
            with self._lock:
                pending = self._pending.pop(frame.request_id, None)
            if pending is not None:
                if pending.indirect is not None:
                    self.channel.arena_free(pending.indirect)
                pending.resolve(frame)
        else:
            self._host_message(frame.message)

    def _host_message(self, msg: m.Message | None) -> None:
        if isinstance(msg, m.DeferredError):
            with self._lock:
                self.deferred.append(CudaError(msg.code, msg.detail))
        elif isinstance(msg, m.Callback):
            self._callback_queue.put((msg.callback_id, msg.status))
        elif isinstance(msg, m.Printf):
            sys.stdout.buffer.write(msg.text)
            sys.stdout.flush()

    def _lose_daemon(self) -> None:
        error = CudaError(Error.cudaErrorDevicesUnavailable, f"the qcuda daemon at {self.url} went away")
        with self._lock:
            self.broken = self.broken or error
            pending, self._pending = self._pending, {}
        for p in pending.values():
            p.resolve(self.broken)

    def close(self) -> None:
        self.channel.close()
        self._callback_queue.put(None)

    # -- arena and data movement -------------------------------------------------------------
    def arena_offset(self, view: memoryview) -> int | None:
        """The arena offset of `view` if it lies in this channel's shared arena (zero-copy), else None."""
        if len(view) == 0 or not self.channel.shared_arena:
            return None
        address = np.frombuffer(view, dtype=np.uint8).ctypes.data
        offset = address - self._arena_address
        if 0 <= offset and offset + len(view) <= len(self.channel.arena):
            return offset
        return None

    def copy_htod(self, dst: int, src: memoryview, stream: int, asynchronous: bool = False) -> None:
        """Host -> device: straight from the arena when `src` lives there; a small copy in one request (its
        bytes in it over TCP); else staged in chunks, pipelined."""
        src = src.cast("B")
        offset = self.arena_offset(src)
        if offset is not None or len(src) == 0:
            msg = m.MemcpyHtoD(dst, offset or 0, len(src), stream)
            self.post(msg) if asynchronous else self.call(msg)
            return
        if len(src) <= m.INLINE_COPY_MAX:
            self._small_copy(len(src), lambda off: self._stage_in_call(off, src, dst, stream))
            return
        self._staged(len(src), lambda off, pos, n: self._stage_in(off, src[pos:pos + n]),
                     lambda off, pos, n: m.MemcpyHtoD(dst + pos, off, n, stream), None)

    def copy_dtoh(self, dst: memoryview, src: int, stream: int, asynchronous: bool = False) -> None:
        """Device -> host: straight into the arena when `dst` lives there; a small copy in one request (its
        bytes in the answer over TCP); else staged in chunks."""
        dst = dst.cast("B")
        offset = self.arena_offset(dst)
        if offset is not None or len(dst) == 0:
            msg = m.MemcpyDtoH(offset or 0, src, len(dst), stream)
            self.post(msg) if asynchronous else self.call(msg)
            return
        if len(dst) <= m.INLINE_COPY_MAX:
            self._small_copy(len(dst), lambda off: self._stage_out_call(off, dst, src, stream))
            return
        self._staged(len(dst), None, lambda off, pos, n: m.MemcpyDtoH(off, src + pos, n, stream),
                     lambda off, pos, n: self._stage_out(off, dst[pos:pos + n]))

    def _small_copy(self, size: int, copy: Callable[[int], None]) -> None:
        """One staging range for a small copy, given back after it (the host waits, as for a pageable copy)."""
        offset = self.channel.stage_alloc(size)
        try:
            copy(offset)
        finally:
            self.channel.stage_free(offset)

    def _stage_in_call(self, offset: int, src: memoryview, dst: int, stream: int) -> None:
        if self.channel.shared_arena:
            self._stage_in(offset, src)
            self.call(m.MemcpyHtoD(dst, offset, len(src), stream))
        else:  # the bytes ride in the request
            self.call(m.MemcpyHtoDInline(dst, offset, stream, bytes(src)))

    def _stage_out_call(self, offset: int, dst: memoryview, src: int, stream: int) -> None:
        if self.channel.shared_arena:
            self.call(m.MemcpyDtoH(offset, src, len(dst), stream))
            self._stage_out(offset, dst)
        else:  # the bytes ride in the answer
            reply = self.call(m.MemcpyDtoHInline(src, offset, len(dst), stream))
            assert isinstance(reply, m.MemcpyDtoHInlineReply)
            dst[:] = reply.data

    def _stage_in(self, offset: int, data: memoryview) -> None:
        """Put bytes where the worker reads staged data: the shared arena, or its own arena over the wire."""
        if self.channel.shared_arena:
            self.channel.arena[offset:offset + len(data)] = data
        else:
            self.post(m.ArenaWrite(offset, data))

    def _stage_out(self, offset: int, dst: memoryview) -> Pending | None:
        """Fetch staged bytes into `dst`: at once from the shared arena, or (TCP) as an answer received
        straight into `dst`, whose Pending is returned so that the next chunk's fetch can follow it."""
        if self.channel.shared_arena:
            dst[:] = self.channel.arena[offset:offset + len(dst)]
            return None
        return self._submit(m.ArenaRead(offset, len(dst)), dst)

    def _staged(self, total: int, fill, request, drain) -> None:
        """Move `total` bytes through up to STAGING_BUFFERS arena chunks, so that filling one, the device's copy
        of another and (TCP) fetching a third overlap. `drain` may return a Pending that must end before its
        chunk is used again."""
        chunk = min(STAGING_CHUNK, max(4096, self.channel.stage_largest_free() // 2 // 4096 * 4096), total)
        free = [self.channel.stage_alloc(chunk)]
        while len(free) < min(STAGING_BUFFERS, -(-total // chunk)) and self.channel.stage_largest_free() >= chunk:
            free.append(self.channel.stage_alloc(chunk))
        buffers = list(free)
        waiting: deque[tuple[Pending, int, int, int, bool]] = deque()  # (pending, offset, position, size, drained)
        try:
            pos = 0
            while pos < total or waiting:
                if pos < total and free:
                    n = min(chunk, total - pos)
                    off = free.pop()
                    if fill is not None:
                        fill(off, pos, n)
                    waiting.append((self.submit(request(off, pos, n)), off, pos, n, False))
                    pos += n
                    continue
                pending, off, at, n, drained = waiting.popleft()
                pending.result()
                after = drain(off, at, n) if drain is not None and not drained else None
                if after is not None:
                    waiting.append((after, off, at, n, True))
                else:
                    free.append(off)
        finally:
            for p, *_ in waiting:
                try:
                    p.result()
                except CudaError:
                    pass
            for off in buffers:
                self.channel.stage_free(off)


def _arena_size_from_env() -> int:
    text = os.environ.get("QCUDA_ARENA", "")
    if not text:
        return DEFAULT_ARENA
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    scale = units.get(text[-1].upper(), 1)
    digits = text[:-1] if text[-1].upper() in units else text
    try:
        size = int(digits) * scale
    except ValueError:
        raise CudaError(Error.cudaErrorInvalidValue, f"QCUDA_ARENA={text!r}: write a size such as 256M") from None
    return max(1 << 20, size // 4096 * 4096)
