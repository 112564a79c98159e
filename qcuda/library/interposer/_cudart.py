"""The CUDA runtime calls of qcuda's libcudart.so.13, in Python.

cffi's embedding mode calls these from the program's own threads (build.py declares them); each
returns a cudaError_t and records a failure as the thread's last error (kept in C). They are
built on the guest library: devices, buffers, streams, events and modules, so the program's
calls travel to the daemon exactly as the Python API's do. Waiting for the daemon always happens
in `threading.Event.wait`, which releases the GIL: other program threads keep running.

Handles the program sees: device pointers are the daemon's own addresses (the guest reserves the
device ranges, so no host pointer ever equals one); streams and events are small opaque numbers
of this process; a kernel is the address of its host stub; a module is loaded on a device at the
first launch of one of its kernels or use of one of its variables.
"""
from __future__ import annotations

import bisect
import ctypes
import io
import mmap
import os
import struct
import sys
import threading
import traceback
from typing import Callable

import numpy as np

from ...protocol import messages as m
from ...protocol.addresses import RESERVED
from ...protocol._cuda_tables import DEVICE_ATTRIBUTES
from ...protocol.errors import CudaError, Error
from .. import _device
from .._device import Device
from .._memory import DeviceBuffer, HostBuffer
from .._module import Kernel, Module
from .._stream import Event, Stream
from ._cudart_abi import (
    DEFINES, STRUCTS, cudaFuncAttribute, cudaFuncCache, cudaGraphNodeType, cudaLaunchAttributeID, cudaLimit,
    cudaMemAccessFlags, cudaMemAllocationType, cudaMemcpyKind, cudaMemLocationType, cudaMemoryAdvise, cudaMemoryType,
    cudaMemPoolAttr, cudaStreamCaptureMode, cudaStreamCaptureStatus,
)

ffi = lib = None  # the library's cffi objects, set by install()

VERBOSE = bool(os.environ.get("QCUDA_VERBOSE"))
NOT_READY = Error.cudaErrorNotReady  # a status, not an error: never the thread's last error
LEGACY_STREAMS = (0, 1, 2)  # 0, cudaStreamLegacy, cudaStreamPerThread: a default stream
PER_THREAD = 2  # cudaStreamPerThread; 0 means it too in the _ptsz/_ptds variants (--default-stream per-thread)
_ptds = threading.local()  # .on: this thread is in a _ptsz/_ptds call
PITCH_ALIGNMENT = 512
LEAST_PRIORITY, GREATEST_PRIORITY = 0, -5  # cudaDeviceGetStreamPriorityRange on sm_90
HOST_TO_HOST, HOST_TO_DEVICE, DEVICE_TO_HOST, DEVICE_TO_DEVICE, DEFAULT = (
    cudaMemcpyKind[k] for k in ("cudaMemcpyHostToHost", "cudaMemcpyHostToDevice", "cudaMemcpyDeviceToHost",
                                "cudaMemcpyDeviceToDevice", "cudaMemcpyDefault"))
ATTRIBUTES = dict(DEVICE_ATTRIBUTES)
# cudaDeviceProp fields whose cudaDevAttr is not simply the field's name capitalised
FIELD_ATTRIBUTES = {
    "sharedMemPerBlock": "MaxSharedMemoryPerBlock", "regsPerBlock": "MaxRegistersPerBlock", "memPitch": "MaxPitch",
    "totalConstMem": "TotalConstantMemory", "major": "ComputeCapabilityMajor", "minor": "ComputeCapabilityMinor",
    "ECCEnabled": "EccEnabled", "pciBusID": "PciBusId", "pciDeviceID": "PciDeviceId", "pciDomainID": "PciDomainId",
    "memoryBusWidth": "GlobalMemoryBusWidth", "persistingL2CacheMaxSize": "MaxPersistingL2CacheSize",
    "sharedMemPerMultiprocessor": "MaxSharedMemoryPerMultiprocessor",
    "regsPerMultiprocessor": "MaxRegistersPerMultiprocessor", "sharedMemPerBlockOptin": "MaxSharedMemoryPerBlockOptin",
    "maxBlocksPerMultiProcessor": "MaxBlocksPerMultiprocessor", "accessPolicyMaxWindowSize": "MaxAccessPolicyWindowSize",
    "reservedSharedMemPerBlock": "ReservedSharedMemoryPerBlock", "gpuDirectRDMASupported": "GPUDirectRDMASupported",
    "gpuDirectRDMAFlushWritesOptions": "GPUDirectRDMAFlushWritesOptions",
    "gpuDirectRDMAWritesOrdering": "GPUDirectRDMAWritesOrdering", "ipcEventSupported": "IpcEventSupport",
    "deviceNumaConfig": "NumaConfig", "deviceNumaId": "NumaId", "gpuPciDeviceID": "GpuPciDeviceId",
    "gpuPciSubsystemID": "GpuPciSubsystemId", "maxThreadsDim": "MaxBlockDim", "maxGridSize": "MaxGridDim",
}
ARRAY_SUFFIXES = {"MaxBlockDim": "XYZ", "MaxGridDim": "XYZ"}
# what cudaDeviceGetLimit answers before cudaDeviceSetLimit (CUDA's defaults on sm_90)
DEFAULT_LIMITS = {
    "cudaLimitStackSize": 1024, "cudaLimitPrintfFifoSize": 1 << 20, "cudaLimitMallocHeapSize": 8 << 20,
    "cudaLimitDevRuntimeSyncDepth": 2, "cudaLimitDevRuntimePendingLaunchCount": 2048,
    "cudaLimitMaxL2FetchGranularity": 64, "cudaLimitPersistingL2CacheSize": 0,
}


class State:
    """What this process's runtime knows: its devices, allocations, handles and loaded modules."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.devices: dict[int, Device] = {}
        self.starts: list[int] = []  # sorted device-memory starts (allocations and module variables)
        self.ranges: dict[int, tuple[int, int, DeviceBuffer | None]] = {}  # start -> (size, device, buffer)
        self.pinned: dict[int, tuple[HostBuffer, int]] = {}  # host address -> (arena buffer, flags)
        self.registered: dict[int, tuple[int, int]] = {}  # cudaHostRegister: address -> (size, flags)
        self.streams: dict[int, Stream] = {}
        self.per_thread: dict[tuple[int, int], Stream] = {}  # (thread id, device) -> its per-thread default stream
        self.ended_streams: list[Stream] = []  # per-thread streams of threads that have ended
        self.stream_info: dict[int, tuple[int, int]] = {}  # handle -> (flags, priority)
        self.events: dict[int, Event] = {}
        self.next_handle = 0x1000
        self.modules: dict[tuple[int, int], Module] = {}  # (fatbin, device) -> module
        self.kernels: dict[tuple[int, int], Kernel] = {}  # (host stub, device) -> kernel
        self.symbols: dict[tuple[int, int], tuple[int, int]] = {}  # (host variable, device) -> (ptr, size)
        self.arena_device: dict[int, int] = {}  # device -> where kernels see the arena
        self.alias: dict[int, int | None] = {}  # device -> where this process sees the arena at that same address
        self.launch_limits: dict[int, tuple[int, tuple[int, ...], tuple[int, ...], int]] = {}
        self.flags: dict[int, int] = {}
        self.cache_config: dict[int, int] = {}
        self.limits: dict[tuple[int, int], int] = {}
        self.captures: dict[int | tuple, Capture] = {}  # capturing stream (_key) -> its capture
        self.captured_events: dict[int, tuple[Capture, tuple[Node, ...]]] = {}  # recorded in a capture
        self.graphs: dict[int, Graph] = {}
        self.graph_execs: dict[int, GraphExec] = {}
        self.nodes: dict[int, Node] = {}
        self.capture_ids = 0
        self.function_attributes: dict[int, dict[str, int]] = {}  # kernel handle -> its attributes
        self.managed: dict[int, Managed] = {}  # cudaMallocManaged: address -> allocation
        self.managed_streams: dict[int, Stream] = {}
        self.pools: dict[int, MemPool] = {}  # cudaMemPool_t handle -> pool
        self.default_pools: dict[int, MemPool] = {}  # device -> its default pool
        self.current_pools: dict[int, MemPool] = {}  # device -> the pool cudaMallocAsync uses, if not the default
        self.pool_of: dict[int, MemPool] = {}  # address handed out by a pool -> that pool
        self.host_dirty = False  # the host may have written managed memory since the last transfer
        self.device_touched = False  # device work ran since the last synchronisation point

    def handle(self) -> int:
        self.next_handle += 0x10
        return self.next_handle

    def track(self, ptr: int, size: int, device: int, buffer: DeviceBuffer | None) -> None:
        if ptr not in self.ranges:
            bisect.insort(self.starts, ptr)
        self.ranges[ptr] = (size, device, buffer)

    def untrack(self, ptr: int) -> tuple[int, int, DeviceBuffer | None]:
        self.starts.remove(ptr)
        return self.ranges.pop(ptr)


S = State()


# ---- plumbing -------------------------------------------------------------------------------------
def _addr(p) -> int:
    return int(ffi.cast("uintptr_t", p))


def _bytes(address: int, size: int) -> memoryview:
    """The program's memory at `address` as a writable memoryview (no copy)."""
    return memoryview(ffi.buffer(ffi.cast("char *", address), size))


def _out(p, ctype: str, value) -> None:
    """Store a result through one of the program's pointers."""
    if p == ffi.NULL:
        raise CudaError(Error.cudaErrorInvalidValue, "a NULL result pointer")
    ffi.cast(ctype + " *", p)[0] = value


def device(ordinal: int | None = None) -> Device:
    """The Device of `ordinal` (default: this thread's current device), connecting on first use."""
    o = _device.current_device() if ordinal is None else ordinal
    dev = S.devices.get(o)
    if dev is None:
        dev = S.devices.setdefault(o, Device(o))
    return dev


def _legacy(h: int) -> bool:
    """Whether stream handle `h` means the legacy default stream in this call."""
    return h == 1 or h == 0 and not getattr(_ptds, "on", False)


def _stream(handle) -> tuple[Stream | None, Device]:
    h = _addr(handle)
    if h in LEGACY_STREAMS:
        if _legacy(h):
            return None, device()
        return _per_thread_stream(), device()
    s = S.streams.get(h)
    if s is None:
        raise CudaError(Error.cudaErrorInvalidResourceHandle, f"stream 0x{h:x} is not one of this process's")
    return s, s.device


class ThreadStreams:
    """A thread's per-thread default streams, by device. It sits in a thread-local slot, so Python drops it when
    the thread ends (cffi keeps a C thread's Python state until then); CUDA frees a thread's per-thread stream
    then, and so does qcuda: the streams are queued and destroyed at the next per-thread stream's creation (not
    from the ending thread's teardown, where calling the daemon is not safe)."""

    def __init__(self) -> None:
        self.streams: dict[int, Stream] = {}

    def __del__(self) -> None:
        S.ended_streams.extend(self.streams.values())


_thread_streams = threading.local()  # .owner: this thread's ThreadStreams


def _per_thread_stream() -> Stream:
    """The calling thread's default stream on the current device (created at its first use): as CUDA defines
    it, a blocking stream, so it synchronises with the legacy stream but not with other streams."""
    dev = device()
    key = (threading.get_ident(), dev.ordinal)
    owner = getattr(_thread_streams, "owner", None)
    if owner is None:
        owner = _thread_streams.owner = ThreadStreams()
    s = owner.streams.get(dev.ordinal)
    if s is None or S.per_thread.get(key) is not s:  # none yet, or cudaDeviceReset dropped it
        _destroy_ended_streams()
        s = owner.streams[dev.ordinal] = S.per_thread[key] = dev.create_stream(non_blocking=False)
    return s


def _destroy_ended_streams() -> None:
    """Destroy the per-thread streams of threads that have ended (a reset device's are gone already)."""
    while S.ended_streams:
        s = S.ended_streams.pop()
        key = next((k for k, v in S.per_thread.items() if v is s), None)
        if key is not None:
            del S.per_thread[key]
        try:
            s.destroy()  # nothing to do where cudaDeviceReset dropped it already
        except CudaError:
            pass  # its device went away: nothing is left to free


def _key(stream) -> int | tuple:
    """A stream handle as the capture tables know it: itself, or which thread's per-thread stream it names."""
    h = _addr(stream)
    if h == PER_THREAD or h == 0 and getattr(_ptds, "on", False):
        return ("per-thread", threading.get_ident(), _device.current_device())
    return h


def _per_thread_variant(fn: Callable) -> Callable:
    """The _ptsz/_ptds form of a call: stream 0 in it is the thread's per-thread default stream."""

    def call(*args):
        before = getattr(_ptds, "on", False)
        _ptds.on = True
        try:
            return fn(*args)
        finally:
            _ptds.on = before

    return call


def _owned(table: dict, handle, kind: str, error: Error):
    """The object `handle` names in one of this process's handle tables, or `error` naming what it is not."""
    found = table.get(_addr(handle))
    if found is None:
        raise CudaError(error, f"{kind} 0x{_addr(handle):x} is not one of this process's")
    return found


def _event(handle) -> Event:
    return _owned(S.events, handle, "event", Error.cudaErrorInvalidResourceHandle)


def _wire(s: Stream | None) -> int:
    return 0 if s is None else s.handle


