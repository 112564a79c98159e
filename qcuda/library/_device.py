"""Devices as guests see them: properties, memory, streams, events and modules come from here."""
from __future__ import annotations

import json
import threading
from functools import cached_property

import numpy as np

from ..protocol import messages as m
from ..protocol.errors import CudaError, Error
from ._runtime import runtime

_current = threading.local()


class Device:
    """One device (of whichever daemon serves it); objects it creates belong to it."""

    def __init__(self, ordinal: int | None = None) -> None:
        self.ordinal = current_device() if ordinal is None else int(ordinal)
        self.client, self.remote_ordinal = runtime().device(self.ordinal)

    def __repr__(self) -> str:
        return f"<qcuda.Device {self.ordinal}: {self.name} via {self.client.url}>"

    def __eq__(self, other) -> bool:
        return isinstance(other, Device) and other.ordinal == self.ordinal

    def __hash__(self) -> int:
        return hash(self.ordinal)

    # -- properties ---------------------------------------------------------------------------
    @cached_property
    def properties(self) -> dict:
        """Name, total memory, backend and every cudaDeviceAttr, as the daemon reports them."""
        reply = self.client.call(m.DeviceProperties(self.remote_ordinal))
        assert isinstance(reply, m.DevicePropertiesReply)
        return json.loads(reply.json)

    @property
    def name(self) -> str:
        return self.properties["name"]

    @property
    def total_memory(self) -> int:
        return self.properties["total_memory"]

    @property
    def backend(self) -> str:
        return self.properties["backend"]

    @property
    def compute_capability(self) -> tuple[int, int]:
        return self.attribute("ComputeCapabilityMajor"), self.attribute("ComputeCapabilityMinor")

    @property
    def attributes(self) -> dict[str, int]:
        return self.properties["attributes"]

    def attribute(self, name: str) -> int:
        """A cudaDeviceAttr value, by its name with or without the `cudaDevAttr` prefix."""
        key = name if name.startswith("cudaDevAttr") else "cudaDevAttr" + name
        try:
            return self.attributes[key]
        except KeyError:
            raise ValueError(f"unknown device attribute {name!r}") from None

    def mem_info(self) -> tuple[int, int]:
        """(free, total) bytes of device memory."""
        reply = self.client.call(m.MemGetInfo(self.remote_ordinal))
        assert isinstance(reply, m.MemGetInfoReply)
        return reply.free, reply.total

    # -- work -------------------------------------------------------------------------------
    def synchronize(self) -> None:
        """Wait for all work on this device; raises the first error it or earlier async calls hit."""
        self.client.call(m.DeviceSynchronize(self.remote_ordinal))
        self.client.raise_deferred()

    def allocate(self, size: int):
        from ._memory import DeviceBuffer

        return DeviceBuffer._allocate(self, size)

    def allocate_host(self, size: int):
        """Pinned host memory in the channel arena: copies from it are zero-copy."""
        from ._memory import HostBuffer

        return HostBuffer._allocate(self, size)

    def to_device(self, data, stream=None):
        """A new device buffer holding a copy of `data` (numpy array or any buffer)."""
        view = memoryview(np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data).cast("B")
        buf = self.allocate(len(view))
        buf.copy_from(view, stream)
        return buf

    def create_stream(self, non_blocking: bool = False, priority: int = 0):
        from ._stream import Stream

        return Stream._create(self, non_blocking, priority)

    @property
    def default_stream(self):
        from ._stream import Stream

        return Stream._legacy(self)

    def create_event(self, timing: bool = True, blocking_sync: bool = False):
        from ._stream import Event

        return Event._create(self, timing, blocking_sync)

    def load_module(self, image: bytes):
        """Load PTX, cubin or fatbin bytes."""
        from ._module import Module

        return Module._load(self, bytes(image), m.ModuleKind.IMAGE)

    def compile(self, source: str):
        """Compile CUDA C source on the GPU host (NVRTC) and load it."""
        from ._module import Module

        return Module._load(self, source.encode(), m.ModuleKind.SOURCE)

    def reset(self) -> None:
        """cudaDeviceReset: frees everything of this device in this process."""
        self.client.call(m.DeviceReset(self.remote_ordinal))


def device_count() -> int:
    return len(runtime().devices)


def devices() -> list[Device]:
    return [Device(i) for i in range(device_count())]


def current_device() -> int:
    """This host thread's current device (CUDA keeps one per thread)."""
    return getattr(_current, "ordinal", 0)


def set_device(ordinal: int) -> None:
    if not 0 <= ordinal < device_count():
        raise CudaError(Error.cudaErrorInvalidDevice, f"device {ordinal} of {device_count()}")
    _current.ordinal = ordinal
