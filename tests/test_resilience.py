"""The daemon survives whatever a guest sends: malformed frames, a corrupted ring, a wrong version."""
from __future__ import annotations

import os
import random
import socket

import numpy as np
import pytest

from qcuda.driver.shm import ShmChannel
from qcuda.protocol import messages as m
from qcuda.protocol.codec import HEADER, MAGIC, MAX_PAYLOAD, VERSION, Frame, decode, encode
from qcuda.protocol.region import SQ_TAIL, control_words
from qcuda.protocol.urls import parse


@pytest.fixture
def raw(daemon, monkeypatch):
    """A guest channel driven by hand, with no client library in the way."""
    monkeypatch.setenv("QCUDA_RUNTIME_DIR", str(daemon.runtime_dir))
    channel = ShmChannel(parse(daemon.url), 1 << 20, 1 << 16)
    hello = channel.connect(m.Hello(VERSION, m.Kind.GUEST, 0))
    assert isinstance(hello.message, m.HelloReply)
    yield channel
    channel.close()


def answer(channel: ShmChannel) -> Frame:
    frame = channel.receive()
    assert isinstance(frame, Frame)
    return frame


def still_serves(channel: ShmChannel) -> None:
    channel.send(encode(m.DeviceCount(), 77))
    frame = answer(channel)
    assert frame.request_id == 77 and frame.status == 0 and frame.message.count >= 1


def test_truncated_message_gets_error_reply(raw):
    data = encode(m.MemAlloc(0, 64), 5)
    raw.send(data[:-3])
    frame = answer(raw)
    assert frame.status == 1 and frame.request_id == 5 and "malformed" in frame.detail
    still_serves(raw)


def test_unknown_command_gets_error_reply(raw):
    raw.send(HEADER.pack(MAGIC, VERSION, 999, 0, 0, 6, 0))
    frame = answer(raw)
    assert frame.status == 1 and frame.request_id == 6 and "unknown command 999" in frame.detail
    still_serves(raw)


def test_oversized_length_gets_error(raw):
    raw.send(HEADER.pack(MAGIC, VERSION, m.Cmd.MODULE_LOAD, 0, 0, 8, MAX_PAYLOAD + 1) + b"x" * 32)
    frame = answer(raw)
    assert frame.status == 1 and frame.request_id == 8
    still_serves(raw)


def test_random_messages_get_errors_and_the_daemon_keeps_serving(raw):
    rng = random.Random(3)
    for i in range(300):
        junk = os.urandom(rng.randint(0, 200))
        if rng.random() < 0.5:  # a valid header in front of garbage reaches the decoder's later checks
            junk = HEADER.pack(MAGIC, VERSION, rng.choice(list(m.Cmd)), 0, 0, 1000 + i, len(junk)) + junk
        raw.send(junk)
        frame = raw.receive()
        assert isinstance(frame, Frame)  # an error reply, a deferred error, or (by luck) a real answer
    still_serves(raw)


def test_hostile_handles_and_sizes_are_errors(raw):
    for msg in (m.Launch(12345, 1, 1, 1, 1, 1, 1, 0, 0, b""), m.ModuleGetFunction(999, "k"),
                m.MemcpyDtoH(1 << 60, 0x7A00_0000_0000, 1 << 40, 0), m.EventElapsed(1, 2), m.DeviceProperties(-1),
                m.ModuleLoad(0, 0, b"not a module"), m.ModuleLoad(0, 9, b"")):
        raw.send(encode(msg, 9))
        frame = answer(raw)
        assert frame.status != 0, msg
    still_serves(raw)


def test_corrupted_ring_ends_only_that_session(daemon, raw, guest):
    control_words(raw.region)[SQ_TAIL] = 2**63  # a lie no worker may believe
    dev = guest.Device(0)  # another guest is served throughout
    buf = dev.to_device(np.arange(10, dtype=np.int32))
    assert np.array_equal(buf.to_numpy(np.int32), np.arange(10))
    assert daemon.alive()


def test_protocol_version_mismatch_is_refused_clearly(daemon):
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(daemon.socket_path))
    payload = encode(m.Hello(VERSION + 1, m.Kind.GUEST, 0), 1)[HEADER.size:]
    sock.sendall(HEADER.pack(MAGIC, VERSION + 1, m.Cmd.HELLO, 0, 0, 1, len(payload)) + payload)
    frame = decode(sock.recv(4096))
    sock.close()
    assert isinstance(frame, Frame) and frame.status != 0
    assert f"this side speaks version {VERSION}, the peer speaks {VERSION + 1}" in frame.detail


def test_hello_without_region_is_refused(daemon):
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(daemon.socket_path))
    sock.sendall(encode(m.Hello(VERSION, m.Kind.GUEST, 0), 1))
    frame = decode(sock.recv(4096))
    sock.close()
    assert frame.status != 0 and "3 file descriptors" in frame.detail


def test_garbage_instead_of_hello(daemon):
    for junk in (b"GET / HTTP/1.1\r\n\r\n", os.urandom(64), b""):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(daemon.socket_path))
        sock.sendall(junk)
        sock.shutdown(socket.SHUT_WR)
        reply = sock.recv(4096)
        sock.close()
        if reply:
            assert decode(reply).status != 0
    assert daemon.alive()


def test_unsealed_region_is_refused(daemon, monkeypatch):
    """A region the guest could shrink (SIGBUS in the worker) is not accepted."""
    import array

    fd = os.memfd_create("unsealed")
    os.ftruncate(fd, 1 << 20)
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(daemon.socket_path))
    fds = array.array("i", [fd, os.eventfd(0), os.eventfd(0)])
    sock.sendmsg([encode(m.Hello(VERSION, m.Kind.GUEST, 0), 1)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
    frame = decode(sock.recv(4096))
    sock.close()
    assert frame.status != 0 and "F_SEAL_SHRINK" in frame.detail


def test_daemon_that_vanishes_gives_an_error_not_a_hang(fresh_daemon, monkeypatch):
    import qcuda

    monkeypatch.setenv("QCUDA_RUNTIME_DIR", str(fresh_daemon.runtime_dir))
    monkeypatch.setenv("QCUDA_DEVICE", fresh_daemon.url)
    qcuda.reset_runtime()
    try:
        dev = qcuda.Device(0)
        buf = dev.allocate(1024)
        workers = _children(fresh_daemon.process.pid)
        assert workers
        fresh_daemon.process.kill()  # the daemon, then its workers: the whole host side is gone
        for worker in workers:
            os.kill(worker, 9)
        fresh_daemon.process.wait()
        with pytest.raises(qcuda.CudaError) as err:
            for _ in range(1000):
                buf.copy_to()
        assert err.value.code == qcuda.Error.cudaErrorDevicesUnavailable
    finally:
        qcuda.reset_runtime()


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return out
