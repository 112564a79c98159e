"""Device addresses as guests and daemons write them: `shm://NAME`, `tcp://HOST:PORT`."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_NAME = "qcuda"
DEFAULT_TCP_PORT = 7077


@dataclass(frozen=True)
class DeviceUrl:
    scheme: str  # "shm" or "tcp"
    name: str = ""  # shm: the daemon's name
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        return f"shm://{self.name}" if self.scheme == "shm" else f"tcp://{self.host}:{self.port}"

    @property
    def socket_path(self) -> Path:
        """The Unix socket a local guest connects to for an shm channel."""
        return runtime_dir() / f"{self.name}.sock"


def runtime_dir() -> Path:
    """Where daemons put their sockets: $QCUDA_RUNTIME_DIR, else /tmp/qcuda."""
    return Path(os.environ.get("QCUDA_RUNTIME_DIR", "/tmp/qcuda"))


def parse(text: str) -> DeviceUrl:
    """One address; ValueError with a line a user can act on if it is not one."""
    text = text.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise ValueError(f"{text!r} is not a device address: write shm://NAME or tcp://HOST:PORT")
    if scheme == "shm":
        if not rest or "/" in rest or rest.startswith("."):
            raise ValueError(f"{text!r}: an shm name is one word, as in shm://{DEFAULT_NAME}")
        return DeviceUrl("shm", name=rest)
    if scheme == "tcp":
        host, _, port = rest.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{text!r}: write tcp://HOST:PORT, as in tcp://127.0.0.1:{DEFAULT_TCP_PORT}")
        return DeviceUrl("tcp", host=host.strip("[]"), port=int(port))
    raise ValueError(f"{text!r}: unknown scheme {scheme!r}; qcuda speaks shm:// and tcp://")


def parse_list(text: str) -> list[DeviceUrl]:
    """A comma-separated list, as `QCUDA_DEVICE` takes."""
    return [parse(part) for part in text.split(",") if part.strip()]


def default() -> DeviceUrl:
    return DeviceUrl("shm", name=DEFAULT_NAME)
