"""The emulator against a real GPU: the same PTX and inputs, the same outputs, bit for bit, except
where PTX leaves the hardware a choice: .approx math, atomic order, the physical %warpid, NaN
payloads (the GPU returns the canonical NaN), and mul/add pairs without a rounding modifier,
which ptxas may fuse into one fma (seen with f16x2). Run on a GPU host with
QCUDA_TEST_BACKEND=gpu; skipped elsewhere.
"""
from __future__ import annotations

import struct

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


class Gpu:
    """Just enough of the driver API to load PTX and launch with packed parameters."""

    def __init__(self) -> None:
        from cuda.bindings import driver as cu
        self.cu = cu
        self.check(cu.cuInit(0))
        device = self.check(cu.cuDeviceGet(0))
        self.ctx = self.check(cu.cuDevicePrimaryCtxRetain(device))
        self.check(cu.cuCtxSetCurrent(self.ctx))

    def check(self, result):
        err, *outs = result
        if err != self.cu.CUresult.CUDA_SUCCESS:
            raise RuntimeError(f"CUDA driver error {err}")
        return outs[0] if len(outs) == 1 else outs

    def run(self, ptx: bytes, name: str, grid, block, shared: int, layout, args) -> list[np.ndarray]:
        cu = self.cu
        module = self.check(cu.cuModuleLoadData(ptx.rstrip(b"\0") + b"\0"))
        function = self.check(cu.cuModuleGetFunction(module, name.encode()))
        params = bytearray(layout[-1][0] + layout[-1][1] if layout else 0)
        copies = []
        for (offset, size), arg in zip(layout, args):
            if isinstance(arg, np.ndarray):
                ptr = int(self.check(cu.cuMemAlloc(max(arg.nbytes, 1))))
                self.check(cu.cuMemcpyHtoD(ptr, arg.ctypes.data, arg.nbytes))
                copies.append((ptr, arg))
                raw = struct.pack("<Q", ptr)
            else:
                raw = bytes(arg) if isinstance(arg, (bytes, bytearray)) else np.asarray(arg).tobytes()
            params[offset:offset + size] = raw
        block_bytes = np.frombuffer(bytes(params) or b"\0", np.uint8)
        pointers = np.array([o for o, _ in layout], np.uint64) + np.uint64(block_bytes.ctypes.data)
        self.check(cu.cuLaunchKernel(function, *grid, *block, shared, 0, pointers.ctypes.data if layout else 0, 0))
        self.check(cu.cuCtxSynchronize())
        out = []
        for ptr, arg in copies:
            result = np.empty_like(arg)
            self.check(cu.cuMemcpyDtoH(result.ctypes.data, ptr, arg.nbytes))
            self.check(cu.cuMemFree(ptr))
            out.append(result)
        self.check(cu.cuModuleUnload(module))
        return out


@pytest.fixture(scope="module")
def gpu() -> Gpu:
    pytest.importorskip("cuda.bindings")
    return Gpu()


rng = np.random.default_rng(31)


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def ints(lo, hi, n, dt=np.int32):
    return rng.integers(lo, hi, n, dtype=np.int64).astype(dt)


def _logical_ids(arrays):
    """thread_ids: %warpid on a GPU is the hardware warp slot, not the warp's index in its block."""
    ids = arrays[0].reshape(-1, 8).copy()
    ids[:, 6] &= 0xFFFF
    return [ids]


def _halves_as_floats(arrays):
    """halves: half and bfloat16 results as float32 values. ptxas fuses __hmul+__hadd into one
    fma, so bf16 results differ by an ulp or two, and more after a cancellation."""
    out, f, bo, b2 = arrays[2], arrays[3], arrays[4], arrays[5]
    as_bf16 = lambda bits: (bits.astype(np.uint32) << 16).view(np.float32)  # noqa: E731
    return [out.astype(np.float32), f, as_bf16(bo), as_bf16(b2)]


def _sorted_tickets(arrays):
    """atomic_ops: which thread drew which ticket depends on the order atomics land in."""
    out = list(arrays)
    out[5] = np.sort(out[5])
    return out


def _math_inputs(dt, n: int = 512) -> list:
    x = (rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 3, n)).astype(dt)
    x[:4] = [0.0, 1e30, 3.0e5, -1.5e7]
    return [x, rng.uniform(-8, 8, n).astype(dt)]


