"""Guests move data through a real daemon process: copies, memset, pinned memory, chunking."""
from __future__ import annotations

import numpy as np
import pytest

from qcuda.driver.client import Client
from qcuda.protocol.urls import parse

ARENA = 16 << 20  # small, so that 64 MiB copies must be chunked through it


@pytest.fixture
def small_arena_guest(guest, monkeypatch):
    monkeypatch.setenv("QCUDA_ARENA", str(ARENA))
    guest.reset_runtime()
    yield guest


@pytest.mark.parametrize("size", [0, 1, 4096 + 1, 64 << 20, ARENA + 12345], ids=["0B", "1B", "4KiB+1", "64MiB", "arena+"])
def test_round_trip_host_device_device_host(small_arena_guest, size):
    qcuda = small_arena_guest
    dev = qcuda.Device(0)
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    a = dev.to_device(data)
    b = dev.allocate(size)
    b.copy_from_device(a)
    back = np.empty(size, dtype=np.uint8)
    b.copy_to(back)
    assert np.array_equal(back, data)
    a.free()
    b.free()


def test_memset_widths(guest):
    dev = guest.Device(0)
    buf = dev.allocate(64)
    buf.memset(0xAB)
    assert bytes(buf.copy_to()) == b"\xab" * 64
    buf.memset(0x1234, element_size=2, count=8)
    assert np.array_equal(buf.to_numpy(np.uint16)[:8], [0x1234] * 8)
    assert np.all(buf.to_numpy(np.uint16)[8:] == 0xABAB)
    buf.memset(0xDEADBEEF, element_size=4)
    assert np.all(buf.to_numpy(np.uint32) == 0xDEADBEEF)


def test_pinned_host_buffer_is_zero_copy(guest):
    dev = guest.Device(0)
    pinned = dev.allocate_host(1 << 20)
    pinned.numpy()[:] = np.arange(1 << 20, dtype=np.uint64).astype(np.uint8)
    client = dev.client
    if client.channel.shared_arena:
        assert client.arena_offset(pinned.view) == pinned.offset  # the daemon reads it in place
        assert pinned.device_pointer != 0
    else:
        assert client.arena_offset(pinned.view) is None  # over TCP it is staged like any host memory
        with pytest.raises(guest.CudaError):
            pinned.device_pointer
    buf = dev.allocate(1 << 20)
    stream = dev.create_stream()
    buf.copy_from(pinned, stream)
    out = dev.allocate_host(1 << 20)
    buf.copy_to(out, stream)
    stream.synchronize()
    assert np.array_equal(out.numpy(), pinned.numpy())


def test_bad_pointers_and_sizes_are_cuda_errors(guest):
    dev = guest.Device(0)
    buf = dev.allocate(16)
    client = dev.client
    from qcuda.protocol import messages as m

    with pytest.raises(guest.CudaError) as err:
        client.call(m.MemcpyDtoD(buf.ptr, buf.ptr + 8, 16, 0))
    assert err.value.code == guest.Error.cudaErrorInvalidValue
    with pytest.raises(guest.CudaError) as err:
        client.call(m.MemFree(buf.ptr + 1))
    assert err.value.code == guest.Error.cudaErrorInvalidValue
    with pytest.raises(guest.CudaError) as err:
        client.call(m.MemcpyHtoD(buf.ptr, 1 << 40, 16, 0))
    assert err.value.code == guest.Error.cudaErrorInvalidValue
    with pytest.raises(guest.CudaError) as err:
        client.call(m.MemAlloc(0, 1 << 62))
    assert err.value.code == guest.Error.cudaErrorMemoryAllocation
    with pytest.raises(guest.CudaError) as err:
        client.call(m.MemAlloc(7, 16))
    assert err.value.code == guest.Error.cudaErrorInvalidDevice
    with pytest.raises(guest.CudaError) as err:
        client.call(m.Memset(buf.ptr, 0, 3, 1, 0))
    assert err.value.code == guest.Error.cudaErrorInvalidValue


def test_device_properties(guest):
    dev = guest.Device(0)
    assert dev.name
    assert dev.total_memory > 0
    assert dev.attribute("MaxThreadsPerBlock") == 1024
    assert dev.attribute("WarpSize") == 32
    assert dev.compute_capability[0] >= 7
    free, total = dev.mem_info()
    assert 0 < free <= total == dev.total_memory
    assert guest.device_count() >= 1
    with pytest.raises(guest.CudaError):
        guest.Device(99)


def test_memory_accounting_follows_alloc_and_free(guest):
    dev = guest.Device(0)
    free0, _ = dev.mem_info()
    buf = dev.allocate(32 << 20)
    free1, _ = dev.mem_info()
    assert free0 - free1 >= 32 << 20
    buf.free()
    assert dev.mem_info()[0] == free0


def test_client_without_daemon_fails_clearly(runtime_dir, monkeypatch):
    monkeypatch.setenv("QCUDA_RUNTIME_DIR", str(runtime_dir))
    from qcuda.protocol.errors import CudaError

    with pytest.raises(CudaError) as err:
        Client(parse("shm://nobody-serves-this"))
    assert err.value.code == 100  # cudaErrorNoDevice
    assert "no qcuda daemon at shm://nobody-serves-this" in str(err.value)
