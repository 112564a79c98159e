"""What operators allow each guest, and what a guest process may do (fork)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from daemons import REPO, DaemonProcess


@pytest.fixture
def limited(runtime_dir):
    d = DaemonProcess(runtime_dir, extra=("--memory-limit", "64M", "--max-arena", "32M"))
    yield d
    d.stop()


def _run(daemon, code: str, **env) -> subprocess.CompletedProcess:
    full = dict(daemon.env, QCUDA_DEVICE=daemon.url, **env)
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=120, cwd=REPO)


def test_device_memory_limit_per_guest(limited):
    code = (
        "import qcuda\n"
        "dev = qcuda.Device(0)\n"
        "a = dev.allocate(48 << 20)\n"
        "try:\n"
        "    dev.allocate(32 << 20)\n"
        "except qcuda.CudaError as e:\n"
        "    print(e.code, 'may hold' in str(e))\n"
        "a.free()\n"
        "b = dev.allocate(60 << 20)\n"
        "print('after free ok')\n"
    )
    out = _run(limited, code, QCUDA_ARENA="16M")
    assert out.stdout.split() == ["2", "True", "after", "free", "ok"], out.stderr


def test_region_larger_than_allowed_is_refused_clearly(limited):
    out = _run(limited, "import qcuda; qcuda.Device(0)", QCUDA_ARENA="256M")
    assert out.returncode != 0
    assert "this daemon accepts at most" in out.stderr and "QCUDA_ARENA" in out.stderr
    assert limited.alive()


def test_forked_child_gets_its_own_session(daemon):
    code = (
        "import os, numpy as np, qcuda\n"
        "dev = qcuda.Device(0)\n"
        "buf = dev.to_device(np.arange(10))\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    child = qcuda.Device(0).to_device(np.arange(5))\n"
        "    assert (child.to_numpy(np.int64) == np.arange(5)).all() and child.device.client is not dev.client\n"
        "    raise SystemExit(0)  # a normal exit: the parent's buffers' finalizers must not touch its channel\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print(os.waitstatus_to_exitcode(status), (buf.to_numpy(np.int64) == np.arange(10)).all())\n"
    )
    out = _run(daemon, code)
    assert out.stdout.split() == ["0", "True"], out.stderr


def test_runtime_dir_writable_by_others_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    env = dict(os.environ, QCUDA_RUNTIME_DIR=str(shared))
    out = subprocess.run([sys.executable, "-m", "qcuda", "serve", "--listen", "shm://x", "--backend", "emulated"],
                         env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode != 0 and "writable by others" in out.stderr