N = 1000
PARAMS = struct.pack("<b7xd3ih2x", -7, 1.75, 10, -20, 30, 1234)
# (source, kernel, grid, block, shared, args, comparison): comparison None is bit-exact; a number
# is a float tolerance; (normalise, tolerance) maps both sides' arrays first
CASES = [
    ("vecadd.cu", "vec_add", (4, 1, 1), (256, 1, 1), 0, lambda: [f32(N), f32(N), np.zeros(N, np.float32), np.int32(N)], None),
    ("vecadd.cu", "saxpy_grid_stride", (3, 1, 1), (96, 1, 1), 0,
     lambda: [np.float32(2.5), f32(N), f32(N), np.int64(N)], None),
    ("vecadd.cu", "vec_add_f64", (4, 1, 1), (256, 1, 1), 0,
     lambda: [rng.random(N), rng.random(N), np.zeros(N), np.uint32(N)], None),
    ("matmul.cu", "matmul_tiled", (4, 4, 1), (16, 16, 1), 0,
     lambda: [f32(64, 64), f32(64, 64), np.zeros((64, 64), np.float32), np.int32(64)], None),
    ("matmul.cu", "block_sum", (4, 1, 1), (256, 1, 1), 1024,
     lambda: [ints(-1000, 1000, N), np.zeros(4, np.int32), np.int32(N)], None),
    ("control.cu", "collatz_steps", (4, 1, 1), (256, 1, 1), 0,
     lambda: [ints(1, 100_000, N, np.uint32), np.zeros(N, np.uint32), np.int32(N)], None),
    ("control.cu", "branchy", (4, 1, 1), (256, 1, 1), 0,
     lambda: [ints(-500, 500, N), np.zeros(N, np.int32), np.int32(N)], None),
    ("intops.cu", "int64_ops", (2, 1, 1), (256, 1, 1), 0,
     lambda: [ints(-2**62, 2**62, 300, np.int64), ints(-2**40, 2**40, 300, np.int64),
              np.zeros(3000, np.int64), np.int32(300)], None),
    ("intops.cu", "bit_ops", (2, 1, 1), (256, 1, 1), 0,
     lambda: [ints(0, 2**32, 400, np.uint32), ints(0, 2**32, 400, np.uint32), np.zeros(4800, np.uint32),
              np.int32(400)], None),
    ("intops.cu", "bitfield_ops", (2, 1, 1), (256, 1, 1), 0,
     lambda: [ints(0, 2**32, 400, np.uint32), ints(0, 2**32, 400, np.uint32), np.zeros(1600, np.uint32),
              np.zeros(800, np.uint64), np.int32(400)], None),
    ("convert.cu", "conversions", (1, 1, 1), (256, 1, 1), 0,
     lambda: [f32(256) * 1e3, rng.standard_normal(256) * 1e6, ints(-2**62, 2**62, 256, np.int64),
              np.zeros(2048, np.int32), np.zeros(1024, np.float32), np.zeros(1024), np.int32(256)], None),
    ("convert.cu", "fma_f32", (2, 1, 1), (256, 1, 1), 0,
     lambda: [f32(500), f32(500), f32(500), np.zeros(500, np.float32), np.int32(500)], None),
    ("convert.cu", "fma_f64", (2, 1, 1), (256, 1, 1), 0,
     lambda: [rng.standard_normal(500), rng.standard_normal(500), rng.standard_normal(500), np.zeros(500),
              np.int32(500)], None),
    ("convert.cu", "vectors", (1, 1, 1), (128, 1, 1), 0,
     lambda: [f32(100, 4), rng.standard_normal((100, 2)), np.zeros((100, 4), np.float32), np.zeros((100, 2)),
              np.zeros(100, np.uint16), np.int32(100)], None),
    ("params.cu", "_Z9scale_addIfLi2EEv6ParamsPKT_PS1_i", (1, 1, 1), (128, 1, 1), 0,
     lambda: [PARAMS, f32(100) * 100, np.zeros(100, np.float32), np.int32(100)], None),
    ("params.cu", "vec4_kernel", (1, 1, 1), (64, 1, 1), 0,
     lambda: [np.int8(3), np.array([1.5, -2, 3.25, 0.5], np.float32).tobytes(), np.zeros((50, 4), np.float32),
              np.int32(50)], None),
    ("misc.cu", "thread_ids", (3, 2, 2), (8, 4, 2), 0, lambda: [np.zeros(12 * 64 * 8, np.uint32)],
     (_logical_ids, None)),
    ("misc.cu", "local_array", (3, 1, 1), (128, 1, 1), 0,
     lambda: [ints(-100, 100, 300), np.zeros(300, np.int32), np.int32(300)], None),
    ("misc.cu", "generic_pointers", (4, 1, 1), (64, 1, 1), 0,
     lambda: [ints(-100, 100, 256), np.zeros(256, np.int32), np.int32(1)], None),
    ("misc.cu", "histogram", (8, 1, 1), (128, 1, 1), 0,
     lambda: [ints(0, 2**30, 20000, np.uint32), np.zeros(37, np.uint32), np.int32(20000), np.int32(37)], None),
    ("warp.cu", "warp_ops", (3, 1, 1), (96, 1, 1), 0,
     lambda: [ints(-100, 100, 248), np.zeros(2480, np.int32), np.int32(248)], None),
    ("warp.cu", "block_votes", (4, 1, 1), (128, 1, 1), 0,
     lambda: [ints(-100, 100, 462), np.zeros(2310, np.int32), np.int32(462)], None),
    ("samples.cu", "block_scan", (8, 1, 1), (128, 1, 1), 1024,
     lambda: [ints(-50, 50, N), np.zeros(N, np.int32), np.zeros(8, np.int32), np.int32(N)], None),
    ("samples.cu", "transpose", (4, 3, 1), (32, 8, 1), 0,
     lambda: [np.zeros((100, 70), np.float32), f32(70, 100), np.int32(100), np.int32(70)], None),
    ("samples.cu", "mandelbrot", (6, 4, 1), (16, 16, 1), 0,
     lambda: [np.zeros((64, 96), np.uint8), np.int32(96), np.int32(64), np.int32(200)], None),
    ("samples.cu", "bitonic_sort", (4, 1, 1), (256, 1, 1), 1024, lambda: [ints(0, 2**32, 1024, np.uint32)], None),
    ("samples.cu", "nbody_accel", (3, 1, 1), (128, 1, 1), 2048,
     lambda: [f32(300, 4), np.zeros((300, 3), np.float32), np.int32(300)], 1e-5),
    ("samples.cu", "async_stage", (2, 1, 1), (128, 1, 1), 0,
     lambda: [f32(256, 4), np.zeros((256, 4), np.float32), ints(0, 2, 256), np.int32(256)], None),
    ("calls.cu", "calls", (2, 1, 1), (128, 1, 1), 0,
     lambda: [f32(4), np.zeros(200, np.float32), np.zeros(400, np.int32), np.int32(200)], None),
    ("halves.cu", "halves", (1, 1, 1), (256, 1, 1), 0,
     lambda: [f32(200, 2).astype(np.float16), f32(200, 2).astype(np.float16), np.zeros((600, 2), np.float16),
              f32(200) * 3, np.zeros(400, np.uint16), np.zeros((200, 2), np.uint16), np.int32(200)],
     (_halves_as_floats, 2e-2)),
    ("halves.cu", "half_scalar", (2, 1, 1), (128, 1, 1), 0,
     lambda: [(f32(200) * 4).astype(np.float16), (f32(200) * 4).astype(np.float16), f32(200) * 3,
              np.zeros(2400, np.float16), np.zeros(200, np.uint16), np.zeros(2, np.float16),
              np.zeros(1, np.float16), np.zeros(1, np.uint16), np.int32(200)], 2e-3),
    ("atomics.cu", "atomic_ops", (10, 1, 1), (64, 1, 1), 0,
     lambda: [ints(0, 2**32, 600, np.uint32),
              np.array([0, 2**31 - 1, 2**31, 0, 0, 2**32 - 1, 0, 0, 0, 0], np.uint32),
              np.array([0, 2**63 - 1, 0, 2**64 - 1, 0, 0, 0], np.uint64), np.zeros(1, np.float32), np.zeros(1),
              np.zeros(600, np.uint32), np.zeros(90, np.uint32), np.zeros(80, np.uint64), np.zeros(10, np.float32),
              np.zeros(10), np.int32(600)], (_sorted_tickets, None)),
    ("warp.cu", "warp_match", (3, 1, 1), (96, 1, 1), 0,
     lambda: [ints(-3, 4, 248), ints(0, 3, 248, np.int64) << 33, np.zeros(248 * 13, np.uint32), np.int32(248)], None),
    ("coop.cu", "cg_reduce", (3, 1, 1), (128, 1, 1), 0,
     lambda: [ints(-1000, 1000, 339), f32(339), np.zeros(1, np.int32), np.zeros(339 * 9, np.int32),
              np.zeros(339, np.float32), np.int32(339)], None),
    ("tables.cu", "shared_histogram", (12, 1, 1), (256, 1, 1), 7 * 4,
     lambda: [ints(0, 256, 50_000, np.uint8), np.zeros(7, np.uint32), np.zeros(1, np.uint32), np.int32(50_000),
              np.int32(7)], None),
    ("math.cu", "math_f32", (4, 1, 1), (128, 1, 1), 0,
     lambda: [*_math_inputs(np.float32), np.zeros(512 * 17, np.float32), np.int32(512)], 2e-6),
    ("math.cu", "math_f64", (4, 1, 1), (128, 1, 1), 0,
     lambda: [*_math_inputs(np.float64), np.zeros(512 * 11), np.int32(512)], 1e-15),
    ("wmma.cu", "wmma_f32", (1, 1, 1), (64, 1, 1), 0,  # tensor cores sum in their own order: close, not equal
     lambda: [f32(32, 64).astype(np.float16), f32(16, 64).astype(np.float16), np.zeros(512, np.float32),
              np.int32(64)], 1e-4),
]


