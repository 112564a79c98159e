"""Unmodified CUDA programs (`nvcc -cudart shared`) run through `qcuda run` on a daemon's device.

Every program here checks itself and ends with PASS; `qcuda_only/` holds programs whose expected
output differs on a real GPU (calls qcuda does not implement). The programs are built once per
session with nvcc, so these tests need the CUDA toolkit (not a GPU).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from daemons import DaemonProcess

from qcuda.library.interposer import LIBRARY, LIBRARY_DIR

HERE = Path(__file__).resolve().parent
NVCC = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
ARCH = "-arch=sm_90"  # carries compute_90 PTX, which the emulated device runs

pytestmark = pytest.mark.skipif(not Path(NVCC).exists(), reason="needs nvcc to build the programs")


def program_sources() -> dict[str, list[Path]]:
    """Program name -> its .cu files: each top-level .cu is a program, each directory of .cu files one."""
    programs = {p.stem: [p] for p in HERE.glob("*.cu")}
    for d in HERE.iterdir():
        if d.is_dir() and d.name != "qcuda_only" and list(d.glob("*.cu")):
            programs[d.name] = sorted(d.glob("*.cu"))
    programs.update({f"qcuda_only/{p.stem}": [p] for p in (HERE / "qcuda_only").glob("*.cu")})
    return programs


def source_flags(sources: list[Path]) -> list[str]:
    """Extra nvcc flags a program asks for in a line `// nvcc flags: ...` of its first source."""
    found = re.search(r"^// nvcc flags: (.*)$", sources[0].read_text(), flags=re.M)
    return found[1].split() if found else []


def nvcc(sources: list[Path], out: Path, *flags: str) -> Path:
    subprocess.run([NVCC, ARCH, *flags, *source_flags(sources), "-o", str(out), *map(str, sources)], check=True,
                   capture_output=True)
    return out


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> dict[str, Path]:
    """Every program, built with -cudart shared (and qcuda's libcudart.so.13, if not installed yet)."""
    if not LIBRARY.exists():
        from qcuda.library.interposer.build import build

        build(LIBRARY_DIR)
    out = tmp_path_factory.mktemp("programs")
    with ThreadPoolExecutor(8) as pool:
        jobs = {name: pool.submit(nvcc, src, out / name.replace("/", "_"), "-cudart", "shared")
                for name, src in program_sources().items()}
        return {name: job.result() for name, job in jobs.items()}


NEEDS_SHARED_ARENA = {"memory"}  # kernels on mapped pinned memory: a guest's memory is not the worker's over TCP


def run(daemon, program: Path, url: str) -> subprocess.CompletedProcess:
    """`qcuda run -- program` against `daemon` at `url`."""
    return subprocess.run([sys.executable, "-m", "qcuda", "run", "--", str(program)],
                          env=dict(daemon.env, QCUDA_DEVICE=url), capture_output=True, text=True, timeout=300,
                          cwd=HERE.parent.parent)


@pytest.mark.parametrize("channel", ["shm", "tcp"])
@pytest.mark.parametrize("name", sorted(program_sources()))
def test_program(daemon, built, name, channel):
    if channel == "tcp" and name in NEEDS_SHARED_ARENA:
        pytest.skip("kernels reach this process's pinned memory only through a shared-memory channel")
    result = run(daemon, built[name], daemon.url if channel == "shm" else daemon.tcp_url)
    lines = result.stdout.splitlines()
    failed = [line for line in lines if line.startswith("FAIL")]
    assert result.returncode == 0 and lines[-1:] == ["PASS"], f"{name}: {failed}\n{result.stdout}{result.stderr}"


def test_unsupported_call_is_named_once(daemon, built):
    result = daemon.cli("run", "--", str(built["qcuda_only/unsupported"]), check=False)
    said = [line for line in result.stderr.splitlines() if "cudaMallocArray" in line]
    assert said == ["qcuda: cudaMallocArray is not supported yet: it returns cudaErrorNotSupported"]


def test_static_runtime_is_refused(daemon, tmp_path):
    static = nvcc([HERE / "device.cu"], tmp_path / "static")
    result = daemon.cli("run", "--", str(static), check=False)
    assert result.returncode != 0
    assert "statically" in result.stderr and "-cudart shared" in result.stderr
    assert "ok " not in result.stdout  # it never ran


def test_library_matches_the_real_one():
    """Same exported names, soname, and version node as CUDA's own libcudart.so.13."""
    from qcuda.library.interposer._cudart_abi import EXPORTS

    if not LIBRARY.exists():
        pytest.skip("libcudart.so.13 is not built")
    nm = subprocess.run(["nm", "-D", "--defined-only", str(LIBRARY)], capture_output=True, text=True, check=True)
    ours = {line.split()[2] for line in nm.stdout.splitlines() if line.split()[1] == "T"}
    assert ours == {f"{name}@@libcudart.so.13" for name in EXPORTS}
    readelf = subprocess.run(["readelf", "-d", str(LIBRARY)], capture_output=True, text=True, check=True)
    assert "Library soname: [libcudart.so.13]" in readelf.stdout


def test_run_starts_a_local_daemon_when_none_is_reachable(built, runtime_dir, tmp_path):
    """With no QCUDA_DEVICE and no daemon at the default address, `qcuda run` brings its own."""
    env = {k: v for k, v in os.environ.items() if k != "QCUDA_DEVICE"}
    env["QCUDA_RUNTIME_DIR"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-m", "qcuda", "run", "--", str(built["multi_fatbin"])], env=env,
                            capture_output=True, text=True, timeout=300, cwd=HERE.parent.parent)
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == "PASS", result.stdout + result.stderr
    assert "starting a local one" in result.stderr


@pytest.fixture(scope="module")
def two_device_daemon(runtime_dir):
    d = DaemonProcess(runtime_dir, extra=("--emulated-devices", "2"))
    yield d
    d.stop()


def test_two_devices_of_one_daemon(two_device_daemon, built):
    result = two_device_daemon.cli("run", "--", str(built["multi_device"]), check=False)
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == "PASS", result.stdout + result.stderr


def test_devices_of_two_daemons(daemon, two_device_daemon, built):
    """QCUDA_DEVICE names two daemons: the program sees their devices as one numbering."""
    result = run(daemon, built["multi_device"], f"{daemon.url},{two_device_daemon.url}")
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == "PASS", result.stdout + result.stderr


THREADS = r"""
#include <cstdio>
#include <thread>
#include <cuda_runtime.h>
__global__ void touch(int *p) { atomicAdd(p + threadIdx.x, 1); }
static void work(int *p) {
  touch<<<1, 32, 0, cudaStreamPerThread>>>(p);
  if (cudaStreamSynchronize(cudaStreamPerThread) != cudaSuccess) printf("FAIL\n");
}
int main() {
  int *p, host[32];
  cudaMalloc(&p, sizeof host);
  cudaMemset(p, 0, sizeof host);
  for (int round = 0; round < 8; round++) {
    std::thread workers[8];
    for (auto &w : workers) w = std::thread(work, p);
    for (auto &w : workers) w.join();
  }
  std::thread last(work, p);
  last.join();
  cudaMemcpy(host, p, sizeof host, cudaMemcpyDeviceToHost);
  printf("%d ready\n", host[0]);
  fflush(stdout);
  getchar();
  return 0;
}
"""


def test_per_thread_streams_end_with_their_threads(fresh_daemon, tmp_path):
    """65 threads, one after another in rounds, each with its per-thread default stream: the daemon does not
    keep a stream per thread that has ended (`qcuda status` counts the session's streams)."""
    if not LIBRARY.exists():
        from qcuda.library.interposer.build import build

        build(LIBRARY_DIR)
    (tmp_path / "threads.cu").write_text(THREADS)
    program = nvcc([tmp_path / "threads.cu"], tmp_path / "threads", "-cudart", "shared")
    guest = subprocess.Popen([sys.executable, "-m", "qcuda", "run", "--", str(program)],
                             env=dict(fresh_daemon.env, QCUDA_DEVICE=fresh_daemon.url), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=HERE.parent.parent)
    try:
        assert guest.stdout.readline() == "65 ready\n"
        lines = fresh_daemon.cli("status").stdout.splitlines()
        header = next(i for i, line in enumerate(lines) if "STREAMS" in line)
        (row,) = [line.split() for line in lines[header + 1:]]  # this guest's session alone
        streams = int(row[lines[header].split().index("STREAMS")])
        assert streams <= 2, lines  # the last thread's, at most: not one per ended thread
    finally:
        guest.communicate("\n", timeout=60)
    assert guest.returncode == 0
