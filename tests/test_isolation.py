"""Tenants: a guest cannot touch another guest's objects; a dead guest's session is freed."""
from __future__ import annotations

import signal
import time

import numpy as np
import pytest

OWNER = r"""
import sys, qcuda
dev = qcuda.Device(0)
buf = dev.to_device(bytes(range(256)) * 16)
stream = dev.create_stream()
event = dev.create_event()
print(buf.ptr, stream.handle, event.handle, flush=True)
sys.stdin.readline()
assert bytes(buf.copy_to()) == bytes(range(256)) * 16, "another guest changed this guest's memory"
print("intact", flush=True)
"""


def test_second_guest_cannot_use_first_guests_handles(daemon, guest):
    owner = daemon.guest(OWNER)
    line = owner.stdout.readline()
    assert line, owner.stderr.read()
    ptr, stream_handle, event_handle = map(int, line.split())

    from qcuda.protocol import messages as m

    client = guest.Device(0).client  # this guest owns nothing yet: every handle it names is the owner's
    attempts = {
        "free": m.MemFree(ptr),
        "read": m.MemcpyDtoH(0, ptr, 16, 0),
        "write": m.MemcpyHtoD(ptr, 0, 16, 0),
        "copy": m.MemcpyDtoD(ptr + 16, ptr, 16, 0),
        "memset": m.Memset(ptr, 0, 1, 16, 0),
        "sync stream": m.StreamSynchronize(stream_handle),
        "destroy stream": m.StreamDestroy(stream_handle),
        "record event": m.EventRecord(event_handle, 0),
        "destroy event": m.EventDestroy(event_handle),
    }
    for what, msg in attempts.items():
        with pytest.raises(guest.CudaError) as err:
            client.call(msg)
        assert err.value.code in (guest.Error.cudaErrorInvalidValue, guest.Error.cudaErrorInvalidResourceHandle), what
    out, err = owner.communicate("\n", timeout=30)
    assert "intact" in out, err


KILLED_MID_TRANSFER = r"""
import numpy as np, qcuda
dev = qcuda.Device(0)
keep = dev.allocate(96 << 20)
print("allocated", flush=True)
data = np.ones(512 << 20, dtype=np.uint8)
buf = dev.allocate(data.nbytes)
while True:
    buf.copy_from(data)
"""


def test_guest_killed_mid_transfer_frees_its_session(fresh_daemon, monkeypatch):
    import qcuda

    victim = fresh_daemon.guest(KILLED_MID_TRANSFER)
    assert victim.stdout.readline().strip() == "allocated", victim.stderr.read()
    time.sleep(1.0)  # well inside the copy loop
    status = fresh_daemon.cli("status").stdout
    assert "1 session(s)" in status and str(victim.pid) in status
    victim.send_signal(signal.SIGKILL)
    victim.wait()

    monkeypatch.setenv("QCUDA_RUNTIME_DIR", str(fresh_daemon.runtime_dir))
    monkeypatch.setenv("QCUDA_DEVICE", fresh_daemon.url)
    qcuda.reset_runtime()
    try:
        dev = qcuda.Device(0)  # the daemon still serves others
        buf = dev.to_device(np.arange(1000, dtype=np.int32))
        assert np.array_equal(buf.to_numpy(np.int32), np.arange(1000))
        deadline = time.monotonic() + 20
        while True:
            status = fresh_daemon.cli("status").stdout
            if str(victim.pid) not in status:
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        assert "1 session(s), 4000 bytes of device memory in use" in status
    finally:
        qcuda.reset_runtime()
    assert "ended" in fresh_daemon.log()
    assert fresh_daemon.alive()


def test_operator_kills_a_session(fresh_daemon):
    victim = fresh_daemon.guest(KILLED_MID_TRANSFER)
    assert victim.stdout.readline().strip() == "allocated"
    status = fresh_daemon.cli("status").stdout
    session = next(line.split()[0] for line in status.splitlines() if str(victim.pid) in line)
    assert fresh_daemon.cli("kill", session).stdout.strip() == f"session {session} killed"
    _, err = victim.communicate(timeout=30)
    assert victim.returncode != 0
    assert "cudaErrorDevicesUnavailable" in err  # the guest is told its daemon went away
    assert "0 session(s)" in fresh_daemon.cli("status").stdout
    bad = fresh_daemon.cli("kill", "999", check=False)
    assert bad.returncode != 0 and "no session 999" in bad.stderr
