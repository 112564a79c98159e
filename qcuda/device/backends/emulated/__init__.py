"""The emulated device: a CUDA device computed on the host CPU, for machines with no GPU.

Device memory is host memory with a GPU's rules (see memory.py); each stream is a thread that
runs its queue in order, so separate streams really run concurrently; events carry real
timestamps; kernels run on the PTX emulator (ptx/). It is a backend like the GPU one, not a mock.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable

import numpy as np

from ....protocol.addresses import HEAP_STRIDE, MAX_DEVICES, arena_range, heap_range
from ....protocol.errors import CudaError, Error
from ..base import (
    EVENT_DISABLE_TIMING, FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED, MODULE_IMAGE, STATIC_SHARED_LIMIT, STREAM_NON_BLOCKING,
    AllDone, Backend, Context, DeviceInfo, Event, Fence, Function, FunctionAttributes, Module, Stream,
)
from .memory import DeviceMemory

DEFAULT_MEMORY = 4 << 30
INLINE_BYTES = 1 << 20  # copies and fills this small run at once when their stream is idle (no thread hand-over)

# An emulated device reports itself as a Hopper-class part so that programs built for sm_90 accept it.
_ATTRIBUTES = {
    "cudaDevAttrMaxThreadsPerBlock": 1024, "cudaDevAttrMaxBlockDimX": 1024, "cudaDevAttrMaxBlockDimY": 1024,
    "cudaDevAttrMaxBlockDimZ": 64, "cudaDevAttrMaxGridDimX": 2**31 - 1, "cudaDevAttrMaxGridDimY": 65535,
    "cudaDevAttrMaxGridDimZ": 65535, "cudaDevAttrMaxSharedMemoryPerBlock": 49152,
    "cudaDevAttrTotalConstantMemory": 65536, "cudaDevAttrWarpSize": 32, "cudaDevAttrMaxPitch": 2**31 - 1,
    "cudaDevAttrMaxRegistersPerBlock": 65536, "cudaDevAttrClockRate": 1_000_000, "cudaDevAttrTextureAlignment": 512,
    "cudaDevAttrGpuOverlap": 1, "cudaDevAttrMultiProcessorCount": 2, "cudaDevAttrKernelExecTimeout": 0,
    "cudaDevAttrIntegrated": 0, "cudaDevAttrCanMapHostMemory": 1, "cudaDevAttrComputeMode": 0,
    "cudaDevAttrConcurrentKernels": 1, "cudaDevAttrEccEnabled": 0, "cudaDevAttrPciBusId": 0,
    "cudaDevAttrPciDeviceId": 0, "cudaDevAttrMemoryClockRate": 1_000_000, "cudaDevAttrGlobalMemoryBusWidth": 64,
    "cudaDevAttrL2CacheSize": 1 << 20, "cudaDevAttrMaxThreadsPerMultiProcessor": 2048,
    "cudaDevAttrAsyncEngineCount": 2, "cudaDevAttrUnifiedAddressing": 1, "cudaDevAttrComputeCapabilityMajor": 9,
    "cudaDevAttrComputeCapabilityMinor": 0, "cudaDevAttrStreamPrioritiesSupported": 1,
    "cudaDevAttrGlobalL1CacheSupported": 1, "cudaDevAttrLocalL1CacheSupported": 1,
    "cudaDevAttrMaxSharedMemoryPerMultiprocessor": 233472, "cudaDevAttrMaxRegistersPerMultiprocessor": 65536,
    "cudaDevAttrManagedMemory": 0, "cudaDevAttrIsMultiGpuBoard": 0, "cudaDevAttrHostNativeAtomicSupported": 0,
    "cudaDevAttrConcurrentManagedAccess": 0, "cudaDevAttrComputePreemptionSupported": 0,
    "cudaDevAttrCanUseHostPointerForRegisteredMem": 0, "cudaDevAttrCooperativeLaunch": 1, "cudaDevAttrClusterLaunch": 1,
    "cudaDevAttrMaxSharedMemoryPerBlockOptin": 232448, "cudaDevAttrReservedSharedMemoryPerBlock": 1024, "cudaDevAttrMaxBlocksPerMultiprocessor": 32,
    "cudaDevAttrMemoryPoolsSupported": 0, "cudaDevAttrHostRegisterSupported": 1,
}


class EmulatedBackend(Backend):
    name = "emulated"

    def __init__(self, devices: int = 1, memory: int = DEFAULT_MEMORY) -> None:
        if not 1 <= devices <= MAX_DEVICES or not 0 < memory <= HEAP_STRIDE:
            raise ValueError(f"the emulated backend offers 1..{MAX_DEVICES} devices of at most {HEAP_STRIDE >> 30} GiB each")
        self._devices = devices
        self._memory = memory

    def device_count(self) -> int:
        return self._devices

    def device_info(self, ordinal: int) -> DeviceInfo:
        self._check(ordinal)
        uuid = (b"qcuda-emulated" + bytes([ordinal, 0]))[:16]
        return DeviceInfo(f"qcuda emulated device {ordinal}", self._memory, dict(_ATTRIBUTES), uuid, self.name)

    def open_context(self, ordinal: int, slot: int) -> "EmulatedContext":
        self._check(ordinal)
        return EmulatedContext(self._memory, slot)

    def _check(self, ordinal: int) -> None:
        if not 0 <= ordinal < self._devices:
            raise CudaError(Error.cudaErrorInvalidDevice, f"device {ordinal} of {self._devices}")


class _Done(Fence):
    """A fence on a threading.Event set by the stream thread when its point is reached."""

    def __init__(self, ctx: "EmulatedContext", flag: threading.Event) -> None:
        self._ctx, self._flag = ctx, flag

    def wait(self) -> None:
        self._flag.wait()
        self._ctx.raise_sticky()

    def done(self) -> bool:
        finished = self._flag.is_set()
        if finished:
            self._ctx.raise_sticky()
        return finished


class EmulatedEvent(Event):
    def __init__(self, ctx: "EmulatedContext", flags: int) -> None:
        self._ctx = ctx
        self.flags = flags
        self.point = threading.Event()  # the last record's completion
        self.point.set()
        self.recorded = False
        self.timestamp: float | None = None

    def query(self) -> bool:
        return _Done(self._ctx, self.point).done()

    def fence(self) -> Fence:
        return _Done(self._ctx, self.point)

    def elapsed_ms(self, end: Event) -> float:
        if not isinstance(end, EmulatedEvent):
            raise CudaError(Error.cudaErrorInvalidResourceHandle)
        if (self.flags | end.flags) & EVENT_DISABLE_TIMING or not (self.recorded and end.recorded):
            raise CudaError(Error.cudaErrorInvalidResourceHandle, "event was not recorded or has timing disabled")
        if not (self.query() and end.query()):
            raise CudaError(Error.cudaErrorNotReady)
        assert self.timestamp is not None and end.timestamp is not None
        return (end.timestamp - self.timestamp) * 1000.0

    def destroy(self) -> None:
        self.recorded = False


class EmulatedStream(Stream):
    """A thread that runs its queue in order; ordering with other streams is by explicit dependencies."""

    def __init__(self, ctx: "EmulatedContext", flags: int, legacy: bool = False) -> None:
        self._ctx = ctx
        self.flags = flags
        self.legacy = legacy
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.last = threading.Event()
        self.last.set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="qcuda-emulated-stream", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, deps, done, always = item
            for dep in deps:
                dep.wait()
            if always or not self._ctx.sticky:
                try:
                    fn()
                except CudaError as exc:
                    self._ctx.fault(exc)
                except Exception as exc:  # a bug in the emulator must not hang the stream
                    self._ctx.fault(CudaError(Error.cudaErrorLaunchFailure, f"emulator failure: {exc!r}"))
            done.set()

    def enqueue(self, fn: Callable[[], None], deps: tuple[threading.Event, ...] = (),
                always: bool = False, small: bool = False) -> threading.Event:
        """Queue `fn` after everything before it here, and after `deps` and the implicit ones.

        Work is skipped once the context is broken, unless `always` (host callbacks still run).
        `small` work runs right here when nothing is ahead of it, as a GPU starts an idle queue at once.
        """
        with self._ctx.order_lock:
            done = threading.Event()
            waits = (self.last, *self._ctx.implicit_deps(self), *deps)
            if small and not self._ctx.sticky and all(w.is_set() for w in waits):
                try:
                    fn()
                except CudaError as exc:
                    self._ctx.fault(exc)
                done.set()
                self.last = done
                return done
            self._queue.put((fn, waits, done, always))
            self.last = done
            return done

    def copy_htod(self, dst: int, src: memoryview) -> None:
        target = self._ctx.memory.view(dst, len(src))
        data = np.frombuffer(src, dtype=np.uint8)
        self.enqueue(lambda: np.copyto(target, data), small=len(src) <= INLINE_BYTES)

    def copy_dtoh(self, dst: memoryview, src: int) -> None:
        source = self._ctx.memory.view(src, len(dst))
        target = np.frombuffer(dst, dtype=np.uint8)
        self.enqueue(lambda: np.copyto(target, source), small=len(dst) <= INLINE_BYTES)

    def copy_dtod(self, dst: int, src: int, size: int) -> None:
        target, source = self._ctx.memory.view(dst, size), self._ctx.memory.view(src, size)
        self.enqueue(lambda: np.copyto(target, source), small=size <= INLINE_BYTES)

    def memset(self, ptr: int, value: int, element_size: int, count: int) -> None:
        dtype = {1: np.uint8, 2: np.uint16, 4: np.uint32}.get(element_size)
        if dtype is None:
            raise CudaError(Error.cudaErrorInvalidValue, f"memset element size {element_size}")
        view = self._ctx.memory.view(ptr, element_size * count)
        if ptr % element_size:
            raise CudaError(Error.cudaErrorInvalidValue, "misaligned memset destination")
        target = view.view(dtype)
        fill = dtype(value & ((1 << (8 * element_size)) - 1))
        self.enqueue(lambda: target.fill(fill), small=element_size * count <= INLINE_BYTES)

    def launch(self, function: Function, grid, block, shared_bytes: int, params: bytes,
               cooperative: bool = False, cluster: tuple[int, int, int] | None = None) -> None:
        if not isinstance(function, EmulatedFunction):
            raise CudaError(Error.cudaErrorInvalidResourceHandle, "not a function of this device")
        blocks, threads = grid[0] * grid[1] * grid[2], block[0] * block[1] * block[2]
        sms = _ATTRIBUTES["cudaDevAttrMultiProcessorCount"]
        resident = (blocks <= sms * _ATTRIBUTES["cudaDevAttrMaxBlocksPerMultiprocessor"]
                    and blocks * threads <= sms * _ATTRIBUTES["cudaDevAttrMaxThreadsPerMultiProcessor"])
        if cooperative and not resident:  # (the guest checks the kernel's occupancy more closely)
            raise CudaError(Error.cudaErrorCooperativeLaunchTooLarge, f"{blocks} blocks of {threads} threads "
                            f"cannot all be resident on {sms} SMs")
        if shared_bytes > function.max_dynamic_shared:
            raise CudaError(Error.cudaErrorInvalidValue, f"{shared_bytes} bytes of dynamic shared memory; above "
                            f"{function.max_dynamic_shared} the kernel must opt in with cudaFuncSetAttribute")
        kernel = function.kernel
        kernel.cluster_shape(tuple(grid), cluster)  # refused now, as a GPU refuses it at the launch
        # A GPU gives every launch of a kernel that asks for it a grid workspace, so a grid that is all
        # resident can sync without a cooperative launch (the H100 does): run such a grid as one batch
        # too. A larger one gets none, so its grid sync traps where a GPU would hang.
        whole_grid = cooperative or (kernel.grid_workspace and resident)
        self.enqueue(lambda: kernel.launch(tuple(grid), tuple(block), shared_bytes, params, whole_grid, cluster))

    def record(self, event: Event) -> None:
        assert isinstance(event, EmulatedEvent)

        def stamp() -> None:
            event.timestamp = time.perf_counter()

        event.recorded = True
        event.point = self.enqueue(stamp)

    def wait_event(self, event: Event) -> None:
        assert isinstance(event, EmulatedEvent)
        self.enqueue(lambda: None, (event.point,))

    def host_callback(self, fn: Callable[[int], None]) -> None:
        # runs even on a broken context: CUDA calls back with the error as the status
        self.enqueue(lambda: fn(self._ctx.sticky), always=True)

    def fence(self) -> Fence:
        return _Done(self._ctx, self.last)

    def destroy(self) -> None:
        self._ctx.forget(self)
        self._queue.put(None)


class EmulatedFunction(Function):
    def __init__(self, kernel) -> None:
        self.kernel = kernel
        self.name = kernel.name
        self.param_layout = list(kernel.param_layout)
        self.max_dynamic_shared = max(0, STATIC_SHARED_LIMIT - kernel.static_shared)

    def attributes(self) -> FunctionAttributes:
        return FunctionAttributes(self.kernel.max_threads, self.kernel.static_shared, 0, self.kernel.local_size,
                                  len(self.kernel.regs), 90, 90, self.max_dynamic_shared)

    def set_attribute(self, attribute: int, value: int) -> None:
        if attribute == FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED:
            optin = _ATTRIBUTES["cudaDevAttrMaxSharedMemoryPerBlockOptin"]
            if not 0 <= value <= optin - self.kernel.static_shared:
                raise CudaError(Error.cudaErrorInvalidValue, f"{value} bytes of dynamic shared memory; the kernel "
                                f"may have {optin - self.kernel.static_shared}")
            self.max_dynamic_shared = value


class EmulatedModule(Module):
    def __init__(self, module) -> None:
        self._module = module

    def function(self, name: str) -> Function:
        kernel = self._module.functions.get(name)
        if kernel is None:
            raise CudaError(Error.cudaErrorSymbolNotFound, f"no kernel named {name!r} in the module")
        return EmulatedFunction(kernel)

    def global_symbol(self, name: str) -> tuple[int, int]:
        return self._module.global_symbol(name)

    def unload(self) -> None:
        self._module.unload()


class EmulatedContext(Context):
    def __init__(self, capacity: int, slot: int) -> None:
        self.memory = DeviceMemory(capacity, heap_range(slot)[0])
        self._arena_base, self._arena_room = arena_range(slot)
        self.sticky = 0
        self._sticky_detail = ""
        self.order_lock = threading.Lock()
        self._streams: list[EmulatedStream] = []
        self.default_stream = EmulatedStream(self, 0, legacy=True)

    # -- errors ---------------------------------------------------------------------------
    def fault(self, exc: CudaError) -> None:
        """A kernel fault breaks the context for good, as on a GPU."""
        if not self.sticky:
            self.sticky, self._sticky_detail = exc.code, exc.detail

    def raise_sticky(self) -> None:
        if self.sticky:
            raise CudaError(self.sticky, self._sticky_detail)

    def sticky_error(self) -> int:
        return self.sticky

    # -- legacy default stream ordering ------------------------------------------------------
    def implicit_deps(self, stream: EmulatedStream) -> tuple[threading.Event, ...]:
        """The legacy stream waits for all blocking streams, and they wait for it (CUDA's rule)."""
        if stream.legacy:
            return tuple(s.last for s in self._streams if not s.flags & STREAM_NON_BLOCKING)
        if stream.flags & STREAM_NON_BLOCKING:
            return ()
        return (self.default_stream.last,)

    def forget(self, stream: EmulatedStream) -> None:
        with self.order_lock:
            if stream in self._streams:
                self._streams.remove(stream)

    # -- Context ---------------------------------------------------------------------------
    def alloc(self, size: int) -> int:
        return self.memory.alloc(size)

    def free(self, ptr: int) -> None:
        self.synchronize_fence().wait()
        self.memory.free(ptr)

    def mem_info(self) -> tuple[int, int]:
        return self.memory.capacity - self.memory.used, self.memory.capacity

    def map_host(self, buffer) -> int:
        if len(buffer) > self._arena_room:
            raise CudaError(Error.cudaErrorInvalidValue, f"a {len(buffer)}-byte arena exceeds its address range")
        self.memory.map_host(buffer, self._arena_base)
        return self._arena_base

    def create_stream(self, flags: int, priority: int) -> Stream:
        stream = EmulatedStream(self, flags)
        with self.order_lock:
            self._streams.append(stream)
        return stream

    def create_event(self, flags: int) -> Event:
        return EmulatedEvent(self, flags)

    def load_module(self, image: bytes, kind: int) -> tuple[Module, str]:
        if kind != MODULE_IMAGE:
            raise CudaError(
                Error.cudaErrorNotSupported,
                "the emulated device has no CUDA C compiler: send PTX or a fatbin built by nvcc",
            )
        from .ptx import Module as PtxModule

        return EmulatedModule(PtxModule.load(image, self.memory)), ""

    def synchronize_fence(self) -> Fence:
        with self.order_lock:
            streams = [self.default_stream, *self._streams]
        return AllDone([s.fence() for s in streams])

    def close(self) -> None:
        for stream in [self.default_stream, *self._streams]:
            stream.destroy()
