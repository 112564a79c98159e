"""The GPU backend: a real NVIDIA device through cuda.bindings (the driver API, and NVRTC for CUDA C).

Created inside a guest's worker process, never in the daemon (a `cuInit` before fork breaks CUDA in
the children). Each worker uses the device's primary context, so a faulting kernel breaks only this
guest's process; `close()` resets it (cudaDeviceReset). Raw driver calls stay in this module, and
every result passes through `check`, which turns a CUresult into the cudaError_t the runtime gives.
The driver's current context is per thread: every entry point makes its context current first.

Guests tell device from host pointers by address, so device addresses follow qcuda's layout
(qcuda.protocol.addresses), never wherever cuMemAlloc would put them: device memory is mapped with
the driver's virtual memory calls into the device's reserved range (heap.py does the bookkeeping),
and the channel arena is mapped a second time at the device's arena address and registered there,
since the device pointer of registered host memory is its host address.
"""
from __future__ import annotations

import ctypes
import itertools
import mmap
import os
import threading
import weakref
from typing import Callable

import numpy as np
from cuda.bindings import driver as cu
from cuda.bindings import nvrtc

from ...protocol._cuda_tables import DEVICE_ATTRIBUTES, ERRORS
from ...protocol.addresses import MAX_DEVICES, arena_range, heap_range
from ...protocol.errors import CudaError, Error
from .base import (
    EVENT_DISABLE_TIMING, MODULE_IMAGE, MODULE_SOURCE, AllDone, Backend, Context, DeviceInfo, Event, Fence,
    Function, FunctionAttributes, Module, Stream,
)
from .heap import Heap

# A CUresult has the number of the cudaError_t that the runtime reports for it wherever the runtime
# has that number (checked against the generated table); the few the runtime lacks map here.
_RUNTIME_CODES = frozenset(code for code, _, _ in ERRORS)
_NO_RUNTIME_CODE = {227: Error.cudaErrorInsufficientDriver}  # CUDA_ERROR_INSUFFICIENT_LOADER_VERSION
# Errors that leave the context unusable: every later call in it fails the same way.
_STICKY = frozenset({214, 220, 226, 700, 702, 709, 710, 714, 715, 716, 717, 718, 719})

_ELF_MAGIC, _FATBIN_MAGIC = b"\x7fELF", (0xBA55ED50).to_bytes(4, "little")
_MAP_FLAGS = cu.CU_MEMHOSTREGISTER_DEVICEMAP | cu.CU_MEMHOSTREGISTER_PORTABLE

_tls = threading.local()  # .ctx: the GpuContext made current in this thread

# Linux flags Python's mmap module does not export
PROT_NONE, MAP_NORESERVE, MAP_FIXED_NOREPLACE = 0, 0x4000, 0x100000
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2
_MAP_FAILED = 2**64 - 1
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = _libc.mremap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def check(result: tuple):
    """cuda.core's handle_return: the call's outputs, or the CudaError for its CUresult."""
    err, *outs = result
    if err != cu.CUresult.CUDA_SUCCESS:
        raise _error(err)
    return outs[0] if len(outs) == 1 else tuple(outs) if outs else None


def _runtime_code(code: int) -> int:
    """The cudaError_t for a CUresult number."""
    return code if code in _RUNTIME_CODES else _NO_RUNTIME_CODE.get(code, Error.cudaErrorUnknown)


def _error(err: cu.CUresult) -> CudaError:
    code = int(err)
    ok, text = cu.cuGetErrorString(err)
    known = ok == cu.CUresult.CUDA_SUCCESS and text
    detail = f"{getattr(err, 'name', f'CUresult {code}')}: {text.decode() if known else 'driver error'}"
    ctx = getattr(_tls, "ctx", None)
    if code in _STICKY and ctx is not None:
        ctx.break_with(code)
    return CudaError(_runtime_code(code), detail)


def _ready(result: tuple) -> bool:
    """A query's answer: True when done, False while not ready; an error raises."""
    if result[0] == cu.CUresult.CUDA_ERROR_NOT_READY:
        return False
    check(result)
    return True


def _address(buffer) -> tuple[int, int]:
    """(address, size) of a host buffer, for the driver."""
    array = np.frombuffer(buffer, np.uint8)
    return array.ctypes.data, array.nbytes


