"""Tensor-core matrix multiplies (nvcuda::wmma, m16n16k16 with f16 inputs) on the emulator against numpy: the
fragment layout is the emulator's own (CUDA leaves it unspecified), the products and sums are what a tensor core
computes (f16 products exact, sums rounded in f32, in some order)."""
from __future__ import annotations

import numpy as np

rng = np.random.default_rng(16)


def test_f32_accumulator_from_global_memory(built, emu):
    mod = emu.load(built.ptx("wmma.cu"))
    n, warps = 64, 2
    a = rng.standard_normal((16 * warps, n)).astype(np.float16)
    b = rng.standard_normal((16, n)).astype(np.float16)
    c = np.zeros((warps * 16, 16), np.float32)
    emu.run(mod, "wmma_f32", (1, 1, 1), (32 * warps, 1, 1), a, b, c, np.int32(n))
    want = 2 * (a.astype(np.float64) @ b.astype(np.float64).T)
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-4)


def test_f16_accumulator_through_shared_memory_and_column_major(built, emu):
    mod = emu.load(built.ptx("wmma.cu"))
    a = rng.uniform(-1, 1, (16, 16)).astype(np.float16)
    b = rng.uniform(-1, 1, (16, 16)).astype(np.float16)
    c0 = rng.uniform(-1, 1, (16, 16)).astype(np.float16)  # read column-major: the matrix is c0.T
    out = np.zeros((16, 16), np.float16)
    emu.run(mod, "wmma_f16_shared", (1, 1, 1), (32, 1, 1), a, b, c0, out)
    want = a.astype(np.float64) @ b.astype(np.float64) + c0.T.astype(np.float64)
    np.testing.assert_allclose(out.T.astype(np.float64), want, rtol=2e-3, atol=2e-3)  # stored column-major
