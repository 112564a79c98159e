"""The `qcuda` command as a user runs it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_demo_starts_a_local_daemon_when_none_runs(runtime_dir):
    env = dict(os.environ, QCUDA_RUNTIME_DIR=str(runtime_dir / "demo"))
    env.pop("QCUDA_DEVICE", None)
    result = subprocess.run([sys.executable, "-m", "qcuda", "demo"], env=env, capture_output=True, text=True,
                            timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "starting a local one" in result.stderr
    assert "device 0:" in result.stdout
    assert "correct" in result.stdout or "bit-exact" in result.stdout
    if shutil.which("nvcc"):  # the unmodified program, through the interposer
        line = next(x for x in result.stdout.splitlines() if x.startswith("saxpy of 1048576 floats on "))
        assert line.endswith(": correct (no error)")
    assert not list((runtime_dir / "demo").glob("*.sock"))  # the local daemon cleaned up


def test_demo_uses_a_running_daemon(daemon):
    out = daemon.cli("demo").stdout
    assert f"via {daemon.url}" in out


def test_info_lists_devices(daemon):
    out = daemon.cli("info").stdout
    assert out.startswith("device 0: ") and f"via {daemon.url}" in out and "GiB" in out


def test_status_without_daemon_is_one_line(runtime_dir):
    env = dict(os.environ, QCUDA_RUNTIME_DIR=str(runtime_dir))
    result = subprocess.run([sys.executable, "-m", "qcuda", "status", "--device", "shm://absent"], env=env,
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "no qcuda daemon at shm://absent" in result.stderr


def test_bad_device_address_is_one_line(daemon):
    result = daemon.cli("info", "--device", "http://x", check=False)
    assert result.returncode != 0 and "unknown scheme 'http'" in result.stderr


def test_serve_refuses_a_name_already_served(daemon):
    result = subprocess.run([sys.executable, "-m", "qcuda", "serve", "--listen", daemon.url, "--backend", "emulated"],
                            env=daemon.env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode != 0 and "already serves" in result.stderr


def test_print_capabilities():
    result = subprocess.run([sys.executable, "-m", "qcuda", "serve", "--print-capabilities"], capture_output=True,
                            text=True, timeout=60, cwd=REPO)
    assert '"protocol": 1' in result.stdout


def test_bench_lists_and_refuses_unknown():
    listed = subprocess.run([sys.executable, "-m", "qcuda", "bench"], capture_output=True, text=True, timeout=60,
                            cwd=REPO)
    assert listed.returncode == 0
    assert {line.split(":")[0] for line in listed.stdout.splitlines()} >= {"copy_bandwidth", "tcp_bandwidth",
                                                                           "emulator_bench"}
    unknown = subprocess.run([sys.executable, "-m", "qcuda", "bench", "nope"], capture_output=True, text=True,
                             timeout=60, cwd=REPO)
    assert unknown.returncode != 0 and "no benchmark 'nope'" in unknown.stderr
