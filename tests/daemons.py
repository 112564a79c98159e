"""Real daemon processes for tests: `qcuda serve` on a fresh name, its CLI, and guest processes."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

BACKEND = os.environ.get("QCUDA_TEST_BACKEND", "emulated")
REPO = Path(__file__).resolve().parent.parent


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