@pytest.mark.parametrize("case", CASES, ids=[c[1][:24] for c in CASES])
def test_kernel_matches_the_gpu(case, built, emu, gpu):
    source, name, grid, block, shared, make_args, tol = case
    ptx = built.ptx(source)
    args = make_args()
    mod = emu.load(ptx)
    layout = mod.functions[name].param_layout
    expect = gpu.run(ptx, name, grid, block, shared, layout, args)
    emu.run(mod, name, grid, block, *args, shared=shared)
    got = [a for a in args if isinstance(a, np.ndarray)]
    if isinstance(tol, tuple):
        normalise, tol = tol
        got, expect = normalise(got), normalise(expect)
    for g, e in zip(got, expect):
        if tol is None:
            np.testing.assert_array_equal(g.view(np.uint8), e.view(np.uint8))
        else:
            np.testing.assert_allclose(g, e, rtol=tol, atol=tol)


def _emulate(ptx: bytes, args: list) -> list[np.ndarray]:
    from qcuda.device.backends.emulated.memory import DeviceMemory
    from qcuda.device.backends.emulated.ptx import Module
    memory = DeviceMemory(1 << 26)
    k = Module.load(ptx, memory).functions["k"]
    ptrs = []
    for arr in args:
        p = memory.alloc(arr.nbytes)
        memory.write(p, arr.tobytes())
        ptrs.append(p)
    k.launch((1, 1, 1), (args[0].size, 1, 1), 0, np.array(ptrs, np.uint64).tobytes())
    return [np.frombuffer(memory.read(p, a.nbytes), a.dtype) for p, a in zip(ptrs, args)]


