"""Every qcuda message as a small frozen dataclass, with its wire layout declared beside it.

A message is a fixed part (a `struct` format of its fields, in order) and optionally one
variable-length tail (bytes or str) that takes the rest of the payload. Requests go guest ->
host; each has a reply type (status + fields). Host messages go host -> guest unasked.
Sizes, addresses and handles are 64-bit everywhere.
"""
from __future__ import annotations

import enum
import operator
import struct
from dataclasses import dataclass, fields
from typing import Callable, ClassVar


class Cmd(enum.IntEnum):
    """Command numbers: the `command` field of the frame header."""

    HELLO = 1
    GOODBYE = 2
    DEVICE_COUNT = 10
    DEVICE_PROPERTIES = 11
    DEVICE_SYNCHRONIZE = 12
    DEVICE_RESET = 13
    MEM_GET_INFO = 14
    ARENA_DEVICE_POINTER = 15
    ARENA_WRITE = 16
    ARENA_READ = 17
    MEM_ALLOC = 20
    MEM_FREE = 21
    MEMCPY_HTOD = 22
    MEMCPY_DTOH = 23
    MEMCPY_DTOD = 24
    MEMSET = 25
    MEMCPY_HTOD_INLINE = 26
    MEMCPY_DTOH_INLINE = 27
    STREAM_CREATE = 30
    STREAM_DESTROY = 31
    STREAM_SYNCHRONIZE = 32
    STREAM_QUERY = 33
    STREAM_WAIT_EVENT = 34
    STREAM_CALLBACK = 35
    CALLBACK_DONE = 36
    EVENT_CREATE = 40
    EVENT_DESTROY = 41
    EVENT_RECORD = 42
    EVENT_SYNCHRONIZE = 43
    EVENT_QUERY = 44
    EVENT_ELAPSED = 45
    MODULE_LOAD = 50
    MODULE_UNLOAD = 51
    MODULE_GET_FUNCTION = 52
    MODULE_GET_GLOBAL = 53
    LAUNCH = 54
    FUNC_GET_ATTRIBUTES = 55
    FUNC_SET_ATTRIBUTE = 56
    LAUNCH_COOPERATIVE = 57
    LAUNCH_CLUSTER = 58
    CONTROL_STATUS = 90
    CONTROL_KILL = 91
    # host -> guest, unasked
    DEFERRED_ERROR = 0x8001
    CALLBACK = 0x8002
    PRINTF = 0x8003


class Flags:
    """Frame flags (plain ints: they are tested on every message)."""

    REPLY = 1  # this frame answers the request with the same id
    NO_REPLY = 2  # asynchronous request: answer only if it fails (as DEFERRED_ERROR)
    HOST_MESSAGE = 4  # host -> guest, not an answer to anything


class Kind(enum.IntEnum):
    """What kind of peer says hello."""

    GUEST = 1  # a CUDA program: gets a session
    CONTROL = 2  # an operator's CLI: status, kill


class ModuleKind(enum.IntEnum):
    """What a MODULE_LOAD carries."""

    IMAGE = 0  # PTX, cubin or fatbin bytes
    SOURCE = 1  # CUDA C source, compiled on the host


@dataclass(frozen=True)
class Message:
    """Base of all messages: `FORMAT` describes the fixed fields, `TAIL` names the tail field."""

    CMD: ClassVar[Cmd]
    FORMAT: ClassVar[str] = ""
    TAIL: ClassVar[str | None] = None  # name of a trailing bytes/str field
    _struct: ClassVar[struct.Struct]
    _fixed: ClassVar[tuple[str, ...]]
    _names: ClassVar[tuple[str, ...]]
    _tail_is_str: ClassVar[bool]
    _values: ClassVar[Callable[["Message"], tuple]]  # the fixed fields' values, in FORMAT order

    @classmethod
    def _trusted(cls, values) -> "Message":
        """Build from values the decoder produced (numbers from `struct`, a checked tail): no re-validation."""
        obj = object.__new__(cls)
        obj.__dict__.update(zip(cls._names, values))
        return obj

    def __post_init__(self) -> None:
        values = self.__dict__
        for name in self._fixed:  # (every message is built on the hot path: no dataclasses.fields() here)
            if not isinstance(values[name], (int, float)):
                raise TypeError(f"{type(self).__name__}.{name} must be a number, not {type(values[name]).__name__}")
        if self.TAIL is not None and not isinstance(values[self.TAIL], (bytes, str, memoryview)):
            raise TypeError(f"{type(self).__name__}.{self.TAIL} must be bytes or str")


