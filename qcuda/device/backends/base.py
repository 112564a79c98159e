"""The one interface every backend implements: the GPU (cuda.bindings) and the emulated device.

Backends know nothing of channels, sessions or guests. Every method raises `CudaError` on
failure. Work on a stream is asynchronous: methods enqueue and return; `fence()` gives
something to wait on, so the session can answer a synchronous call without blocking its loop.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

from ...protocol._cuda_tables import DEVICE_ATTRIBUTES
from ...protocol.messages import FuncAttributesReply as FunctionAttributes  # cudaFuncAttributes' numbers
from ...protocol.messages import ModuleKind

ATTRIBUTE_NAMES: dict[int, str] = {code: name for code, name in DEVICE_ATTRIBUTES}

STREAM_NON_BLOCKING = 0x1  # cudaStreamNonBlocking
EVENT_BLOCKING_SYNC = 0x1  # cudaEventBlockingSync
EVENT_DISABLE_TIMING = 0x2  # cudaEventDisableTiming

MODULE_IMAGE, MODULE_SOURCE = ModuleKind.IMAGE, ModuleKind.SOURCE


@dataclass
class DeviceInfo:
    """What `cudaGetDeviceProperties` needs: a name, sizes, and every cudaDeviceAttr by name."""

    name: str
    total_memory: int
    attributes: dict[str, int] = field(default_factory=dict)
    uuid: bytes = bytes(16)
    backend: str = ""

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "total_memory": self.total_memory,
            "attributes": self.attributes,
            "uuid": self.uuid.hex(),
            "backend": self.backend,
        }


class Fence(ABC):
    """A point in a stream: done once everything enqueued before it has run."""

    @abstractmethod
    def wait(self) -> None:
        """Block until done; raises the CudaError the work hit, if any."""

    @abstractmethod
    def done(self) -> bool:
        """Non-blocking check (raises like `wait` once done with an error)."""


class AllDone(Fence):
    """Done when every one of several fences is (cudaDeviceSynchronize over all streams)."""

    def __init__(self, fences: list[Fence]) -> None:
        self._fences = fences

    def wait(self) -> None:
        for f in self._fences:
            f.wait()

    def done(self) -> bool:
        return all(f.done() for f in self._fences)


class Event(ABC):
    @abstractmethod
    def query(self) -> bool: ...

    @abstractmethod
    def fence(self) -> Fence:
        """What `cudaEventSynchronize` waits for: the event's last recorded point."""

    @abstractmethod
    def elapsed_ms(self, end: "Event") -> float: ...

    @abstractmethod
    def destroy(self) -> None: ...


FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED = 8  # cudaFuncAttributeMaxDynamicSharedMemorySize (= the CU_ number)
STATIC_SHARED_LIMIT = 48 << 10  # shared memory a kernel may use without opting in to more


class Function(ABC):
    name: str
    param_layout: list[tuple[int, int]]  # (offset, size) per parameter

    @abstractmethod
    def attributes(self) -> FunctionAttributes: ...

    @abstractmethod
    def set_attribute(self, attribute: int, value: int) -> None:
        """cudaFuncSetAttribute; above 48 KiB of dynamic shared memory a launch needs this first, as on a GPU."""


class Module(ABC):
    @abstractmethod
    def function(self, name: str) -> Function: ...

    @abstractmethod
    def global_symbol(self, name: str) -> tuple[int, int]:
        """(device address, size) of a module-scope __device__/__constant__ variable."""

    @abstractmethod
    def unload(self) -> None: ...


class Stream(ABC):
    """An ordered queue of device work."""

    @abstractmethod
    def copy_htod(self, dst: int, src: memoryview) -> None:
        """Copy host bytes to device address `dst`. `src` must stay valid until the work runs."""

    @abstractmethod
    def copy_dtoh(self, dst: memoryview, src: int) -> None: ...

    @abstractmethod
    def copy_dtod(self, dst: int, src: int, size: int) -> None: ...

    @abstractmethod
    def memset(self, ptr: int, value: int, element_size: int, count: int) -> None: ...

    @abstractmethod
    def launch(self, function: Function, grid: tuple[int, int, int], block: tuple[int, int, int],
               shared_bytes: int, params: bytes, cooperative: bool = False,
               cluster: tuple[int, int, int] | None = None) -> None:
        """`cooperative`: all blocks resident at once, grid-wide synchronisation allowed. `cluster`: thread block
        clusters of that shape (None: as the kernel was compiled, one block unless it names a shape)."""

    @abstractmethod
    def record(self, event: Event) -> None: ...

    @abstractmethod
    def wait_event(self, event: Event) -> None: ...

    @abstractmethod
    def host_callback(self, fn: Callable[[int], None]) -> None:
        """Run `fn(status)` on a host thread when the stream reaches this point; the stream waits for it.

        `status` is the stream's error (0 if none). `fn` may block, and must not call the backend.
        """

    @abstractmethod
    def fence(self) -> Fence: ...

    @abstractmethod
    def destroy(self) -> None:
        """Release the stream once its pending work has run (as cudaStreamDestroy)."""


class Context(ABC):
    """One session's state on one device: its memory, streams, events and modules."""

    default_stream: Stream  # the legacy default stream (handle 0 for guests)

    @abstractmethod
    def alloc(self, size: int) -> int: ...

    @abstractmethod
    def free(self, ptr: int) -> None: ...

    @abstractmethod
    def mem_info(self) -> tuple[int, int]:
        """(free, total) bytes."""

    @abstractmethod
    def map_host(self, buffer) -> int:
        """Register host memory (the channel arena) for DMA and for kernels; its device address."""

    @abstractmethod
    def create_stream(self, flags: int, priority: int) -> Stream: ...

    @abstractmethod
    def create_event(self, flags: int) -> Event: ...

    @abstractmethod
    def load_module(self, image: bytes, kind: int) -> tuple[Module, str]:
        """Load a module; also returns the compile or link log, if any."""

    @abstractmethod
    def synchronize_fence(self) -> Fence:
        """A fence over every stream of the context (cudaDeviceSynchronize)."""

    @abstractmethod
    def sticky_error(self) -> int:
        """A non-zero cudaError_t once the context is broken (an illegal address in a kernel)."""

    @abstractmethod
    def close(self) -> None:
        """Free everything the context holds."""


class Backend(ABC):
    """A kind of device. Created once per worker process (after fork: CUDA may start here)."""

    name: str

    @abstractmethod
    def device_count(self) -> int: ...

    @abstractmethod
    def device_info(self, ordinal: int) -> DeviceInfo: ...

    @abstractmethod
    def open_context(self, ordinal: int, slot: int) -> Context:
        """A context on device `ordinal` whose addresses come from layout slot `slot` (qcuda.protocol.addresses):
        the guest's global number for the device, so devices of several daemons never share addresses."""
