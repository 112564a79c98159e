"""How fast the PTX emulator runs two reference kernels on this machine (not a test: it prints).

    python bench/emulator_bench.py

Targets (issue 5, on a 2-core machine): vector add of 1M floats under 5 s; 256x256 tiled matrix
multiply with 16x16 shared-memory tiles under 20 s. Needs nvcc to build the kernels.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qcuda.device.backends.emulated.memory import DeviceMemory  # noqa: E402
from qcuda.device.backends.emulated.ptx import Module  # noqa: E402

KERNELS = Path(__file__).resolve().parents[1] / "tests" / "emulator" / "kernels"


def build(source: str, out_dir: Path) -> bytes:
    out = out_dir / (Path(source).stem + ".ptx")
    subprocess.run(["nvcc", "-ptx", "-arch=sm_90", str(KERNELS / source), "-o", str(out)], check=True)
    return out.read_bytes()


def upload(memory: DeviceMemory, arr: np.ndarray) -> int:
    addr = memory.alloc(arr.nbytes)
    memory.write(addr, arr.tobytes())
    return addr


def bench_vector_add(memory: DeviceMemory, ptx: bytes, n: int = 1 << 20) -> float:
    kernel = Module.load(ptx, memory).functions["vec_add"]
    a, b = np.random.rand(n).astype(np.float32), np.random.rand(n).astype(np.float32)
    pa, pb, pc = upload(memory, a), upload(memory, b), memory.alloc(4 * n)
    params = np.array([pa, pb, pc], np.uint64).tobytes() + np.int32(n).tobytes()
    t = time.perf_counter()
    kernel.launch(((n + 255) // 256, 1, 1), (256, 1, 1), 0, params)
    elapsed = time.perf_counter() - t
    c = np.frombuffer(memory.read(pc, 4 * n), np.float32)
    assert np.array_equal(c, a + b), "vector add gave a wrong answer"
    return elapsed


def bench_matmul(memory: DeviceMemory, ptx: bytes, n: int = 256) -> float:
    kernel = Module.load(ptx, memory).functions["matmul_tiled"]
    A, B = np.random.rand(n, n).astype(np.float32), np.random.rand(n, n).astype(np.float32)
    pa, pb, pc = upload(memory, A), upload(memory, B), memory.alloc(4 * n * n)
    params = np.array([pa, pb, pc], np.uint64).tobytes() + np.int32(n).tobytes()
    t = time.perf_counter()
    kernel.launch((n // 16, n // 16, 1), (16, 16, 1), 0, params)
    elapsed = time.perf_counter() - t
    C = np.frombuffer(memory.read(pc, 4 * n * n), np.float32).reshape(n, n)
    assert np.allclose(C, A.astype(np.float64) @ B, rtol=1e-5), "matmul gave a wrong answer"
    return elapsed


def bench_divergent(memory: DeviceMemory, ptx: bytes, n: int = 1 << 18) -> float:
    kernel = Module.load(ptx, memory).functions["collatz_steps"]
    x = np.random.randint(1, 100_000, n).astype(np.uint32)
    pa, pc = upload(memory, x), memory.alloc(4 * n)
    params = np.array([pa, pc], np.uint64).tobytes() + np.int32(n).tobytes()
    t = time.perf_counter()
    kernel.launch((n // 256, 1, 1), (256, 1, 1), 0, params)
    return time.perf_counter() - t


def best(fn, *args, repeat: int = 3) -> float:
    return min(fn(*args) for _ in range(repeat))


def main() -> None:
    if shutil.which("nvcc") is None:
        sys.exit("nvcc is needed to build the benchmark kernels")
    memory = DeviceMemory(1 << 32)
    with tempfile.TemporaryDirectory() as tmp:
        vecadd, matmul = build("vecadd.cu", Path(tmp)), build("matmul.cu", Path(tmp))
        control = build("control.cu", Path(tmp))
    print("best of 3 launches, kernel execution only:")
    va = best(bench_vector_add, memory, vecadd)
    print(f"vector add, 1M floats (4096 blocks x 256):        {va:6.2f} s   (target < 5 s)")
    mm = best(bench_matmul, memory, matmul)
    print(f"tiled matmul 256x256, 16x16 tiles (256 blocks):   {mm:6.2f} s   (target < 20 s)")
    dv = best(bench_divergent, memory, control)
    print(f"divergent loops, Collatz steps of 256K numbers:   {dv:6.2f} s   (no target; ~100 iterations each)")


if __name__ == "__main__":
    main()
