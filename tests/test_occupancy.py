"""The interposer's occupancy calculation agrees with CUDA's own (cuda_occupancy.h, header-only host code),
for an H100's limits over registers, block sizes and shared memory."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from qcuda.library.interposer._cudart import _blocks_per_sm

HEADERS = Path("/usr/local/cuda/include")
REGS = (0, 16, 32, 40, 64, 72, 128, 200, 255)
BLOCKS = (32, 64, 96, 100, 128, 256, 384, 512, 768, 1024)
SHARED = (0, 1000, 20000, 49152, 100000)
H100 = {"cudaDevAttrWarpSize": 32, "cudaDevAttrMaxThreadsPerMultiProcessor": 2048,
        "cudaDevAttrMaxBlocksPerMultiprocessor": 32, "cudaDevAttrMaxRegistersPerMultiprocessor": 65536,
        "cudaDevAttrMaxRegistersPerBlock": 65536, "cudaDevAttrMaxSharedMemoryPerMultiprocessor": 233472,
        "cudaDevAttrReservedSharedMemoryPerBlock": 1024}
H100_PROGRAM = r"""
#include <cuda_occupancy.h>
#include <cstdio>
int main() {
  cudaOccDeviceProp p;
  p.computeMajor = 9; p.computeMinor = 0; p.maxThreadsPerBlock = 1024; p.maxThreadsPerMultiprocessor = 2048;
  p.regsPerBlock = 65536; p.regsPerMultiprocessor = 65536; p.warpSize = 32; p.sharedMemPerBlock = 49152;
  p.sharedMemPerMultiprocessor = 233472; p.numSms = 132; p.sharedMemPerBlockOptin = 232448;
  p.reservedSharedMemPerBlock = 1024;
"""  # the start of a program that asks cuda_occupancy.h about an H100
REFERENCE = H100_PROGRAM + r"""
  int regs[] = {REGS}, blocks[] = {BLOCKS}, shared[] = {SHARED};
  for (int r : regs) for (int b : blocks) for (int s : shared) {
    cudaOccFuncAttributes f;
    f.maxThreadsPerBlock = 1024; f.numRegs = r; f.sharedSizeBytes = 0; f.partitionedGCConfig = PARTITIONED_GC_OFF;
    f.shmemLimitConfig = FUNC_SHMEM_LIMIT_OPTIN; f.maxDynamicSharedSizeBytes = 232448; f.numBlockBarriers = 1;
    cudaOccDeviceState state;
    cudaOccResult result;
    int error = cudaOccMaxActiveBlocksPerMultiprocessor(&result, &p, &f, &state, b, s);
    printf("%d %d %d %d %d\n", r, b, s, error, result.activeBlocksPerMultiprocessor);
  }
}
"""


@pytest.mark.skipif(not (HEADERS / "cuda_occupancy.h").exists() or shutil.which("g++") is None,
                    reason="needs the CUDA headers and g++")
def test_occupancy_matches_cuda_occupancy_h(tmp_path):
    source = REFERENCE
    for name, values in (("REGS", REGS), ("BLOCKS", BLOCKS), ("SHARED", SHARED)):
        source = source.replace("{" + name + "}", "{" + ", ".join(map(str, values)) + "}")
    (tmp_path / "ref.cpp").write_text(source)
    subprocess.run(["g++", "-I", str(HEADERS), str(tmp_path / "ref.cpp"), "-o", str(tmp_path / "ref")], check=True)
    rows = subprocess.run([str(tmp_path / "ref")], check=True, capture_output=True, text=True).stdout.split("\n")

    class Dev:
        attributes = H100

    for row in filter(None, rows):
        regs, block, shared, error, want = map(int, row.split())
        assert error == 0
        kernel = {"max_threads_per_block": 1024, "max_dynamic_shared_size_bytes": 232448, "num_regs": regs,
                  "shared_size_bytes": 0}
        assert _blocks_per_sm(Dev(), kernel, block, shared) == want, (regs, block, shared)


AVAILABLE = H100_PROGRAM + r"""
  int statics[] = {0, 4000, 40000}, dynamics[] = {0, 9152, 49152, 100000, 200000}, counts[] = {1, 2, 3, 7, 16};
  for (int st : statics) for (int dyn : dynamics) for (int n : counts) {
    if (st + dyn > 232448) continue;
    cudaOccFuncAttributes f;
    f.maxThreadsPerBlock = 1024; f.numRegs = 32; f.sharedSizeBytes = st; f.partitionedGCConfig = PARTITIONED_GC_OFF;
    f.shmemLimitConfig = st + dyn > 49152 ? FUNC_SHMEM_LIMIT_OPTIN : FUNC_SHMEM_LIMIT_DEFAULT;
    f.maxDynamicSharedSizeBytes = dyn; f.numBlockBarriers = 1;
    cudaOccDeviceState state;
    size_t room = 0;
    int error = cudaOccAvailableDynamicSMemPerBlock(&room, &p, &f, &state, n, 128);
    printf("%d %d %d %d %zu\n", st, dyn, n, error, error ? 0 : room);
  }
}
"""


@pytest.mark.skipif(not (HEADERS / "cuda_occupancy.h").exists() or shutil.which("g++") is None,
                    reason="needs the CUDA headers and g++")
def test_available_dynamic_shared_memory_matches_cuda_occupancy_h(tmp_path, monkeypatch):
    from qcuda.library.interposer import _cudart
    (tmp_path / "ref.cpp").write_text(AVAILABLE)
    subprocess.run(["g++", "-I", str(HEADERS), str(tmp_path / "ref.cpp"), "-o", str(tmp_path / "ref")], check=True)
    rows = subprocess.run([str(tmp_path / "ref")], check=True, capture_output=True, text=True).stdout.split("\n")

    class Dev:
        attributes = dict(H100, cudaDevAttrMaxSharedMemoryPerBlock=49152,
                          cudaDevAttrMaxSharedMemoryPerBlockOptin=232448)

    out = {}
    monkeypatch.setattr(_cudart, "device", Dev)
    monkeypatch.setattr(_cudart, "_out", lambda ptr, kind, value: out.update(value=value))
    for row in filter(None, rows):
        static, dynamic, count, error, want = map(int, row.split())
        attributes = {"max_threads_per_block": 1024, "max_dynamic_shared_size_bytes": dynamic, "num_regs": 32,
                      "shared_size_bytes": static}
        monkeypatch.setattr(_cudart, "_function_attributes", lambda func, dev: attributes)
        _cudart.cudaOccupancyAvailableDynamicSMemPerBlock(None, None, count, 128)
        assert out["value"] == want, (static, dynamic, count, error)
