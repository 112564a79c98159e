"""Device addresses never collide with a guest's host addresses: the layout, the guest's reservation,
the emulated device's addresses, and the heap that carves the GPU's range (its bookkeeping, without a GPU).
"""
from __future__ import annotations

import ctypes
import mmap
import subprocess
import sys

import numpy as np
import pytest
from daemons import DaemonProcess

from qcuda.device.backends.heap import ALIGNMENT, Heap
from qcuda.protocol import addresses
from qcuda.protocol.addresses import RESERVED, arena_range, heap_range
from qcuda.protocol.errors import CudaError, Error

MIB = 1 << 20
GRANULE = 2 * MIB


def _inside(address: int, size: int, span: tuple[int, int]) -> bool:
    return span[0] <= address and address + size <= span[0] + span[1]


# -- the layout ------------------------------------------------------------------------------------
def test_layout_ranges_are_disjoint_and_inside_the_reserved_span():
    spans = [heap_range(k) for k in range(addresses.MAX_DEVICES)] + \
            [arena_range(k) for k in range(addresses.MAX_DEVICES)]
    spans.sort()
    for (a, n), (b, _) in zip(spans, spans[1:]):
        assert a + n <= b
    assert all(_inside(base, size, RESERVED) for base, size in spans)
    assert heap_range(0)[1] >= 141 << 30  # an H200's memory fits one device's range
    assert RESERVED[0] + RESERVED[1] <= 0x7E00_0000_0000  # well below where mmap places mappings
    with pytest.raises(ValueError):
        heap_range(addresses.MAX_DEVICES)


# -- the guest's reservation -------------------------------------------------------------------------
def _maps_covering(start: int, end: int) -> list[str]:
    lines = []
    for line in open("/proc/self/maps").read().splitlines():
        low, high = (int(x, 16) for x in line.split()[0].split("-"))
        if low < end and high > start:
            lines.append(line)
    return lines


def test_a_connected_guest_reserves_the_device_span(guest):
    guest.Device(0).allocate(16)
    base, size = RESERVED
    lines = _maps_covering(base, base + size)
    assert lines and all(line.split()[1] == "---p" and len(line.split()) == 5 for line in lines)
    covered = sorted((int(a, 16), int(b, 16)) for a, b in (line.split()[0].split("-") for line in lines))
    assert covered[0][0] <= base and covered[-1][1] >= base + size
    assert all(b == c for (_, b), (c, _) in zip(covered, covered[1:]))  # no hole


def test_host_mappings_cannot_land_in_the_device_span(guest):
    guest.Device(0)  # connects
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    prot, flags = mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    base, size = RESERVED
    for hint in (base, heap_range(3)[0] + 12345 * 4096, arena_range(0)[0]):
        placed = libc.mmap(hint, 1 << 20, prot, flags, -1, 0)  # a hint: the kernel goes elsewhere
        assert placed not in (None, 2**64 - 1)
        assert not base <= placed < base + size
        libc.munmap(placed, 1 << 20)
        assert libc.mmap(hint, 1 << 20, prot, flags | 0x100000, -1, 0) == 2**64 - 1  # MAP_FIXED_NOREPLACE
        assert ctypes.get_errno() == 17  # EEXIST
    for _ in range(64):  # many ordinary allocations, none in the span
        block = mmap.mmap(-1, 64 << 20)
        address = np.frombuffer(block, np.uint8).ctypes.data
        assert not base <= address < base + size


CONFLICT = r"""
import ctypes, mmap
from qcuda.driver.addresses import reserve_device_addresses
from qcuda.protocol.addresses import heap_range
from qcuda.protocol.errors import CudaError
libc = ctypes.CDLL(None)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
at = heap_range(2)[0] + (1 << 30)
assert libc.mmap(at, 4096, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x100000, -1, 0) == at
try:
    reserve_device_addresses()
    print("reserved")
except CudaError as exc:
    print(exc.code, exc.detail)
"""

EARLIER_RESERVATION = r"""
import ctypes, mmap
from qcuda.driver.addresses import reserve_device_addresses
from qcuda.protocol.addresses import arena_range
libc = ctypes.CDLL(None)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
at = arena_range(0)[0]
assert libc.mmap(at, 1 << 30, 0, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x4000 | 0x100000, -1, 0) == at
reserve_device_addresses()
print("reserved")
"""


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_range_already_in_use_is_named():
    out = _run(CONFLICT)
    assert out.startswith(f"{int(Error.cudaErrorInitializationError)} "), out
    assert f"0x{heap_range(2)[0] + (1 << 30):x}" in out and "rw-p" in out


def test_an_earlier_reservation_counts():
    assert _run(EARLIER_RESERVATION) == "reserved"  # as libcudart.so.13's, made before main


# -- the devices' addresses (emulated here; the GPU's with QCUDA_TEST_BACKEND=gpu) ---------------------------
def test_device_addresses_lie_in_the_layout(guest):
    dev = guest.Device(0)
    buffers = [dev.allocate(size) for size in (1, 4096, 3 * MIB)]
    assert all(_inside(b.ptr, max(b.size, 1), heap_range(0)) for b in buffers)
    if dev.client.channel.shared_arena:
        pinned = dev.allocate_host(4096)
        assert pinned.device_pointer == arena_range(0)[0] + pinned.offset


