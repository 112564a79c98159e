"""Fixtures shared by the test suites: a real daemon process, and guests that connect to it.

`QCUDA_TEST_BACKEND` picks the daemon's backend (emulated by default; `gpu` on a GPU machine).
Tests marked `gpu` are skipped unless the backend is `gpu`.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

BACKEND = os.environ.get("QCUDA_TEST_BACKEND", "emulated")
REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    if BACKEND == "gpu":
        return
    skip = pytest.mark.skip(reason="needs a GPU: run with QCUDA_TEST_BACKEND=gpu on a GPU host")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


class DaemonProcess:
    """`qcuda serve` in its own process, on a fresh shm name and runtime directory."""

    def __init__(self, runtime_dir: Path, backend: str = BACKEND, extra: tuple[str, ...] = ()) -> None:
        self.name = f"test-{uuid.uuid4().hex[:8]}"
        self.url = f"shm://{self.name}"
        self.tcp_url = f"tcp://127.0.0.1:{free_port()}"
        self.runtime_dir = runtime_dir
        self.env = dict(os.environ, QCUDA_RUNTIME_DIR=str(runtime_dir), PYTHONUNBUFFERED="1")
        self.log_path = runtime_dir / f"{self.name}.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "qcuda", "serve", "--listen", self.url, "--listen", self.tcp_url,
             "--backend", backend, *extra],
            env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
        )
        self.socket_path = runtime_dir / f"{self.name}.sock"
        deadline = time.monotonic() + 60
        while not self._reachable():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daemon did not start: {self.log()}")
            time.sleep(0.02)

    def _reachable(self) -> bool:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(str(self.socket_path))
            return True
        except OSError:
            return False
        finally:
            s.close()

    def log(self) -> str:
        return self.log_path.read_text()

    def alive(self) -> bool:
        return self.process.poll() is None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run the `qcuda` CLI against this daemon."""
        env = dict(self.env, QCUDA_DEVICE=self.url)
        result = subprocess.run([sys.executable, "-m", "qcuda", *args], env=env, capture_output=True, text=True,
                                timeout=120, cwd=REPO)
        if check and result.returncode != 0:
            raise AssertionError(f"qcuda {' '.join(args)} failed: {result.stdout}{result.stderr}")
        return result

    def guest(self, code: str, *args: str) -> subprocess.Popen:
        """Start a guest process running `code` against this daemon."""
        env = dict(self.env, QCUDA_DEVICE=self.url)
        return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._log.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def runtime_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("qcuda-runtime")


@pytest.fixture(scope="module")
def daemon(runtime_dir):
    """A daemon shared by a test module."""
    d = DaemonProcess(runtime_dir)
    yield d
    d.stop()


@pytest.fixture
def fresh_daemon(runtime_dir):
    """A daemon of this test alone (for tests that kill things)."""
    d = DaemonProcess(runtime_dir)
    yield d
    d.stop()


@pytest.fixture(params=["shm", "tcp"])
def guest(daemon, monkeypatch, request):
    """This test process as a guest of `daemon`, over each channel: the qcuda module, connected."""
    import qcuda

    monkeypatch.setenv("QCUDA_RUNTIME_DIR", str(daemon.runtime_dir))
    monkeypatch.setenv("QCUDA_DEVICE", daemon.url if request.param == "shm" else daemon.tcp_url)
    qcuda.reset_runtime()
    yield qcuda
    qcuda.reset_runtime()
