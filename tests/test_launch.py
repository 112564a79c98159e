"""Kernels through a real daemon: launches, parameters, device printf, faults that end one guest's context."""
from __future__ import annotations

import shutil
import struct
import subprocess

import numpy as np
import pytest
from pathlib import Path

KERNELS = Path(__file__).resolve().parent / "kernels" / "daemon_kernels.cu"
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc to build the test kernels")


@pytest.fixture(scope="module")
def ptx(tmp_path_factory) -> bytes:
    if shutil.which("nvcc") is None:
        pytest.skip("needs nvcc")
    out = tmp_path_factory.mktemp("ptx") / "k.ptx"
    subprocess.run(["nvcc", "-ptx", "-arch=sm_90", "-o", str(out), str(KERNELS)], check=True)
    return out.read_bytes()


@needs_nvcc
def test_launch_with_scalars_and_buffers(guest, ptx):
    dev = guest.Device(0)
    kernel = dev.load_module(ptx).get_kernel("scale")
    assert [size for _, size in kernel.param_layout] == [8, 4, 4]
    x = np.arange(1000, dtype=np.float32)
    buf = dev.to_device(x)
    kernel.launch(4, 256, buf, np.float32(2.5), np.int32(1000))
    assert np.array_equal(buf.to_numpy(np.float32), x * np.float32(2.5))
    kernel.launch(4, 256, buf, 2.0, 1000)  # Python numbers take the parameter's width
    assert np.array_equal(buf.to_numpy(np.float32), x * np.float32(2.5) * 2)


@needs_nvcc
def test_struct_parameter_as_raw_bytes(guest, ptx):
    dev = guest.Device(0)
    kernel = dev.load_module(ptx).get_kernel("take_struct")
    out = dev.allocate(8)
    kernel.launch(1, 1, struct.pack("<i4xd", 3, 0.25), out)
    assert out.to_numpy(np.float64)[0] == 3.25


@needs_nvcc
def test_launch_errors(guest, ptx):
    dev = guest.Device(0)
    kernel = dev.load_module(ptx).get_kernel("scale")
    buf = dev.allocate(16)
    with pytest.raises(guest.CudaError) as err:
        kernel.launch(1, 2048, buf, 1.0, 4)
    assert err.value.code == guest.Error.cudaErrorInvalidConfiguration
    with pytest.raises(TypeError):
        kernel.launch(1, 1, buf, 1.0)
    with pytest.raises(guest.CudaError) as err:
        dev.load_module(ptx).get_kernel("no_such_kernel")
    assert err.value.code == guest.Error.cudaErrorSymbolNotFound


def kernel_guest(daemon, ptx: bytes, tmp_path, kernel: str, body: str):
    """A guest process that loads `kernel` from the test PTX as `k`, then runs `body`."""
    path = tmp_path / "k.ptx"
    path.write_bytes(ptx)
    return daemon.guest(
        "import qcuda, numpy as np\n"
        "dev = qcuda.Device(0)\n"
        f"k = dev.load_module(open({str(path)!r}, 'rb').read()).get_kernel({kernel!r})\n" + body
    )


@needs_nvcc
def test_device_printf_reaches_the_guest_before_sync_returns(daemon, ptx, tmp_path):
    proc = kernel_guest(daemon, ptx, tmp_path, "hello", (
        "print('before', flush=True)\n"
        "k.launch(2, 3, np.int32(2))\n"
        "dev.synchronize()\n"
        "print('after', flush=True)\n"
    ))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[0] == "before" and lines[-1] == "after"
    assert sorted(lines[1:-1]) == sorted(f"hello {t} of block {b}" for t in range(2) for b in range(2))