def _arena_device_base(dev: Device) -> int:
    base = S.arena_device.get(dev.ordinal)
    if base is None:
        reply = dev.client.call(m.ArenaDevicePointer(dev.remote_ordinal))
        base = S.arena_device[dev.ordinal] = reply.ptr
    return base


def _alias(dev: Device) -> int | None:
    """Map the arena a second time at the address where `dev`'s kernels see it (once per device), so that pinned
    memory has one address on both sides, as under CUDA's unified addressing; None where that cannot be."""
    if dev.ordinal not in S.alias:
        S.alias[dev.ordinal] = None
        client = dev.client
        if client.channel.shared_arena:
            want, size = _arena_device_base(dev), len(client.channel.arena)
            if RESERVED[0] <= want and want + size <= RESERVED[0] + RESERVED[1]:  # only over our own reservation
                placed = lib.qcuda_alias(ffi.cast("void *", client._arena_address), size, ffi.cast("void *", want))
                if _addr(placed) == want:
                    S.alias[dev.ordinal] = want
    return S.alias[dev.ordinal]


def _arena_of(address: int) -> tuple[Device, int] | None:
    """(device, arena offset) where `address` is this process's view of a channel arena: pinned memory."""
    for dev in list(S.devices.values()):
        client = dev.client
        for base in (S.alias.get(dev.ordinal), client._arena_address):
            if base is not None and base <= address < base + len(client.channel.arena):
                return dev, address - base
    return None


def _host_view(address: int, count: int) -> memoryview:
    """The program's host bytes; pinned ones through the client's own arena view, so copies of them are zero-copy."""
    found = _arena_of(address)
    if found is None:
        return _bytes(address, count)
    dev, offset = found
    return dev.client.channel.arena[offset:offset + count]


def _locate(address: int, size: int) -> tuple[str, Device | None]:
    """("device" | "pinned" | "host", owner) for [address, +size) of the program's view."""
    i = bisect.bisect_right(S.starts, address) - 1
    if i >= 0:
        start = S.starts[i]
        length, ordinal, _ = S.ranges[start]
        if address < start + max(length, 1):
            return "device", device(ordinal)
    found = _arena_of(address)
    if found is not None:
        return "pinned", found[0]
    for dev in list(S.devices.values()):
        base = S.arena_device.get(dev.ordinal)
        if base is not None and base <= address < base + len(dev.client.channel.arena):
            return "device", dev
    return "host", None


# ---- modules and launches ---------------------------------------------------------------------
def _module(fatbin, dev: Device) -> Module:
    key = (_addr(fatbin), dev.ordinal)
    with S.lock:
        module = S.modules.get(key)
        if module is None:
            if fatbin.size == 0:
                raise CudaError(Error.cudaErrorInvalidKernelImage, "the program registered a fatbin qcuda cannot read")
            module = S.modules[key] = dev.load_module(ffi.buffer(fatbin.image, fatbin.size)[:])
        return module


def _kernel(host: int, dev: Device) -> Kernel:
    kernel = S.kernels.get((host, dev.ordinal))
    if kernel is None:
        fn = lib.qcuda_find_function(ffi.cast("void *", host))
        if fn == ffi.NULL:  # CUDA 13 answers a launch of a non-kernel so
            raise CudaError(Error.cudaErrorInvalidResourceHandle, f"0x{host:x} is not a registered kernel")
        kernel = _module(fn.fatbin, dev).get_kernel(ffi.string(fn.name).decode())
        S.kernels[(host, dev.ordinal)] = kernel
    return kernel


def _launch_limits(dev: Device) -> tuple[int, tuple[int, ...], tuple[int, ...], int]:
    """(threads per block, block dims, grid dims, dynamic shared bytes) the device allows; read once per device."""
    limits = S.launch_limits.get(dev.ordinal)
    if limits is None:
        a = dev.attributes
        limits = S.launch_limits[dev.ordinal] = (
            a["cudaDevAttrMaxThreadsPerBlock"], tuple(a["cudaDevAttrMaxBlockDim" + c] for c in "XYZ"),
            tuple(a["cudaDevAttrMaxGridDim" + c] for c in "XYZ"),
            a.get("cudaDevAttrMaxSharedMemoryPerBlockOptin", a["cudaDevAttrMaxSharedMemoryPerBlock"]))
    return limits


def _check_configuration(dev: Device, grid: tuple[int, ...], block: tuple[int, ...], shared: int) -> None:
    """Refuse a launch configuration the device cannot run, at the launch, as CUDA 13 does: cudaErrorInvalidValue
    (checked on an H100: launches reach the driver's cuLaunchKernel, whose answer is that, not cudaErrorInvalidConfiguration)."""
    threads, block_dims, grid_dims, max_shared = _launch_limits(dev)
    if (min(grid) < 1 or min(block) < 1 or block[0] * block[1] * block[2] > threads
            or block[0] > block_dims[0] or block[1] > block_dims[1] or block[2] > block_dims[2]
            or grid[0] > grid_dims[0] or grid[1] > grid_dims[1] or grid[2] > grid_dims[2]):
        raise CudaError(Error.cudaErrorInvalidValue, f"launch configuration grid {grid} block {block}")
    if shared > max_shared:
        raise CudaError(Error.cudaErrorInvalidValue, f"{shared} bytes of dynamic shared memory")


def cudaLaunchKernel(func, grid, block, args, shared: int, stream) -> None:
    _launch(func, (grid.x, grid.y, grid.z), (block.x, block.y, block.z), args, shared, stream, False)


def cudaLaunchCooperativeKernel(func, grid, block, args, shared: int, stream) -> None:
    _launch(func, (grid.x, grid.y, grid.z), (block.x, block.y, block.z), args, shared, stream, True)


def _launch(func, g: tuple[int, ...], b: tuple[int, ...], args, shared: int, stream, cooperative: bool,
            cluster: tuple[int, int, int] | None = None) -> None:
    s, dev = _stream(stream)
    _submit_launch(dev, _launch_builder(func, g, b, args, shared, dev, cooperative, cluster), _addr(stream), s)


def _launch_builder(func, g: tuple[int, ...], b: tuple[int, ...], args, shared: int, dev: Device,
                    cooperative: bool = False, cluster: tuple[int, int, int] | None = None) -> Callable[[int], m.Message]:
    """Check a launch and take its arguments by value now; the result makes its message for a wire stream."""
    kernel = _kernel(_addr(func), dev)
    _check_configuration(dev, g, b, shared)
    if cooperative:
        if not dev.attributes.get("cudaDevAttrCooperativeLaunch"):
            raise CudaError(Error.cudaErrorNotSupported, "the device does not run cooperative launches")
        resident = _blocks_per_sm(dev, _function_attributes(func, dev), b[0] * b[1] * b[2], shared)
        if g[0] * g[1] * g[2] > resident * dev.attributes["cudaDevAttrMultiProcessorCount"]:
            raise CudaError(Error.cudaErrorCooperativeLaunchTooLarge,
                            f"grid {g}: {resident} blocks per SM fit")
    layout = kernel.param_layout
    params = bytearray(kernel.param_size)
    if layout and args == ffi.NULL:
        raise CudaError(Error.cudaErrorInvalidValue, "no kernel arguments")
    for i, (off, n) in enumerate(layout):
        params[off:off + n] = ffi.buffer(args[i], n)
    block = bytes(params)
    if cluster is not None:
        if min(cluster) < 1 or cluster[0] * cluster[1] * cluster[2] > m.MAX_CLUSTER_BLOCKS or any(
                x % c for x, c in zip(g, cluster)):
            raise CudaError(Error.cudaErrorInvalidClusterSize, f"grid {g} in clusters {cluster}")
        flag = int(cooperative)
        return lambda h: m.LaunchCluster(kernel.handle, *g, *b, shared, h, *cluster, flag, block)
    kind = m.LaunchCooperative if cooperative else m.Launch
    return lambda h: kind(kernel.handle, *g, *b, shared, h, block)


# cudaLaunchConfig_t and cudaLaunchAttribute (offsets measured with offsetof against CUDA 13.0's headers)
CONFIG_FORMAT, ATTRIBUTE_SIZE, ATTRIBUTE_VALUE = "<3I3IQQQI", 72, 8
ATTR = cudaLaunchAttributeID
IGNORED_ATTRIBUTES = {ATTR[k] for k in (  # hints and scheduling preferences with no effect on a result
    "cudaLaunchAttributeIgnore", "cudaLaunchAttributeAccessPolicyWindow", "cudaLaunchAttributePriority",
    "cudaLaunchAttributeSynchronizationPolicy", "cudaLaunchAttributeClusterSchedulingPolicyPreference",
    "cudaLaunchAttributeMemSyncDomainMap", "cudaLaunchAttributeMemSyncDomain",
    "cudaLaunchAttributePreferredSharedMemoryCarveout", "cudaLaunchAttributeNvlinkUtilCentricScheduling",
    "cudaLaunchAttributeProgrammaticStreamSerialization")}


def cudaLaunchKernelExC(config, func, args) -> None:
    """cudaLaunchKernelEx (a header template over this): the configuration struct and its attributes. Cooperative
    launches and thread block clusters are run; priorities and the other scheduling hints are accepted."""
    if config == ffi.NULL:
        raise CudaError(Error.cudaErrorInvalidValue, "a NULL launch configuration")
    raw = bytes(ffi.buffer(ffi.cast("char *", config), struct.calcsize(CONFIG_FORMAT)))
    gx, gy, gz, bx, by, bz, shared, stream, attrs, count = struct.unpack(CONFIG_FORMAT, raw)
    if count and attrs == 0:
        raise CudaError(Error.cudaErrorInvalidValue, "attributes announced but none given")
    cooperative, cluster = False, None
    for i in range(count):
        base = attrs + i * ATTRIBUTE_SIZE
        ident = struct.unpack("<i", _bytes(base, 4))[0]
        value = _bytes(base + ATTRIBUTE_VALUE, 12)
        if ident == ATTR["cudaLaunchAttributeCooperative"]:
            cooperative = struct.unpack("<i", value[:4])[0] != 0
        elif ident == ATTR["cudaLaunchAttributeClusterDimension"]:
            shape = struct.unpack("<3I", value)
            if shape != (0, 0, 0):
                cluster = shape
        elif ident == ATTR["cudaLaunchAttributePreferredClusterDimension"]:
            pass  # a preference: the required shape (or one block) always satisfies it
        elif ident not in IGNORED_ATTRIBUTES:
            raise CudaError(Error.cudaErrorNotSupported, f"launch attribute {ident}")
    _launch(func, (gx, gy, gz), (bx, by, bz), args, shared, ffi.cast("void *", stream), cooperative, cluster)


def _submit_launch(dev: Device, build: Callable[[int], m.Message], stream: int, s: Stream | None = None) -> None:
    """Post the launch `build` makes for a wire stream handle on `stream` (already resolved to `s`, if given), or
    record it when the stream captures (the arguments were taken by value before)."""
    if not _record(stream, "kernel", lambda h: _submit_launch(dev, build, h)):
        _device_work()
        dev.client.post(build(_wire(s if s is not None else _stream(stream)[0])))


__cudaLaunchKernel = cudaLaunchKernel


def cudaFuncSetAttribute(func, attr: int, value: int) -> None:
    """Set on the device's kernel (the daemon holds opt-in shared memory to what the device allows)."""
    if lib.qcuda_find_function(func) == ffi.NULL:
        raise CudaError(Error.cudaErrorInvalidResourceHandle, "not a registered kernel")  # CUDA 13's answer
    if attr not in cudaFuncAttribute.values():
        raise CudaError(Error.cudaErrorInvalidValue, f"function attribute {attr}")
    dev = device()
    kernel = _kernel(_addr(func), dev)
    S.function_attributes.pop(kernel.handle, None)
    dev.client.call(m.FuncSetAttribute(kernel.handle, attr, value))


def _cache_config(config: int) -> int:
    if config not in cudaFuncCache.values():
        raise CudaError(Error.cudaErrorInvalidValue, f"cache configuration {config}")
    return config


def cudaDeviceSetCacheConfig(config: int) -> None:
    """A preference, as in CUDA: remembered and answered back; the split of L1 and shared memory is the device's."""
    S.cache_config[device().ordinal] = _cache_config(config)


def cudaDeviceGetCacheConfig(config) -> None:
    _out(config, "int", S.cache_config.get(device().ordinal, cudaFuncCache["cudaFuncCachePreferNone"]))


def cudaFuncSetCacheConfig(func, config: int) -> None:
    """A preference, as in CUDA: checked and accepted."""
    if lib.qcuda_find_function(func) == ffi.NULL:
        raise CudaError(Error.cudaErrorInvalidResourceHandle, "not a registered kernel")  # CUDA 13's answer
    _cache_config(config)


def cudaFuncGetAttributes(attr, func) -> None:
    """The device's own answer for the kernel: registers, static shared, constant and local memory, limits."""
    dev = device()
    if lib.qcuda_find_function(func) == ffi.NULL:
        raise CudaError(Error.cudaErrorInvalidResourceHandle, "not a registered kernel")  # CUDA 13's answer
    a = _kernel(_addr(func), dev).attributes()
    values = {"maxThreadsPerBlock": a["max_threads_per_block"], "sharedSizeBytes": a["shared_size_bytes"],
              "constSizeBytes": a["const_size_bytes"], "localSizeBytes": a["local_size_bytes"],
              "numRegs": a["num_regs"], "ptxVersion": a["ptx_version"], "binaryVersion": a["binary_version"],
              "maxDynamicSharedSizeBytes": a["max_dynamic_shared_size_bytes"]}
    _fill(attr, "cudaFuncAttributes", values)


