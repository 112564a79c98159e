"""The `qcuda` command: serve, info, status, kill, demo."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import click
import numpy as np

from .protocol import messages as m
from .protocol.codec import VERSION, Frame, FrameReader, encode
from .protocol.errors import CudaError
from .protocol.region import Geometry
from .protocol.urls import DeviceUrl, default, parse, parse_list


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("B")
    scale = units.get(text[-1:], 1)
    return int(text[:-1] if text[-1:] in units else text) * scale


class UrlType(click.ParamType):
    name = "URL"

    def convert(self, value, param, ctx):
        try:
            return parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.group()
@click.version_option(package_name="qcuda")
def main() -> None:
    """qcuda: run CUDA work on a GPU served by a qcuda daemon (or its emulated device)."""


@main.command()
@click.option("--listen", "listen", type=UrlType(), multiple=True,
              help="shm://NAME or tcp://HOST:PORT, repeatable (default shm://qcuda).")
@click.option("--backend", type=click.Choice(["auto", "gpu", "emulated"]), default="auto", show_default=True)
@click.option("--emulated-devices", default=1, show_default=True, help="Devices the emulated backend offers.")
@click.option("--emulated-memory", default="4G", show_default=True, help="Memory of each emulated device.")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False),
              help="Access token TCP guests must present (or set QCUDA_TOKEN); required off loopback.")
@click.option("--max-arena", default="1G", show_default=True,
              help="Largest shared region a local guest may bring (the GPU backend pins it).")
@click.option("--memory-limit", default=None, help="Device memory each guest may hold (e.g. 8G); no limit by default.")
@click.option("--print-capabilities", is_flag=True, help="Print what this daemon supports as JSON and exit.")
def serve(listen, backend, emulated_devices, emulated_memory, token_file, max_arena, memory_limit,
          print_capabilities) -> None:
    """Serve guests until SIGTERM."""
    if print_capabilities:
        click.echo(json.dumps({"protocol": VERSION, "transports": ["shm", "tcp"], "backends": ["gpu", "emulated"]}))
        return
    from .device.daemon import Daemon, choose_backend
    from .device.session import Limits

    token = open(token_file, "rb").read().strip() if token_file else os.environ.get("QCUDA_TOKEN", "").encode()
    choice = choose_backend(backend, emulated_devices, _size(emulated_memory))
    region = Geometry.plan(_size(max_arena) // 4096 * 4096).region_size  # the arena with its header and rings
    limits = Limits(region, _size(memory_limit) if memory_limit else None)
    daemon = Daemon(list(listen) or [default()], choice, log=lambda line: print(line, file=sys.stderr, flush=True),
                    token=token, limits=limits)
    daemon.listen()
    daemon.serve_forever()


def _control(url: DeviceUrl, msg: m.Message) -> Frame:
    """One operator request to a daemon's control interface."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    try:
        sock.connect(str(url.socket_path))
    except OSError as exc:
        raise click.ClickException(f"no qcuda daemon at {url} ({url.socket_path}): {exc.strerror}") from None
    reader = FrameReader()

    def exchange(message: m.Message, rid: int) -> Frame:
        sock.sendall(encode(message, rid))
        while True:
            frame = reader.next()
            if isinstance(frame, Frame):
                if frame.status:
                    raise click.ClickException(f"{url}: {CudaError(frame.status, frame.detail)}")
                return frame
            if frame is not None:
                raise click.ClickException(f"{url}: bad answer: {frame.reason}")
            data = sock.recv(1 << 16)
            if not data:
                raise click.ClickException(f"{url} closed the connection")
            reader.feed(data)

    with sock:
        exchange(m.Hello(VERSION, m.Kind.CONTROL, 0), 1)
        return exchange(msg, 2)


def _daemon_url(device: str | None) -> DeviceUrl:
    text = device or os.environ.get("QCUDA_DEVICE") or str(default())
    try:
        urls = parse_list(text)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    return urls[0]


device_option = click.option("--device", "device", help="Daemon address (default: $QCUDA_DEVICE or shm://qcuda).")