def map_again(address: int, size: int, target: int) -> None:
    """Map the pages of the shared mapping at `address` a second time at `target` (mremap with old size 0).

    `target` must be free in this process: a MAP_FIXED_NOREPLACE placeholder proves it first.
    """
    placed = _libc.mmap(target, size, PROT_NONE,
                        mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0)
    if placed != target:
        failed = placed in (None, _MAP_FAILED)
        reason = os.strerror(ctypes.get_errno()) if failed else "the kernel placed it elsewhere"
        if not failed:
            _libc.munmap(placed, size)
        raise CudaError(Error.cudaErrorMemoryAllocation, f"[0x{target:x}, +{size}) is not free in this worker ({reason})")
    if _libc.mremap(address, 0, size, MREMAP_MAYMOVE | MREMAP_FIXED, target) != target:
        reason = os.strerror(ctypes.get_errno())
        _libc.munmap(target, size)
        raise CudaError(Error.cudaErrorInvalidValue, f"could not map host memory again at 0x{target:x} ({reason}): "
                        "it must be a shared mapping that starts on a page")


def unmap(address: int, size: int) -> None:
    _libc.munmap(address, size)


# Stream callbacks: one C trampoline for the process; userData is a key to the Python function to run.
_host_callbacks: dict[int, Callable[[int], None]] = {}
_callback_keys = itertools.count(1)


@ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)
def _run_host_callback(stream: int, status: int, key: int) -> None:
    """Runs on a driver thread once the stream reaches the callback; the stream waits until it returns."""
    _host_callbacks.pop(key)(_runtime_code(status))


_HOST_CALLBACK = cu.CUstreamCallback(ctypes.cast(_run_host_callback, ctypes.c_void_p).value)


class GpuBackend(Backend):
    name = "gpu"

    def __init__(self) -> None:
        check(cu.cuInit(0))
        self._count: int = min(check(cu.cuDeviceGetCount()), MAX_DEVICES)  # what the address layout has room for
        self._info: dict[int, DeviceInfo] = {}

    def device_count(self) -> int:
        return self._count

    def _device(self, ordinal: int) -> cu.CUdevice:
        if not 0 <= ordinal < self._count:
            raise CudaError(Error.cudaErrorInvalidDevice, f"device {ordinal} of {self._count}")
        return check(cu.cuDeviceGet(ordinal))

    def device_info(self, ordinal: int) -> DeviceInfo:
        info = self._info.get(ordinal)
        if info is None:
            dev = self._device(ordinal)
            attributes = {}
            for code, name in DEVICE_ATTRIBUTES:  # CU_DEVICE_ATTRIBUTE numbers are the cudaDevAttr numbers
                try:
                    attributes[name] = check(cu.cuDeviceGetAttribute(cu.CUdevice_attribute(code), dev))
                except (ValueError, CudaError):  # newer than these bindings or this driver
                    pass
            name = check(cu.cuDeviceGetName(256, dev)).split(b"\0", 1)[0].decode()
            uuid = bytes(check(cu.cuDeviceGetUuid(dev)).bytes)
            info = DeviceInfo(name, check(cu.cuDeviceTotalMem(dev)), attributes, uuid, self.name)
            self._info[ordinal] = info
        return info

    def open_context(self, ordinal: int, slot: int) -> "GpuContext":
        attrs = self.device_info(ordinal).attributes
        arch = f"sm_{attrs['cudaDevAttrComputeCapabilityMajor']}{attrs['cudaDevAttrComputeCapabilityMinor']}"
        return GpuContext(self._device(ordinal), ordinal, slot, arch)


class _EventFence(Fence):
    """Done when its event has completed: cuEventSynchronize to wait (from a waiter thread), cuEventQuery to poll."""

    def __init__(self, ctx: "GpuContext", event: cu.CUevent) -> None:
        self._ctx, self._event = ctx, event

    def wait(self) -> None:
        self._ctx.enter()
        check(cu.cuEventSynchronize(self._event))

    def done(self) -> bool:
        self._ctx.enter()
        return _ready(cu.cuEventQuery(self._event))


