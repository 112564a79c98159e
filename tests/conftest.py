"""Fixtures shared by the test suites: a real daemon process, and guests that connect to it.

`QCUDA_TEST_BACKEND` picks the daemon's backend (emulated by default; `gpu` on a GPU machine).
Tests marked `gpu` are skipped unless the backend is `gpu`.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from daemons import BACKEND, DaemonProcess


def pytest_collection_modifyitems(config, items):
    if BACKEND == "gpu":
        return
    skip = pytest.mark.skip(reason="needs a GPU: run with QCUDA_TEST_BACKEND=gpu on a GPU host")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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
