"""TCP: remote guests, access tokens, several daemons at once, a daemon that vanishes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from daemons import DaemonProcess, free_port

from qcuda.protocol.addresses import heap_range

TOKEN = "s3cret-token-for-tests"


@pytest.fixture
def token_daemon(runtime_dir, monkeypatch):
    monkeypatch.setenv("QCUDA_TOKEN", TOKEN)
    d = DaemonProcess(runtime_dir)
    monkeypatch.delenv("QCUDA_TOKEN")
    yield d
    d.stop()


def _connect(url: str, token: str | None):
    env = dict(os.environ, QCUDA_DEVICE=url)
    env.pop("QCUDA_TOKEN", None)
    if token is not None:
        env["QCUDA_TOKEN"] = token
    code = "import qcuda; print(qcuda.Device(0).name)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_token_is_required_and_checked(token_daemon):
    ok = _connect(token_daemon.tcp_url, TOKEN)
    assert ok.returncode == 0, ok.stderr
    for bad in (None, "wrong", TOKEN + "x"):
        refused = _connect(token_daemon.tcp_url, bad)
        assert refused.returncode != 0
        assert "cudaErrorNotPermitted" in refused.stderr and "access token missing or wrong" in refused.stderr
    log = token_daemon.log()
    assert "no access token" in log and "wrong access token" in log
    assert token_daemon.alive()


def test_non_loopback_listen_needs_a_token(runtime_dir):
    env = dict(os.environ, QCUDA_RUNTIME_DIR=str(runtime_dir))
    env.pop("QCUDA_TOKEN", None)
    result = subprocess.run(
        [sys.executable, "-m", "qcuda", "serve", "--listen", f"tcp://0.0.0.0:{free_port()}", "--backend", "emulated"],
        env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "without an access token" in result.stderr


def test_control_is_refused_over_tcp(daemon):
    result = daemon.cli("status", "--device", daemon.tcp_url, check=False)
    assert result.returncode != 0


def test_two_daemons_at_once_and_copies_between_them(runtime_dir, monkeypatch):
    import qcuda

    first = DaemonProcess(runtime_dir)
    second = DaemonProcess(runtime_dir, backend="emulated", extra=("--emulated-devices", "2"))  # two devices anywhere
    try:
        monkeypatch.setenv("QCUDA_RUNTIME_DIR", str(runtime_dir))
        monkeypatch.setenv("QCUDA_DEVICE", f"{first.url},{second.tcp_url}")
        qcuda.reset_runtime()
        assert qcuda.device_count() == 3  # first's one device, then second's two, in that order
        devices = qcuda.devices()
        assert [d.client.url.scheme for d in devices] == ["shm", "tcp", "tcp"]
        data = np.random.default_rng(5).integers(0, 2**32, 3 << 20, dtype=np.uint32)
        a = devices[0].to_device(data)
        b = devices[1].allocate(data.nbytes)
        b.copy_from_device(a)
        c = devices[2].allocate(data.nbytes)
        c.copy_from_device(b)
        d = devices[0].allocate(data.nbytes)
        d.copy_from_device(c)
        assert np.array_equal(d.to_numpy(np.uint32), data)
        for number, buf in ((0, a), (1, b), (2, c)):  # each global device has its own address range
            base, size = heap_range(number)
            assert base <= buf.ptr < base + size
        qcuda.set_device(2)
        assert qcuda.Device().ordinal == 2
    finally:
        qcuda.reset_runtime()
        first.stop()
        second.stop()


VICTIM = r"""
import numpy as np, qcuda, time
dev = qcuda.Device(0)
data = np.ones(64 << 20, dtype=np.uint8)
buf = dev.allocate(data.nbytes)
print("ready", flush=True)
try:
    while True:
        buf.copy_from(data)
except qcuda.CudaError as exc:
    print(f"{time.monotonic():.3f} {exc}", flush=True)
"""


def test_daemon_killed_mid_transfer_gives_a_bounded_error(fresh_daemon):
    from qcuda.protocol.tcp import DEAD_PEER_SECONDS

    env = dict(fresh_daemon.env, QCUDA_DEVICE=fresh_daemon.tcp_url)
    guest = subprocess.Popen([sys.executable, "-c", VICTIM], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert guest.stdout.readline().strip() == "ready", guest.stderr.read()
    time.sleep(0.5)
    workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(fresh_daemon.process.pid)],
                                              capture_output=True, text=True).stdout.split()]
    killed_at = time.monotonic()
    os.kill(fresh_daemon.process.pid, signal.SIGKILL)
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    out, err = guest.communicate(timeout=DEAD_PEER_SECONDS + 20)
    when, _, message = out.strip().partition(" ")
    assert "cudaErrorDevicesUnavailable" in message, out + err
    assert float(when) - killed_at < DEAD_PEER_SECONDS


def test_status_names_remote_guests_by_address(daemon):
    guest = subprocess.Popen([sys.executable, "-c", "import qcuda, sys; b = qcuda.Device(0).allocate(1000); print('up', "
                              "flush=True); sys.stdin.readline()"], env=dict(daemon.env, QCUDA_DEVICE=daemon.tcp_url),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert guest.stdout.readline().strip() == "up", guest.stderr.read()
        status = daemon.cli("status").stdout
        row = next(line for line in status.splitlines()[2:] if "127.0.0.1:" in line)
        assert row.split()[2] == "-1" and row.split()[4] == "1000"  # no uid for a remote guest; its memory
    finally:
        guest.communicate("\n", timeout=30)