def _instruction_cases():
    from test_instructions import CASES as INT_CASES, FLOAT_CASES
    defined = [c[0] for c in INT_CASES if not c[0].startswith("@%p1")]  # that one reads an unset predicate
    return [(i, False) for i in defined] + [(c[0], True) for c in FLOAT_CASES]


@pytest.mark.parametrize("instruction,floats", _instruction_cases())
def test_instruction_matches_the_gpu(instruction, floats, gpu):
    from test_instructions import instruction_ptx
    n = 256
    a = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    b = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    c = rng.integers(0, 2**16, n, dtype=np.uint32)
    float_bits = (rng.standard_normal(n) * 10.0 ** rng.integers(-40, 30, n)).astype(np.float32).view(np.uint32)
    a[::2], c[:64] = float_bits[::2], rng.integers(0, 40, 64)
    b[1::4] = float_bits[1::4]
    a[2:8:2] = np.array([-0.0, 0.0, -0.0], np.float32).view(np.uint32)  # signed zeros, saturated or not
    ptx = instruction_ptx(instruction)
    args = [a, b, c, np.zeros(n, np.uint32)]
    layout = [(0, 8), (8, 8), (16, 8), (24, 8)]
    expect = gpu.run(ptx, "k", (1, 1, 1), (n, 1, 1), 0, layout, args)[3]
    got = _emulate(ptx, args)[3]
    if floats:  # any NaN matches any NaN
        both_nan = np.isnan(got.view(np.float32)) & np.isnan(expect.view(np.float32))
        got, expect = got[~both_nan], expect[~both_nan]
    np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "fma", "sqrt"])
@pytest.mark.parametrize("mode", ["rn", "rz", "rm", "rp"])
@pytest.mark.parametrize("ty", ["f32", "f64"])
def test_rounding_matches_the_gpu(op, mode, ty, gpu):
    from test_instructions import directed_ptx
    dt = np.float32 if ty == "f32" else np.float64
    n = 256
    xs = [(rng.standard_normal(n) * 10.0 ** rng.integers(-5, 5, n)).astype(dt) for _ in range(3)]
    xs.append(np.zeros(n, dt))
    ptx = directed_ptx(op, mode, ty)
    layout = [(0, 8), (8, 8), (16, 8), (24, 8)]
    expect = gpu.run(ptx, "k", (1, 1, 1), (n, 1, 1), 0, layout, xs)[3]
    got = _emulate(ptx, xs)[3]
    np.testing.assert_array_equal(got[~np.isnan(expect)].view(np.uint8), expect[~np.isnan(expect)].view(np.uint8))
    assert np.array_equal(np.isnan(got), np.isnan(expect))
