"""The protocol core alone: every message round-trips; hostile bytes give error values, never exceptions."""
from __future__ import annotations

import os
import random
from dataclasses import fields

import pytest

from qcuda.protocol import messages as m
from qcuda.protocol.codec import HEADER, MAGIC, MAX_PAYLOAD, VERSION, Frame, FrameReader, Malformed, decode, encode, encode_error
from qcuda.protocol.errors import CudaError, Error, LocalProtocolError, error_name, error_string
from qcuda.protocol.region import (
    SQ_HEAD, SQ_TAIL, Geometry, RingCorrupt, RingReader, RingWriter, control_words,
)


def sample(cls):
    """A message of type `cls` with distinct, large values in every field."""
    values = []
    for i, f in enumerate(fields(cls)):
        if f.name == cls.TAIL:
            values.append("nâme-ü" if cls._tail_is_str else bytes(range(7)) * 3)
        else:
            code = cls.FORMAT[len(values)]
            values.append({"Q": 2**64 - 1 - i, "I": 2**32 - 1 - i, "i": -(2**31) + i, "f": 1.5}[code])
    return cls(*values)


ALL = sorted({*m.REQUESTS.values(), *m.REPLIES.values()}, key=lambda c: c.__name__)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_every_message_round_trips(cls):
    msg = sample(cls)
    frame = decode(encode(msg, request_id=2**64 - 5))
    assert isinstance(frame, Frame)
    assert frame.message == msg
    assert frame.request_id == 2**64 - 5


def test_sizes_and_addresses_are_64_bit():
    big = 6 << 30  # the seed truncated sizes at 4 GiB
    frame = decode(encode(m.MemcpyHtoD(2**63 + 3, big, big + 1, 7), 1))
    assert frame.message == m.MemcpyHtoD(2**63 + 3, big, big + 1, 7)


def test_error_reply_carries_code_and_detail():
    frame = decode(encode_error(m.Cmd.MEM_ALLOC, 9, Error.cudaErrorMemoryAllocation, "no room"))
    assert (frame.status, frame.detail, frame.is_reply) == (2, "no room", True)
    assert str(CudaError(frame.status, frame.detail)) == "cudaErrorMemoryAllocation (2): out of memory: no room"


def test_error_table_matches_cuda():
    assert error_name(700) == "cudaErrorIllegalAddress"
    assert error_string(1) == "invalid argument"
    assert error_name(123456) == "cudaErrorUnknown"


def test_values_out_of_range_are_our_fault():
    with pytest.raises(LocalProtocolError):
        encode(m.MemAlloc(0, -1), 1)
    with pytest.raises(TypeError):
        m.MemAlloc(0, "12")


def test_truncated_and_trailing_bytes_are_malformed():
    data = encode(m.Launch(1, 1, 1, 1, 32, 1, 1, 0, 0, b"x" * 16), 3)
    for cut in range(len(data)):
        bad = decode(data[:cut])
        assert isinstance(bad, Malformed)
    bad = decode(data + b"\0")
    assert isinstance(bad, Malformed) and bad.request_id == 3
    fixed = encode(m.MemAlloc(0, 5), 4)
    # a fixed-size message with extra payload bytes: header length patched to match
    patched = HEADER.pack(MAGIC, VERSION, m.Cmd.MEM_ALLOC, 0, 0, 4, 13) + fixed[HEADER.size:] + b"\1"
    assert isinstance(decode(patched), Malformed)


def test_unknown_command_and_bad_magic():
    unknown = HEADER.pack(MAGIC, VERSION, 4242, 0, 0, 11, 0)
    bad = decode(unknown)
    assert isinstance(bad, Malformed) and bad.request_id == 11 and "unknown command" in bad.reason
    assert decode(b"\xff" * 40).fatal


def test_oversized_frame_is_refused_before_buffering():
    reader = FrameReader()
    reader.feed(HEADER.pack(MAGIC, VERSION, m.Cmd.MODULE_LOAD, 0, 0, 1, MAX_PAYLOAD + 1))
    bad = reader.next()
    assert isinstance(bad, Malformed) and bad.fatal and bad.request_id == 1


def test_stream_reader_whole_byte_by_byte_and_trailing():
    frames = [encode(sample(c), i) for i, c in enumerate(ALL)]
    stream = b"".join(frames)
    for step in (len(stream), 1, 7):
        reader = FrameReader()
        got = []
        for i in range(0, len(stream), step):
            reader.feed(stream[i:i + step])
            while (f := reader.next()) is not None:
                got.append(f)
        assert [f.message for f in got] == [sample(c) for c in ALL]


def test_other_version_hello_is_recognised_for_refusal():
    payload = encode(m.Hello(VERSION, m.Kind.GUEST, 0), 1)[HEADER.size:]
    data = HEADER.pack(MAGIC, VERSION + 1, m.Cmd.HELLO, 0, 0, 1, len(payload)) + payload
    frame = decode(data)
    assert isinstance(frame, Frame) and frame.version == VERSION + 1


def test_random_bytes_never_raise():
    rng = random.Random(1)
    good = [encode(sample(c), 1) for c in ALL]
    for _ in range(5000):
        data = bytearray(rng.choice(good))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        result = decode(bytes(data))
        assert isinstance(result, (Frame, Malformed))
    for _ in range(2000):
        assert isinstance(decode(os.urandom(rng.randint(0, 100))), (Frame, Malformed))


def test_ring_round_trip_with_wrap():
    geo = Geometry.plan(4096, 4096)
    buf = bytearray(geo.region_size)
    geo.write(buf)
    writer = RingWriter(buf, geo.sq_offset, geo.sq_size, SQ_TAIL, SQ_HEAD)
    reader = RingReader(buf, geo.sq_offset, geo.sq_size, SQ_TAIL, SQ_HEAD)
    rng = random.Random(2)
    sent, got = [], []
    for _ in range(3000):
        payload = os.urandom(rng.randint(0, 1000))
        while not writer.try_push(payload):
            got.append(reader.pop()[1])
        sent.append(payload)
    while (rec := reader.pop()) is not None:
        got.append(rec[1])
    assert got == sent


def test_corrupt_ring_indices_are_detected():
    geo = Geometry.plan(4096, 4096)
    buf = bytearray(geo.region_size)
    geo.write(buf)
    reader = RingReader(buf, geo.sq_offset, geo.sq_size, SQ_TAIL, SQ_HEAD)
    words = control_words(buf)
    words[SQ_TAIL] = 10**12
    with pytest.raises(RingCorrupt):
        reader.pop()
    words[SQ_TAIL] = 16
    buf[geo.sq_offset:geo.sq_offset + 8] = (5000).to_bytes(4, "little") + bytes(4)
    with pytest.raises(RingCorrupt):
        reader.pop()


def test_geometry_checks_the_region():
    geo = Geometry.plan(8192)
    buf = bytearray(geo.region_size)
    geo.write(buf)
    with pytest.raises(RingCorrupt):
        Geometry.read(buf, geo.region_size - 4096)
    buf[0] ^= 1
    with pytest.raises(RingCorrupt):
        Geometry.read(buf, geo.region_size)