@main.command()
@device_option
def status(device) -> None:
    """Sessions of a daemon: process, memory in use, call counts."""
    url = _daemon_url(device)
    reply = _control(url, m.ControlStatus()).message
    assert isinstance(reply, m.ControlStatusReply)
    info = json.loads(reply.json)
    click.echo(f"daemon {info['daemon_pid']} on {', '.join(info['listen'])}: backend {info['backend']}, "
               f"{len(info['sessions'])} session(s), {info['memory']} bytes of device memory in use")
    if info["sessions"]:
        click.echo(f"{'SESSION':>7} {'GUEST':>21} {'UID':>5} {'WORKER':>7} {'MEMORY':>12} {'ALLOCS':>6} {'STREAMS':>7} "
                   f"{'CALLS':>8}  AGE")
        for s in info["sessions"]:
            click.echo(f"{s['session']:>7} {s['peer']:>21} {s['uid']:>5} {s['worker_pid']:>7} {s['memory']:>12} "
                       f"{s['allocations']:>6} {s['streams']:>7} {s['calls']:>8}  {s['seconds']}s")


@main.command()
@click.argument("session", type=int)
@device_option
def kill(session, device) -> None:
    """End a guest's session (frees everything it holds)."""
    _control(_daemon_url(device), m.ControlKill(session))
    click.echo(f"session {session} killed")


@main.command()
@device_option
def info(device) -> None:
    """The devices this guest sees."""
    import qcuda

    if device:
        os.environ["QCUDA_DEVICE"] = device
    try:
        for dev in qcuda.devices():
            free, total = dev.mem_info()
            major, minor = dev.compute_capability
            click.echo(f"device {dev.ordinal}: {dev.name} ({dev.backend}) via {dev.client.url}, "
                       f"compute {major}.{minor}, {dev.attribute('MultiProcessorCount')} SMs, "
                       f"{total / 2**30:.1f} GiB ({free / 2**30:.1f} GiB free)")
    except CudaError as exc:
        raise click.ClickException(str(exc)) from None


def _reachable(url: DeviceUrl) -> bool:
    if url.scheme != "shm":
        return True
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(url.socket_path))
        return True
    except OSError:
        return False
    finally:
        sock.close()