def test_each_emulated_device_has_its_own_range(runtime_dir):
    daemon = DaemonProcess(runtime_dir, backend="emulated", extra=("--emulated-devices", "2"))
    try:
        out = _run_guest(daemon, r"""
import qcuda
from qcuda.protocol.addresses import arena_range, heap_range
for k in (0, 1):
    dev = qcuda.Device(k)
    p, host = dev.allocate(64), dev.allocate_host(64)
    print(heap_range(k)[0] <= p.ptr < sum(heap_range(k)), host.device_pointer == arena_range(k)[0] + host.offset)
""")
        assert out.split() == ["True"] * 4
    finally:
        daemon.stop()


def _run_guest(daemon: DaemonProcess, code: str) -> str:
    proc = daemon.guest(code)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out


# -- the heap's bookkeeping ----------------------------------------------------------------------------
class FakeDriver:
    """Records what the heap maps; refuses to map once `limit` bytes are mapped (out of memory)."""

    def __init__(self, limit: int = 1 << 40) -> None:
        self.mapped: dict[int, int] = {}
        self.limit = limit
        self.calls = 0

    def map(self, address: int, size: int) -> None:
        self.calls += 1
        if sum(self.mapped.values()) + size > self.limit:
            raise CudaError(Error.cudaErrorMemoryAllocation, "out of memory")
        assert all(address + size <= a or a + n <= address for a, n in self.mapped.items())
        self.mapped[address] = size

    def unmap(self, address: int, size: int) -> None:
        assert self.mapped.pop(address) == size


def _heap(driver: FakeDriver, size: int = 1 << 38) -> Heap:
    return Heap(heap_range(1)[0], size, GRANULE, driver.map, driver.unmap)


def test_small_allocations_share_one_granule():
    driver = FakeDriver()
    heap = _heap(driver)
    pointers = [heap.alloc(4) for _ in range(GRANULE // ALIGNMENT)]
    assert len(set(pointers)) == len(pointers)
    assert all(p % ALIGNMENT == 0 and _inside(p, 4, heap_range(1)) for p in pointers)
    assert driver.calls == 1 and heap.mapped == GRANULE
    heap.alloc(0)  # the granule is full: a second one; cudaMalloc(0) still gets an address
    assert heap.mapped == 2 * GRANULE


def test_large_allocations_get_their_own_mapping():
    driver = FakeDriver()
    heap = _heap(driver)
    small = heap.alloc(100)
    big = heap.alloc(5 * MIB)
    assert driver.mapped[big] == 6 * MIB and big % GRANULE == 0
    heap.free(big)
    assert big not in driver.mapped and heap.mapped == GRANULE
    assert heap.alloc(5 * MIB) == big  # the range is reused
    heap.free(small)


def test_freed_space_is_reused_and_empty_chunks_go_back():
    driver = FakeDriver()
    heap = _heap(driver)
    first = [heap.alloc(GRANULE // 2) for _ in range(6)]  # three chunks
    assert heap.mapped == 3 * GRANULE
    heap.free(first[2])
    assert heap.alloc(1000) == first[2]  # first fit in the freed hole
    for p in first:
        if p != first[2]:
            heap.free(p)
    assert heap.mapped == 2 * GRANULE  # the chunk still holding the 1000 bytes, and one spare
    heap.free(first[2])
    assert heap.mapped == GRANULE  # a second empty chunk goes back; one spare stays
    heap.release_all()
    assert driver.mapped == {} and heap.mapped == 0


def test_spare_chunk_absorbs_an_alloc_free_loop():
    driver = FakeDriver()
    heap = _heap(driver)
    for _ in range(100):
        heap.free(heap.alloc(64))
    assert driver.calls == 1 and heap.mapped == GRANULE


def test_out_of_memory_and_bad_frees():
    driver = FakeDriver(limit=4 * GRANULE)
    heap = _heap(driver, size=16 * GRANULE)
    heap.alloc(3 * GRANULE)
    with pytest.raises(CudaError) as exc:
        heap.alloc(2 * GRANULE)
    assert exc.value.code == Error.cudaErrorMemoryAllocation
    assert heap.mapped == 3 * GRANULE  # nothing half-made stays
    with pytest.raises(CudaError) as exc:
        heap.alloc(17 * GRANULE)  # longer than the whole range
    assert exc.value.code == Error.cudaErrorMemoryAllocation
    p = heap.alloc(16)
    heap.free(p)
    for bad in (p, p + 256, 12345):
        with pytest.raises(CudaError) as exc:
            heap.free(bad)
        assert exc.value.code == Error.cudaErrorInvalidValue


def test_map_again_aliases_a_shared_mapping():
    """How the GPU backend puts the arena at its device address: the same pages, mapped a second time."""
    gpu = pytest.importorskip("qcuda.device.backends.gpu")
    region = mmap.mmap(-1, 1 << 20)
    view = memoryview(region)[8192:8192 + 65536]
    address = np.frombuffer(view, np.uint8).ctypes.data
    target = addresses.END + (1 << 30)  # this test process is a guest: the layout's span is reserved here
    gpu.map_again(address, len(view), target)
    try:
        alias = (ctypes.c_char * len(view)).from_address(target)
        view[:5] = b"hello"
        assert alias[:5] == b"hello"
        alias[100:103] = b"abc"
        assert bytes(view[100:103]) == b"abc"
        with pytest.raises(CudaError, match="not free"):
            gpu.map_again(address, len(view), target)
    finally:
        gpu.unmap(target, len(view))
    private = bytearray(3 * 4096)
    page = -(-np.frombuffer(private, np.uint8).ctypes.data // 4096) * 4096
    with pytest.raises(CudaError, match="shared mapping"):
        gpu.map_again(page, 4096, target)