class GpuEvent(Event):
    def __init__(self, ctx: "GpuContext", flags: int) -> None:
        self._ctx = ctx
        self.handle: cu.CUevent = check(cu.cuEventCreate(flags))  # CU_EVENT_* flags equal cudaEvent* flags

    def query(self) -> bool:
        self._ctx.enter()
        return _ready(cu.cuEventQuery(self.handle))

    def fence(self) -> Fence:
        return _EventFence(self._ctx, self.handle)

    def elapsed_ms(self, end: Event) -> float:
        self._ctx.enter()
        return check(cu.cuEventElapsedTime(self.handle, _event(end)))

    def destroy(self) -> None:
        self._ctx.enter()
        check(cu.cuEventDestroy(self.handle))


def _event(event: Event) -> cu.CUevent:
    if not isinstance(event, GpuEvent):
        raise CudaError(Error.cudaErrorInvalidResourceHandle, "not an event of this device")
    return event.handle


class GpuFunction(Function):
    def __init__(self, name: str, handle: cu.CUfunction) -> None:
        self.name = name
        self.handle = handle
        self.param_layout = _param_layout(handle)
        self.offsets = np.array([off for off, _ in self.param_layout], dtype=np.uint64)

    def attributes(self) -> FunctionAttributes:
        A = cu.CUfunction_attribute
        names = ("MAX_THREADS_PER_BLOCK", "SHARED_SIZE_BYTES", "CONST_SIZE_BYTES", "LOCAL_SIZE_BYTES", "NUM_REGS",
                 "PTX_VERSION", "BINARY_VERSION", "MAX_DYNAMIC_SHARED_SIZE_BYTES")
        return FunctionAttributes(*(check(cu.cuFuncGetAttribute(getattr(A, f"CU_FUNC_ATTRIBUTE_{n}"), self.handle))
                                    for n in names))

    def set_attribute(self, attribute: int, value: int) -> None:
        check(cu.cuFuncSetAttribute(self.handle, cu.CUfunction_attribute(attribute), value))


def _launch_config(grid, block, shared_bytes: int, stream: cu.CUstream, cooperative: bool,
                   cluster: tuple[int, int, int]) -> cu.CUlaunchConfig:
    """cuLaunchKernelEx's configuration for a launch in clusters of `cluster` blocks (and cooperative)."""
    A = cu.CUlaunchAttributeID
    shape = cu.CUlaunchAttribute()
    shape.id = A.CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
    shape.value.clusterDim.x, shape.value.clusterDim.y, shape.value.clusterDim.z = cluster
    attrs = [shape]
    if cooperative:
        together = cu.CUlaunchAttribute()
        together.id = A.CU_LAUNCH_ATTRIBUTE_COOPERATIVE
        together.value.cooperative = 1
        attrs.append(together)
    config = cu.CUlaunchConfig()
    config.gridDimX, config.gridDimY, config.gridDimZ = grid
    config.blockDimX, config.blockDimY, config.blockDimZ = block
    config.sharedMemBytes = shared_bytes
    config.hStream = stream
    config.attrs = attrs
    config.numAttrs = len(attrs)
    return config


def _param_layout(function: cu.CUfunction) -> list[tuple[int, int]]:
    """(offset, size) per parameter: the driver answers for index 0, 1, ... until there is no such parameter."""
    layout: list[tuple[int, int]] = []
    while True:
        result = cu.cuFuncGetParamInfo(function, len(layout))
        if result[0] == cu.CUresult.CUDA_ERROR_INVALID_VALUE:
            return layout
        offset, size = check(result)
        layout.append((int(offset), int(size)))


