"""The GPU backend on a real device: kernels from CUDA C (NVRTC), PTX, cubin and fatbin; a fault stays
in its own guest. Run on a GPU host with QCUDA_TEST_BACKEND=gpu (tools/run_gpu_tests.sh); skipped elsewhere.
"""
from __future__ import annotations

import shutil
import subprocess
from importlib import resources

import numpy as np
import pytest

from qcuda.protocol.errors import CudaError, Error

pytestmark = pytest.mark.gpu

VECTOR_ADD = (resources.files("qcuda.examples") / "vector_add.cu").read_text()
VECTOR_ADD_PTX = (resources.files("qcuda.examples") / "vector_add.ptx").read_bytes()

KERNELS = r"""
__constant__ float scale;
__device__ int counter;

extern "C" __global__ void store(int *p, int v) { *p = v; }

extern "C" __global__ void read_globals(float *out) { out[0] = scale; out[1] = (float)counter; }

extern "C" __global__ void fill_mapped(int *host, int n) {  // writes straight into host (arena) memory
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) host[i] = 2 * i;
}

extern "C" __global__ void mixed_args(char c, double d, short s, long long *out) {
    out[0] = c; out[1] = (long long)d; out[2] = s;
}
"""

OUT_OF_BOUNDS = r"""
extern "C" __global__ void scribble(int *p) { p[threadIdx.x] = 1; }
"""


def _check_vector_add(dev, module, n: int = (1 << 20) + 3) -> None:
    kernel = module.get_kernel("vector_add")
    assert [size for _, size in kernel.param_layout] == [8, 8, 8, 4]
    rng = np.random.default_rng(n)
    a, b = rng.standard_normal(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32)
    da, db, dc = dev.to_device(a), dev.to_device(b), dev.allocate(a.nbytes)
    kernel.launch((n + 255) // 256, 256, da, db, dc, np.int32(n))
    dev.synchronize()
    assert np.array_equal(dc.to_numpy(np.float32), a + b)


def test_device_is_the_gpu(guest):
    dev = guest.Device(0)
    assert dev.backend == "gpu"
    assert dev.total_memory >= 1 << 30
    assert dev.properties["uuid"] != "00" * 16
    assert len(dev.attributes) >= 130  # every cudaDevAttr the driver knows
    assert dev.attribute("CanMapHostMemory") == 1 and dev.attribute("MultiProcessorCount") > 1


def test_vector_add_from_cuda_c_source(guest):
    dev = guest.Device(0)
    module = dev.compile(VECTOR_ADD)
    _check_vector_add(dev, module)


def test_vector_add_from_ptx(guest):
    dev = guest.Device(0)
    _check_vector_add(dev, dev.load_module(VECTOR_ADD_PTX))


@pytest.mark.parametrize("kind", ["cubin", "fatbin"])
def test_vector_add_from_nvcc_image(guest, tmp_path, kind):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("no nvcc on this host")
    dev = guest.Device(0)
    major, minor = dev.compute_capability
    src = tmp_path / "vector_add.cu"
    src.write_text(VECTOR_ADD)
    out = tmp_path / f"vector_add.{kind}"
    subprocess.run([nvcc, f"-{kind}", f"-arch=sm_{major}{minor}", "-o", str(out), str(src)], check=True)
    _check_vector_add(dev, dev.load_module(out.read_bytes()))


def test_compile_error_returns_the_log(guest):
    with pytest.raises(CudaError) as err:
        guest.Device(0).compile('extern "C" __global__ void broken(int *p) { p[0] = undeclared; }')
    assert err.value.code == Error.cudaErrorInvalidSource
    assert "undeclared" in str(err.value)


def test_module_variables_and_argument_layout(guest):
    dev = guest.Device(0)
    module = dev.compile(KERNELS)
    scale_ptr, scale_size = module.get_global("scale")
    counter_ptr, counter_size = module.get_global("counter")
    assert scale_ptr and counter_ptr and scale_size == counter_size == 4
    with pytest.raises(CudaError) as err:
        module.get_global("nothing_of_that_name")
    assert err.value.code == Error.cudaErrorInvalidSymbol
    module.get_kernel("store").launch(1, 1, counter_ptr, np.int32(42))  # the address is the variable itself
    out = dev.allocate(8)
    module.get_kernel("read_globals").launch(1, 1, out)
    assert list(out.to_numpy(np.float32)) == [0.0, 42.0]

    mixed = module.get_kernel("mixed_args")
    assert mixed.param_layout == [(0, 1), (8, 8), (16, 2), (24, 8)]
    out = dev.allocate(24)
    mixed.launch(1, 1, np.int8(-5), 7.9, np.int16(300), out)
    assert list(out.to_numpy(np.int64)) == [-5, 7, 300]


def test_kernel_writes_the_mapped_arena_in_place(guest):
    dev = guest.Device(0)
    if dev.client.url.scheme != "shm":
        pytest.skip("only a shared-memory channel maps guest memory for kernels")
    n = 4096
    host = dev.allocate_host(n * 4)
    host.numpy(np.int32)[:] = -1
    dev.compile(KERNELS).get_kernel("fill_mapped").launch(n // 256, 256, host, np.int32(n))
    dev.synchronize()
    assert np.array_equal(host.numpy(np.int32), 2 * np.arange(n, dtype=np.int32))


def test_stream_priority_and_flags(guest):
    dev = guest.Device(0)
    high = dev.create_stream(non_blocking=True, priority=-5)  # the driver clamps to its range
    buf = dev.allocate(1 << 20)
    buf.memset(0x5A, high)
    high.synchronize()
    assert np.all(buf.to_numpy() == 0x5A)


SURVIVOR = r"""
import os, sys, time
import numpy as np, qcuda
from importlib import resources
dev = qcuda.Device(0)
kernel = dev.load_module((resources.files("qcuda.examples") / "vector_add.ptx").read_bytes()).get_kernel("vector_add")
def vector_add():
    n = 1 << 16
    a = np.arange(n, dtype=np.float32)
    da, db, dc = dev.to_device(a), dev.to_device(2 * a), dev.allocate(4 * n)
    kernel.launch(n // 256, 256, da, db, dc, np.int32(n))
    return np.array_equal(dc.to_numpy(np.float32), 3 * a)
assert vector_add()
print("ready", flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.01)
print("still working" if vector_add() else "wrong", flush=True)
"""

FAULTER = r"""
import sys
import numpy as np, qcuda
from qcuda.protocol.errors import CudaError
dev = qcuda.Device(0)
kernel = dev.compile(sys.argv[1]).get_kernel("scribble")
kernel.launch(1, 32, np.uint64(16))  # the null page: never mapped
codes = []
for call in (dev.synchronize, lambda: dev.allocate(16)):
    try:
        call()
        codes.append(0)
    except CudaError as exc:
        codes.append(exc.code)
print(*codes, flush=True)
"""


def test_illegal_address_ends_only_that_guest(fresh_daemon, tmp_path):
    survivor = fresh_daemon.guest(SURVIVOR, str(tmp_path / "go"))
    assert survivor.stdout.readline().strip() == "ready", survivor.stderr.read()
    faulter = fresh_daemon.guest(FAULTER, OUT_OF_BOUNDS)
    out, err = faulter.communicate(timeout=120)
    assert out.split() == ["700", "700"], err  # the fault, then the sticky error on a later call
    (tmp_path / "go").touch()
    out, err = survivor.communicate(timeout=120)
    assert out.strip() == "still working", err
    assert fresh_daemon.alive()