@needs_nvcc
def test_fault_ends_only_that_guests_context(daemon, ptx, tmp_path):
    proc = kernel_guest(daemon, ptx, tmp_path, "write_far", (
        "p = dev.allocate(16)\n"
        "k.launch(1, 1, p, np.int64(1 << 44))  # 64 TiB past p: outside every device and arena range\n"
        "try:\n"
        "    dev.synchronize()\n"
        "except qcuda.CudaError as e:\n"
        "    print('sync', e.code)\n"
        "try:\n"
        "    dev.allocate(16)\n"
        "except qcuda.CudaError as e:\n"
        "    print('after', e.code)\n"
    ))
    healthy = daemon.guest(
        "import qcuda, numpy as np\n"
        "dev = qcuda.Device(0)\n"
        "b = dev.to_device(np.arange(100))\n"
        "print('ok' if (b.to_numpy(np.int64) == np.arange(100)).all() else 'bad')\n"
    )
    out, err = proc.communicate(timeout=120)
    assert out.split() == ["sync", "700", "after", "700"], err
    out, err = healthy.communicate(timeout=120)
    assert out.strip() == "ok", err


@needs_nvcc
def test_module_variables_are_copied_by_address(guest, ptx):
    """What cudaMemcpyToSymbol needs: a variable's address is this session's memory for copies."""
    from qcuda.protocol import messages as m

    dev = guest.Device(0)
    module = dev.load_module(ptx)
    ptr, size = module.get_global("coefficients")
    assert size == 16
    client = dev.client
    client.copy_htod(ptr, memoryview(np.array([1, 2, 3, 4], dtype=np.float32)), 0)
    counter, counter_size = module.get_global("counter")
    assert counter_size == 4
    before = bytearray(4)
    client.copy_dtoh(memoryview(before), counter, 0)
    assert int.from_bytes(before, "little") == 41
    x = dev.to_device(np.ones(8, dtype=np.float32))
    module.get_kernel("apply").launch(1, 8, x, np.int32(8))
    assert np.array_equal(x.to_numpy(np.float32), [1, 2, 3, 4, 1, 2, 3, 4])
    after = bytearray(4)
    client.copy_dtoh(memoryview(after), counter, 0)
    assert int.from_bytes(after, "little") == 42
    module.unload()
    with pytest.raises(guest.CudaError):
        client.call(m.MemcpyDtoH(0, counter, 4, 0))


@needs_nvcc
def test_kernel_attributes_and_dynamic_shared_memory_opt_in(guest, ptx):
    dev = guest.Device(0)
    kernel = dev.load_module(ptx).get_kernel("reverse_dynamic")
    attrs = kernel.attributes()
    assert attrs["max_threads_per_block"] == 1024 and attrs["shared_size_bytes"] == 0
    assert attrs["max_dynamic_shared_size_bytes"] == 48 << 10
    n = 24 << 10  # 96 KiB of ints: more than a kernel may use without opting in
    out = dev.allocate(4 * n)
    with pytest.raises(guest.CudaError) as err:
        kernel.launch(1, 256, out, np.int32(n), shared_mem=4 * n)
    assert err.value.code == guest.Error.cudaErrorInvalidValue
    kernel.set_max_dynamic_shared_memory(4 * n)
    assert kernel.attributes()["max_dynamic_shared_size_bytes"] == 4 * n
    kernel.launch(1, 256, out, np.int32(n), shared_mem=4 * n)
    assert np.array_equal(out.to_numpy(np.int32), np.arange(n)[::-1])
    with pytest.raises(guest.CudaError):
        kernel.set_max_dynamic_shared_memory(1 << 30)


@needs_nvcc
def test_cluster_launch(guest, ptx):
    dev = guest.Device(0)
    kernel = dev.load_module(ptx).get_kernel("cluster_ranks")
    out = dev.allocate(12 * 4)
    kernel.launch(12, 32, out, cluster=(4, 1, 1))
    assert out.to_numpy(np.int32).tolist() == [r * 100 + 4 for r in (0, 1, 2, 3)] * 3
    kernel.launch(12, 32, out)  # an ordinary launch: clusters of one block
    assert out.to_numpy(np.int32).tolist() == [1] * 12
    with pytest.raises(guest.CudaError) as err:
        kernel.launch(10, 32, out, cluster=(4, 1, 1))
        dev.synchronize()
    assert err.value.code == guest.Error.cudaErrorInvalidClusterSize
