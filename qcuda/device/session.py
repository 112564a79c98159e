"""One guest's session: its handle tables, and the requests it sends turned into backend calls.

Every handle a guest names (pointer, stream, event, module, function) is looked up in this
session's own tables before any backend sees it, so a guest can never reach another guest's
objects. Requests that must wait for the device (synchronize, a synchronous copy) are answered
from a waiter thread when their fence completes: the session's loop never blocks on the device.
"""
from __future__ import annotations

import bisect
import json
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from ..protocol import messages as m
from ..protocol.codec import Frame, encode, encode_error
from ..protocol.addresses import MAX_DEVICES
from ..protocol.errors import CudaError, Error
from ..protocol.messages import Flags
from .backends.base import Backend, Context, Event, Fence, Function, Stream

LEGACY_STREAM = 0
QUICK_SECONDS = 50e-6  # work done this soon is answered from the session's loop, not from a waiter thread


def _finishes_soon(fence: Fence) -> bool:
    """Poll a fence briefly: a small copy is answered without handing it to another thread."""
    deadline = time.perf_counter() + QUICK_SECONDS
    while True:
        try:
            if fence.done():
                return True
        except CudaError:
            return True  # wait() raises it at once
        if time.perf_counter() > deadline:
            return False


@dataclass
class Later:
    """An answer that is ready once `fence` completes (`reply`, or what it makes then when it is a function)."""

    fence: Fence
    reply: m.Message | Callable[[], m.Message] = field(default_factory=m.Empty)


@dataclass(frozen=True)
class Limits:
    """What an operator allows each guest: the shared region's size and device memory (None: no limit)."""

    max_region: int = 1 << 30
    device_memory: int | None = None


@dataclass
class Stats:
    """What an operator sees of a session (`qcuda status`)."""

    memory: int = 0
    calls: int = 0
    allocations: int = 0


class _Table:
    """Handle -> (device, object) for one kind of object."""

    def __init__(self, kind: str, error: Error) -> None:
        self._items: dict[int, tuple[int, Any]] = {}
        self._kind, self._error = kind, error
        self._next = 1

    def add(self, device: int, obj: Any) -> int:
        handle = self._next
        self._next += 1
        self._items[handle] = (device, obj)
        return handle

    def get(self, handle: int) -> tuple[int, Any]:
        try:
            return self._items[handle]
        except KeyError:
            raise CudaError(self._error, f"{self._kind} handle {handle} is not one of this session's") from None

    def pop(self, handle: int) -> tuple[int, Any]:
        item = self.get(handle)
        del self._items[handle]
        return item

    def __len__(self) -> int:
        return len(self._items)

    def values(self):
        return list(self._items.values())


