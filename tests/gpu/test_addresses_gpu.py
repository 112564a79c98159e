"""The GPU backend's addresses follow qcuda's layout: device memory in the device's reserved range (the
driver's virtual memory calls, small allocations sharing granules), the arena at its layout address
for kernels. Run with QCUDA_TEST_BACKEND=gpu on a GPU host; skipped elsewhere.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from qcuda.protocol.addresses import arena_range, heap_range
from qcuda.protocol.errors import CudaError, Error

pytestmark = pytest.mark.gpu

MIB, GIB = 1 << 20, 1 << 30

FILL = r"""
extern "C" __global__ void fill(int *p, int n, int v) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) p[i] = v + i;
}
extern "C" __global__ void copy(const int *src, int *dst, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = src[i];
}
"""


def _in_heap(buf, ordinal: int = 0) -> bool:
    base, size = heap_range(ordinal)
    return base <= buf.ptr and buf.ptr + max(buf.size, 1) <= base + size and buf.ptr % 256 == 0


def test_allocations_land_in_the_device_range(guest):
    dev = guest.Device(0)
    buffers = [dev.allocate(n) for n in (0, 4, 1000, 3 * MIB, 64 * MIB)]
    assert all(_in_heap(b) for b in buffers), [hex(b.ptr) for b in buffers]
    for i, b in enumerate(buffers[1:]):
        b.memset(0x11 * (i + 1))
        assert np.all(b.to_numpy() == 0x11 * (i + 1))
    data = np.arange(16 * MIB // 4, dtype=np.int32)
    d = dev.to_device(data)
    assert _in_heap(d) and np.array_equal(d.to_numpy(np.int32), data)


def test_small_allocations_share_granules(guest):
    dev = guest.Device(0)
    dev.allocate(1)  # the context and its first chunk exist before measuring
    before = dev.mem_info()[0]
    buffers = [dev.allocate(4) for _ in range(1000)]
    used = before - dev.mem_info()[0]
    assert used <= 4 * MIB, used  # 1000 x 256 bytes: one or two granules, not 1000
    assert len({b.ptr >> 21 for b in buffers}) <= 2
    module = dev.compile(FILL)
    for i, b in enumerate(buffers[:32]):
        module.get_kernel("fill").launch(1, 1, b, np.int32(1), np.int32(i))
    dev.synchronize()
    assert [int(b.to_numpy(np.int32)[0]) for b in buffers[:32]] == list(range(32))


def test_free_reuses_and_gives_memory_back(guest):
    dev = guest.Device(0)
    small = dev.allocate(1000)
    address = small.ptr
    small.free()
    assert dev.allocate(1000).ptr == address
    before = dev.mem_info()[0]
    big = dev.allocate(8 * GIB)
    assert _in_heap(big)
    taken = before - dev.mem_info()[0]
    assert taken >= 7 * GIB, taken  # (another guest's context may be going away meanwhile)
    address = big.ptr
    big.free()
    assert dev.mem_info()[0] - (before - taken) >= 7 * GIB
    assert dev.allocate(8 * GIB).ptr == address


def test_out_of_memory_is_cuda_error_memory_allocation(guest):
    dev = guest.Device(0)
    for size in (dev.total_memory + GIB, heap_range(0)[1] + GIB):  # more than the card; more than the range
        with pytest.raises(CudaError) as exc:
            dev.allocate(size)
        assert exc.value.code == Error.cudaErrorMemoryAllocation
    assert _in_heap(dev.allocate(MIB))


def test_kernels_see_the_arena_at_its_layout_address(guest):
    dev = guest.Device(0)
    if dev.client.url.scheme != "shm":
        pytest.skip("only a shared-memory channel maps guest memory for kernels")
    n = 1 << 16
    host = dev.allocate_host(n * 4)
    assert host.device_pointer == arena_range(0)[0] + host.offset
    module = dev.compile(FILL)
    module.get_kernel("fill").launch(n // 256, 256, np.uint64(arena_range(0)[0] + host.offset), np.int32(n),
                                     np.int32(7))
    out = dev.allocate(n * 4)
    module.get_kernel("copy").launch(n // 256, 256, host, out, np.int32(n))  # the kernel reads the arena too
    dev.synchronize()
    expected = 7 + np.arange(n, dtype=np.int32)
    assert np.array_equal(host.numpy(np.int32), expected)
    assert np.array_equal(out.to_numpy(np.int32), expected)
    back = dev.allocate_host(n * 4)
    out.copy_to(back.view)  # DMA into the arena through its registered mapping
    assert np.array_equal(back.numpy(np.int32), expected)


def test_device_reset_reserves_the_range_again(guest):
    dev = guest.Device(0)
    first = dev.allocate(4096)
    assert _in_heap(first)
    dev.reset()
    again = dev.allocate(4096)
    assert _in_heap(again)
    again.memset(0x42)
    assert np.all(again.to_numpy() == 0x42)
    if dev.client.url.scheme == "shm":
        host = dev.allocate_host(64)
        assert host.device_pointer == arena_range(0)[0] + host.offset


BACKEND = r"""
import ctypes, mmap
from qcuda.device.backends.gpu import GpuBackend
from qcuda.protocol.addresses import arena_range, heap_range
from qcuda.protocol.errors import CudaError
backend = GpuBackend()
print("host pointers", backend.device_info(0).attributes.get("cudaDevAttrCanUseHostPointerForRegisteredMem"))
ctx = backend.open_context(0, 0)
base, size = heap_range(0)
granule = ctx.heap.granularity
pointers = [ctx.alloc(4) for _ in range(1000)]
print("granule", granule, ctx.heap.mapped == granule, all(base <= p < base + granule for p in pointers))
for p in pointers:
    ctx.free(p)
print("spare", ctx.heap.mapped == granule)
region = mmap.mmap(-1, 1 << 22)
print("arena", ctx.map_host(memoryview(region)[4096:]) == arena_range(0)[0])
ctx.close()
libc = ctypes.CDLL(None)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
assert libc.mmap(base + (1 << 30), 4096, 0, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x100000, -1, 0) == base + (1 << 30)
try:
    backend.open_context(0, 0)
    print("opened")
except CudaError as exc:
    print("refused", exc.code, exc.detail)
"""


def test_backend_shares_granules_and_refuses_a_taken_range():
    """The backend itself, in a process of its own (a guest's process holds the span reserved)."""
    done = subprocess.run([sys.executable, "-c", BACKEND], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    print(done.stdout)
    assert lines[0] == "host pointers 1"
    granule = int(lines[1].split()[1])
    assert granule % (64 << 10) == 0 and lines[1].split()[2:] == ["True", "True"]
    assert lines[2:4] == ["spare True", "arena True"]
    assert lines[4].startswith(f"refused {int(Error.cudaErrorMemoryAllocation)} ") and "would not reserve" in lines[4]