def _fields_getter(names: tuple[str, ...]) -> Callable[["Message"], tuple]:
    """The values of `names` of a message as a tuple, in one C call (encoding is on every call's path)."""
    if not names:
        return lambda msg: ()
    if len(names) == 1:
        one = operator.attrgetter(names[0])
        return lambda msg: (one(msg),)
    return operator.attrgetter(*names)


def _message(cls):
    cls._struct = struct.Struct("<" + cls.FORMAT)
    names = [f.name for f in fields(cls)]
    fixed = [n for n in names if n != cls.TAIL]
    if cls.TAIL is not None and names[-1] != cls.TAIL:
        raise TypeError(f"{cls.__name__}: the tail must be the last field")
    if len(fixed) != len(cls._struct.unpack(bytes(cls._struct.size))):
        raise TypeError(f"{cls.__name__}: FORMAT {cls.FORMAT!r} does not match its fields")
    cls._fixed = tuple(fixed)
    cls._names = tuple(names)
    cls._values = staticmethod(_fields_getter(tuple(fixed)))
    cls._tail_is_str = cls.TAIL is not None and cls.__dataclass_fields__[cls.TAIL].type in ("str", str)
    return cls


# ---- requests ----------------------------------------------------------------------------
@_message
@dataclass(frozen=True)
class Hello(Message):
    """`slot`: where this daemon's device 0 goes in the guest's address layout (its global device number)."""

    CMD = Cmd.HELLO
    FORMAT = "IIQI"
    TAIL = "token"
    version: int
    kind: int
    features: int
    slot: int = 0
    token: bytes = b""


@_message
@dataclass(frozen=True)
class Goodbye(Message):
    CMD = Cmd.GOODBYE


@_message
@dataclass(frozen=True)
class DeviceCount(Message):
    CMD = Cmd.DEVICE_COUNT


@_message
@dataclass(frozen=True)
class DeviceProperties(Message):
    CMD = Cmd.DEVICE_PROPERTIES
    FORMAT = "i"
    device: int


@_message
@dataclass(frozen=True)
class DeviceSynchronize(Message):
    CMD = Cmd.DEVICE_SYNCHRONIZE
    FORMAT = "i"
    device: int


@_message
@dataclass(frozen=True)
class DeviceReset(Message):
    CMD = Cmd.DEVICE_RESET
    FORMAT = "i"
    device: int


@_message
@dataclass(frozen=True)
class MemGetInfo(Message):
    CMD = Cmd.MEM_GET_INFO
    FORMAT = "i"
    device: int


@_message
@dataclass(frozen=True)
class ArenaDevicePointer(Message):
    """Where kernels on `device` see the channel arena (zero-copy pinned memory)."""

    CMD = Cmd.ARENA_DEVICE_POINTER
    FORMAT = "i"
    device: int


@_message
@dataclass(frozen=True)
class ArenaWrite(Message):
    """Store bytes in the worker's staging arena (channels without shared memory, such as TCP)."""

    CMD = Cmd.ARENA_WRITE
    FORMAT = "Q"
    TAIL = "data"
    offset: int
    data: bytes


@_message
@dataclass(frozen=True)
class ArenaRead(Message):
    """Fetch bytes from the worker's staging arena (channels without shared memory)."""

    CMD = Cmd.ARENA_READ
    FORMAT = "QQ"
    offset: int
    size: int


@_message
@dataclass(frozen=True)
class MemAlloc(Message):
    CMD = Cmd.MEM_ALLOC
    FORMAT = "iQ"
    device: int
    size: int


@_message
@dataclass(frozen=True)
class MemFree(Message):
    CMD = Cmd.MEM_FREE
    FORMAT = "Q"
    ptr: int


@_message
@dataclass(frozen=True)
class MemcpyHtoD(Message):
    """Copy `size` bytes from the arena at `src_offset` to device address `dst`."""

    CMD = Cmd.MEMCPY_HTOD
    FORMAT = "QQQQ"
    dst: int
    src_offset: int
    size: int
    stream: int


INLINE_COPY_MAX = 64 << 10  # copies this small over TCP carry their bytes in the frames: one round trip