class GpuStream(Stream):
    def __init__(self, ctx: "GpuContext", handle: cu.CUstream) -> None:
        self._ctx = ctx
        self.handle = handle

    def copy_htod(self, dst: int, src: memoryview) -> None:
        self._ctx.enter()
        address, size = self._ctx.dma_address(src)
        check(cu.cuMemcpyHtoDAsync(dst, address, size, self.handle))

    def copy_dtoh(self, dst: memoryview, src: int) -> None:
        self._ctx.enter()
        address, size = self._ctx.dma_address(dst)
        check(cu.cuMemcpyDtoHAsync(address, src, size, self.handle))

    def copy_dtod(self, dst: int, src: int, size: int) -> None:
        self._ctx.enter()
        check(cu.cuMemcpyDtoDAsync(dst, src, size, self.handle))

    def memset(self, ptr: int, value: int, element_size: int, count: int) -> None:
        fill = {1: cu.cuMemsetD8Async, 2: cu.cuMemsetD16Async, 4: cu.cuMemsetD32Async}.get(element_size)
        if fill is None:
            raise CudaError(Error.cudaErrorInvalidValue, f"memset element size {element_size}")
        self._ctx.enter()
        check(fill(ptr, value & ((1 << (8 * element_size)) - 1), count, self.handle))

    def launch(self, function: Function, grid, block, shared_bytes: int, params: bytes,
               cooperative: bool = False, cluster: tuple[int, int, int] | None = None) -> None:
        if not isinstance(function, GpuFunction):
            raise CudaError(Error.cudaErrorInvalidResourceHandle, "not a function of this device")
        self._ctx.enter()
        block_bytes = np.frombuffer(params, np.uint8)  # the driver copies the values before cuLaunchKernel returns
        pointers = function.offsets + np.uint64(block_bytes.ctypes.data)
        kernel_params = pointers.ctypes.data if len(pointers) else 0
        if cluster is not None:
            check(cu.cuLaunchKernelEx(_launch_config(grid, block, shared_bytes, self.handle, cooperative, cluster),
                                      function.handle, kernel_params, 0))
        elif cooperative:
            check(cu.cuLaunchCooperativeKernel(function.handle, *grid, *block, shared_bytes, self.handle,
                                               kernel_params))
        else:
            check(cu.cuLaunchKernel(function.handle, *grid, *block, shared_bytes, self.handle, kernel_params, 0))

    def record(self, event: Event) -> None:
        self._ctx.enter()
        check(cu.cuEventRecord(_event(event), self.handle))

    def wait_event(self, event: Event) -> None:
        self._ctx.enter()
        check(cu.cuStreamWaitEvent(self.handle, _event(event), 0))

    def host_callback(self, fn: Callable[[int], None]) -> None:
        key = next(_callback_keys)
        _host_callbacks[key] = fn
        self._ctx.enter()
        try:  # cuStreamAddCallback, not cuLaunchHostFunc: it tells the callback the stream's error
            check(cu.cuStreamAddCallback(self.handle, _HOST_CALLBACK, key, 0))
        except CudaError:
            del _host_callbacks[key]
            raise

    def fence(self) -> Fence:
        return self._ctx.fence_on(self.handle)

    def destroy(self) -> None:
        self._ctx.enter()
        self._ctx.streams.discard(self)
        check(cu.cuStreamDestroy(self.handle))  # the driver frees it once its work has run


class GpuModule(Module):
    def __init__(self, ctx: "GpuContext", handle: cu.CUmodule) -> None:
        self._ctx, self.handle = ctx, handle

    def function(self, name: str) -> Function:
        self._ctx.enter()
        handle = check(cu.cuModuleGetFunction(self.handle, name.encode()))
        check(cu.cuFuncLoad(handle))  # lazy loading is the default: parameter info needs the function loaded
        return GpuFunction(name, handle)

    def global_symbol(self, name: str) -> tuple[int, int]:
        self._ctx.enter()
        result = cu.cuModuleGetGlobal(self.handle, name.encode())
        if result[0] == cu.CUresult.CUDA_ERROR_NOT_FOUND:  # what cudaGetSymbolAddress says
            raise CudaError(Error.cudaErrorInvalidSymbol, f"no __device__ or __constant__ variable {name!r} in the module")
        ptr, size = check(result)
        return int(ptr), int(size)

    def unload(self) -> None:
        self._ctx.enter()
        check(cu.cuModuleUnload(self.handle))


def _nvrtc_check(result: tuple):
    err, *outs = result
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise CudaError(Error.cudaErrorInvalidSource, f"NVRTC: {err.name}")
    return outs[0] if outs else None


