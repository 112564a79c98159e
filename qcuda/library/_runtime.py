"""Which daemons this process uses, and how their devices number 0..N-1.

`QCUDA_DEVICE` names one or more daemons (comma-separated, in device order); with none, the
local daemon's default name. Connections open on first use and close at exit.
"""
from __future__ import annotations

import atexit
import os
import threading

from ..driver.client import Client
from ..protocol.errors import CudaError, Error
from ..protocol.urls import DeviceUrl, default, parse_list


class Runtime:
    """The clients of one guest process, and the global device numbering over them."""

    def __init__(self, urls: list[DeviceUrl]) -> None:
        self.clients: list[Client] = []
        self.devices: list[tuple[Client, int]] = []
        try:
            for url in urls:
                client = Client(url, first_slot=len(self.devices))
                self.clients.append(client)
                self.devices.extend((client, i) for i in range(client.device_count))
        except BaseException:
            self.close()
            raise

    def device(self, ordinal: int) -> tuple[Client, int]:
        """(client, that daemon's device number) for a global device number."""
        if not 0 <= ordinal < len(self.devices):
            raise CudaError(Error.cudaErrorInvalidDevice, f"device {ordinal} of {len(self.devices)}")
        return self.devices[ordinal]

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.clients.clear()
        self.devices.clear()


_lock = threading.Lock()
_runtime: Runtime | None = None


def device_urls() -> list[DeviceUrl]:
    text = os.environ.get("QCUDA_DEVICE", "")
    try:
        return parse_list(text) if text.strip() else [default()]
    except ValueError as exc:
        raise CudaError(Error.cudaErrorInvalidValue, f"QCUDA_DEVICE: {exc}") from None


def runtime() -> Runtime:
    """The process's runtime, connected on first use."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime(device_urls())
        return _runtime


def reset_runtime() -> None:
    """Disconnect from every daemon; the next call connects again (after a fork, or in tests)."""
    global _runtime
    with _lock:
        if _runtime is not None:
            _runtime.close()
        _runtime = None


def _forget_in_child() -> None:
    """A forked child must not use its parent's channel (its threads did not survive the fork)."""
    global _runtime
    _runtime = None


atexit.register(reset_runtime)
os.register_at_fork(after_in_child=_forget_in_child)