@_message
@dataclass(frozen=True)
class MemcpyHtoDInline(Message):
    """Copy the bytes of `data` (at most INLINE_COPY_MAX) to device address `dst`, through the worker's arena
    at `stage_offset` (memory the backend can copy from while the worker serves on; the guest reserved it)."""

    CMD = Cmd.MEMCPY_HTOD_INLINE
    FORMAT = "QQQ"
    TAIL = "data"
    dst: int
    stage_offset: int
    stream: int
    data: bytes


@_message
@dataclass(frozen=True)
class MemcpyDtoHInline(Message):
    """Copy `size` bytes (at most INLINE_COPY_MAX) from device address `src` through the worker's arena at
    `stage_offset`; the answer carries them."""

    CMD = Cmd.MEMCPY_DTOH_INLINE
    FORMAT = "QQQQ"
    src: int
    stage_offset: int
    size: int
    stream: int


@_message
@dataclass(frozen=True)
class MemcpyDtoH(Message):
    """Copy `size` bytes from device address `src` into the arena at `dst_offset`."""

    CMD = Cmd.MEMCPY_DTOH
    FORMAT = "QQQQ"
    dst_offset: int
    src: int
    size: int
    stream: int


@_message
@dataclass(frozen=True)
class MemcpyDtoD(Message):
    CMD = Cmd.MEMCPY_DTOD
    FORMAT = "QQQQ"
    dst: int
    src: int
    size: int
    stream: int


@_message
@dataclass(frozen=True)
class Memset(Message):
    """Fill `count` elements of `element_size` (1, 2 or 4) bytes with `value`."""

    CMD = Cmd.MEMSET
    FORMAT = "QIIQQ"
    ptr: int
    value: int
    element_size: int
    count: int
    stream: int


@_message
@dataclass(frozen=True)
class StreamCreate(Message):
    CMD = Cmd.STREAM_CREATE
    FORMAT = "iIi"
    device: int
    flags: int
    priority: int


@_message
@dataclass(frozen=True)
class StreamDestroy(Message):
    CMD = Cmd.STREAM_DESTROY
    FORMAT = "Q"
    stream: int


@_message
@dataclass(frozen=True)
class StreamSynchronize(Message):
    """`device` says whose legacy default stream handle 0 means (other handles know their device)."""

    CMD = Cmd.STREAM_SYNCHRONIZE
    FORMAT = "Qi"
    stream: int
    device: int = 0


@_message
@dataclass(frozen=True)
class StreamQuery(Message):
    CMD = Cmd.STREAM_QUERY
    FORMAT = "Qi"
    stream: int
    device: int = 0


@_message
@dataclass(frozen=True)
class StreamWaitEvent(Message):
    CMD = Cmd.STREAM_WAIT_EVENT
    FORMAT = "QQI"
    stream: int
    event: int
    flags: int


@_message
@dataclass(frozen=True)
class StreamCallback(Message):
    """Run guest callback `callback_id` when the stream reaches this point; the stream waits for it."""

    CMD = Cmd.STREAM_CALLBACK
    FORMAT = "QQi"
    stream: int
    callback_id: int
    device: int = 0


@_message
@dataclass(frozen=True)
class CallbackDone(Message):
    """The guest ran callback `callback_id`: its stream may go on."""

    CMD = Cmd.CALLBACK_DONE
    FORMAT = "Q"
    callback_id: int


@_message
@dataclass(frozen=True)
class EventCreate(Message):
    CMD = Cmd.EVENT_CREATE
    FORMAT = "iI"
    device: int
    flags: int


@_message
@dataclass(frozen=True)
class EventDestroy(Message):
    CMD = Cmd.EVENT_DESTROY
    FORMAT = "Q"
    event: int


@_message
@dataclass(frozen=True)
class EventRecord(Message):
    CMD = Cmd.EVENT_RECORD
    FORMAT = "QQ"
    event: int
    stream: int


@_message
@dataclass(frozen=True)
class EventSynchronize(Message):
    CMD = Cmd.EVENT_SYNCHRONIZE
    FORMAT = "Q"
    event: int


@_message
@dataclass(frozen=True)
class EventQuery(Message):
    CMD = Cmd.EVENT_QUERY
    FORMAT = "Q"
    event: int