def compile_source(source: bytes, arch: str) -> tuple[bytes, str]:
    """CUDA C to a cubin for `arch` (machine code: no PTX for the driver to reject), and the compile log."""
    program = _nvrtc_check(nvrtc.nvrtcCreateProgram(source, b"qcuda_module.cu", 0, [], []))
    try:
        options = [f"--gpu-architecture={arch}".encode()]
        compiled = nvrtc.nvrtcCompileProgram(program, len(options), options)[0]
        log = b" " * _nvrtc_check(nvrtc.nvrtcGetProgramLogSize(program))
        _nvrtc_check(nvrtc.nvrtcGetProgramLog(program, log))
        text = log.rstrip(b"\0").decode(errors="replace").strip()
        if compiled != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise CudaError(Error.cudaErrorInvalidSource, f"NVRTC could not compile the module ({compiled.name}):\n{text}")
        cubin = b" " * _nvrtc_check(nvrtc.nvrtcGetCUBINSize(program))
        _nvrtc_check(nvrtc.nvrtcGetCUBIN(program, cubin))
        return cubin, text
    finally:
        nvrtc.nvrtcDestroyProgram(program)


class GpuContext(Context):
    """One guest's primary context on one device."""

    def __init__(self, device: cu.CUdevice, ordinal: int, slot: int, arch: str) -> None:
        self._device = device
        self.ordinal = ordinal
        self.slot = slot  # where its addresses lie in the layout
        self.arch = arch
        self.handle: cu.CUcontext = check(cu.cuDevicePrimaryCtxRetain(device))
        self._sticky = 0
        self._spare_events: list[cu.CUevent] = []
        self._arena: tuple[int, int, int] | None = None  # (host address, size, address of the registered mapping)
        self._arena_registered = False
        self.streams: set[GpuStream] = set()
        self.enter()
        self.default_stream = GpuStream(self, cu.CUstream(cu.CU_STREAM_LEGACY))
        self._prop = cu.CUmemAllocationProp()
        self._prop.type = cu.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
        self._prop.location.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        self._prop.location.id = ordinal
        self._access = cu.CUmemAccessDesc()
        self._access.location.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        self._access.location.id = ordinal
        self._access.flags = cu.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
        self.heap = self._reserve_heap()

    def _reserve_heap(self) -> Heap:
        """Reserve the device's address range of the layout; the driver must give exactly that range."""
        base, size = heap_range(self.slot)
        granularity = int(check(cu.cuMemGetAllocationGranularity(
            self._prop, cu.CUmemAllocationGranularity_flags.CU_MEM_ALLOC_GRANULARITY_MINIMUM)))
        err, reserved = cu.cuMemAddressReserve(size, granularity, base, 0)
        if err != cu.CUresult.CUDA_SUCCESS or int(reserved) != base:
            if err == cu.CUresult.CUDA_SUCCESS:
                cu.cuMemAddressFree(reserved, size)
            answer = f"it offered 0x{int(reserved):x}" if err == cu.CUresult.CUDA_SUCCESS else _error(err).detail
            raise CudaError(Error.cudaErrorMemoryAllocation,
                            f"the driver would not reserve device {self.ordinal}'s address range [0x{base:x}, "
                            f"+{size >> 30} GiB) ({answer}): something in this worker already uses it")
        return Heap(base, size, granularity, self._map, self._unmap)

    def _map(self, address: int, size: int) -> None:
        """Back [address, +size) with new device memory, readable and writable by this device."""
        handle = check(cu.cuMemCreate(size, self._prop, 0))
        try:
            check(cu.cuMemMap(address, size, 0, handle, 0))
        finally:
            cu.cuMemRelease(handle)  # a mapped allocation lives until it is unmapped
        try:
            check(cu.cuMemSetAccess(address, size, [self._access], 1))
        except CudaError:
            cu.cuMemUnmap(address, size)
            raise

    def _unmap(self, address: int, size: int) -> None:
        check(cu.cuMemUnmap(address, size))

    def dma_address(self, buffer) -> tuple[int, int]:
        """(address, size) of a host buffer for a copy: arena bytes by their registered mapping, so they DMA."""
        address, size = _address(buffer)
        if self._arena is not None:
            start, length, mapped = self._arena
            if start <= address < start + length:
                return mapped + address - start, size
        return address, size

    def enter(self) -> None:
        """Make this context current in the calling thread (waiter threads call the driver too)."""
        if getattr(_tls, "ctx", None) is not self:
            check(cu.cuCtxSetCurrent(self.handle))
            _tls.ctx = self

    def break_with(self, code: int) -> None:
        if not self._sticky:
            self._sticky = code

    def sticky_error(self) -> int:
        return self._sticky

    def fence_on(self, stream: cu.CUstream) -> Fence:
        """Record a timing-free event on `stream`; the event goes back to a spare list once the fence is dropped."""
        self.enter()
        try:
            event = self._spare_events.pop()
        except IndexError:
            event = check(cu.cuEventCreate(EVENT_DISABLE_TIMING))
        check(cu.cuEventRecord(event, stream))
        fence = _EventFence(self, event)
        weakref.finalize(fence, self._spare_events.append, event)
        return fence

    # -- Context ---------------------------------------------------------------------------
    def alloc(self, size: int) -> int:
        self.enter()
        return self.heap.alloc(size)

    def free(self, ptr: int) -> None:
        self.enter()
        check(cu.cuCtxSynchronize())  # as cuMemFree: no earlier work may still use memory unmapped or reused
        self.heap.free(ptr)

    def mem_info(self) -> tuple[int, int]:
        self.enter()
        free, total = check(cu.cuMemGetInfo())
        return int(free), int(total)

    def map_host(self, buffer) -> int:
        """Map the channel arena again at this device's arena address, page-lock it there and map it for the GPU.

        Copies DMA straight from guest-visible memory, and kernels see it at the layout's address.
        """
        self.enter()
        address, size = _address(buffer)
        target, room = arena_range(self.slot)
        if size > room:
            raise CudaError(Error.cudaErrorInvalidValue, f"a {size}-byte arena exceeds its address range")
        map_again(address, size, target)
        self._arena = (address, size, target)
        result = cu.cuMemHostRegister(target, size, _MAP_FLAGS)
        if result[0] != cu.CUresult.CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED:  # portable: kept across a reset
            check(result)
            self._arena_registered = True
        pointer = int(check(cu.cuMemHostGetDevicePointer(target, 0)))
        if pointer != target:
            raise CudaError(Error.cudaErrorNotSupported,
                            f"the driver maps host memory at 0x{target:x} to device address 0x{pointer:x}: "
                            "qcuda needs a GPU whose device pointer of registered memory is its host address")
        return target

    def create_stream(self, flags: int, priority: int) -> Stream:
        self.enter()
        stream = GpuStream(self, check(cu.cuStreamCreateWithPriority(flags, priority)))  # flags as cudaStream*
        self.streams.add(stream)
        return stream

    def create_event(self, flags: int) -> Event:
        self.enter()
        return GpuEvent(self, flags)

    def load_module(self, image: bytes, kind: int) -> tuple[Module, str]:
        log = ""
        if kind == MODULE_SOURCE:
            image, log = compile_source(image, self.arch)
        elif kind != MODULE_IMAGE:
            raise CudaError(Error.cudaErrorInvalidValue, f"unknown module kind {kind}")
        elif not image.startswith((_ELF_MAGIC, _FATBIN_MAGIC)):
            image = image.rstrip(b"\0") + b"\0"  # PTX text: the driver reads up to a NUL
        self.enter()
        return GpuModule(self, check(cu.cuModuleLoadData(image))), log

    def synchronize_fence(self) -> Fence:
        return AllDone([s.fence() for s in (self.default_stream, *self.streams)])

    def close(self) -> None:
        """Reset the primary context: frees its memory, streams, events and modules at once, also after a fault."""
        cu.cuCtxSetCurrent(self.handle)
        if self._arena is not None:
            _, size, mapped = self._arena
            if self._arena_registered:
                cu.cuMemHostUnregister(mapped)  # fails after a fault; the reset frees it then
            unmap(mapped, size)
            self._arena = None
        self.heap.release_all()
        cu.cuMemAddressFree(self.heap.base, self.heap.size)  # fails after a fault if a mapping stayed
        _tls.ctx = None
        check(cu.cuDevicePrimaryCtxReset(self._device))
        check(cu.cuDevicePrimaryCtxRelease(self._device))
