"""Device buffers and pinned host buffers."""
from __future__ import annotations

import weakref

import numpy as np

from ..driver.client import Client
from ..protocol import messages as m
from ..protocol.errors import CudaError, Error


def _free_device(client: Client, ptr: int) -> None:
    if client.broken is None and not client.channel.closed:
        try:
            client.post(m.MemFree(ptr))
        except CudaError:
            pass


def _as_bytes(obj) -> memoryview:
    if isinstance(obj, HostBuffer):
        return obj.view
    if isinstance(obj, np.ndarray):
        if not obj.flags.c_contiguous:
            raise ValueError("copies need a C-contiguous array")
        return memoryview(obj.reshape(-1).view(np.uint8))
    return memoryview(obj).cast("B")


def _stream_handle(stream, device) -> int:
    if stream is None:
        return 0
    if stream.device != device:
        raise CudaError(Error.cudaErrorInvalidValue, "the stream belongs to another device")
    return stream.handle


class DeviceBuffer:
    """`size` bytes of device memory. Freed by `free()` or when garbage-collected."""

    def __init__(self, device, ptr: int, size: int) -> None:
        self.device = device
        self.handle = ptr
        self.size = size
        self._finalizer = weakref.finalize(self, _free_device, device.client, ptr)

    @classmethod
    def _allocate(cls, device, size: int) -> "DeviceBuffer":
        if size < 0:
            raise ValueError("size must be >= 0")
        reply = device.client.call(m.MemAlloc(device.remote_ordinal, size))
        assert isinstance(reply, m.MemAllocReply)
        return cls(device, reply.ptr, size)

    @property
    def ptr(self) -> int:
        return self.handle

    def __repr__(self) -> str:
        return f"<qcuda.DeviceBuffer 0x{self.handle:x} {self.size} bytes on device {self.device.ordinal}>"

    def free(self) -> None:
        """Give the memory back now (as cudaFree)."""
        if self._finalizer.detach() is not None:
            self.device.client.call(m.MemFree(self.handle))

    def _range(self, nbytes: int, offset: int) -> int:
        if offset < 0 or nbytes < 0 or offset + nbytes > self.size:
            raise ValueError(f"[{offset}, +{nbytes}) is outside this {self.size}-byte buffer")
        return self.handle + offset

    def copy_from(self, src, stream=None, offset: int = 0) -> None:
        """Host -> device. Synchronous unless a stream is given and `src` is pinned (a HostBuffer)."""
        view = _as_bytes(src)
        dst = self._range(len(view), offset)
        asynchronous = stream is not None and isinstance(src, HostBuffer)
        self.device.client.copy_htod(dst, view, _stream_handle(stream, self.device), asynchronous)

    def copy_to(self, dst=None, stream=None, offset: int = 0, nbytes: int | None = None):
        """Device -> host, into `dst` (returned) or a new bytearray."""
        if dst is None:
            dst = bytearray(self.size - offset if nbytes is None else nbytes)
        view = _as_bytes(dst)
        src = self._range(len(view), offset)
        asynchronous = stream is not None and isinstance(dst, HostBuffer)
        self.device.client.copy_dtoh(view, src, _stream_handle(stream, self.device), asynchronous)
        return dst

    def to_numpy(self, dtype=np.uint8, shape=None) -> np.ndarray:
        out = np.empty(self.size // np.dtype(dtype).itemsize, dtype=dtype)
        self.copy_to(out)
        return out.reshape(shape) if shape is not None else out

    def copy_from_device(self, src: "DeviceBuffer", nbytes: int | None = None, stream=None) -> None:
        """Device -> device. Between devices of different daemons (or any two devices) it goes through this host."""
        n = min(self.size, src.size) if nbytes is None else nbytes
        if src.device != self.device:
            if stream is not None:
                stream.synchronize()
            staging = bytearray(n)
            src.copy_to(staging)
            self.copy_from(staging)
            return
        self.device.client.call(m.MemcpyDtoD(self._range(n, 0), src._range(n, 0), n, _stream_handle(stream, self.device)))

    def memset(self, value: int, stream=None, element_size: int = 1, count: int | None = None) -> None:
        """Fill with a byte (or 16/32-bit value with `element_size` 2 or 4)."""
        n = self.size // element_size if count is None else count
        self._range(n * element_size, 0)
        msg = m.Memset(self.handle, value & 0xFFFFFFFF, element_size, n, _stream_handle(stream, self.device))
        if stream is None:
            self.device.client.call(msg)
        else:
            self.device.client.post(msg)


def _free_host(client: Client, offset: int) -> None:
    if not client.channel.closed:
        client.channel.arena_free(offset)


class HostBuffer:
    """Pinned host memory inside the channel arena: the daemon reads and writes it in place."""

    def __init__(self, device, offset: int, size: int) -> None:
        self.device = device
        self.offset = offset
        self.size = size
        self.view = device.client.channel.arena[offset:offset + size]
        self._finalizer = weakref.finalize(self, _free_host, device.client, offset)

    @classmethod
    def _allocate(cls, device, size: int) -> "HostBuffer":
        return cls(device, device.client.channel.arena_alloc(size), size)

    def __buffer__(self, flags: int) -> memoryview:
        return self.view

    def numpy(self, dtype=np.uint8) -> np.ndarray:
        """A numpy array over the pinned bytes themselves (no copy)."""
        return np.frombuffer(self.view, dtype=dtype)

    @property
    def device_pointer(self) -> int:
        """Where kernels see these bytes (cudaHostGetDevicePointer): shared-memory channels only."""
        if not self.device.client.channel.shared_arena:
            raise CudaError(Error.cudaErrorNotSupported,
                            f"{self.device.client.url}: kernels cannot reach guest memory over a network channel")
        reply = self.device.client.call(m.ArenaDevicePointer(self.device.remote_ordinal))
        assert isinstance(reply, m.ArenaDevicePointerReply)
        return reply.ptr + self.offset

    def free(self) -> None:
        self._finalizer()