@_message
@dataclass(frozen=True)
class EventElapsed(Message):
    CMD = Cmd.EVENT_ELAPSED
    FORMAT = "QQ"
    start: int
    end: int


@_message
@dataclass(frozen=True)
class ModuleLoad(Message):
    """Load PTX, cubin or fatbin bytes (`kind` 0), or CUDA C source (`kind` 1, compiled on the host)."""

    CMD = Cmd.MODULE_LOAD
    FORMAT = "iI"
    TAIL = "image"
    device: int
    kind: int
    image: bytes


@_message
@dataclass(frozen=True)
class ModuleUnload(Message):
    CMD = Cmd.MODULE_UNLOAD
    FORMAT = "Q"
    module: int


@_message
@dataclass(frozen=True)
class ModuleGetFunction(Message):
    CMD = Cmd.MODULE_GET_FUNCTION
    FORMAT = "Q"
    TAIL = "name"
    module: int
    name: str


@_message
@dataclass(frozen=True)
class ModuleGetGlobal(Message):
    CMD = Cmd.MODULE_GET_GLOBAL
    FORMAT = "Q"
    TAIL = "name"
    module: int
    name: str


@_message
@dataclass(frozen=True)
class Launch(Message):
    """Launch `function`; `params` is the kernel's parameter block laid out as the host reported."""

    CMD = Cmd.LAUNCH
    FORMAT = "QIIIIIIIQ"
    TAIL = "params"
    function: int
    grid_x: int
    grid_y: int
    grid_z: int
    block_x: int
    block_y: int
    block_z: int
    shared_bytes: int
    stream: int
    params: bytes


@_message
@dataclass(frozen=True)
class LaunchCooperative(Launch):
    """A `Launch` whose blocks all run at once and may synchronise as a grid (`cg::this_grid().sync()`):
    refused with cudaErrorCooperativeLaunchTooLarge when they cannot all be resident."""

    CMD = Cmd.LAUNCH_COOPERATIVE


MAX_CLUSTER_BLOCKS = 8  # sm_90's portable cluster size: the most blocks a LaunchCluster's clusters may have


@_message
@dataclass(frozen=True)
class LaunchCluster(Message):
    """A launch in thread block clusters of `cluster_x` x `cluster_y` x `cluster_z` blocks (sm_90): the grid is a
    whole number of clusters, whose blocks run at once and may synchronise as a cluster. `cooperative` as
    LaunchCooperative."""

    CMD = Cmd.LAUNCH_CLUSTER
    FORMAT = "QIIIIIIIQIIII"
    TAIL = "params"
    function: int
    grid_x: int
    grid_y: int
    grid_z: int
    block_x: int
    block_y: int
    block_z: int
    shared_bytes: int
    stream: int
    cluster_x: int
    cluster_y: int
    cluster_z: int
    cooperative: int
    params: bytes


@_message
@dataclass(frozen=True)
class FuncGetAttributes(Message):
    """What `cudaFuncGetAttributes` reports of a kernel: its registers, memory and limits."""

    CMD = Cmd.FUNC_GET_ATTRIBUTES
    FORMAT = "Q"
    function: int


@_message
@dataclass(frozen=True)
class FuncSetAttribute(Message):
    """`cudaFuncSetAttribute`: `attribute` is a cudaFuncAttribute (the same numbers as CUfunction_attribute)."""

    CMD = Cmd.FUNC_SET_ATTRIBUTE
    FORMAT = "QIi"
    function: int
    attribute: int
    value: int


@_message
@dataclass(frozen=True)
class ControlStatus(Message):
    CMD = Cmd.CONTROL_STATUS


@_message
@dataclass(frozen=True)
class ControlKill(Message):
    CMD = Cmd.CONTROL_KILL
    FORMAT = "Q"
    session: int


# ---- host -> guest -----------------------------------------------------------------------
@_message
@dataclass(frozen=True)
class DeferredError(Message):
    """An asynchronous request (`request_id`) failed: CUDA reports it at the next call."""

    CMD = Cmd.DEFERRED_ERROR
    FORMAT = "Qi"
    TAIL = "detail"
    request_id: int
    code: int
    detail: str = ""


@_message
@dataclass(frozen=True)
class Callback(Message):
    """Stream `stream` reached callback `callback_id`: run it, then answer with its id."""

    CMD = Cmd.CALLBACK
    FORMAT = "QQi"
    stream: int
    callback_id: int
    status: int