def _fill(p, struct_name: str, values: dict) -> None:
    """Zero the program's struct at `p`, then set the named fields (offsets generated from the headers)."""
    if p == ffi.NULL:
        raise CudaError(Error.cudaErrorInvalidValue, f"a NULL {struct_name} pointer")
    size, fields = STRUCTS[struct_name]
    buf = ffi.buffer(ffi.cast("char *", p), size)
    buf[:] = bytes(size)
    for name, off, code, count in fields:
        if name in values:
            value = values[name]
            data = value if isinstance(value, bytes) else struct.pack("<" + code * count,
                                                                      *(value if count > 1 else [value]))
            buf[off:off + len(data)] = data


def _read(p, struct_name: str) -> dict:
    """The program's struct at `p`, field by field (offsets generated from the headers)."""
    if p == ffi.NULL:
        raise CudaError(Error.cudaErrorInvalidValue, f"a NULL {struct_name} pointer")
    size, fields = STRUCTS[struct_name]
    raw = bytes(ffi.buffer(ffi.cast("char *", p), size))
    out = {}
    for name, off, code, count in fields:
        value = struct.unpack_from("<" + code * count, raw, off)
        out[name] = value[0] if len(value) == 1 else value
    return out


# ---- devices ----------------------------------------------------------------------------------
def cudaGetDeviceCount(count) -> None:
    try:
        n = _device.device_count()
    except CudaError:
        _out(count, "int", 0)
        raise
    _out(count, "int", n)
    if n == 0:
        raise CudaError(Error.cudaErrorNoDevice)


def cudaSetDevice(ordinal: int) -> None:
    _device.set_device(ordinal)


def cudaGetDevice(ordinal) -> None:
    _out(ordinal, "int", _device.current_device())


def cudaInitDevice(ordinal: int, device_flags: int, flags: int) -> None:
    device(ordinal)


def _attribute(dev: Device, name: str) -> int:
    """A device attribute as this library presents it: managed memory and memory pools are its own."""
    own = LIBRARY_ATTRIBUTES.get(name)
    return dev.attributes.get(name, 0) if own is None else own


def _properties(dev: Device) -> dict:
    attrs = {**dev.attributes, **LIBRARY_ATTRIBUTES}
    values: dict = {"name": dev.name.encode()[:255] + b"\0", "uuid": bytes.fromhex(dev.properties["uuid"]),
                    "totalGlobalMem": dev.total_memory}
    for name, _, _, count in STRUCTS["cudaDeviceProp"][1]:
        if name in values:
            continue
        stem = FIELD_ATTRIBUTES.get(name, name[:1].upper() + name[1:])
        keys = [f"cudaDevAttr{stem}{c}" for c in ARRAY_SUFFIXES.get(stem, "")] if count > 1 else [f"cudaDevAttr{stem}"]
        if all(k in ATTRIBUTES.values() for k in keys) and keys:
            found = [attrs.get(k, 0) for k in keys]
            values[name] = found if count > 1 else found[0]
    return values


def cudaGetDeviceProperties(prop, ordinal: int) -> None:
    _fill(prop, "cudaDeviceProp", _properties(device(ordinal)))


def cudaDeviceGetAttribute(value, attr: int, ordinal: int) -> None:
    name = ATTRIBUTES.get(attr)
    if name is None:
        raise CudaError(Error.cudaErrorInvalidValue, f"device attribute {attr}")
    _out(value, "int", _attribute(device(ordinal), name))


def cudaDeviceSynchronize() -> None:
    if S.captures:  # it would wait for capturing streams: refused, and their captures are over
        for cap in S.captures.values():
            cap.invalidate()
        raise CudaError(Error.cudaErrorStreamCaptureUnsupported, "cudaDeviceSynchronize while a stream captures")
    device().synchronize()
    _synchronised()


def cudaDeviceReset() -> None:
    """Frees everything of the current device in this process; later calls start afresh."""
    dev = device()
    dev.reset()
    o = dev.ordinal
    with S.lock:
        for ptr in [p for p, (_, d, _) in S.ranges.items() if d == o]:
            buffer = S.untrack(ptr)[2]
            if buffer is not None:
                buffer._finalizer.detach()
            mem = S.managed.pop(ptr, None)
            if mem is not None:
                _map(ptr, mem.length, _PROT_NONE)
        managed_stream = S.managed_streams.pop(o, None)
        if managed_stream is not None:
            managed_stream._finalizer.detach()
        for h in [h for h, pool in S.pools.items() if pool.dev.ordinal == o]:
            pool = S.pools.pop(h)
            for block in [*pool.kept, *pool.live.values()]:
                block.buffer._finalizer.detach()
                if block.event is not None and block.event._finalizer is not None:
                    block.event._finalizer.detach()
        S.default_pools.pop(o, None)
        S.current_pools.pop(o, None)
        for address in [a for a, pool in S.pool_of.items() if pool.dev.ordinal == o]:
            del S.pool_of[address]
        for key in [k for k in S.per_thread if k[1] == o]:
            S.per_thread.pop(key)._finalizer.detach()
        for table in (S.modules, S.kernels, S.symbols):
            for key in [k for k in table if k[1] == o]:
                item = table.pop(key)
                if isinstance(item, Module):
                    item._finalizer.detach()
        for table in (S.streams, S.events):
            for h in [h for h, obj in table.items() if obj.device.ordinal == o]:
                finalizer = table.pop(h)._finalizer
                if finalizer is not None:
                    finalizer.detach()
        S.arena_device.pop(o, None)
        S.launch_limits.pop(o, None)
        S.flags.pop(o, None)
        S.cache_config.pop(o, None)
        S.function_attributes.clear()
        for key in [k for k in S.limits if k[0] == o]:
            del S.limits[key]


def cudaSetDeviceFlags(flags: int) -> None:
    S.flags[device().ordinal] = flags


def cudaGetDeviceFlags(flags) -> None:
    _out(flags, "unsigned int", S.flags.get(device().ordinal, 0))


def _limit(limit: int) -> str:
    for name, value in cudaLimit.items():
        if value == limit:
            return name
    raise CudaError(Error.cudaErrorInvalidValue, f"limit {limit}")


def cudaDeviceSetLimit(limit: int, value: int) -> None:
    _limit(limit)
    S.limits[(device().ordinal, limit)] = value


def cudaDeviceGetLimit(value, limit: int) -> None:
    name = _limit(limit)
    _out(value, "size_t", S.limits.get((device().ordinal, limit), DEFAULT_LIMITS[name]))


def cudaDeviceGetStreamPriorityRange(least, greatest) -> None:
    if least != ffi.NULL:
        _out(least, "int", 0)
    if greatest != ffi.NULL:
        _out(greatest, "int", -5)


def cudaDeviceGetPCIBusId(text, length: int, ordinal: int) -> None:
    a = device(ordinal).attributes
    bus_id = (f"{a.get('cudaDevAttrPciDomainId', 0):04x}:{a.get('cudaDevAttrPciBusId', 0):02x}:"
              f"{a.get('cudaDevAttrPciDeviceId', 0):02x}.0").encode()
    if text == ffi.NULL or length <= 0:
        raise CudaError(Error.cudaErrorInvalidValue, "no room for the PCI bus id")
    data = bus_id[:length - 1] + b"\0"
    ffi.memmove(text, data, len(data))


def cudaProfilerStart() -> None:
    """No profiler runs behind qcuda: starting and stopping it do nothing, as without a profiler attached."""


def cudaProfilerStop() -> None:
    """See cudaProfilerStart."""


def cudaMemGetInfo(free, total) -> None:
    f, t = device().mem_info()
    _out(free, "size_t", f)
    _out(total, "size_t", t)


# ---- memory -------------------------------------------------------------------------------------
def cudaMalloc(ptr, size: int) -> None:
    _unsafe_call()
    _malloc(ptr, size)


def _malloc(ptr, size: int) -> None:
    if ptr == ffi.NULL:
        raise CudaError(Error.cudaErrorInvalidValue, "cudaMalloc(NULL, ...)")
    if size == 0:
        _out(ptr, "uintptr_t", 0)
        return
    dev = device()
    buffer = dev.allocate(size)
    with S.lock:
        S.track(buffer.handle, size, dev.ordinal, buffer)
    _out(ptr, "uintptr_t", buffer.handle)