class Session:
    """Turns one guest's frames into backend work and posts the answers with `post`."""

    def __init__(self, backend: Backend, arena: memoryview | None, post: Callable[[bytes], None],
                 flush_output: Callable[[], None] = lambda: None, limits: Limits = Limits(),
                 first_slot: int = 0) -> None:
        self.backend = backend
        self.first_slot = first_slot  # the guest's global number of this daemon's device 0
        self.limits = limits
        self.arena = arena
        self.post = post
        self._flush_output = flush_output  # device printf reaches the guest before a synchronous answer
        self.stats = Stats()
        self._contexts: dict[int, Context] = {}
        self._arena_base: dict[int, int] = {}
        self._allocs: dict[int, tuple[int, int]] = {}  # ptr -> (size, device)
        self._starts: list[int] = []
        self._symbols: dict[int, tuple[int, int, int]] = {}  # module variables: ptr -> (size, device, module)
        # module handle -> {address: (size, device)}: module variables, which copies may name like allocations
        self._variables: dict[int, dict[int, tuple[int, int]]] = {}
        self._streams = _Table("stream", Error.cudaErrorInvalidResourceHandle)
        self._events = _Table("event", Error.cudaErrorInvalidResourceHandle)
        self._modules = _Table("module", Error.cudaErrorInvalidResourceHandle)
        self._functions = _Table("function", Error.cudaErrorInvalidResourceHandle)
        self._waiters = ThreadPoolExecutor(max_workers=16, thread_name_prefix="qcuda-wait")
        self._callbacks: dict[int, threading.Event] = {}  # guest callbacks a stream waits on
        self._callbacks_lock = threading.Lock()
        self._closed = False
        self._handlers: dict[type, Callable[[Any], Any]] = {
            m.DeviceCount: self._device_count, m.DeviceProperties: self._device_properties,
            m.DeviceSynchronize: self._device_synchronize, m.DeviceReset: self._device_reset,
            m.MemGetInfo: self._mem_get_info, m.ArenaDevicePointer: self._arena_device_pointer,
            m.MemAlloc: self._mem_alloc, m.MemFree: self._mem_free, m.MemcpyHtoD: self._memcpy_htod,
            m.MemcpyDtoH: self._memcpy_dtoh, m.MemcpyDtoD: self._memcpy_dtod, m.Memset: self._memset,
            m.StreamCreate: self._stream_create, m.StreamDestroy: self._stream_destroy,
            m.StreamSynchronize: self._stream_synchronize, m.StreamQuery: self._stream_query,
            m.StreamWaitEvent: self._stream_wait_event, m.StreamCallback: self._stream_callback,
            m.CallbackDone: self._callback_done, m.EventCreate: self._event_create,
            m.EventDestroy: self._event_destroy, m.EventRecord: self._event_record,
            m.EventSynchronize: self._event_synchronize, m.EventQuery: self._event_query,
            m.EventElapsed: self._event_elapsed, m.ModuleLoad: self._module_load,
            m.ModuleUnload: self._module_unload, m.ModuleGetFunction: self._module_get_function,
            m.ModuleGetGlobal: self._module_get_global, m.Launch: self._launch, m.LaunchCooperative: self._launch,
            m.LaunchCluster: self._launch, m.MemcpyHtoDInline: self._memcpy_htod_inline,
            m.MemcpyDtoHInline: self._memcpy_dtoh_inline,
            m.FuncGetAttributes: self._func_get_attributes, m.FuncSetAttribute: self._func_set_attribute,
        }

    # -- dispatch -------------------------------------------------------------------------
    def handle(self, frame: Frame) -> None:
        """Run one request and answer it (now, later, or only on failure for NO_REPLY requests)."""
        self.stats.calls += 1
        msg = frame.message
        handler = self._handlers.get(type(msg))
        try:
            if handler is None:
                raise CudaError(Error.cudaErrorNotSupported, f"{type(msg).__name__} is not a guest request")
            self._check_sticky(msg)
            result = handler(msg)
        except CudaError as exc:
            self._fail(frame, exc)
            return
        except Exception as exc:  # a backend bug is reported to its guest, never fatal to the worker
            self._fail(frame, CudaError(Error.cudaErrorUnknown, f"{type(exc).__name__}: {exc}"))
            return
        if isinstance(result, Later):
            if not frame.flags & Flags.NO_REPLY:
                if _finishes_soon(result.fence):
                    self._answer_later(frame, result)
                else:
                    self._waiters.submit(self._answer_later, frame, result)
        elif not frame.flags & Flags.NO_REPLY:
            self.post(encode(result if result is not None else m.Empty(), frame.request_id, command=frame.command))

    def _answer_later(self, frame: Frame, later: Later) -> None:
        try:
            try:
                later.fence.wait()
            finally:
                self._flush_output()
            reply = later.reply() if callable(later.reply) else later.reply
            answer = encode(reply, frame.request_id, command=frame.command)
        except CudaError as exc:
            self._fail(frame, exc)
            return
        except Exception as exc:
            self._fail(frame, CudaError(Error.cudaErrorUnknown, f"{type(exc).__name__}: {exc}"))
            return
        self.post(answer)

    def _fail(self, frame: Frame, exc: CudaError) -> None:
        if frame.flags & Flags.NO_REPLY:
            self.post(encode(m.DeferredError(frame.request_id, exc.code, exc.detail), flags=Flags.HOST_MESSAGE))
        else:
            self.post(encode_error(frame.command, frame.request_id, exc.code, exc.detail))

    def _check_sticky(self, msg: m.Message) -> None:
        for ctx in self._contexts.values():
            code = ctx.sticky_error()
            if code and not isinstance(msg, (m.DeviceReset, m.DeviceCount, m.DeviceProperties, m.CallbackDone)):
                raise CudaError(code, "the context is unusable after an earlier fault; cudaDeviceReset recovers")

    def close(self) -> None:
        """Free everything the guest left behind."""
        with self._callbacks_lock:
            self._closed = True
            waiting, self._callbacks = self._callbacks, {}
        for done in waiting.values():  # streams blocked on a dead guest's callbacks go on
            done.set()
        self._waiters.shutdown(wait=False, cancel_futures=True)
        for ctx in self._contexts.values():
            ctx.close()
        self._contexts.clear()
        self._allocs.clear()
        self._starts.clear()
        self.stats.memory = self.stats.allocations = 0

    @property
    def stream_count(self) -> int:
        """Streams the guest has created and not destroyed (`qcuda status` shows them: a leak shows)."""
        return len(self._streams)

    # -- lookups ----------------------------------------------------------------------------
    def _context(self, device: int) -> Context:
        ctx = self._contexts.get(device)
        if ctx is None:
            if not 0 <= device < self.backend.device_count():
                raise CudaError(Error.cudaErrorInvalidDevice, f"device {device}")
            slot = self.first_slot + device
            if slot >= MAX_DEVICES:
                raise CudaError(Error.cudaErrorInvalidDevice,
                                f"a guest may use {MAX_DEVICES} devices in all; this would be its device {slot}")
            ctx = self.backend.open_context(device, slot)
            self._contexts[device] = ctx
            if self.arena is not None:
                self._arena_base[device] = ctx.map_host(self.arena)
        return ctx

    def _device_of(self, ptr: int, size: int) -> int:
        """The device that owns [ptr, ptr+size), checked against this session's allocations."""
        i = bisect.bisect_right(self._starts, ptr) - 1
        if i >= 0:
            start = self._starts[i]
            length, device = self._allocs[start]
            if ptr + size <= start + max(length, 1) and size >= 0:
                return device
        for variables in self._variables.values():
            for start, (length, device) in variables.items():
                if start <= ptr and ptr + size <= start + length and size >= 0:
                    return device
        for start, (length, device, _) in self._symbols.items():
            if start <= ptr and ptr + size <= start + length:
                return device
        if self.arena is not None:
            for device, base in self._arena_base.items():
                if base <= ptr and ptr + size <= base + len(self.arena):
                    return device
        raise CudaError(Error.cudaErrorInvalidValue, f"[0x{ptr:x}, +{size}) is not memory of this session")

    def _arena_slice(self, offset: int, size: int) -> memoryview:
        if self.arena is None:
            raise CudaError(Error.cudaErrorNotSupported, "this channel has no arena")
        if offset < 0 or size < 0 or offset + size > len(self.arena):
            raise CudaError(Error.cudaErrorInvalidValue, f"arena range [{offset}, +{size}) is outside the arena")
        return self.arena[offset:offset + size]

    def _stream(self, handle: int, device: int) -> Stream:
        """A stream for work on `device` (named by a pointer, event or function): it must be that device's."""
        if handle != LEGACY_STREAM and (owner := self._streams.get(handle)[0]) != device:
            raise CudaError(Error.cudaErrorInvalidValue, f"stream {handle} belongs to device {owner}, not {device}")
        return self._stream_of(handle, device)

    # -- devices ----------------------------------------------------------------------------
    def _device_count(self, msg: m.DeviceCount) -> m.Message:
        return m.DeviceCountReply(self.backend.device_count())

    def _device_properties(self, msg: m.DeviceProperties) -> m.Message:
        if not 0 <= msg.device < self.backend.device_count():
            raise CudaError(Error.cudaErrorInvalidDevice, f"device {msg.device}")
        return m.DevicePropertiesReply(json.dumps(self.backend.device_info(msg.device).to_json()))

    def _device_synchronize(self, msg: m.DeviceSynchronize) -> Later:
        return Later(self._context(msg.device).synchronize_fence())

    def _device_reset(self, msg: m.DeviceReset) -> None:
        ctx = self._contexts.pop(msg.device, None)
        if ctx is None:
            return
        for table in (self._streams, self._events, self._modules, self._functions):
            for handle, (device, _) in list(table._items.items()):
                if device == msg.device:
                    del table._items[handle]
        for ptr, (size, device) in list(self._allocs.items()):
            if device == msg.device:
                self._forget_alloc(ptr)
        self._variables = {h: v for h, v in self._variables.items() if h in self._modules._items}
        self._arena_base.pop(msg.device, None)
        ctx.close()

    def _mem_get_info(self, msg: m.MemGetInfo) -> m.Message:
        return m.MemGetInfoReply(*self._context(msg.device).mem_info())

    def _arena_device_pointer(self, msg: m.ArenaDevicePointer) -> m.Message:
        self._context(msg.device)
        if msg.device not in self._arena_base:
            raise CudaError(Error.cudaErrorNotSupported, "this channel has no arena to map")
        return m.ArenaDevicePointerReply(self._arena_base[msg.device])

    # -- memory -----------------------------------------------------------------------------
    def _mem_alloc(self, msg: m.MemAlloc) -> m.Message:
        quota = self.limits.device_memory
        if quota is not None and self.stats.memory + msg.size > quota:
            raise CudaError(Error.cudaErrorMemoryAllocation,
                            f"this guest may hold {quota} bytes of device memory; it holds {self.stats.memory}")
        ptr = self._context(msg.device).alloc(msg.size)
        self._allocs[ptr] = (msg.size, msg.device)
        bisect.insort(self._starts, ptr)
        self.stats.memory += msg.size
        self.stats.allocations += 1
        return m.MemAllocReply(ptr)

    def _mem_free(self, msg: m.MemFree) -> None:
        if msg.ptr == 0:
            return None
        if msg.ptr not in self._allocs:
            raise CudaError(Error.cudaErrorInvalidValue, f"0x{msg.ptr:x} is not an allocation of this session")
        size, device = self._allocs[msg.ptr]
        self._contexts[device].free(msg.ptr)
        self._forget_alloc(msg.ptr)
        return None

    def _forget_alloc(self, ptr: int) -> None:
        size, _ = self._allocs.pop(ptr)
        self._starts.remove(ptr)
        self.stats.memory -= size
        self.stats.allocations -= 1

    def _memcpy_htod(self, msg: m.MemcpyHtoD):
        device = self._device_of(msg.dst, msg.size)
        stream = self._stream(msg.stream, device)
        if msg.size:
            stream.copy_htod(msg.dst, self._arena_slice(msg.src_offset, msg.size))
        return Later(stream.fence())

    def _memcpy_dtoh(self, msg: m.MemcpyDtoH):
        device = self._device_of(msg.src, msg.size)
        stream = self._stream(msg.stream, device)
        if msg.size:
            stream.copy_dtoh(self._arena_slice(msg.dst_offset, msg.size), msg.src)
        return Later(stream.fence())

    def _memcpy_htod_inline(self, msg: m.MemcpyHtoDInline):
        """The bytes go through the arena: a copy from ordinary (pageable) memory could make the driver wait
        for the stream in this thread, which a host callback on that stream may need to go on."""
        size = len(msg.data)
        if size > m.INLINE_COPY_MAX:
            raise CudaError(Error.cudaErrorInvalidValue, f"an inline copy of {size} bytes (at most {m.INLINE_COPY_MAX})")
        device = self._device_of(msg.dst, size)
        stream = self._stream(msg.stream, device)
        if size:
            stage = self._arena_slice(msg.stage_offset, size)
            stage[:] = msg.data
            stream.copy_htod(msg.dst, stage)
        return Later(stream.fence())

    def _memcpy_dtoh_inline(self, msg: m.MemcpyDtoHInline):
        if msg.size > m.INLINE_COPY_MAX:
            raise CudaError(Error.cudaErrorInvalidValue, f"an inline copy of {msg.size} bytes (at most "
                                                         f"{m.INLINE_COPY_MAX})")
        device = self._device_of(msg.src, msg.size)
        stream = self._stream(msg.stream, device)
        stage = self._arena_slice(msg.stage_offset, msg.size)
        if msg.size:
            stream.copy_dtoh(stage, msg.src)
        return Later(stream.fence(), lambda: m.MemcpyDtoHInlineReply(bytes(stage)))

    def _memcpy_dtod(self, msg: m.MemcpyDtoD):
        device = self._device_of(msg.dst, msg.size)
        if self._device_of(msg.src, msg.size) != device:
            raise CudaError(Error.cudaErrorInvalidValue, "device-to-device copy between two devices")
        stream = self._stream(msg.stream, device)
        if msg.size:
            stream.copy_dtod(msg.dst, msg.src, msg.size)
        return Later(stream.fence())

    def _memset(self, msg: m.Memset):
        if msg.element_size not in (1, 2, 4):
            raise CudaError(Error.cudaErrorInvalidValue, f"memset element size {msg.element_size}")
        device = self._device_of(msg.ptr, msg.element_size * msg.count)
        stream = self._stream(msg.stream, device)
        if msg.count:
            stream.memset(msg.ptr, msg.value, msg.element_size, msg.count)
        return Later(stream.fence())

    # -- streams and events -----------------------------------------------------------------
    def _stream_create(self, msg: m.StreamCreate) -> m.Message:
        stream = self._context(msg.device).create_stream(msg.flags, msg.priority)
        return m.StreamCreateReply(self._streams.add(msg.device, stream))

    def _stream_destroy(self, msg: m.StreamDestroy) -> None:
        if msg.stream == LEGACY_STREAM:
            raise CudaError(Error.cudaErrorInvalidResourceHandle, "the default stream cannot be destroyed")
        _, stream = self._streams.pop(msg.stream)
        stream.destroy()

    def _stream_of(self, handle: int, device: int) -> Stream:
        """A stream by handle; handle 0 is `device`'s legacy default stream."""
        if handle == LEGACY_STREAM:
            return self._context(device).default_stream
        return self._streams.get(handle)[1]

    def _stream_synchronize(self, msg: m.StreamSynchronize) -> Later:
        return Later(self._stream_of(msg.stream, msg.device).fence())

    def _stream_query(self, msg: m.StreamQuery) -> None:
        if not self._stream_of(msg.stream, msg.device).fence().done():
            raise CudaError(Error.cudaErrorNotReady)

    def _stream_wait_event(self, msg: m.StreamWaitEvent) -> None:
        device, event = self._events.get(msg.event)
        self._stream(msg.stream, device).wait_event(event)

    def _stream_callback(self, msg: m.StreamCallback) -> None:
        """The stream stops here until the guest has run its callback and said so."""
        stream = self._stream_of(msg.stream, msg.device)
        done = threading.Event()
        with self._callbacks_lock:
            if msg.callback_id in self._callbacks:
                raise CudaError(Error.cudaErrorInvalidValue, f"callback {msg.callback_id} is already pending")
            self._callbacks[msg.callback_id] = done

        def reached(status: int) -> None:
            with self._callbacks_lock:
                if self._closed:
                    return
            self.post(encode(m.Callback(msg.stream, msg.callback_id, status), flags=Flags.HOST_MESSAGE))
            done.wait()

        stream.host_callback(reached)

    def _callback_done(self, msg: m.CallbackDone) -> None:
        with self._callbacks_lock:
            done = self._callbacks.pop(msg.callback_id, None)
        if done is None:
            raise CudaError(Error.cudaErrorInvalidValue, f"no callback {msg.callback_id} is pending")
        done.set()

    def _event_create(self, msg: m.EventCreate) -> m.Message:
        event = self._context(msg.device).create_event(msg.flags)
        return m.EventCreateReply(self._events.add(msg.device, event))

    def _event_destroy(self, msg: m.EventDestroy) -> None:
        self._events.pop(msg.event)[1].destroy()

    def _event_record(self, msg: m.EventRecord) -> None:
        device, event = self._events.get(msg.event)
        self._stream(msg.stream, device).record(event)

    def _event_synchronize(self, msg: m.EventSynchronize) -> Later:
        return Later(self._events.get(msg.event)[1].fence())

    def _event_query(self, msg: m.EventQuery) -> None:
        if not self._events.get(msg.event)[1].query():
            raise CudaError(Error.cudaErrorNotReady)

    def _event_elapsed(self, msg: m.EventElapsed) -> m.Message:
        start: Event = self._events.get(msg.start)[1]
        end: Event = self._events.get(msg.end)[1]
        return m.EventElapsedReply(start.elapsed_ms(end))

    # -- modules and launches ---------------------------------------------------------------
    def _module_load(self, msg: m.ModuleLoad) -> m.Message:
        module, log = self._context(msg.device).load_module(msg.image, msg.kind)
        return m.ModuleLoadReply(self._modules.add(msg.device, module), log)

    def _module_unload(self, msg: m.ModuleUnload) -> None:
        device, module = self._modules.pop(msg.module)
        self._symbols = {p: v for p, v in self._symbols.items() if v[2] != msg.module}
        self._variables.pop(msg.module, None)
        for handle, (_, fn) in list(self._functions._items.items()):
            if getattr(fn, "module", None) is module:
                del self._functions._items[handle]
        module.unload()

    def _module_get_function(self, msg: m.ModuleGetFunction) -> m.Message:
        device, module = self._modules.get(msg.module)
        fn: Function = module.function(msg.name)
        fn.module = module  # type: ignore[attr-defined]
        layout = b"".join(struct.pack("<II", off, size) for off, size in fn.param_layout)
        return m.ModuleGetFunctionReply(self._functions.add(device, fn), len(fn.param_layout), layout)

    def _module_get_global(self, msg: m.ModuleGetGlobal) -> m.Message:
        device, module = self._modules.get(msg.module)
        ptr, size = module.global_symbol(msg.name)
        self._variables.setdefault(msg.module, {})[ptr] = (size, device)
        return m.ModuleGetGlobalReply(ptr, size)

    def _func_get_attributes(self, msg: m.FuncGetAttributes) -> m.Message:
        return self._functions.get(msg.function)[1].attributes()

    def _func_set_attribute(self, msg: m.FuncSetAttribute) -> None:
        self._functions.get(msg.function)[1].set_attribute(msg.attribute, msg.value)

    def _launch(self, msg: m.Launch | m.LaunchCluster) -> None:
        device, fn = self._functions.get(msg.function)
        grid, block = (msg.grid_x, msg.grid_y, msg.grid_z), (msg.block_x, msg.block_y, msg.block_z)
        if min(grid) < 1 or min(block) < 1 or block[0] * block[1] * block[2] > 1024:
            raise CudaError(Error.cudaErrorInvalidConfiguration, f"grid {grid} block {block}")
        layout = fn.param_layout
        need = max((off + size for off, size in layout), default=0)
        if len(msg.params) < need:
            raise CudaError(Error.cudaErrorInvalidValue, f"{len(msg.params)} parameter bytes, the kernel takes {need}")
        if isinstance(msg, m.LaunchCluster):
            cluster, cooperative = (msg.cluster_x, msg.cluster_y, msg.cluster_z), bool(msg.cooperative)
            if min(cluster) < 1 or any(g % c for g, c in zip(grid, cluster)):
                raise CudaError(Error.cudaErrorInvalidClusterSize, f"grid {grid} is not a whole number of "
                                                                   f"clusters {cluster}")
        else:
            cluster, cooperative = None, isinstance(msg, m.LaunchCooperative)
        self._stream(msg.stream, device).launch(fn, grid, block, msg.shared_bytes, msg.params, cooperative, cluster)