@_message
@dataclass(frozen=True)
class Printf(Message):
    """Device printf output to write to the guest's stdout."""

    CMD = Cmd.PRINTF
    TAIL = "text"
    text: bytes


# ---- replies ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Reply(Message):
    """A successful answer; the status travels in the frame header."""


def _reply(cmd: Cmd, fmt: str = "", tail: str | None = None):
    def wrap(cls):
        cls.CMD, cls.FORMAT, cls.TAIL = cmd, fmt, tail
        return _message(cls)

    return wrap


@_reply(Cmd.HELLO, "IQQQQ")
@dataclass(frozen=True)
class HelloReply(Reply):
    """`arena_size` is the worker's staging arena on channels without shared memory (else 0)."""

    version: int
    features: int
    session: int
    device_count: int
    arena_size: int = 0


@_reply(Cmd.DEVICE_COUNT, "i")
@dataclass(frozen=True)
class DeviceCountReply(Reply):
    count: int


@_reply(Cmd.DEVICE_PROPERTIES, "", "json")
@dataclass(frozen=True)
class DevicePropertiesReply(Reply):
    """Name, total memory and every cudaDeviceAttr value, as JSON text (a table, not a struct)."""

    json: str


@_reply(Cmd.MEM_GET_INFO, "QQ")
@dataclass(frozen=True)
class MemGetInfoReply(Reply):
    free: int
    total: int


@_reply(Cmd.ARENA_DEVICE_POINTER, "Q")
@dataclass(frozen=True)
class ArenaDevicePointerReply(Reply):
    ptr: int


@_reply(Cmd.ARENA_READ, "", "data")
@dataclass(frozen=True)
class ArenaReadReply(Reply):
    data: bytes


@_reply(Cmd.MEMCPY_DTOH_INLINE, "", "data")
@dataclass(frozen=True)
class MemcpyDtoHInlineReply(Reply):
    data: bytes


@_reply(Cmd.MEM_ALLOC, "Q")
@dataclass(frozen=True)
class MemAllocReply(Reply):
    ptr: int


@_reply(Cmd.STREAM_CREATE, "Q")
@dataclass(frozen=True)
class StreamCreateReply(Reply):
    stream: int


@_reply(Cmd.EVENT_CREATE, "Q")
@dataclass(frozen=True)
class EventCreateReply(Reply):
    event: int


@_reply(Cmd.EVENT_ELAPSED, "f")
@dataclass(frozen=True)
class EventElapsedReply(Reply):
    milliseconds: float


@_reply(Cmd.MODULE_LOAD, "Q", "log")
@dataclass(frozen=True)
class ModuleLoadReply(Reply):
    module: int
    log: str = ""


@_reply(Cmd.MODULE_GET_FUNCTION, "QI", "layout")
@dataclass(frozen=True)
class ModuleGetFunctionReply(Reply):
    """`layout` is (offset u32, size u32) per parameter, little-endian."""

    function: int
    param_count: int
    layout: bytes


@_reply(Cmd.MODULE_GET_GLOBAL, "QQ")
@dataclass(frozen=True)
class ModuleGetGlobalReply(Reply):
    ptr: int
    size: int


@_reply(Cmd.FUNC_GET_ATTRIBUTES, "iiiiiiii")
@dataclass(frozen=True)
class FuncAttributesReply(Reply):
    max_threads_per_block: int
    shared_size_bytes: int
    const_size_bytes: int
    local_size_bytes: int
    num_regs: int
    ptx_version: int
    binary_version: int
    max_dynamic_shared_size_bytes: int


@_reply(Cmd.CONTROL_STATUS, "", "json")
@dataclass(frozen=True)
class ControlStatusReply(Reply):
    json: str


@_message
@dataclass(frozen=True)
class Empty(Reply):
    """The reply of requests that return nothing but their status."""


def _subclasses(base):
    for sub in base.__subclasses__():
        yield sub
        yield from _subclasses(sub)


REQUESTS: dict[int, type[Message]] = {
    c.CMD: c for c in _subclasses(Message) if not issubclass(c, Reply) and "CMD" in c.__dict__
}
REPLIES: dict[int, type[Reply]] = {c.CMD: c for c in _subclasses(Reply) if "CMD" in c.__dict__}
