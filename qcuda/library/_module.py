"""Modules and kernels: load code on the device, launch kernels with typed arguments."""
from __future__ import annotations

import struct
import weakref

import numpy as np

from ..protocol import messages as m
from ..protocol.errors import CudaError, Error
from ._memory import DeviceBuffer, HostBuffer
from ._stream import _destroy

FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED = 8  # cudaFuncAttributeMaxDynamicSharedMemorySize


class Module:
    """Code loaded on one device."""

    def __init__(self, device, handle: int, log: str) -> None:
        self.device = device
        self.handle = handle
        self.log = log
        self._kernels: dict[str, Kernel] = {}
        self._finalizer = weakref.finalize(self, _destroy, device.client, m.ModuleUnload(handle))

    @classmethod
    def _load(cls, device, image: bytes, kind: int) -> "Module":
        reply = device.client.call(m.ModuleLoad(device.remote_ordinal, kind, image))
        assert isinstance(reply, m.ModuleLoadReply)
        return cls(device, reply.module, reply.log)

    def get_kernel(self, name: str) -> "Kernel":
        """A kernel by its (mangled, or extern "C") name."""
        kernel = self._kernels.get(name)
        if kernel is None:
            reply = self.device.client.call(m.ModuleGetFunction(self.handle, name))
            assert isinstance(reply, m.ModuleGetFunctionReply)
            layout = [struct.unpack_from("<II", reply.layout, 8 * i) for i in range(reply.param_count)]
            kernel = self._kernels[name] = Kernel(self, name, reply.function, layout)
        return kernel

    def get_global(self, name: str) -> tuple[int, int]:
        """(device address, size) of a module-scope __device__ or __constant__ variable."""
        reply = self.device.client.call(m.ModuleGetGlobal(self.handle, name))
        assert isinstance(reply, m.ModuleGetGlobalReply)
        return reply.ptr, reply.size

    def unload(self) -> None:
        if self._finalizer.detach() is not None:
            self.device.client.call(m.ModuleUnload(self.handle))


def _dim3(value) -> tuple[int, int, int]:
    if isinstance(value, (int, np.integer)):
        return int(value), 1, 1
    dims = tuple(int(v) for v in value)
    if not 1 <= len(dims) <= 3:
        raise ValueError(f"a grid or block has 1 to 3 dimensions, not {len(dims)}")
    return dims + (1,) * (3 - len(dims))  # type: ignore[return-value]


class Kernel:
    """A `__global__` function; `param_layout` is (offset, size) per parameter, as the device reports."""

    def __init__(self, module: Module, name: str, handle: int, layout: list[tuple[int, int]]) -> None:
        self.module = module
        self.name = name
        self.handle = handle
        self.param_layout = layout
        self.param_size = max((off + n for off, n in layout), default=0)

    def attributes(self) -> dict[str, int]:
        """cudaFuncAttributes as the device reports them (registers, static shared and local memory, limits)."""
        reply = self.module.device.client.call(m.FuncGetAttributes(self.handle))
        assert isinstance(reply, m.FuncAttributesReply)
        return {name: getattr(reply, name) for name in reply._fixed}

    def set_max_dynamic_shared_memory(self, nbytes: int) -> None:
        """Opt in to more than 48 KiB of dynamic shared memory (cudaFuncAttributeMaxDynamicSharedMemorySize)."""
        self.module.device.client.call(m.FuncSetAttribute(self.handle, FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED, nbytes))

    def pack(self, args) -> bytes:
        """The parameter block for `args`: buffers become pointers, numbers take the parameter's width."""
        if len(args) != len(self.param_layout):
            raise TypeError(f"{self.name} takes {len(self.param_layout)} arguments, {len(args)} given")
        block = bytearray(self.param_size)
        for i, (arg, (off, n)) in enumerate(zip(args, self.param_layout)):
            block[off:off + n] = _argument_bytes(arg, n, i, self.name)
        return bytes(block)

    def launch(self, grid, block, *args, shared_mem: int = 0, stream=None, cluster=None) -> None:
        """Queue the kernel; errors of its execution surface at the next synchronisation. `cluster`: launch in
        thread block clusters of that shape (sm_90; the grid must be a whole number of them)."""
        device = self.module.device
        handle = 0 if stream is None else stream.handle
        g, b = _dim3(grid), _dim3(block)
        if cluster is None:
            device.client.call(m.Launch(self.handle, *g, *b, shared_mem, handle, self.pack(args)))
        else:
            device.client.call(m.LaunchCluster(self.handle, *g, *b, shared_mem, handle, *_dim3(cluster), 0,
                                               self.pack(args)))


def _argument_bytes(arg, size: int, index: int, name: str) -> bytes:
    if isinstance(arg, DeviceBuffer):
        arg = arg.handle
    elif isinstance(arg, HostBuffer):
        arg = arg.device_pointer
    if isinstance(arg, (bytes, bytearray, memoryview)):
        data = bytes(arg)
    elif isinstance(arg, np.generic):
        data = arg.tobytes()
    elif isinstance(arg, bool):
        data = int(arg).to_bytes(size, "little")
    elif isinstance(arg, int):
        if size not in (1, 2, 4, 8):
            raise TypeError(f"{name}: argument {index} is an int but the parameter has {size} bytes")
        try:
            data = arg.to_bytes(size, "little", signed=arg < 0)
        except OverflowError:
            raise TypeError(f"{name}: argument {index} ({arg}) does not fit {size} bytes") from None
    elif isinstance(arg, float):
        if size not in (4, 8):
            raise TypeError(f"{name}: argument {index} is a float but the parameter has {size} bytes")
        data = struct.pack("<f" if size == 4 else "<d", arg)
    else:
        raise TypeError(f"{name}: argument {index} of type {type(arg).__name__} cannot be passed to a kernel")
    if len(data) != size:
        raise CudaError(Error.cudaErrorInvalidValue, f"{name}: argument {index} has {len(data)} bytes, the parameter {size}")
    return data