class LocalDaemon:
    """A daemon started for one command when none is reachable, stopped when the command ends."""

    def __init__(self) -> None:
        self.url = DeviceUrl("shm", name=f"qcuda-local-{os.getpid()}")
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "LocalDaemon":
        self.log = tempfile.NamedTemporaryFile("w+", prefix="qcuda-daemon-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "qcuda", "serve", "--listen", str(self.url)], stdin=subprocess.DEVNULL,
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while not _reachable(self.url):
            if self.process.poll() is not None:
                raise click.ClickException(f"the local daemon exited with status {self.process.returncode}: "
                                           f"{open(self.log.name).read().strip()}")
            if time.monotonic() > deadline:
                raise click.ClickException("the local daemon did not start within 120 s")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
        if exc[0] is None:
            os.unlink(self.log.name)
        else:
            click.echo(f"qcuda: the local daemon's log is in {self.log.name}", err=True)


def with_daemon(run) -> None:
    """Run `run()` against $QCUDA_DEVICE's daemon, or a local one started for it."""
    url = _daemon_url(None)
    if os.environ.get("QCUDA_DEVICE") or _reachable(url):
        run()
        return
    click.echo("qcuda: no daemon running; starting a local one (GPU if there is one, else the emulated device)",
               err=True)
    with LocalDaemon() as local:
        os.environ["QCUDA_DEVICE"] = str(local.url)
        run()


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@device_option
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(device, command) -> None:
    """Run an unmodified CUDA program (built with nvcc -cudart shared) through qcuda: qcuda run -- ./prog ARGS."""
    from .library.interposer.run import NotRunnable, prepare, run_program

    if device:
        os.environ["QCUDA_DEVICE"] = device
    try:
        prepare(list(command))
    except NotRunnable as exc:
        raise click.ClickException(str(exc)) from None
    status = []
    with_daemon(lambda: status.append(run_program(list(command))))
    sys.exit(status[0])


BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("name", required=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(name, args) -> None:
    """Run a benchmark from bench/ (copy_bandwidth, tcp_bandwidth, call_latency, emulator_bench); each prints qcuda's
    figures next to native ones measured in the same run. Without NAME, list them."""
    if not BENCH_DIR.is_dir():
        raise click.ClickException(f"no bench/ folder next to this qcuda ({BENCH_DIR}): run from a source checkout")
    available = sorted(p.stem for p in BENCH_DIR.glob("*.py"))
    if name is None:
        for stem in available:
            doc = (BENCH_DIR / f"{stem}.py").read_text().split('"""')[1].strip().splitlines()[0]
            click.echo(f"{stem}: {doc}")
        return
    if name not in available:
        raise click.ClickException(f"no benchmark {name!r}; there are: {', '.join(available)}")
    raise SystemExit(subprocess.run([sys.executable, str(BENCH_DIR / f"{name}.py"), *args]).returncode)


@main.command()
def demo() -> None:
    """Run a small CUDA program through qcuda and say what happened: the Python API, then an unmodified
    nvcc-built program through `qcuda run` when nvcc is here to build it."""
    with_daemon(lambda: (_demo(), _demo_program()))


def _demo_program() -> None:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        click.echo("unmodified CUDA program: skipped (no nvcc here to build qcuda/examples/saxpy.cu)")
        return
    source = resources.files("qcuda.examples").joinpath("saxpy.cu")
    with tempfile.TemporaryDirectory() as tmp, resources.as_file(source) as path:
        exe = os.path.join(tmp, "saxpy")
        build = subprocess.run([nvcc, "-arch=sm_90", "-cudart", "shared", "-o", exe, str(path)],
                               capture_output=True, text=True)
        if build.returncode:
            raise click.ClickException(f"nvcc could not build the demo program: {build.stderr.strip()}")
        click.echo("unmodified CUDA program (nvcc -cudart shared), through qcuda run:")
        sys.stdout.flush()
        result = subprocess.run([sys.executable, "-m", "qcuda", "run", "--", exe])
        if result.returncode:
            raise click.ClickException(f"the demo program failed (exit {result.returncode})")


def _demo() -> None:
    import qcuda

    try:
        dev = qcuda.Device(0)
        click.echo(f"device 0: {dev.name} ({dev.backend} backend) via {dev.client.url}")
        n = 1 << 20
        rng = np.random.default_rng(7)
        a = rng.standard_normal(n, dtype=np.float32)
        b = rng.standard_normal(n, dtype=np.float32)
        start, end = dev.create_event(), dev.create_event()
        stream = dev.create_stream()
        start.record(stream)
        da, db = dev.to_device(a, stream), dev.to_device(b, stream)
        dc = dev.allocate(a.nbytes)
        dc.memset(0, stream)
        end.record(stream)
        stream.synchronize()
        click.echo(f"copied 2 x {a.nbytes >> 20} MiB to the device and cleared 4 MiB in {start.elapsed_ms(end):.2f} ms")
        ptx = resources.files("qcuda.examples").joinpath("vector_add.ptx").read_bytes()
        try:
            kernel = dev.load_module(ptx).get_kernel("vector_add")
        except CudaError as exc:
            click.echo(f"kernels: not available on this device yet ({exc})")
            back = da.to_numpy(np.float32)
            click.echo(f"round trip of {a.nbytes >> 20} MiB: {'bit-exact' if np.array_equal(back, a) else 'WRONG'}")
            if not np.array_equal(back, a):
                raise SystemExit(1)
            return
        t0 = time.perf_counter()
        kernel.launch((n + 255) // 256, 256, da, db, dc, np.int32(n), stream=stream)
        stream.synchronize()
        took = time.perf_counter() - t0
        c = dc.to_numpy(np.float32)
        ok = np.array_equal(c, a + b)
        click.echo(f"vector_add of {n} floats on the device in {took * 1e3:.1f} ms: {'correct' if ok else 'WRONG'}")
        if not ok:
            raise SystemExit(1)
    except CudaError as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    main()
