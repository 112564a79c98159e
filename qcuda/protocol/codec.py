"""Frames: a fixed header, then the payload of one message. Bytes in, values out; no I/O.

Header (little-endian, 32 bytes): magic u32 "QCUD", version u16, command u16, flags u32,
status i32 (a cudaError_t on replies), request_id u64, payload_len u64.
Decoding never raises on hostile bytes: it returns `Malformed`, which says what was wrong and,
when the header was readable, which request to answer with the error.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from .errors import LocalProtocolError
from .messages import REPLIES, REQUESTS, Cmd, Empty, Flags, Message, Reply

MAGIC = 0x44554351  # b"QCUD"
VERSION = 1
HEADER = struct.Struct("<IHHIiQQ")
HEADER_SIZE = HEADER.size
MAX_PAYLOAD = 1 << 26  # bulk data moves through the arena or in chunks, never in one huge frame


class Frame(NamedTuple):
    """One decoded frame. For failed replies `message` is None and `detail` says why."""

    command: int
    flags: int
    status: int
    request_id: int
    message: Message | None
    detail: str = ""
    version: int = VERSION

    @property
    def is_reply(self) -> bool:
        return bool(self.flags & Flags.REPLY)


@dataclass(frozen=True)
class Malformed:
    """Bytes that are not a valid frame: the peer's fault. `request_id` is set if the header was sound."""

    reason: str
    request_id: int | None = None
    command: int | None = None
    version: int | None = None
    fatal: bool = False  # the byte stream cannot be resynchronised after this


def encode(message: Message, request_id: int = 0, flags: int = 0, command: int | None = None) -> bytes:
    """The frame for `message`; a reply carries its request's `command` (needed for `Empty`)."""
    head, tail = encode_parts(message, request_id, flags, command)
    return head + tail


def encode_parts(message: Message, request_id: int = 0, flags: int = 0,
                 command: int | None = None) -> tuple[bytes, bytes | memoryview]:
    """The frame as (header and fixed fields, tail): a stream sends both without joining a large tail."""
    try:
        fixed = message._struct.pack(*message._values(message))
    except struct.error as exc:
        raise LocalProtocolError(f"{type(message).__name__}: {exc}") from None
    tail: bytes | memoryview = b""
    if message.TAIL is not None:
        value = getattr(message, message.TAIL)
        tail = value.encode() if isinstance(value, str) else value
    if isinstance(message, Reply):
        flags |= Flags.REPLY
    length = len(fixed) + len(tail)
    if length > MAX_PAYLOAD:
        raise LocalProtocolError(f"payload of {length} bytes exceeds the {MAX_PAYLOAD}-byte frame limit")
    cmd = message.CMD if command is None else command
    return HEADER.pack(MAGIC, VERSION, cmd, flags, 0, request_id, length) + fixed, tail


def encode_error(command: int, request_id: int, status: int, detail: str = "") -> bytes:
    """A reply that reports failure `status` (a cudaError_t) for request `request_id`."""
    if status == 0:
        raise LocalProtocolError("an error reply needs a non-zero status")
    return _frame(command, Flags.REPLY, status, request_id, detail.encode()[:4096])


def _frame(command: int, flags: int, status: int, request_id: int, payload: bytes) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise LocalProtocolError(f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD}-byte frame limit")
    return HEADER.pack(MAGIC, VERSION, command, flags, status, request_id, len(payload)) + payload


def peek_header(data: bytes | memoryview) -> tuple[int, int, int, int, int, int] | Malformed:
    """(version, command, flags, status, request_id, payload_len) of a header, or why it is bad."""
    if len(data) < HEADER_SIZE:
        return Malformed(f"truncated header: {len(data)} of {HEADER_SIZE} bytes")
    magic, version, command, flags, status, request_id, length = HEADER.unpack_from(data)
    if magic != MAGIC:
        return Malformed(f"bad magic 0x{magic:08x}", fatal=True)
    if length > MAX_PAYLOAD:
        return Malformed(f"payload length {length} exceeds {MAX_PAYLOAD}", request_id, command, version, fatal=True)
    return version, command, flags, status, request_id, length


def decode(data: bytes) -> Frame | Malformed:
    """Decode exactly one frame from `data` (an shm record or a complete stream frame)."""
    header = peek_header(data)
    if isinstance(header, Malformed):
        return header
    return decode_parts(header, data[HEADER_SIZE:])


def decode_parts(header: tuple[int, int, int, int, int, int], payload: bytes) -> Frame | Malformed:
    """Decode a frame whose header (from `peek_header`) and payload were read separately."""
    version, command, flags, status, request_id, length = header
    if len(payload) != length:
        return Malformed(f"frame holds {len(payload)} payload bytes, header says {length}", request_id, command, version)
    if version != VERSION:
        if command == Cmd.HELLO:  # answered with a clear refusal, whatever the rest says
            return Frame(command, flags, status, request_id, None, "", version)
        return Malformed(f"protocol version {version}, expected {VERSION}", request_id, command, version)
    if flags & Flags.REPLY:
        if status != 0:
            return Frame(command, flags, status, request_id, None, payload.decode(errors="replace"))
        cls: type[Message] = REPLIES.get(command, Empty)
    else:
        cls = REQUESTS.get(command)  # type: ignore[assignment]
        if cls is None:
            return Malformed(f"unknown command {command}", request_id, command, version)
    message = decode_payload(cls, payload)
    if isinstance(message, Malformed):
        return Malformed(message.reason, request_id, command, version)
    return Frame(command, flags, status, request_id, message)


def decode_payload(cls: type[Message], payload: bytes) -> Message | Malformed:
    """The message of type `cls` in `payload`, or why not."""
    size = cls._struct.size
    if len(payload) < size or (cls.TAIL is None and len(payload) != size):
        return Malformed(f"{cls.__name__}: payload of {len(payload)} bytes, expected {size}")
    values = cls._struct.unpack_from(payload)
    if cls.TAIL is not None:
        tail = payload[size:]
        if cls._tail_is_str:
            try:
                tail = tail.decode()
            except UnicodeDecodeError:
                return Malformed(f"{cls.__name__}.{cls.TAIL}: not UTF-8")
        values += (tail,)
    return cls._trusted(values)


class FrameReader:
    """Cuts a byte stream (TCP, a Unix socket) into frames, buffering at most one frame."""

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self._buffer = bytearray()
        self._max = max_payload
        self.broken: Malformed | None = None

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next(self) -> Frame | Malformed | None:
        """The next complete frame, None if more bytes are needed, or Malformed (fatal: close)."""
        data = self.next_bytes()
        if isinstance(data, Malformed) or data is None:
            return data
        return decode(data)

    def next_bytes(self) -> bytes | Malformed | None:
        """The bytes of the next complete frame (decoded later, elsewhere), None, or Malformed."""
        if self.broken is not None:
            return self.broken
        if len(self._buffer) < HEADER_SIZE:
            return None
        header = peek_header(self._buffer)
        if isinstance(header, Malformed):
            self.broken = header
            return header
        length = header[5]
        if length > self._max:
            self.broken = Malformed(f"payload length {length} exceeds {self._max}", header[4], header[1], fatal=True)
            return self.broken
        end = HEADER_SIZE + length
        if len(self._buffer) < end:
            return None
        data = bytes(self._buffer[:end])
        del self._buffer[:end]
        return data