def cudaMallocPitch(ptr, pitch, width: int, height: int) -> None:
    p = max(PITCH_ALIGNMENT, -(-width // PITCH_ALIGNMENT) * PITCH_ALIGNMENT)
    cudaMalloc(ptr, p * height)
    _out(pitch, "size_t", p)


def cudaFree(ptr) -> None:
    _unsafe_call()
    _free(ptr)


def _free(ptr) -> None:
    address = _addr(ptr)
    if address == 0:
        device()
        return
    with S.lock:
        entry = S.ranges.get(address)
        if entry is None or entry[2] is None:
            raise CudaError(Error.cudaErrorInvalidValue, f"0x{address:x} is not a cudaMalloc allocation")
        S.untrack(address)
        if address in S.managed:
            device().synchronize()  # CUDA: freeing managed memory waits for the device's work
            _free_managed(address)
            return
    entry[2].free()


# ---- stream-ordered allocation: memory pools -------------------------------------------------------
# A pool (cudaMemPool_t) lives in the guest library, over the device's ordinary allocations: cudaFreeAsync
# records an event on its stream and keeps the block; cudaMallocAsync hands a kept block out again when
# stream order makes that safe (the same stream, or the free has completed, or (by default) the new stream
# is made to wait for it), else allocates. Kept memory above the pool's release threshold goes back to the
# device at the next synchronisation point, as CUDA's pools do. Pools are per device; each device has a
# default pool and a current one (cudaDeviceSetMemPool).
POOL_ATTR = cudaMemPoolAttr
POOL_ATTRIBUTES = {"cudaDevAttrMemoryPoolsSupported": 1, "cudaDevAttrMemoryPoolSupportedHandleTypes": 0}
POOL_FLAGS = ("cudaMemPoolReuseFollowEventDependencies", "cudaMemPoolReuseAllowOpportunistic",
              "cudaMemPoolReuseAllowInternalDependencies")


class PoolBlock:
    __slots__ = ("buffer", "size", "stream", "event")

    def __init__(self, buffer: DeviceBuffer, size: int) -> None:
        self.buffer, self.size = buffer, size
        self.stream: int | tuple | None = None  # the stream that freed it (_key), while it is kept
        self.event: Event | None = None  # recorded there at the free


class MemPool:
    """One memory pool: the blocks handed out (by address) and those kept for reuse."""

    def __init__(self, dev: Device, handle: int) -> None:
        self.dev, self.handle = dev, handle
        self.flags = {name: 1 for name in POOL_FLAGS}
        self.release_threshold = 0
        self.live: dict[int, PoolBlock] = {}
        self.kept: list[PoolBlock] = []
        self.used_high = self.reserved_high = 0

    @property
    def used(self) -> int:
        return sum(b.size for b in self.live.values())

    @property
    def reserved(self) -> int:
        return self.used + sum(b.size for b in self.kept)

    def allocate(self, size: int, stream, key: int | tuple) -> int:
        s = _stream(stream)[0]
        block = self._reusable(size, s, key)
        if block is None:
            block = PoolBlock(self.dev.allocate(size), size)
        else:
            self.kept.remove(block)
            block.stream = None
        address = block.buffer.handle
        self.live[address] = block
        with S.lock:
            S.track(address, size, self.dev.ordinal, block.buffer)
            S.pool_of[address] = self
        self.used_high = max(self.used_high, self.used)
        self.reserved_high = max(self.reserved_high, self.reserved)
        return address

    def _reusable(self, size: int, s: Stream | None, key: int | tuple) -> PoolBlock | None:
        """The smallest kept block of `size` bytes or more that stream order lets `key` use now."""
        for block in sorted((b for b in self.kept if size <= b.size <= 2 * size), key=lambda b: b.size):
            if block.stream == key:
                return block
            if self.flags["cudaMemPoolReuseAllowOpportunistic"] and block.event.query():
                return block
            if self.flags["cudaMemPoolReuseAllowInternalDependencies"]:
                (s or self.dev.default_stream).wait(block.event)
                return block
        return None

    def free(self, address: int, stream, key: int | tuple) -> None:
        s = _stream(stream)[0]
        block = self.live.pop(address)
        with S.lock:
            S.untrack(address)
            del S.pool_of[address]
        if block.event is None:
            block.event = self.dev.create_event(timing=False)
        block.event.record(s)
        block.stream = key
        self.kept.append(block)

    def trim(self, keep: int) -> None:
        """Give kept blocks whose frees have completed back to the device until at most `keep` bytes stay."""
        for block in sorted(self.kept, key=lambda b: -b.size):
            if self.reserved <= keep:
                return
            if block.event.query():
                self.kept.remove(block)
                block.event.destroy()
                block.buffer.free()

    def destroy(self) -> None:
        for block in self.kept:
            block.event.destroy()
            block.buffer.free()
        self.kept.clear()


def _pool(handle) -> MemPool:
    return _owned(S.pools, handle, "memory pool", Error.cudaErrorInvalidValue)


def _default_pool(dev: Device) -> MemPool:
    pool = S.default_pools.get(dev.ordinal)
    if pool is None:
        pool = S.default_pools[dev.ordinal] = MemPool(dev, S.handle())
        S.pools[pool.handle] = pool
    return pool


def _current_pool(dev: Device) -> MemPool:
    return S.current_pools.get(dev.ordinal) or _default_pool(dev)


def _release_pools() -> None:
    """At a synchronisation point, kept memory above each pool's release threshold goes back."""
    for pool in list(S.pools.values()):
        if pool.kept and pool.reserved > pool.release_threshold:
            pool.trim(pool.release_threshold)


def cudaMallocAsync(ptr, size: int, stream) -> None:
    cudaMallocFromPoolAsync(ptr, size, ffi.cast("void *", _current_pool(_stream(stream)[1]).handle), stream)


def cudaMallocFromPoolAsync(ptr, size: int, pool, stream) -> None:
    p = _pool(pool)
    _stream(stream)
    _refuse_if_capturing(stream)  # no allocation nodes in qcuda's graphs
    if ptr == ffi.NULL:
        raise CudaError(Error.cudaErrorInvalidValue, "cudaMallocAsync(NULL, ...)")
    if size == 0:
        _out(ptr, "uintptr_t", 0)
        return
    _out(ptr, "uintptr_t", p.allocate(size, stream, _key(stream)))


def cudaFreeAsync(ptr, stream) -> None:
    """A pool's block is kept for reuse in stream order; other memory is freed once the stream's earlier
    work is done (the host waits for it)."""
    s, dev = _stream(stream)
    _refuse_if_capturing(stream)  # no allocation nodes in qcuda's graphs
    address = _addr(ptr)
    if address == 0:
        return
    pool = S.pool_of.get(address)
    if pool is not None:
        pool.free(address, stream, _key(stream))
        return
    (s or dev.default_stream).synchronize()
    _free(ptr)


def cudaDeviceGetDefaultMemPool(pool, ordinal: int) -> None:
    _out(pool, "uintptr_t", _default_pool(device(ordinal)).handle)


def cudaDeviceGetMemPool(pool, ordinal: int) -> None:
    _out(pool, "uintptr_t", _current_pool(device(ordinal)).handle)


def cudaDeviceSetMemPool(ordinal: int, pool) -> None:
    p = _pool(pool)
    if p.dev is not device(ordinal):
        raise CudaError(Error.cudaErrorInvalidDevice, f"the pool belongs to device {p.dev.ordinal}")
    S.current_pools[p.dev.ordinal] = p


def cudaMemPoolCreate(pool, props) -> None:
    fields = _read(props, "cudaMemPoolProps")
    kind, ordinal = fields["location"]
    if pool == ffi.NULL or fields["allocType"] != cudaMemAllocationType["cudaMemAllocationTypePinned"]:
        raise CudaError(Error.cudaErrorInvalidValue, f"pool allocation type {fields['allocType']}")
    if kind != cudaMemLocationType["cudaMemLocationTypeDevice"]:
        raise CudaError(Error.cudaErrorNotSupported, "pools of host memory")
    if fields["handleTypes"]:
        raise CudaError(Error.cudaErrorNotSupported, "pools whose memory is exported to other processes")
    if not 0 <= ordinal < _device.device_count():
        raise CudaError(Error.cudaErrorInvalidDevice, f"device {ordinal}")
    p = MemPool(device(ordinal), S.handle())
    S.pools[p.handle] = p
    _out(pool, "uintptr_t", p.handle)


def cudaMemPoolDestroy(pool) -> None:
    """Memory still handed out stays usable until freed (as CUDA does); kept memory goes back now."""
    p = _pool(pool)
    if p in S.default_pools.values():
        raise CudaError(Error.cudaErrorInvalidValue, "a device's default pool cannot be destroyed")
    del S.pools[p.handle]
    for ordinal in [o for o, q in S.current_pools.items() if q is p]:
        del S.current_pools[ordinal]
    p.dev.synchronize()
    p.destroy()


def cudaMemPoolTrimTo(pool, keep: int) -> None:
    _pool(pool).trim(keep)


def _pool_attribute(attr: int) -> str:
    for name, value in POOL_ATTR.items():
        if value == attr:
            return name
    raise CudaError(Error.cudaErrorInvalidValue, f"memory pool attribute {attr}")


def cudaMemPoolSetAttribute(pool, attr: int, value) -> None:
    p, name = _pool(pool), _pool_attribute(attr)
    if value == ffi.NULL:
        raise CudaError(Error.cudaErrorInvalidValue, "a NULL value")
    if name in POOL_FLAGS:
        p.flags[name] = int(ffi.cast("int *", value)[0] != 0)
    elif name == "cudaMemPoolAttrReleaseThreshold":
        p.release_threshold = int(ffi.cast("uint64_t *", value)[0])
    elif name in ("cudaMemPoolAttrReservedMemHigh", "cudaMemPoolAttrUsedMemHigh"):
        if ffi.cast("uint64_t *", value)[0] != 0:
            raise CudaError(Error.cudaErrorInvalidValue, f"{name} can only be reset (to 0)")
        if name == "cudaMemPoolAttrReservedMemHigh":
            p.reserved_high = p.reserved
        else:
            p.used_high = p.used
    else:
        raise CudaError(Error.cudaErrorInvalidValue, f"{name} cannot be set")


def cudaMemPoolGetAttribute(pool, attr: int, value) -> None:
    p, name = _pool(pool), _pool_attribute(attr)
    if name in POOL_FLAGS:
        _out(value, "int", p.flags[name])
        return
    values = {"cudaMemPoolAttrReleaseThreshold": p.release_threshold, "cudaMemPoolAttrReservedMemCurrent": p.reserved,
              "cudaMemPoolAttrReservedMemHigh": p.reserved_high, "cudaMemPoolAttrUsedMemCurrent": p.used,
              "cudaMemPoolAttrUsedMemHigh": p.used_high}
    if name not in values:
        raise CudaError(Error.cudaErrorInvalidValue, f"{name}")
    _out(value, "uint64_t", values[name])


def cudaMemPoolSetAccess(pool, descs, count: int) -> None:
    """Every device of a qcuda process reaches only its own memory: read-write access from the pool's
    own device is all there is (peer access is not supported)."""
    p = _pool(pool)
    size = STRUCTS["cudaMemAccessDesc"][0]
    for i in range(count):
        fields = _read(ffi.cast("char *", descs) + i * size, "cudaMemAccessDesc")
        kind, ordinal = fields["location"]
        if kind != cudaMemLocationType["cudaMemLocationTypeDevice"] or not 0 <= ordinal < _device.device_count():
            raise CudaError(Error.cudaErrorInvalidValue, f"memory location {fields['location']}")
        if ordinal != p.dev.ordinal:
            raise CudaError(Error.cudaErrorNotSupported, "access to a pool from another device (peer access)")
        if fields["flags"] != cudaMemAccessFlags["cudaMemAccessFlagsProtReadWrite"]:
            raise CudaError(Error.cudaErrorInvalidValue, "a pool's own device always has read-write access")


def cudaMemPoolGetAccess(flags, pool, location) -> None:
    p = _pool(pool)
    kind, ordinal = struct.unpack("<ii", _bytes(_addr(location), 8)) if location != ffi.NULL else (0, -1)
    if kind != cudaMemLocationType["cudaMemLocationTypeDevice"] or not 0 <= ordinal < _device.device_count():
        raise CudaError(Error.cudaErrorInvalidValue, "a device location")
    access = "cudaMemAccessFlagsProtReadWrite" if ordinal == p.dev.ordinal else "cudaMemAccessFlagsProtNone"
    _out(flags, "int", cudaMemAccessFlags[access])


def cudaHostAlloc(ptr, size: int, flags: int) -> None:
    _unsafe_call()
    dev = device()
    buffer = dev.allocate_host(max(size, 1))
    alias = _alias(dev)
    address = (dev.client._arena_address if alias is None else alias) + buffer.offset
    S.pinned[address] = (buffer, flags)
    _out(ptr, "uintptr_t", address)


def cudaMallocHost(ptr, size: int) -> None:
    cudaHostAlloc(ptr, size, 0)


def cudaFreeHost(ptr) -> None:
    _unsafe_call()
    address = _addr(ptr)
    if address == 0:
        return
    entry = S.pinned.pop(address, None)
    if entry is None:
        raise CudaError(Error.cudaErrorInvalidValue, f"0x{address:x} is not cudaMallocHost/cudaHostAlloc memory")
    entry[0].free()


def cudaHostRegister(ptr, size: int, flags: int) -> None:
    """Accepted and remembered: qcuda stages copies of registered memory like pageable memory."""
    address = _addr(ptr)
    if address == 0 or size == 0:
        raise CudaError(Error.cudaErrorInvalidValue, "cudaHostRegister of nothing")
    if address in S.registered:
        raise CudaError(Error.cudaErrorHostMemoryAlreadyRegistered)
    S.registered[address] = (size, flags)


def cudaHostUnregister(ptr) -> None:
    if S.registered.pop(_addr(ptr), None) is None:
        raise CudaError(Error.cudaErrorHostMemoryNotRegistered)


def cudaHostGetDevicePointer(p_device, p_host, flags: int) -> None:
    address = _addr(p_host)
    found = _arena_of(address)
    if found is None:
        if any(a <= address < a + n for a, (n, _) in S.registered.items()):
            raise CudaError(Error.cudaErrorNotSupported, "kernels cannot see cudaHostRegister memory through qcuda; "
                            "allocate it with cudaHostAlloc instead")
        raise CudaError(Error.cudaErrorInvalidValue, f"0x{address:x} is not pinned host memory")
    dev, offset = found
    if not dev.client.channel.shared_arena:
        raise CudaError(Error.cudaErrorNotSupported, f"kernels cannot see this process's memory over {dev.client.url}")
    _out(p_device, "uintptr_t", _arena_device_base(dev) + offset)


def cudaHostGetFlags(flags, p_host) -> None:
    entry = S.pinned.get(_addr(p_host))
    if entry is None:
        raise CudaError(Error.cudaErrorInvalidValue, "not cudaHostAlloc memory")
    # CUDA 13 reports every pinned allocation as mapped and none as portable (checked on an H100); so is ours
    _out(flags, "unsigned int", entry[1] & ~DEFINES["cudaHostAllocPortable"] | DEFINES["cudaHostAllocMapped"])


def cudaPointerGetAttributes(attributes, ptr) -> None:
    address = _addr(ptr)
    kind, dev = _locate(address, 1)
    values: dict = {"type": cudaMemoryType["cudaMemoryTypeUnregistered"], "device": -2, "hostPointer": address}
    if kind == "device" and _is_managed(address):
        values = {"type": cudaMemoryType["cudaMemoryTypeManaged"], "device": dev.ordinal, "devicePointer": address,
                  "hostPointer": address}
    elif kind == "device":
        assert dev is not None
        values = {"type": cudaMemoryType["cudaMemoryTypeDevice"], "device": dev.ordinal, "devicePointer": address}
        base = S.arena_device.get(dev.ordinal)
        if base is not None and base <= address < base + len(dev.client.channel.arena):
            host = dev.client._arena_address + address - base
            values = {"type": cudaMemoryType["cudaMemoryTypeHost"], "device": dev.ordinal, "devicePointer": address,
                      "hostPointer": host}
    elif kind == "pinned":
        dev, offset = _arena_of(address)
        mapped = dev.client.channel.shared_arena  # over TCP kernels cannot see this process's memory
        values = {"type": cudaMemoryType["cudaMemoryTypeHost"], "device": dev.ordinal, "hostPointer": address,
                  "devicePointer": _arena_device_base(dev) + offset if mapped else 0}
    _fill(attributes, "cudaPointerAttributes", values)


class Side:
    """One end of a copy: where it is ("device", "pinned" or "host"), whether the copy treats it as
    device memory, and the device that owns it (if any)."""

    __slots__ = ("kind", "on_device", "dev")

    def __init__(self, address: int, count: int, on_device_kinds: tuple[int, ...], kind: int) -> None:
        if address == 0:
            raise CudaError(Error.cudaErrorInvalidValue, "a NULL pointer")
        self.kind, self.dev = _locate(address, count)
        self.on_device = self.kind == "device" if kind == DEFAULT else kind in on_device_kinds
        if self.kind == "device" and not self.on_device and _is_managed(address):
            self.kind = "host"  # managed memory named as host memory: its host mapping, current at this point
            S.host_dirty = True  # (a copy into it writes the host side: the next device work sends it)
        elif self.kind == "device" and not self.on_device:
            raise CudaError(Error.cudaErrorInvalidValue, "a device pointer given as a host pointer")


def _sides(dst: int, src: int, count: int, kind: int) -> tuple[Side, Side]:
    if kind not in (HOST_TO_HOST, HOST_TO_DEVICE, DEVICE_TO_HOST, DEVICE_TO_DEVICE, DEFAULT):
        raise CudaError(Error.cudaErrorInvalidMemcpyDirection, f"cudaMemcpyKind {kind}")
    return (Side(dst, count, (HOST_TO_DEVICE, DEVICE_TO_DEVICE), kind),
            Side(src, count, (DEVICE_TO_HOST, DEVICE_TO_DEVICE), kind))


def _copy(dst: int, src: int, count: int, kind: int, stream, asynchronous: bool) -> None:
    """One copy of any kind; `kind` cudaMemcpyDefault decides by address."""
    s, sdev = _stream(stream)
    if _record(stream, "memcpy", lambda h: _copy(dst, src, count, kind, h, True)) if asynchronous else \
            _refuse_if_capturing(stream):
        return
    if count == 0:
        if kind not in (HOST_TO_HOST, HOST_TO_DEVICE, DEVICE_TO_HOST, DEVICE_TO_DEVICE, DEFAULT):
            raise CudaError(Error.cudaErrorInvalidMemcpyDirection, f"cudaMemcpyKind {kind}")
        return
    d, r = _sides(dst, src, count, kind)
    handle = _wire(s)
    if d.on_device or r.on_device:
        _device_work()
    if d.on_device and r.on_device:
        dev = d.dev or sdev
        msg = m.MemcpyDtoD(dst, src, count, handle)
        dev.client.post(msg) if asynchronous else dev.client.call(msg)
    elif d.on_device:
        dev = d.dev or sdev
        in_place = r.kind == "pinned" and dev.client.channel.shared_arena  # read when the stream gets there
        if asynchronous and not in_place:  # CUDA: the stream's earlier work first, then the host bytes are read
            (s or dev.default_stream).synchronize()
        dev.client.copy_htod(dst, _host_view(src, count), handle, asynchronous and in_place)
    elif r.on_device:
        dev = r.dev or sdev
        dev.client.copy_dtoh(_host_view(dst, count), src, handle, asynchronous and d.kind == "pinned")
    else:
        dev = sdev
        (s or dev.default_stream).synchronize()
        ffi.memmove(ffi.cast("void *", dst), ffi.cast("void *", src), count)
    if not asynchronous:
        dev.client.raise_deferred()
        _synchronised()


def cudaMemcpy(dst, src, count: int, kind: int) -> None:
    _copy(_addr(dst), _addr(src), count, kind, ffi.NULL, False)


def cudaMemcpyAsync(dst, src, count: int, kind: int, stream) -> None:
    _copy(_addr(dst), _addr(src), count, kind, stream, True)


def _copy2d(dst: int, dpitch: int, src: int, spitch: int, width: int, height: int, kind: int, stream,
            asynchronous: bool) -> None:
    if width > dpitch or width > spitch:
        raise CudaError(Error.cudaErrorInvalidPitchValue, f"width {width}, pitches {dpitch} and {spitch}")
    if asynchronous and _record(stream, "memcpy", lambda h: _copy2d(dst, dpitch, src, spitch, width, height, kind,
                                                                     h, True)):
        return
    if dpitch == spitch == width or width == 0 or height == 0:
        _copy(dst, src, width * height, kind, stream, asynchronous)
        return
    d, r = _sides(dst, src, width, kind)
    if d.on_device != r.on_device and "host" in (d.kind, r.kind) and height > 1:
        _copy2d_pageable(dst, dpitch, src, spitch, width, height, d, r, stream)
        return
    for row in range(height):  # rows before the last queue; the last waits for all (same stream)
        _copy(dst + row * dpitch, src + row * spitch, width, kind, stream, asynchronous or row + 1 < height)


def _copy2d_pageable(dst: int, dpitch: int, src: int, spitch: int, width: int, height: int, d: Side, r: Side,
                     stream) -> None:
    """A 2D copy between pageable host memory and the device in one staged transfer, not one per row:
    the rows are packed on the host and spread (or gathered) on the device through a scratch buffer."""
    s, sdev = _stream(stream)
    handle = _wire(s)
    dev = (d.dev if d.on_device else r.dev) or sdev
    _device_work()
    packed = bytearray(width * height)
    scratch = dev.allocate(width * height)
    try:
        if d.on_device:
            (s or dev.default_stream).synchronize()  # the host bytes are read after the stream's earlier work
            for row in range(height):
                packed[row * width:(row + 1) * width] = _bytes(src + row * spitch, width)
            dev.client.copy_htod(scratch.handle, memoryview(packed), handle)
            for row in range(height):
                dev.client.post(m.MemcpyDtoD(dst + row * dpitch, scratch.handle + row * width, width, handle))
            (s or dev.default_stream).synchronize()
        else:
            for row in range(height):
                dev.client.post(m.MemcpyDtoD(scratch.handle + row * width, src + row * spitch, width, handle))
            dev.client.copy_dtoh(memoryview(packed), scratch.handle, handle)
            for row in range(height):
                _bytes(dst + row * dpitch, width)[:] = packed[row * width:(row + 1) * width]
    finally:
        scratch.free()
    dev.client.raise_deferred()


def cudaMemcpy2D(dst, dpitch: int, src, spitch: int, width: int, height: int, kind: int) -> None:
    _copy2d(_addr(dst), dpitch, _addr(src), spitch, width, height, kind, ffi.NULL, False)


def cudaMemcpy2DAsync(dst, dpitch: int, src, spitch: int, width: int, height: int, kind: int, stream) -> None:
    _copy2d(_addr(dst), dpitch, _addr(src), spitch, width, height, kind, stream, True)


def cudaMemcpyPeer(dst, dst_device: int, src, src_device: int, count: int) -> None:
    d, s = device(dst_device), device(src_device)
    if d.client is s.client and d.remote_ordinal == s.remote_ordinal:
        _copy(_addr(dst), _addr(src), count, DEVICE_TO_DEVICE, ffi.NULL, False)
        return
    staging = bytearray(count)
    _device_work()
    s.client.copy_dtoh(memoryview(staging), _addr(src), 0)
    d.client.copy_htod(_addr(dst), memoryview(staging), 0)
    _synchronised()


def cudaMemcpyPeerAsync(dst, dst_device: int, src, src_device: int, count: int, stream) -> None:
    """Asynchronous within one device; between devices it goes through the host, so it returns when done."""
    s, _ = _stream(stream)
    d, sd = device(dst_device), device(src_device)
    if d.client is sd.client and d.remote_ordinal == sd.remote_ordinal:
        _copy(_addr(dst), _addr(src), count, DEVICE_TO_DEVICE, stream, True)
        return
    _refuse_if_capturing(stream)
    (s or d.default_stream).synchronize()
    cudaMemcpyPeer(dst, dst_device, src, src_device, count)


def _memset(ptr: int, value: int, count: int, stream, asynchronous: bool, element_size: int = 1) -> None:
    """`count` elements of `element_size` bytes (1, 2 or 4) set to `value`."""
    s, sdev = _stream(stream)
    if _record(stream, "memset", lambda h: _memset(ptr, value, count, h, True, element_size)) if asynchronous else \
            _refuse_if_capturing(stream):
        return
    kind, dev = _locate(ptr, count * element_size)
    if kind != "device":
        raise CudaError(Error.cudaErrorInvalidValue, f"0x{ptr:x} is not device memory")
    msg = m.Memset(ptr, value & ((1 << (8 * element_size)) - 1), element_size, count, _wire(s))
    _device_work()
    dev.client.post(msg) if asynchronous else dev.client.call(msg)
    if not asynchronous:
        dev.client.raise_deferred()
        _synchronised()


def cudaMemset(ptr, value: int, count: int) -> None:
    if count:
        _memset(_addr(ptr), value, count, ffi.NULL, False)


def cudaMemsetAsync(ptr, value: int, count: int, stream) -> None:
    if count:
        _memset(_addr(ptr), value, count, stream, True)


def _memset2d(ptr: int, pitch: int, value: int, width: int, height: int, stream, asynchronous: bool) -> None:
    if width > pitch:
        raise CudaError(Error.cudaErrorInvalidValue, f"width {width} > pitch {pitch}")
    if width == 0 or height == 0:
        return
    if asynchronous and _record(stream, "memset", lambda h: _memset2d(ptr, pitch, value, width, height, h, True)):
        return
    if width == pitch:
        _memset(ptr, value, width * height, stream, asynchronous)
        return
    for row in range(height):
        _memset(ptr + row * pitch, value, width, stream, asynchronous or row + 1 < height)


def cudaMemset2D(ptr, pitch: int, value: int, width: int, height: int) -> None:
    _memset2d(_addr(ptr), pitch, value, width, height, ffi.NULL, False)


def cudaMemset2DAsync(ptr, pitch: int, value: int, width: int, height: int, stream) -> None:
    _memset2d(_addr(ptr), pitch, value, width, height, stream, True)


# ---- module variables ---------------------------------------------------------------------------
def _symbol(symbol) -> tuple[int, int]:
    """(device address, size) of a registered __device__/__constant__ variable on the current device."""
    dev = device()
    key = (_addr(symbol), dev.ordinal)
    found = S.symbols.get(key)
    if found is None:
        var = lib.qcuda_find_variable(symbol)
        if var == ffi.NULL:
            raise CudaError(Error.cudaErrorInvalidSymbol, f"0x{key[0]:x} is not a registered device variable")
        found = S.symbols[key] = _module(var.fatbin, dev).get_global(ffi.string(var.name).decode())
        with S.lock:
            S.track(found[0], found[1], dev.ordinal, None)
    return found


def _symbol_range(symbol, count: int, offset: int) -> int:
    ptr, size = _symbol(symbol)
    if offset + count > size:
        raise CudaError(Error.cudaErrorInvalidValue, f"[{offset}, +{count}) is outside the {size}-byte variable")
    return ptr + offset


def cudaMemcpyToSymbol(symbol, src, count: int, offset: int, kind: int) -> None:
    if kind not in (HOST_TO_DEVICE, DEVICE_TO_DEVICE, DEFAULT):
        raise CudaError(Error.cudaErrorInvalidMemcpyDirection)
    _copy(_symbol_range(symbol, count, offset), _addr(src), count, kind, ffi.NULL, False)


def cudaMemcpyFromSymbol(dst, symbol, count: int, offset: int, kind: int) -> None:
    if kind not in (DEVICE_TO_HOST, DEVICE_TO_DEVICE, DEFAULT):
        raise CudaError(Error.cudaErrorInvalidMemcpyDirection)
    _copy(_addr(dst), _symbol_range(symbol, count, offset), count, kind, ffi.NULL, False)


def cudaMemcpyToSymbolAsync(symbol, src, count: int, offset: int, kind: int, stream) -> None:
    if kind not in (HOST_TO_DEVICE, DEVICE_TO_DEVICE, DEFAULT):
        raise CudaError(Error.cudaErrorInvalidMemcpyDirection)
    _copy(_symbol_range(symbol, count, offset), _addr(src), count, kind, stream, True)


def cudaMemcpyFromSymbolAsync(dst, symbol, count: int, offset: int, kind: int, stream) -> None:
    if kind not in (DEVICE_TO_HOST, DEVICE_TO_DEVICE, DEFAULT):
        raise CudaError(Error.cudaErrorInvalidMemcpyDirection)
    _copy(_addr(dst), _symbol_range(symbol, count, offset), count, kind, stream, True)


def cudaGetSymbolAddress(ptr, symbol) -> None:
    _out(ptr, "uintptr_t", _symbol(symbol)[0])


def cudaGetSymbolSize(size, symbol) -> None:
    _out(size, "size_t", _symbol(symbol)[1])


# ---- streams and events -------------------------------------------------------------------------
def cudaStreamCreateWithPriority(p_stream, flags: int, priority: int) -> None:
    if p_stream == ffi.NULL:
        raise CudaError(Error.cudaErrorInvalidValue, "a NULL stream pointer")
    priority = min(LEAST_PRIORITY, max(GREATEST_PRIORITY, priority))
    stream = device().create_stream(non_blocking=bool(flags & 1), priority=priority)
    handle = S.handle()
    S.streams[handle] = stream
    S.stream_info[handle] = (flags, priority)
    _out(p_stream, "uintptr_t", handle)


def cudaStreamCreateWithFlags(p_stream, flags: int) -> None:
    cudaStreamCreateWithPriority(p_stream, flags, 0)


def cudaStreamCreate(p_stream) -> None:
    cudaStreamCreateWithPriority(p_stream, 0, 0)


def cudaStreamDestroy(stream) -> None:
    h = _addr(stream)
    s = S.streams.pop(h, None)
    if s is None:
        raise CudaError(Error.cudaErrorInvalidResourceHandle, f"stream 0x{h:x}")
    S.stream_info.pop(h, None)
    s.destroy()


def cudaStreamGetFlags(stream, flags) -> None:
    s, _ = _stream(stream)
    _out(flags, "unsigned int", 0 if s is None else S.stream_info.get(_addr(stream), (0, 0))[0])


def cudaStreamGetPriority(stream, priority) -> None:
    s, _ = _stream(stream)
    _out(priority, "int", 0 if s is None else S.stream_info.get(_addr(stream), (0, 0))[1])


def cudaStreamGetDevice(stream, ordinal) -> None:
    _out(ordinal, "int", _stream(stream)[1].ordinal)


def cudaStreamSynchronize(stream) -> None:
    s, dev = _stream(stream)
    _refuse_if_capturing(stream)
    (s or dev.default_stream).synchronize()
    _synchronised()


def cudaStreamQuery(stream) -> int:
    s, dev = _stream(stream)
    _refuse_if_capturing(stream)
    if not (s or dev.default_stream).query():
        return NOT_READY
    _synchronised()
    return 0


def cudaStreamWaitEvent(stream, event, flags: int) -> None:
    s, dev = _stream(stream)
    e = _event(event)
    h, k = _addr(stream), _key(stream)
    captured = S.captured_events.get(_addr(event))
    if captured is not None:  # a fork or join of a capture
        cap, tails = captured
        with S.lock:
            mine = S.captures.get(k)
            if cap.invalid:
                raise CudaError(Error.cudaErrorStreamCaptureInvalidated, "the event's capture failed")
            if mine is None:
                if _legacy(h):
                    cap.invalidate()
                    raise CudaError(Error.cudaErrorStreamCaptureImplicit, "the legacy stream cannot join a capture")
                S.captures[k] = cap
                cap.tails[k] = tails
            elif mine is not cap:
                mine.invalidate()
                raise CudaError(Error.cudaErrorStreamCaptureMerge, "the event belongs to another capture")
            else:
                cap.tails[k] = tuple(dict.fromkeys(cap.tails[k] + tails))
        return
    _wait_event(h, e)


def _wait_event(stream: int, e: Event) -> None:
    if not _record(stream, "wait_event", lambda h: _wait_event(h, e)):
        s, dev = _stream(stream)
        (s or dev.default_stream).wait(e)


def cudaLaunchHostFunc(stream, fn, user_data) -> None:
    """`fn(user_data)` runs in this process (qcuda's callback thread) when the stream reaches it."""
    s, dev = _stream(stream)
    host_fn = ffi.cast("void (*)(void *)", fn)
    if not _record(stream, "host", lambda h: cudaLaunchHostFunc(h, fn, user_data)):
        (s or dev.default_stream).add_callback(lambda _stream, _status: host_fn(user_data))


def cudaStreamAddCallback(stream, callback, user_data, flags: int) -> None:
    if flags:
        raise CudaError(Error.cudaErrorInvalidValue, "cudaStreamAddCallback flags must be 0")
    s, dev = _stream(stream)
    _refuse_if_capturing(stream)  # CUDA captures host functions only from cudaLaunchHostFunc
    host_fn = ffi.cast("void (*)(void *, int, void *)", callback)
    handle = ffi.cast("void *", _addr(stream))
    (s or dev.default_stream).add_callback(lambda _stream, status: host_fn(handle, status, user_data))


def cudaEventCreateWithFlags(p_event, flags: int) -> None:
    if p_event == ffi.NULL:
        raise CudaError(Error.cudaErrorInvalidValue, "a NULL event pointer")
    event = device().create_event(timing=not flags & 2, blocking_sync=bool(flags & 1))
    handle = S.handle()
    S.events[handle] = event
    _out(p_event, "uintptr_t", handle)


def cudaEventCreate(p_event) -> None:
    cudaEventCreateWithFlags(p_event, 0)


def cudaEventRecord(event, stream) -> None:
    _record_event(event, stream, False)


def _record_event(event, stream, external: bool) -> None:
    """Record `event`; in a capture it marks the stream's current dependencies (a fork or join point), or with
    cudaEventRecordExternal becomes an event-record node."""
    e = _event(event)
    s, _ = _stream(stream)
    cap = S.captures.get(_key(stream))
    if cap is not None and not external:
        if cap.invalid:
            raise CudaError(Error.cudaErrorStreamCaptureInvalidated, "the capture already failed")
        S.captured_events[_addr(event)] = (cap, cap.tails[_key(stream)])
        return
    S.captured_events.pop(_addr(event), None)
    _event_record_node(_addr(stream), e)


def _event_record_node(stream: int, e: Event) -> None:
    if not _record(stream, "event_record", lambda h: _event_record_node(h, e)):
        e.record(_stream(stream)[0])


def cudaEventRecordWithFlags(event, stream, flags: int) -> None:
    if flags & ~1:  # cudaEventRecordExternal is the one flag
        raise CudaError(Error.cudaErrorInvalidValue, f"event record flags {flags:#x}")
    _record_event(event, stream, bool(flags & 1))


def _uncaptured(*events) -> None:
    """Waiting on or timing an event recorded in a capture: refused, and that capture is over (as CUDA does)."""
    for event in events:
        captured = S.captured_events.get(_addr(event))
        if captured is not None:
            captured[0].invalidate()
            raise CudaError(Error.cudaErrorCapturedEvent, "the event was last recorded in a capture")


def cudaEventSynchronize(event) -> None:
    _uncaptured(event)
    _unsafe_call()
    _event(event).synchronize()
    _synchronised()


def cudaEventQuery(event) -> int:
    _uncaptured(event)
    _unsafe_call()
    if not _event(event).query():
        return NOT_READY
    _synchronised()
    return 0


def cudaEventElapsedTime(ms, start, end) -> None:
    _uncaptured(start, end)
    _out(ms, "float", _event(start).elapsed_ms(_event(end)))


def cudaEventDestroy(event) -> None:
    e = S.events.pop(_addr(event), None)
    if e is None:
        raise CudaError(Error.cudaErrorInvalidResourceHandle, "not an event of this process")
    e.destroy()


# ---- graphs captured from streams ---------------------------------------------------------------
# While a stream captures, the work put on it is recorded as graph nodes instead of sent: each node
# holds a replay (a function of the stream handle a launch puts it on) and the nodes it depends on.
# A launch replays the nodes in the order they were captured, on the launch stream: that order is a
# topological order of the dependencies, so running them one after another honours every one.
CAPTURE_GLOBAL, CAPTURE_THREAD_LOCAL, CAPTURE_RELAXED = (
    cudaStreamCaptureMode["cudaStreamCaptureMode" + k] for k in ("Global", "ThreadLocal", "Relaxed"))
NODE_TYPES = {kind: cudaGraphNodeType["cudaGraphNodeType" + name] for kind, name in (
    ("kernel", "Kernel"), ("memcpy", "Memcpy"), ("memset", "Memset"), ("host", "Host"), ("wait_event", "WaitEvent"),
    ("event_record", "EventRecord"), ("graph", "Graph"), ("empty", "Empty"))}
INSTANTIATE_FLAGS = 1 | 2 | 4 | 8  # auto-free on launch, upload, device launch, node priority: all accepted
_capture_mode = threading.local()


class Node:
    __slots__ = ("kind", "replay", "deps", "handle")

    def __init__(self, kind: str, replay: Callable[[int], None], deps: tuple["Node", ...]) -> None:
        self.kind, self.replay, self.deps, self.handle = kind, replay, deps, S.handle()
        S.nodes[self.handle] = self


class Graph:
    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.handle = S.handle()


def _in_order(nodes: list[Node]) -> list[Node]:
    """The nodes in an order every dependency holds in (the order they were added, where that does)."""
    members = {n.handle for n in nodes}
    placed: set[int] = set()
    order: list[Node] = []
    waiting = list(nodes)
    while waiting:
        ready = [n for n in waiting if all(d.handle in placed or d.handle not in members for d in n.deps)]
        if not ready:
            raise CudaError(Error.cudaErrorInvalidValue, "the graph's dependencies form a cycle")
        for n in ready:
            placed.add(n.handle)
        order += ready
        waiting = [n for n in waiting if n.handle not in placed]
    return order


class GraphExec:
    def __init__(self, graph: Graph) -> None:
        self.nodes = tuple(_in_order(graph.nodes))  # later changes to the graph do not reach an instantiated one
        self.replays = {n.handle: n.replay for n in self.nodes}  # this exec's own (cudaGraphExecKernelNodeSetParams)
        self.handle = S.handle()
        self.done: Event | None = None  # recorded at the end of each launch: the next launch waits for it
        self.last_stream: int | None = None


class Capture:
    """One capture sequence: its graph, the streams that joined it, and each stream's current dependencies."""

    def __init__(self, origin: int | tuple, mode: int) -> None:
        S.capture_ids += 1
        self.id, self.origin, self.mode = S.capture_ids, origin, mode
        self.thread = threading.get_ident()
        self.graph = Graph()
        self.tails: dict[int | tuple, tuple[Node, ...]] = {origin: ()}  # by _key
        self.invalid = False
        self.deps_out = None  # the array cudaStreamGetCaptureInfo last handed out (kept alive)

    def add(self, stream: int | tuple, kind: str, replay: Callable[[int], None]) -> Node:
        if self.invalid:
            raise CudaError(Error.cudaErrorStreamCaptureInvalidated, "the capture already failed")
        node = Node(kind, replay, self.tails[stream])
        self.graph.nodes.append(node)
        self.tails[stream] = (node,)
        return node

    def invalidate(self) -> None:
        self.invalid = True


def _blocking(key: int | tuple) -> bool:
    return not S.stream_info.get(key, (0, 0))[0] & 1  # per-thread streams (tuple keys) are blocking


def _implicit_check() -> None:
    """Work on the legacy stream would wait for every blocking stream, capturing ones too: CUDA refuses it and
    invalidates those captures."""
    blocked = [c for h, c in S.captures.items() if _blocking(h)]
    if blocked:
        for c in blocked:
            c.invalidate()
        raise CudaError(Error.cudaErrorStreamCaptureImplicit, "the legacy stream would wait for a capturing stream")


def _record(stream, kind: str, replay: Callable[[int], None]) -> bool:
    """Record `replay` as a node when `stream` captures (True); False when the work should run now."""
    if not S.captures:
        return False
    h = _addr(stream)
    if _legacy(h):
        _implicit_check()
        return False
    k = _key(stream)
    cap = S.captures.get(k)
    if cap is None:
        return False
    with S.lock:
        cap.add(k, kind, replay)
    return True


def _refuse_if_capturing(stream) -> None:
    """A synchronising call on a capturing stream: cudaErrorStreamCaptureUnsupported, and the capture is over."""
    if not S.captures:
        return
    h = _addr(stream)
    if _legacy(h):
        _implicit_check()
        return
    cap = S.captures.get(_key(stream))
    if cap is not None:
        cap.invalidate()
        raise CudaError(Error.cudaErrorStreamCaptureUnsupported, "a synchronising call on a capturing stream")


def _unsafe_call() -> None:
    """A potentially unsafe call (one that may synchronise implicitly: allocation, freeing, event queries) while
    a capture that forbids it is underway, by the calling thread's capture mode
    (cudaThreadExchangeStreamCaptureMode): refused with cudaErrorStreamCaptureUnsupported, and the capture is over."""
    if not S.captures:
        return
    mode = getattr(_capture_mode, "mode", CAPTURE_GLOBAL)
    if mode == CAPTURE_RELAXED:
        return
    me = threading.get_ident()
    forbidding = {id(c): c for c in S.captures.values()
                  if c.thread == me and c.mode != CAPTURE_RELAXED or mode == CAPTURE_GLOBAL and c.mode == CAPTURE_GLOBAL}
    if forbidding:
        for c in forbidding.values():
            c.invalidate()
        raise CudaError(Error.cudaErrorStreamCaptureUnsupported, "a potentially unsafe call during a capture")


def cudaStreamBeginCapture(stream, mode: int) -> None:
    if _legacy(_addr(stream)):
        raise CudaError(Error.cudaErrorStreamCaptureUnsupported, "the legacy stream cannot capture")
    _stream(stream)
    k = _key(stream)
    if mode not in (CAPTURE_GLOBAL, CAPTURE_THREAD_LOCAL, CAPTURE_RELAXED):
        raise CudaError(Error.cudaErrorInvalidValue, f"capture mode {mode}")
    with S.lock:
        if k in S.captures:
            raise CudaError(Error.cudaErrorIllegalState, "the stream already captures")
        cap = S.captures[k] = Capture(k, mode)
        S.graphs[cap.graph.handle] = cap.graph  # cudaStreamGetCaptureInfo hands it out while the capture runs


def cudaStreamEndCapture(stream, p_graph) -> None:
    h = _key(stream)
    _stream(stream)
    if p_graph == ffi.NULL:
        raise CudaError(Error.cudaErrorInvalidValue, "a NULL graph pointer")
    with S.lock:
        cap = S.captures.get(h)
        if cap is None:
            raise CudaError(Error.cudaErrorIllegalState, "the stream is not capturing")
        if h != cap.origin:
            cap.invalidate()
            raise CudaError(Error.cudaErrorStreamCaptureUnmatched, "the capture began on another stream")
        if cap.mode != CAPTURE_RELAXED and cap.thread != threading.get_ident():
            raise CudaError(Error.cudaErrorStreamCaptureWrongThread, "the capture began in another thread")
        for s in cap.tails:
            S.captures.pop(s, None)
        for e in [e for e, (c, _) in S.captured_events.items() if c is cap]:
            del S.captured_events[e]
        _out(p_graph, "uintptr_t", 0)
        S.graphs.pop(cap.graph.handle, None)
        if cap.invalid:
            raise CudaError(Error.cudaErrorStreamCaptureInvalidated, "the capture failed earlier")
        joined, todo = set(), list(cap.tails[h])
        while todo:
            node = todo.pop()
            if node.handle not in joined:
                joined.add(node.handle)
                todo.extend(node.deps)
        if any(n.handle not in joined for n in cap.graph.nodes):
            raise CudaError(Error.cudaErrorStreamCaptureUnjoined, "work forked into another stream was not joined")
        S.graphs[cap.graph.handle] = cap.graph
    _out(p_graph, "uintptr_t", cap.graph.handle)


def cudaStreamIsCapturing(stream, status) -> None:
    h = _addr(stream)
    _stream(stream)
    cap = S.captures.get(_key(stream))
    if cap is None and _legacy(h) and any(_blocking(s) for s in S.captures):
        raise CudaError(Error.cudaErrorStreamCaptureImplicit, "the legacy stream while a blocking stream captures")
    name = "None" if cap is None else "Invalidated" if cap.invalid else "Active"
    _out(status, "int", cudaStreamCaptureStatus["cudaStreamCaptureStatus" + name])


def cudaStreamGetCaptureInfo(stream, status, id_out, graph_out, deps_out, edges_out, count_out) -> None:
    cudaStreamIsCapturing(stream, status)
    cap = S.captures.get(_key(stream))
    if cap is None:
        return
    tails = cap.tails[_key(stream)]
    if id_out != ffi.NULL:
        _out(id_out, "unsigned long long", cap.id)
    if graph_out != ffi.NULL:
        _out(graph_out, "uintptr_t", cap.graph.handle)
    if deps_out != ffi.NULL:
        cap.deps_out = (ffi.new("uintptr_t[]", [n.handle for n in tails] or [0]),
                        ffi.new("char[]", 8 * max(len(tails), 1)))  # edge data: all default (zero)
        _out(deps_out, "uintptr_t", _addr(cap.deps_out[0]))
        if edges_out != ffi.NULL:
            _out(edges_out, "uintptr_t", _addr(cap.deps_out[1]))
    elif edges_out != ffi.NULL:
        raise CudaError(Error.cudaErrorInvalidValue, "edge data without dependencies")
    if count_out != ffi.NULL:
        _out(count_out, "size_t", len(tails))


def cudaThreadExchangeStreamCaptureMode(mode) -> None:
    """Kept per thread and answered back; qcuda checks no call against it (see docs/interposer.md)."""
    if mode == ffi.NULL:
        raise CudaError(Error.cudaErrorInvalidValue, "a NULL mode pointer")
    new = ffi.cast("int *", mode)[0]
    if new not in (CAPTURE_GLOBAL, CAPTURE_THREAD_LOCAL, CAPTURE_RELAXED):
        raise CudaError(Error.cudaErrorInvalidValue, f"capture mode {new}")
    ffi.cast("int *", mode)[0] = getattr(_capture_mode, "mode", CAPTURE_GLOBAL)
    _capture_mode.mode = new


def _graph(handle) -> Graph:
    return _owned(S.graphs, handle, "graph", Error.cudaErrorInvalidValue)


def _graph_exec(handle) -> GraphExec:
    return _owned(S.graph_execs, handle, "graph exec", Error.cudaErrorInvalidValue)


# ---- graphs built node by node --------------------------------------------------------------------
# Each node records what it will do, by value, as a captured one does: a kernel's arguments are taken when the
# node is added; a copy reads its host memory when the graph runs there. Launching replays the nodes in an
# order their dependencies hold in, one after another on the launch stream.
def cudaGraphCreate(p_graph, flags: int) -> None:
    if p_graph == ffi.NULL or flags:
        raise CudaError(Error.cudaErrorInvalidValue, "cudaGraphCreate(NULL, ...) or flags other than 0")
    g = Graph()
    S.graphs[g.handle] = g
    _out(p_graph, "uintptr_t", g.handle)


def _add_node(p_node, graph, deps, count: int, kind: str, replay: Callable[[int], None]) -> None:
    g = _graph(graph)
    if p_node == ffi.NULL or (count and deps == ffi.NULL):
        raise CudaError(Error.cudaErrorInvalidValue, "a NULL node or dependency pointer")
    handles = [int(ffi.cast("uintptr_t *", deps)[i]) for i in range(count)]
    members = {n.handle: n for n in g.nodes}
    if any(h not in members for h in handles) or len(set(handles)) != len(handles):
        raise CudaError(Error.cudaErrorInvalidValue, "a dependency that is not a node of this graph, or twice")
    node = Node(kind, replay, tuple(members[h] for h in handles))
    g.nodes.append(node)
    _out(p_node, "uintptr_t", node.handle)


def cudaGraphAddEmptyNode(p_node, graph, deps, count: int) -> None:
    _add_node(p_node, graph, deps, count, "empty", lambda h: None)


def cudaGraphAddKernelNode(p_node, graph, deps, count: int, params) -> None:
    p = _read(params, "cudaKernelNodeParams")
    if p["extra"]:
        raise CudaError(Error.cudaErrorNotSupported, "kernel node arguments in the `extra` format")
    dev = device()
    build = _launch_builder(ffi.cast("void *", p["func"]), p["gridDim"], p["blockDim"],
                            ffi.cast("void **", p["kernelParams"]), p["sharedMemBytes"], dev)
    _add_node(p_node, graph, deps, count, "kernel", lambda h: _submit_launch(dev, build, h))


def cudaGraphExecKernelNodeSetParams(graph_exec, node, params) -> None:
    """New arguments (and shape) for one kernel node of an instantiated graph; the graph itself keeps its own."""
    ge = _graph_exec(graph_exec)
    n = S.nodes.get(_addr(node))
    if n is None or n.handle not in ge.replays or n.kind != "kernel":
        raise CudaError(Error.cudaErrorInvalidValue, "not a kernel node of this graph exec")
    p = _read(params, "cudaKernelNodeParams")
    dev = device()
    build = _launch_builder(ffi.cast("void *", p["func"]), p["gridDim"], p["blockDim"],
                            ffi.cast("void **", p["kernelParams"]), p["sharedMemBytes"], dev)
    ge.replays[n.handle] = lambda h: _submit_launch(dev, build, h)


def cudaGraphAddMemcpyNode1D(p_node, graph, deps, count: int, dst, src, size: int, kind: int) -> None:
    d, s_ = _addr(dst), _addr(src)
    _add_node(p_node, graph, deps, count, "memcpy", lambda h: _copy(d, s_, size, kind, h, True))


def cudaGraphAddMemsetNode(p_node, graph, deps, count: int, params) -> None:
    p = _read(params, "cudaMemsetParams")
    size, ptr, pitch, value, width, height = (p[k] for k in ("elementSize", "dst", "pitch", "value", "width", "height"))
    if size not in (1, 2, 4) or ptr % size or (height > 1 and (width * size > pitch or pitch % size)):
        raise CudaError(Error.cudaErrorInvalidValue, f"memset node of {width} x {height} elements of {size} bytes, "
                                                     f"pitch {pitch}")

    def replay(h: int) -> None:
        for row in range(height):
            _memset(ptr + row * pitch, value, width, h, True, size)
    _add_node(p_node, graph, deps, count, "memset", replay)


def cudaGraphAddHostNode(p_node, graph, deps, count: int, params) -> None:
    p = _read(params, "cudaHostNodeParams")
    if not p["fn"]:
        raise CudaError(Error.cudaErrorInvalidValue, "a host node without a function")
    fn, data = ffi.cast("void *", p["fn"]), ffi.cast("void *", p["userData"])
    _add_node(p_node, graph, deps, count, "host", lambda h: cudaLaunchHostFunc(h, fn, data))


def cudaGraphAddChildGraphNode(p_node, graph, deps, count: int, child) -> None:
    """The child graph as it is now (CUDA clones it): its nodes run in order where this node does."""
    steps = [n.replay for n in _in_order(_graph(child).nodes)]

    def replay(h: int) -> None:
        for step in steps:
            step(h)
    _add_node(p_node, graph, deps, count, "graph", replay)


def cudaGraphAddEventRecordNode(p_node, graph, deps, count: int, event) -> None:
    e = _event(event)
    _add_node(p_node, graph, deps, count, "event_record", lambda h: _event_record_node(h, e))


def cudaGraphAddEventWaitNode(p_node, graph, deps, count: int, event) -> None:
    e = _event(event)
    _add_node(p_node, graph, deps, count, "wait_event", lambda h: _wait_event(h, e))


def cudaGraphAddDependencies(graph, from_, to, edges, count: int) -> None:
    g = _graph(graph)
    if count and (from_ == ffi.NULL or to == ffi.NULL):
        raise CudaError(Error.cudaErrorInvalidValue, "NULL dependency arrays")
    if edges != ffi.NULL and any(_bytes(_addr(edges) + 8 * i, 8) != bytes(8) for i in range(count)):
        raise CudaError(Error.cudaErrorNotSupported, "edges with ports or types other than full completion")
    members = {n.handle: n for n in g.nodes}
    before = {n.handle: n.deps for n in g.nodes}
    try:
        for i in range(count):
            a, b = (members.get(int(ffi.cast("uintptr_t *", arr)[i])) for arr in (from_, to))
            if a is None or b is None or a is b or a in b.deps:
                raise CudaError(Error.cudaErrorInvalidValue, "not two nodes of this graph, or the edge exists")
            b.deps = (*b.deps, a)
        _in_order(g.nodes)  # a cycle is refused now
    except CudaError:
        for n in g.nodes:
            n.deps = before[n.handle]
        raise


def cudaGraphClone(p_graph, original) -> None:
    g = _graph(original)
    if p_graph == ffi.NULL:
        raise CudaError(Error.cudaErrorInvalidValue, "a NULL graph pointer")
    copy = Graph()
    twins = {n.handle: Node(n.kind, n.replay, ()) for n in g.nodes}
    for n in g.nodes:
        twins[n.handle].deps = tuple(twins[d.handle] for d in n.deps)
        copy.nodes.append(twins[n.handle])
    S.graphs[copy.handle] = copy
    _out(p_graph, "uintptr_t", copy.handle)


def cudaGraphInstantiate(p_exec, graph, flags: int) -> None:
    g = _graph(graph)
    if p_exec == ffi.NULL:
        raise CudaError(Error.cudaErrorInvalidValue, "a NULL graph exec pointer")
    if flags & ~INSTANTIATE_FLAGS:
        raise CudaError(Error.cudaErrorInvalidValue, f"instantiate flags {flags:#x}")
    ge = GraphExec(g)
    S.graph_execs[ge.handle] = ge
    _out(p_exec, "uintptr_t", ge.handle)


cudaGraphInstantiateWithFlags = cudaGraphInstantiate


def cudaGraphUpload(graph_exec, stream) -> None:
    """Nothing to upload ahead: the nodes travel at each launch."""
    _graph_exec(graph_exec)
    _stream(stream)


def cudaGraphLaunch(graph_exec, stream) -> None:
    """The nodes, in capture order, onto `stream`; a launch also waits for the graph's previous launch when that
    went to another stream (CUDA orders launches of one graph exec). Into a capturing stream it is refused
    and ends that capture, as the H100's runtime does."""
    ge = _graph_exec(graph_exec)
    _refuse_if_capturing(stream)
    h, k = _addr(stream), _key(stream)
    s, dev = _stream(stream)
    if ge.done is not None and ge.last_stream != k:
        (s or dev.default_stream).wait(ge.done)
    for node in ge.nodes:
        ge.replays[node.handle](h)
    if ge.nodes:
        if ge.done is None or ge.done.device is not dev:
            ge.done = dev.create_event(timing=False)
        ge.done.record(s)
        ge.last_stream = k


def cudaGraphExecDestroy(graph_exec) -> None:
    _graph_exec(graph_exec)
    ge = S.graph_execs.pop(_addr(graph_exec))
    if ge.done is not None:
        ge.done.destroy()


def cudaGraphDestroy(graph) -> None:
    g = _graph(graph)
    del S.graphs[g.handle]
    for node in g.nodes:
        S.nodes.pop(node.handle, None)


def cudaGraphGetNodes(graph, nodes, count) -> None:
    g = _graph(graph)
    if count == ffi.NULL:
        raise CudaError(Error.cudaErrorInvalidValue, "a NULL count pointer")
    if nodes != ffi.NULL:
        room = ffi.cast("size_t *", count)[0]
        out = ffi.cast("uintptr_t *", nodes)
        for i in range(room):
            out[i] = g.nodes[i].handle if i < len(g.nodes) else 0
        _out(count, "size_t", min(room, len(g.nodes)))
    else:
        _out(count, "size_t", len(g.nodes))


def cudaGraphNodeGetType(node, p_type) -> None:
    n = S.nodes.get(_addr(node))
    if n is None:
        raise CudaError(Error.cudaErrorInvalidValue, "not a graph node of this process")
    _out(p_type, "int", NODE_TYPES[n.kind])


# ---- occupancy ----------------------------------------------------------------------------------
# The standard calculation (as CUDA's cuda_occupancy.h does it for sm_90): resident blocks per SM are
# the least of what warps, the block limit, registers and shared memory allow. Registers are allocated
# per warp in units of 256 out of four equal partitions of the SM's file; shared memory per block is
# the kernel's static plus dynamic plus the device's per-block reservation, in units of 128 bytes.
REG_ALLOCATION_UNIT, REG_PARTITIONS, MAX_REGS_PER_THREAD, SHARED_ALLOCATION_UNIT = 256, 4, 255, 128
OCCUPANCY_FLAGS = 1  # cudaOccupancyDisableCachingOverride


def _function_attributes(func, dev: Device) -> dict[str, int]:
    """The kernel's attributes, read once per kernel (cudaFuncSetAttribute forgets them)."""
    if lib.qcuda_find_function(func) == ffi.NULL:
        raise CudaError(Error.cudaErrorInvalidResourceHandle, "not a registered kernel")  # as cudaFuncGetAttributes
    kernel = _kernel(_addr(func), dev)
    found = S.function_attributes.get(kernel.handle)
    if found is None:
        found = S.function_attributes[kernel.handle] = kernel.attributes()
    return found


def _blocks_per_sm(dev: Device, fa: dict[str, int], block: int, dynamic: int) -> int:
    a = dev.attributes
    warp = a["cudaDevAttrWarpSize"]
    if block < 1 or block > fa["max_threads_per_block"] or dynamic > fa["max_dynamic_shared_size_bytes"]:
        return 0
    warps = -(-block // warp)
    by_warps = a["cudaDevAttrMaxThreadsPerMultiProcessor"] // warp // warps
    by_blocks = a["cudaDevAttrMaxBlocksPerMultiprocessor"]
    regs = min(fa["num_regs"], MAX_REGS_PER_THREAD)  # the emulator counts PTX registers; ptxas caps them so
    if regs:
        per_warp = -(-regs * warp // REG_ALLOCATION_UNIT) * REG_ALLOCATION_UNIT
        partition = a["cudaDevAttrMaxRegistersPerMultiprocessor"] // REG_PARTITIONS
        by_regs = partition // per_warp * REG_PARTITIONS // warps
        if per_warp * warps > a["cudaDevAttrMaxRegistersPerBlock"]:
            by_regs = 0
    else:
        by_regs = by_blocks
    shared = fa["shared_size_bytes"] + dynamic + a.get("cudaDevAttrReservedSharedMemoryPerBlock", 0)
    shared = -(-shared // SHARED_ALLOCATION_UNIT) * SHARED_ALLOCATION_UNIT
    by_shared = a["cudaDevAttrMaxSharedMemoryPerMultiprocessor"] // shared if shared else by_blocks
    return max(0, min(by_warps, by_blocks, by_regs, by_shared))


def cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(num_blocks, func, block: int, dynamic: int,
                                                           flags: int) -> None:
    if num_blocks == ffi.NULL:
        raise CudaError(Error.cudaErrorInvalidValue, "a NULL result pointer")
    if flags & ~OCCUPANCY_FLAGS:
        raise CudaError(Error.cudaErrorInvalidValue, f"occupancy flags {flags:#x}")
    dev = device()
    _out(num_blocks, "int", _blocks_per_sm(dev, _function_attributes(func, dev), block, dynamic))


def cudaOccupancyMaxActiveBlocksPerMultiprocessor(num_blocks, func, block: int, dynamic: int) -> None:
    cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(num_blocks, func, block, dynamic, 0)


def cudaOccupancyAvailableDynamicSMemPerBlock(size, func, num_blocks: int, block: int) -> None:
    """The dynamic shared memory per block that leaves room for `num_blocks` blocks on an SM, by CUDA's own
    arithmetic (cuda_occupancy.h; the H100's runtime agrees): the SM's shared memory split evenly, without
    the per-block reservation, so launching that many blocks with this much may fit one fewer."""
    dev = device()
    fa = _function_attributes(func, dev)
    a = dev.attributes
    if num_blocks < 1 or _blocks_per_sm(dev, fa, block, 0) < num_blocks:
        _out(size, "size_t", 0)
        return
    per_block_limit = a["cudaDevAttrMaxSharedMemoryPerBlock"]
    if fa["max_dynamic_shared_size_bytes"] + fa["shared_size_bytes"] > per_block_limit:  # the kernel opted in
        per_block_limit = a["cudaDevAttrMaxSharedMemoryPerBlockOptin"]
    per_block_limit += a.get("cudaDevAttrReservedSharedMemoryPerBlock", 0)
    per_sm = per_block_limit if num_blocks == 1 else a["cudaDevAttrMaxSharedMemoryPerMultiprocessor"]
    room = min(per_sm // num_blocks // SHARED_ALLOCATION_UNIT * SHARED_ALLOCATION_UNIT, per_block_limit)
    _out(size, "size_t", max(0, min(room - fa["shared_size_bytes"], fa["max_dynamic_shared_size_bytes"])))


# ---- managed memory -----------------------------------------------------------------------------
# cudaMallocManaged: device memory, and ordinary host memory mapped in this process at the same address
# (over the PROT_NONE reservation of the device span), kept coherent at synchronisation points, as CUDA
# does on a device without concurrent managed access (which is what qcuda reports):
# - before device work (a launch, copy or memset) after a synchronisation point, the pages the host changed
#   since then (found by comparing with a shadow of the last common contents) go to the device;
# - after a synchronisation point that follows device work (device, stream or event synchronisation, a
#   successful stream or event query, a synchronous copy or memset), the bytes the device changed come back.
# The host may not touch managed memory while device work that may use it runs (CUDA's rule without
# concurrent managed access): what it writes meanwhile may be overwritten, or overwrite the device's.
PAGE = mmap.PAGESIZE
MANAGED_ATTRIBUTES = {"cudaDevAttrManagedMemory": 1, "cudaDevAttrConcurrentManagedAccess": 0,
                      "cudaDevAttrDirectManagedMemAccessFromHost": 0}
LIBRARY_ATTRIBUTES = {**MANAGED_ATTRIBUTES, **POOL_ATTRIBUTES}  # attributes this library answers itself
MEM_ADVICE = set(cudaMemoryAdvise.values())
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_PROT_NONE, _PROT_RW = 0, mmap.PROT_READ | mmap.PROT_WRITE
_MAP_FIXED, _MAP_NORESERVE = 0x10, 0x4000


class Managed:
    __slots__ = ("address", "size", "length", "buffer", "dev", "host", "shadow")

    def __init__(self, address: int, size: int, length: int, buffer: DeviceBuffer, dev: Device) -> None:
        self.address, self.size, self.length, self.buffer, self.dev = address, size, length, buffer, dev
        self.host = np.frombuffer(ffi.buffer(ffi.cast("char *", address), size), dtype=np.uint8)
        self.shadow = np.zeros(size, dtype=np.uint8)  # what host and device last held in common


def _map(address: int, length: int, prot: int) -> None:
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_FIXED | (_MAP_NORESERVE if prot == _PROT_NONE else 0)
    if _libc.mmap(address, length, prot, flags, -1, 0) != address:
        raise CudaError(Error.cudaErrorMemoryAllocation,
                        f"cannot map managed memory at 0x{address:x}: {os.strerror(ctypes.get_errno())}")


def _managed_stream(dev: Device) -> Stream:
    """A non-blocking stream of qcuda's own for managed transfers: they wait for nobody's work."""
    s = S.managed_streams.get(dev.ordinal)
    if s is None:
        s = S.managed_streams[dev.ordinal] = dev.create_stream(non_blocking=True)
    return s


def _runs(changed: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) byte ranges of the pages holding a changed byte, runs of pages merged."""
    pages = np.flatnonzero(np.logical_or.reduceat(changed, np.arange(0, changed.size, PAGE)))
    runs: list[tuple[int, int]] = []
    for p in pages.tolist():
        start, end = p * PAGE, min((p + 1) * PAGE, changed.size)
        if runs and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], end)
        else:
            runs.append((start, end))
    return runs


def _device_work() -> None:
    """Before device work: the host's changes since the last synchronisation point go to the device."""
    if not S.managed:
        return
    S.device_touched = True
    if not S.host_dirty:
        return
    S.host_dirty = False
    for mem in list(S.managed.values()):
        for start, end in _runs(mem.host != mem.shadow):
            mem.shadow[start:end] = mem.host[start:end]
            mem.dev.client.copy_htod(mem.address + start,
                                     memoryview(mem.shadow[start:end]), _managed_stream(mem.dev).handle)


def _synchronised() -> None:
    """After a synchronisation point: what the device changed since the last one comes back to the host, and
    memory pools give back what they keep above their release thresholds."""
    if S.pools:
        _release_pools()
    if not S.managed or not S.device_touched:
        return
    S.device_touched = False
    S.host_dirty = True
    for mem in list(S.managed.values()):
        now = np.empty(mem.size, dtype=np.uint8)
        mem.dev.client.copy_dtoh(memoryview(now), mem.address, _managed_stream(mem.dev).handle)
        changed = now != mem.shadow
        mem.host[changed] = now[changed]
        mem.shadow[:] = now


def cudaMallocManaged(ptr, size: int, flags: int) -> None:
    _unsafe_call()
    if ptr == ffi.NULL or flags not in (DEFINES["cudaMemAttachGlobal"], DEFINES["cudaMemAttachHost"]):
        raise CudaError(Error.cudaErrorInvalidValue, f"cudaMallocManaged of {size} bytes, flags {flags:#x}")
    if size == 0:  # as cudaMalloc: success, and no memory (the H100 does so)
        _out(ptr, "uintptr_t", 0)
        return
    dev = device()
    length = -(-size // PAGE) * PAGE
    buffer = dev.allocate(length + PAGE)  # whole pages of its own, whatever the device's alignment
    address = -(-buffer.handle // PAGE) * PAGE
    if not (RESERVED[0] <= address and address + length <= RESERVED[0] + RESERVED[1]):
        buffer.free()
        raise CudaError(Error.cudaErrorNotSupported, "the device's addresses lie outside qcuda's layout")
    try:
        _map(address, length, _PROT_RW)
    except CudaError:
        buffer.free()
        raise
    dev.client.call(m.Memset(address, 0, 1, size, _managed_stream(dev).handle))  # host and device start at 0
    with S.lock:
        S.managed[address] = Managed(address, size, length, buffer, dev)
        S.host_dirty = True  # the host may write it before the next device work
        S.track(address, size, dev.ordinal, buffer)
    _out(ptr, "uintptr_t", address)


def _free_managed(address: int) -> None:
    mem = S.managed.pop(address)
    mem.host = None
    _map(address, mem.length, _PROT_NONE)  # back to the reservation
    mem.buffer.free()


def _is_managed(address: int) -> bool:
    if not S.managed:
        return False
    i = bisect.bisect_right(S.starts, address) - 1
    mem = S.managed.get(S.starts[i]) if i >= 0 else None
    return mem is not None and address < mem.address + mem.size


def _managed_range(address: int, count: int) -> Managed:
    i = bisect.bisect_right(S.starts, address) - 1
    mem = S.managed.get(S.starts[i]) if i >= 0 else None
    if mem is None or address + count > mem.address + mem.size:
        raise CudaError(Error.cudaErrorInvalidValue, f"[0x{address:x}, +{count}) is not managed memory")
    return mem


def cudaMemPrefetchAsync(ptr, count: int, location, flags: int, stream) -> None:
    """Accepted: the pages move at the next synchronisation point or device work anyway."""
    _stream(stream)
    _managed_range(_addr(ptr), count)


def cudaMemAdvise(ptr, count: int, advice: int, location) -> None:
    """Accepted: advice changes no result."""
    if advice not in MEM_ADVICE:
        raise CudaError(Error.cudaErrorInvalidValue, f"advice {advice}")
    _managed_range(_addr(ptr), count)


def cudaStreamAttachMemAsync(stream, ptr, length: int, flags: int) -> None:
    """Accepted: qcuda keeps managed memory coherent for every stream alike."""
    _stream(stream)
    if flags not in (DEFINES["cudaMemAttachGlobal"], DEFINES["cudaMemAttachHost"], DEFINES["cudaMemAttachSingle"]):
        raise CudaError(Error.cudaErrorInvalidValue, f"attach flags {flags:#x}")
    _managed_range(_addr(ptr), length or 1)


# ---- installation -------------------------------------------------------------------------------
class ProgramStdout(io.RawIOBase):
    """The program's C stdout: device printf output joins the program's own output in order."""

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        lib.qcuda_write_stdout(ffi.from_buffer(view), len(view))
        return len(view)



def _entry(name: str, fn: Callable) -> Callable:
    """`fn` as a C entry point: a cudaError_t out, failures recorded as the thread's last error."""

    def entry(*args) -> int:
        try:
            code = fn(*args) or 0
        except CudaError as exc:
            code = exc.code
            if VERBOSE:
                print(f"qcuda: {name}: {exc}", file=sys.stderr)
        except OSError as exc:  # the daemon cannot be reached or went away mid-call
            code = Error.cudaErrorDevicesUnavailable
            print(f"qcuda: {name}: the qcuda daemon is unreachable: {exc}", file=sys.stderr)
        except Exception:
            traceback.print_exc()
            code = Error.cudaErrorUnknown
        if code and code != NOT_READY:
            lib.qcuda_set_error(code)
        return int(code)

    entry.__name__ = name
    return entry


def _forget_in_child() -> None:
    """A forked child starts afresh: the parent's handles belong to the parent's session."""
    global S
    S = State()


def install(ffi_, lib_, names: list[str]) -> None:
    """Attach the implementation of every call the library declares (and its _ptsz/_ptds variants)."""
    global ffi, lib
    ffi, lib = ffi_, lib_
    os.register_at_fork(after_in_child=_forget_in_child)
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(ProgramStdout()), line_buffering=True)
    for name in names:
        base = name.removesuffix("_ptsz").removesuffix("_ptds")
        fn = globals()[base]
        ffi.def_extern(name=name)(_entry(name, fn if base == name else _per_thread_variant(fn)))
