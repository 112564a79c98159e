"""Large copies over loopback TCP through qcuda, next to a plain socket transfer between two processes.

Both are measured in the same run on the same machine, so the ratio says what qcuda's TCP channel
costs over the link itself. Starts its own daemon (`--backend auto` unless told otherwise).

    python bench/tcp_bandwidth.py [--backend auto|gpu|emulated] [--sizes 1M,64M,256M] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from multiprocessing import Process

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sink(port: int, total: int) -> None:
    """The other process of the plain transfer: receive `total` bytes, answer one byte."""
    with socket.create_server(("127.0.0.1", port)) as server:
        conn, _ = server.accept()
        with conn:
            buf = bytearray(1 << 20)
            got = 0
            while got < total:
                n = conn.recv_into(buf)
                if not n:
                    return
                got += n
            conn.sendall(b"k")


def plain_socket(size: int, repeat: int) -> float:
    """GB/s of sending `size` bytes to another process over loopback TCP, best of `repeat`."""
    data = memoryview(bytearray(os.urandom(1 << 20)) * (size >> 20 or 1))[:size]
    best = float("inf")
    for _ in range(repeat):
        port = _free_port()
        sink = Process(target=_sink, args=(port, size))
        sink.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port))
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        with sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t0 = time.perf_counter()
            sock.sendall(data)
            sock.recv(1)
            best = min(best, time.perf_counter() - t0)
        sink.join()
    return size / best / 1e9


def qcuda_copies(url: str, size: int, repeat: int) -> tuple[float, float]:
    """(host->device, device->host) GB/s of pageable copies through qcuda, best of `repeat`."""
    import qcuda

    dev = qcuda.Device(0)
    host = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
    back = np.empty_like(host)
    buf = dev.allocate(size)
    h2d = d2h = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        buf.copy_from(host)
        h2d = min(h2d, time.perf_counter() - t0)
        t0 = time.perf_counter()
        buf.copy_to(back)
        d2h = min(d2h, time.perf_counter() - t0)
    assert np.array_equal(back, host)
    buf.free()
    return size / h2d / 1e9, size / d2h / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--sizes", default="1M,64M,256M")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [_size(s) for s in args.sizes.split(",")]
    runtime = tempfile.mkdtemp(prefix="qcuda-bench-")
    port = _free_port()
    env = dict(os.environ, QCUDA_RUNTIME_DIR=runtime)
    daemon = subprocess.Popen([sys.executable, "-m", "qcuda", "serve", "--listen", f"tcp://127.0.0.1:{port}",
                               "--backend", args.backend], env=env, stderr=subprocess.PIPE, text=True)
    try:
        line = daemon.stderr.readline().strip()
        print(line)
        os.environ["QCUDA_DEVICE"] = f"tcp://127.0.0.1:{port}"
        import qcuda

        print(f"device: {qcuda.Device(0).name}")
        print(f"{'size':>8} {'plain socket':>13} {'qcuda H2D':>10} {'ratio':>6} {'qcuda D2H':>10} {'ratio':>6}  (GB/s)")
        for size in sizes:
            plain = plain_socket(size, args.repeat)
            h2d, d2h = qcuda_copies(os.environ["QCUDA_DEVICE"], size, args.repeat)
            print(f"{size >> 20:>6}Mi {plain:>13.2f} {h2d:>10.2f} {h2d / plain:>6.2f} {d2h:>10.2f} {d2h / plain:>6.2f}")
    finally:
        daemon.terminate()
        daemon.wait(20)


if __name__ == "__main__":
    main()
