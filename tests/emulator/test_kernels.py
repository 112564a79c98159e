"""nvcc-compiled CUDA C kernels run on the emulator, checked against numpy: bit-exact for integer
work, within float rounding for float work."""
from __future__ import annotations

import numpy as np
import pytest


rng = np.random.default_rng(1234)
M64 = (1 << 64) - 1


def test_vector_add(built, emu):
    mod = emu.load(built.ptx("vecadd.cu"))
    n = 1000  # not a multiple of the block: the tail block diverges
    a, b = rng.random(n, dtype=np.float32), rng.random(n, dtype=np.float32)
    c = np.zeros(n, np.float32)
    emu.run(mod, "vec_add", (n + 255) // 256, 256, a, b, c, np.int32(n))
    np.testing.assert_array_equal(c, a + b)


def test_vector_add_from_fatbin(built, emu):
    mod = emu.load(built.fatbin("vecadd.cu"))
    n = 300
    a, b = rng.random(n, dtype=np.float32), rng.random(n, dtype=np.float32)
    c = np.zeros(n, np.float32)
    emu.run(mod, "vec_add", 3, 128, a, b, c, np.int32(n))
    np.testing.assert_array_equal(c, a + b)


def test_grid_stride_loop(built, emu):
    mod = emu.load(built.ptx("vecadd.cu"))
    n = 10_000  # 4 blocks of 96 threads: every thread loops, the last trip diverges
    x, y = rng.random(n, dtype=np.float32), rng.random(n, dtype=np.float32)
    expect = (np.float32(2.5) * x + y).astype(np.float32)
    emu.run(mod, "saxpy_grid_stride", 4, 96, np.float32(2.5), x, y, np.int64(n))
    np.testing.assert_allclose(y, expect, rtol=1e-6)


def test_double_precision(built, emu):
    mod = emu.load(built.ptx("vecadd.cu"))
    n = 513
    a, b = rng.random(n), rng.random(n)
    c = np.zeros(n)
    emu.run(mod, "vec_add_f64", 5, 128, a, b, c, np.uint32(n))
    np.testing.assert_allclose(c, a * 2.0 + b / 3.0, rtol=1e-15)


def test_tiled_matmul_with_shared_memory(built, emu):
    mod = emu.load(built.ptx("matmul.cu"))
    n = 64
    A, B = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    C = np.zeros((n, n), np.float32)
    emu.run(mod, "matmul_tiled", (n // 16, n // 16), (16, 16), A, B, C, np.int32(n))
    np.testing.assert_allclose(C, A.astype(np.float64) @ B, rtol=1e-5)


@pytest.mark.parametrize("n,block", [(1000, 256), (4096, 128), (77, 64)])
def test_block_reduction_with_dynamic_shared_memory(built, emu, n, block):
    mod = emu.load(built.ptx("matmul.cu"))
    x = rng.integers(-1000, 1000, n, dtype=np.int32)
    blocks = (n + block - 1) // block
    out = np.zeros(blocks, np.int32)
    emu.run(mod, "block_sum", blocks, block, x, out, np.int32(n), shared=block * 4)
    padded = np.zeros(blocks * block, np.int32)
    padded[:n] = x
    np.testing.assert_array_equal(out, padded.reshape(blocks, block).sum(axis=1))


def _collatz(v: int) -> int:
    steps = 0
    while v != 1 and steps < 1000:
        v = 3 * v + 1 if v & 1 else v >> 1
        steps += 1
    return steps


def test_divergent_loops(built, emu):
    mod = emu.load(built.ptx("control.cu"))
    n = 700
    x = rng.integers(1, 100_000, n, dtype=np.uint32)
    x[:3] = [1, 2, 27]
    out = np.zeros(n, np.uint32)
    emu.run(mod, "collatz_steps", 3, 256, x, out, np.int32(n))
    np.testing.assert_array_equal(out, [_collatz(int(v)) for v in x])


def _branchy(v: int) -> int:
    def i32(x):
        return (x + 2**31) % 2**32 - 2**31
    m = v % 3 if v >= 0 else -((-v) % 3)  # C remainder
    if m == 0:
        r = i32(v * 7)
        for k in range(v & 7):
            r ^= k << 3
    elif m == 1:
        r = -v + (5 if v > 100 else -5)
    else:
        r, k = 0, 0
        while True:
            r = i32(r + k * v)
            k += 1
            if not k < (v & 15):
                break
    return i32(r)


def test_divergent_branches(built, emu):
    mod = emu.load(built.ptx("control.cu"))
    n = 1500
    x = rng.integers(-500, 500, n, dtype=np.int32)
    out = np.zeros(n, np.int32)
    emu.run(mod, "branchy", 6, 256, x, out, np.int32(n))
    np.testing.assert_array_equal(out, [_branchy(int(v)) for v in x])


def _s64(x: int) -> int:
    x &= M64
    return x - (1 << 64) if x >> 63 else x


def _int64_ref(x: int, y: int) -> list[int]:
    ux, uy = x & M64, y & M64
    tdiv = lambda a, b: abs(a) // abs(b) * (1 if (a < 0) == (b < 0) else -1)  # noqa: E731
    return [
        _s64(x + y), _s64(x * y),
        _s64(tdiv(x, y)) if y else 0, _s64(x - tdiv(x, y) * y) if y else 0,
        _s64(ux // uy) if uy else 0,
        _s64((ux * uy) >> 64), _s64((x * y) >> 64),
        _s64(x >> (y & 63)),
        _s64((ux >> (uy & 63)) ^ (x << (y & 63))),
        _s64(abs(x) if x < y else (y if y < 0 else ~y)),
    ]


def test_int64_arithmetic(built, emu):
    mod = emu.load(built.ptx("intops.cu"))
    n = 300
    a = rng.integers(-2**63, 2**63 - 1, n, dtype=np.int64)
    b = rng.integers(-2**63, 2**63 - 1, n, dtype=np.int64)
    a[:40] = rng.integers(-1000, 1000, 40)  # small values take nvcc's 32-bit division shortcut
    b[:60] = rng.integers(-50, 50, 60)
    b[0], a[1], b[1] = 0, -2**63, -1
    out = np.zeros(n * 10, np.int64)
    emu.run(mod, "int64_ops", 2, 256, a, b, out, np.int32(n))
    expect = np.array([_int64_ref(int(x), int(y)) for x, y in zip(a, b)], dtype=object)
    expect[1][2] = out.reshape(n, 10)[1][2]  # INT64_MIN / -1 overflows: undefined in C
    expect[1][3] = out.reshape(n, 10)[1][3]
    np.testing.assert_array_equal(out.reshape(n, 10), expect.astype(np.int64))


def _bit_ref(x: int, y: int) -> list[int]:
    M = 0xFFFFFFFF
    s32 = lambda v: (v & M) - (1 << 32) if v & 0x80000000 else v & M  # noqa: E731
    sel = y & 0x7777
    xb = x | (y << 32)
    perm = 0
    for i in range(4):
        perm |= ((xb >> (8 * ((sel >> (4 * i)) & 7))) & 0xFF) << (8 * i)
    wide = ((x << 32) | y) & M64
    prod = (x * y) & M64
    ffs = (x & -x).bit_length()
    return [
        bin(x).count("1"), 32 - x.bit_length(), int(f"{x:032b}"[::-1], 2),
        (x >> (y & 15)) & ((1 << ((y >> 4) & 15)) - 1), perm, bin(wide).count("1"),
        64 - prod.bit_length(), ffs, ((x & ~y) | (y ^ 0x5A5A5A5A)) & M,
        (x * y) >> 32, ((s32(x) * s32(y)) >> 32) & M, (x // (y | 1) + x % (y | 1)) & M,
    ]


def test_integer_bit_ops(built, emu):
    mod = emu.load(built.ptx("intops.cu"))
    n = 400
    a = rng.integers(0, 2**32, n, dtype=np.uint32)
    b = rng.integers(0, 2**32, n, dtype=np.uint32)
    a[:4] = [0, 1, 0xFFFFFFFF, 0x80000000]
    out = np.zeros(n * 12, np.uint32)
    emu.run(mod, "bit_ops", 2, 256, a, b, out, np.int32(n))
    expect = np.array([_bit_ref(int(x), int(y)) for x, y in zip(a, b)], dtype=np.uint64).astype(np.uint32)
    np.testing.assert_array_equal(out.reshape(n, 12), expect)


def _bfe(x: int, pos: int, ln: int, bits: int, signed: bool) -> int:
    pos, ln = pos & 0xFF, ln & 0xFF
    sbit = 0
    if signed and ln:
        sbit = (x >> min(pos + ln - 1, bits - 1)) & 1
    out = 0
    for i in range(bits):
        bit = (x >> (pos + i)) & 1 if i < ln and pos + i < bits else sbit
        out |= bit << i
    return out


def _bfi(a: int, b: int, pos: int, ln: int, bits: int) -> int:
    out = b
    for i in range(ln):
        if pos + i < bits:
            out = (out & ~(1 << (pos + i))) | (((a >> i) & 1) << (pos + i))
    return out & ((1 << bits) - 1)


def test_bitfield_extract_insert_and_funnel_shift(built, emu):
    mod = emu.load(built.ptx("intops.cu"))
    n = 500
    a = rng.integers(0, 2**32, n, dtype=np.uint32)
    b = rng.integers(0, 2**32, n, dtype=np.uint32)
    out = np.zeros(n * 4, np.uint32)
    out64 = np.zeros(n * 2, np.uint64)
    emu.run(mod, "bitfield_ops", 2, 256, a, b, out, out64, np.int32(n))
    exp, exp64 = [], []
    for x, y in zip(map(int, a), map(int, b)):
        pos, ln = y & 63, (y >> 8) & 63
        wide = (x << 32) | y
        exp.append([_bfe(x, pos, ln, 32, False), _bfe(x, pos, ln, 32, True), _bfi(x, y, pos, ln, 32),
                    ((((y << 32) | x) << (pos & 31)) >> 32) & 0xFFFFFFFF])
        exp64.append([_bfe(wide, pos, ln, 64, False), _bfe(wide, pos, ln, 64, True)])
    np.testing.assert_array_equal(out.reshape(n, 4), np.array(exp, dtype=np.uint64).astype(np.uint32))
    np.testing.assert_array_equal(out64.reshape(n, 2), np.array(exp64, dtype=np.uint64))


def test_conversions(built, emu):
    mod = emu.load(built.ptx("convert.cu"))
    n = 256
    f = (rng.standard_normal(n) * 1e3).astype(np.float32)
    f[:6] = [2.5, -2.5, 3.5, np.nan, 1e20, -1e20]  # round-half-even, NaN and saturation
    d = rng.standard_normal(n) * 1e6
    l = rng.integers(-2**62, 2**62, n, dtype=np.int64)
    oi, of, od = np.zeros(n * 8, np.int32), np.zeros(n * 4, np.float32), np.zeros(n * 4)
    emu.run(mod, "conversions", 1, 256, f, d, l, oi, of, od, np.int32(n))
    with np.errstate(invalid="ignore"):
        fin = np.where(np.isnan(f), 0, f).astype(np.float64)
        sat_i32 = lambda v: np.clip(v, -2**31, 2**31 - 1).astype(np.int32)  # noqa: E731
        expect_i = np.stack([
            sat_i32(np.trunc(fin)),
            np.clip(np.trunc(np.abs(fin)), 0, 2**32 - 1).astype(np.uint32).view(np.int32),
            sat_i32(np.trunc(d)), l.astype(np.int16).astype(np.int32), l.astype(np.int8).astype(np.int32),
            (l >> 3).astype(np.uint8).astype(np.int32), sat_i32(np.rint(fin)), sat_i32(np.trunc(d)),
        ], axis=1)
        expect_f = np.stack([
            d.astype(np.float32), l.astype(np.float32), l.astype(np.uint32).astype(np.float32),
            np.fmin(f, d.astype(np.float32)) + np.fmax(f, np.float32(-1)) - np.abs(f),
        ], axis=1)
        expect_d = np.stack([f.astype(np.float64), l.astype(np.float64), l.astype(np.uint64).astype(np.float64),
                             d * 2.0 + f.astype(np.float64)], axis=1)
    np.testing.assert_array_equal(oi.reshape(n, 8), expect_i)
    np.testing.assert_array_equal(of.reshape(n, 4)[:, :3], expect_f[:, :3])
    np.testing.assert_allclose(of.reshape(n, 4)[6:, 3], expect_f[6:, 3], rtol=1e-6)
    np.testing.assert_allclose(od.reshape(n, 4), expect_d, rtol=1e-15)


def _shfl_down_sum(v: np.ndarray) -> np.ndarray:
    """Per lane: `for (off = 16; off; off >>= 1) s += shfl_down(s, off)` (a lane past 31 reads itself)."""
    lanes = np.arange(32)
    total = v.astype(np.int64)
    for off in (16, 8, 4, 2, 1):
        src = lanes + off
        total = total + np.where(src <= 31, total[np.minimum(src, 31)], total)
    return total


def _warp_ref(v: np.ndarray) -> np.ndarray:
    """The warp_ops kernel for one full warp of 32 values, lane by lane."""
    lanes = np.arange(32)
    total = _shfl_down_sum(v)
    seg = np.where(lanes % 8 != 7, v[np.minimum(lanes + 1, 31)], v)
    up = np.where(lanes >= 3, v[np.maximum(lanes - 3, 0)], v)
    ballot = sum(1 << int(k) for k in lanes if v[k] > 0)
    active = np.where(lanes % 3 == 0, sum(1 << k for k in range(0, 32, 3)), 0)
    cols = [total, np.full(32, v.max()), np.full(32, v[5]), up, seg, np.full(32, ballot),
            np.full(32, int((v > 90).any())), np.full(32, int((v > -90).all())), active,
            np.full(32, int(v.astype(np.int64).sum()) % 2**32)]
    return (np.stack(cols, axis=1) % 2**32).astype(np.uint32).view(np.int32)


def test_warp_primitives(built, emu):
    mod = emu.load(built.ptx("warp.cu"))
    blocks, block = 3, 96
    n = blocks * block - 40  # the tail lanes read 0 but still take part in the warp operations
    x = rng.integers(-100, 100, n, dtype=np.int32)
    out = np.zeros(n * 10, np.int32)
    emu.run(mod, "warp_ops", blocks, block, x, out, np.int32(n))
    padded = np.zeros(blocks * block, np.int32)
    padded[:n] = x
    expect = np.concatenate([_warp_ref(w) for w in padded.reshape(-1, 32)])[:n]
    np.testing.assert_array_equal(out.reshape(n, 10), expect)


def _mask(sel: np.ndarray) -> int:
    return int(np.sum(np.left_shift(1, np.flatnonzero(sel)), dtype=np.int64))


def _match_ref(v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The warp_match kernel for one full warp, lane by lane."""
    u = v.view(np.uint32)
    odd = np.arange(32) % 2 == 1
    uniform32, uniform64 = bool((v == v[0]).all()), bool((w == w[0]).all())
    rows = []
    for lane in range(32):
        rows.append([
            _mask(v == v[lane]), _mask(w == w[lane]), 0xFFFFFFFF * uniform32, 0xFFFFFFFF * uniform64,
            uniform32 | uniform64 << 1, _mask(odd & ((v & 3) == (v[lane] & 3))) if lane % 2 else 0, u[lane ^ 1],
            int(v.min()) % 2**32, int(u.max()), int(np.bitwise_and.reduce(u)), int(np.bitwise_or.reduce(u)),
            int(np.bitwise_xor.reduce(u)), int((v > 0).all() or (v <= 0).all()) | 2])
    return np.array(rows, np.uint64).astype(np.uint32)


def test_match_warp_reductions_and_syncwarp(built, emu):
    mod = emu.load(built.ptx("warp.cu"))
    blocks, block = 3, 96
    n = blocks * block - 40
    x = rng.integers(-3, 4, n, dtype=np.int32)
    w = rng.integers(0, 3, n, dtype=np.int64) << 33  # equal low words: a 64-bit match must see the high ones
    x[32:64] = 5  # one warp agrees on everything
    w[64:96] = 7 << 40
    out = np.zeros(n * 13, np.uint32)
    emu.run(mod, "warp_match", blocks, block, x, w, out, np.int32(n))
    pv, pw = np.zeros(blocks * block, np.int32), np.zeros(blocks * block, np.int64)
    pv[:n], pw[:n] = x, w
    expect = np.concatenate([_match_ref(a, b) for a, b in zip(pv.reshape(-1, 32), pw.reshape(-1, 32))])[:n]
    np.testing.assert_array_equal(out.reshape(n, 13), expect)


def _cg_ref(v: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cg_reduce kernel for one full warp: int columns, and the float tile sum as cg::reduce
    computes it (a butterfly: every lane adds its xor partner's value, masks 16 down to 1)."""
    lanes = np.arange(32)
    pos = v > 0
    eighths = np.repeat(v.reshape(4, 8).sum(axis=1), 8)
    rank = np.where(pos, np.cumsum(pos) - 1, -1)
    cols = [_shfl_down_sum(v), np.full(32, v.sum()), np.full(32, v.max()), np.cumsum(v), eighths,
            v[(lanes & ~7) | ((lanes + 1) % 8)], np.full(32, _mask(pos)), rank, np.where(pos, pos.sum(), 0)]
    fsum = f.copy()
    for m in (16, 8, 4, 2, 1):
        fsum = fsum + fsum[lanes ^ m]
    return (np.stack(cols, axis=1) % 2**32).astype(np.uint32).view(np.int32), fsum


def test_cooperative_groups(built, emu):
    mod = emu.load(built.ptx("coop.cu"))
    blocks, block = 3, 128
    n = blocks * block - 45
    x = rng.integers(-1000, 1000, n, dtype=np.int32)
    f = rng.standard_normal(n).astype(np.float32)
    total, out, fout = np.zeros(1, np.int32), np.zeros(n * 9, np.int32), np.zeros(n, np.float32)
    emu.run(mod, "cg_reduce", blocks, block, x, f, total, out, fout, np.int32(n))
    assert total[0] == x.sum()
    pv, pf = np.zeros(blocks * block, np.int32), np.zeros(blocks * block, np.float32)
    pv[:n], pf[:n] = x, f
    refs = [_cg_ref(a, b) for a, b in zip(pv.reshape(-1, 32), pf.reshape(-1, 32))]
    np.testing.assert_array_equal(out.reshape(n, 9), np.concatenate([r[0] for r in refs])[:n])
    np.testing.assert_array_equal(fout, np.concatenate([r[1] for r in refs])[:n])


def _mix(a: int, b: int) -> int:
    r = ((a * 31 + b + 2**31) % 2**32) - 2**31
    return r ^ 0x55 if r & 1 else r >> 1


def test_device_function_calls(built, emu):
    mod = emu.load(built.ptx("calls.cu"))
    n = 200
    p = rng.random(4, dtype=np.float32)
    outf, outi = np.zeros(n, np.float32), np.zeros(2 * n, np.int32)
    emu.run(mod, "calls", 2, 128, p, outf, outi, np.int32(n))
    expect_f, expect_i = [], []
    for i in range(n):
        acc = np.float32(0)
        for k in range(i % 4 + 1):
            acc = np.float32(acc + p[k] * np.float32(0.5))
        expect_f.append(np.float32(acc + np.float32(_mix(i, 3))))
        v = _mix(i, i + 1) if i % 3 else -i
        expect_i += [v, _mix(v, i)]
    np.testing.assert_allclose(outf, expect_f, rtol=1e-6)
    np.testing.assert_array_equal(outi, expect_i)


def test_printf(built, emu):
    mod = emu.load(built.ptx("calls.cu"))
    printed: list[str] = []
    mod.functions["hello"].output = printed.append
    emu.run(mod, "hello", 1, 4, np.int32(3))
    assert "".join(printed) == (
        "thread 0 of 4:  0.00 ok 0 A|0   |\n"
        "thread 1 of 4:  0.50 ok -7 B|11  |\n"
        "thread 2 of 4:  1.00 ok -14 C|22  |\n"
    )


def _fma_exact(a: np.float32, b: np.float32, c: np.float32) -> np.float32:
    from fractions import Fraction
    x = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    f = np.float32(float(x))
    candidates = [np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf))]
    return min(candidates, key=lambda y: (abs(Fraction(float(y)) - x), int(np.array(y).view(np.uint32)) & 1))


def test_fma_f32_rounds_once(built, emu):
    mod = emu.load(built.ptx("convert.cu"))
    n = 500
    a = (1 + rng.integers(0, 2**23, n) * 2.0**-23).astype(np.float32)
    b = (1 + rng.integers(0, 2**23, n) * 2.0**-23).astype(np.float32)
    c = (-rng.random(n) * 4).astype(np.float32)
    a[0] = b[0] = np.float32(1 + 2**-12)  # a*b = 1 + 2^-11 + 2^-24: a float64 sum would round twice
    c[0] = np.float32(2.0**-60)
    out = np.zeros(n, np.float32)
    emu.run(mod, "fma_f32", 2, 256, a, b, c, out, np.int32(n))
    np.testing.assert_array_equal(out, [_fma_exact(x, y, z) for x, y, z in zip(a, b, c)])


def test_vector_loads_and_half_conversion(built, emu):
    mod = emu.load(built.ptx("convert.cu"))
    n = 100
    v = rng.standard_normal((n, 4)).astype(np.float32)
    d = rng.standard_normal((n, 2))
    out, outd, h = np.zeros((n, 4), np.float32), np.zeros((n, 2)), np.zeros(n, np.uint16)
    emu.run(mod, "vectors", 1, 128, v, d, out, outd, h, np.int32(n))
    np.testing.assert_array_equal(out, np.stack([v[:, 3], v[:, 2] * 2, v[:, 1] + v[:, 0], -v[:, 0]], axis=1))
    np.testing.assert_array_equal(outd, np.stack([d[:, 1], d[:, 0] - d[:, 1]], axis=1))
    np.testing.assert_array_equal(h, v[:, 0].astype(np.float16).view(np.uint16))


def _dp4a(x: int, y: int, z: int, signed: bool) -> int:
    def b(v, k):
        byte = (v >> (8 * k)) & 0xFF
        return byte - 256 if signed and byte >= 128 else byte
    total = sum(b(x, k) * b(y, k) for k in range(4)) + z
    return (total + 2**31) % 2**32 - 2**31


def test_block_votes_and_dp4a(built, emu):
    mod = emu.load(built.ptx("warp.cu"))
    blocks, block = 4, 128
    n = blocks * block - 50
    x = rng.integers(-100, 100, n, dtype=np.int32)
    out = np.zeros(n * 5, np.int32)
    emu.run(mod, "block_votes", blocks, block, x, out, np.int32(n))
    padded = np.zeros(blocks * block, np.int32)
    padded[:n] = x
    got = out.reshape(n, 5)
    for i in range(n):
        blk = padded[i // block * block:(i // block + 1) * block]
        v = int(x[i])
        assert list(got[i, :3]) == [(blk > 0).sum(), int((blk > -50).all()), int((blk > 95).any())]
        assert got[i, 3] == _dp4a(v & 0xFFFFFFFF, (v * 3 + 1) & 0xFFFFFFFF, 7, True)
        assert got[i, 4] == _dp4a(v & 0xFFFFFFFF, 0x01020304, 5, False)


def test_fma_f64_rounds_once(built, emu):
    from fractions import Fraction
    mod = emu.load(built.ptx("convert.cu"))
    n = 400
    a = rng.standard_normal(n) * 10.0 ** rng.integers(-20, 20, n)
    b = rng.standard_normal(n) * 10.0 ** rng.integers(-20, 20, n)
    c = -(a * b) * (1 + rng.standard_normal(n) * 1e-10)  # cancellation: the product's low bits matter
    # subnormal products and results, and a factor too big for the Veltkamp split
    a[:3], b[:3], c[:3] = [1e-160, -3e-170, 1e300], [3e-160, 7e-150, 1e8], [1e-310, 2e-318, -5e307]
    out = np.zeros(n)
    emu.run(mod, "fma_f64", 2, 256, a, b, c, out, np.int32(n))
    expect = [float(Fraction(x) * Fraction(y) + Fraction(z)) for x, y, z in zip(a, b, c)]
    np.testing.assert_array_equal(out, expect)


def _bf16(x) -> np.ndarray:
    """float32 -> bfloat16 bits, round to nearest even (the reference for the emulator's own)."""
    from fractions import Fraction
    out = []
    for v in np.asarray(x, np.float32).ravel():
        bits = int(np.float32(v).view(np.uint32))
        lo, hi = bits >> 16, (bits >> 16) + 1
        f = lambda b: Fraction(float(np.uint32(b << 16).view(np.float32)))  # noqa: E731
        d_lo, d_hi = abs(Fraction(float(v)) - f(lo)), abs(f(hi) - Fraction(float(v)))
        out.append(lo if d_lo < d_hi or (d_lo == d_hi and lo % 2 == 0) else hi)
    return np.array(out, np.uint16)


def _bf16_value(bits) -> np.ndarray:
    return (np.asarray(bits, np.uint32) << 16).view(np.float32)


def test_half2_and_bfloat16(built, emu):
    mod = emu.load(built.ptx("halves.cu"))
    n = 200
    a = rng.standard_normal((n, 2)).astype(np.float16)
    b = rng.standard_normal((n, 2)).astype(np.float16)
    f = (rng.standard_normal(n) * 3).astype(np.float32)
    out = np.zeros((3 * n, 2), np.float16)
    bo = np.zeros(2 * n, np.uint16)
    b2 = np.zeros((n, 2), np.uint16)
    emu.run(mod, "halves", 1, 256, a, b, out, f, bo, b2, np.int32(n))
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    prod = (b32 * b32).astype(np.float16).astype(np.float32)
    inner = (a32 + prod).astype(np.float16).astype(np.float64)
    np.testing.assert_array_equal(out[:n], (a32.astype(np.float64) * b32 + inner).astype(np.float16))
    np.testing.assert_array_equal(out[n:2 * n], np.fmax((a32 - b32).astype(np.float16), -b))
    np.testing.assert_array_equal(out[2 * n:], np.stack([f, f * np.float32(3)], axis=1).astype(np.float16))
    p = _bf16(f)
    q = _bf16(f * np.float32(0.37))
    pq = _bf16(_bf16_value(p) * _bf16_value(q))
    np.testing.assert_array_equal(bo[:n], _bf16(_bf16_value(p) + _bf16_value(pq)))
    u = _bf16_value(np.stack([_bf16(f), _bf16(np.full(n, 2.0, np.float32))], axis=1))
    np.testing.assert_array_equal(b2, _bf16(u.astype(np.float64) * u + u).reshape(n, 2))
    back = _bf16_value(bo[:n]) + a[:, 0].astype(np.float32)
    np.testing.assert_array_equal(bo[n:], (back.view(np.uint32) >> 16).astype(np.uint16))


def _f16_directed(f: np.ndarray, mode: str) -> np.ndarray:
    """float32 -> float16 rounded toward zero (rz), down (rm) or up (rp)."""
    h = f.astype(np.float16)
    exact, back = f.astype(np.float64), h.astype(np.float64)
    down = np.nextafter(h, np.float16(-np.inf))
    up = np.nextafter(h, np.float16(np.inf))
    if mode == "rz":
        mode = np.where(f >= 0, "rm", "rp")
    return np.where((mode == "rm") & (back > exact), down, np.where((mode == "rp") & (back < exact), up, h))


def test_half_scalar_arithmetic_and_atomics(built, emu):
    """Scalar __half: each operation rounds once to half (so numpy's float64 result rounded to
    float16 is the reference, bit for bit: float64 holds these sums and products exactly, and a
    quotient or root is rounded correctly twice over 53 and 11 bits); atomics on half, half2, bf16."""
    mod = emu.load(built.ptx("halves.cu"))
    n = 200
    a = (rng.standard_normal(n) * 4).astype(np.float16)
    b = (rng.standard_normal(n) * 4).astype(np.float16)
    f = (rng.standard_normal(n) * 3).astype(np.float32)
    a[0], b[1], b[2] = 0, a[1], 0  # x/x is NaN for 0; x == y; x/0
    out, flags = np.zeros((n, 12), np.float16), np.zeros(n, np.uint16)
    acc2, acc, accb = np.zeros(2, np.float16), np.zeros(1, np.float16), np.zeros(1, np.uint16)
    emu.run(mod, "half_scalar", 2, 128, a, b, f, out, flags, acc2, acc, accb, np.int32(n))
    x, y = a.astype(np.float64), b.astype(np.float64)
    h = np.float16
    with np.errstate(divide="ignore", invalid="ignore"):
        expect = np.stack([
            (x + y).astype(h), (x - y).astype(h), (x * y).astype(h), (x / y).astype(h), (x * y + 0.5).astype(h),
            np.sqrt(np.abs(x)).astype(h), _f16_directed(f, "rz"), _f16_directed(f, "rm"), _f16_directed(f, "rp"),
            np.trunc(f * np.float32(1000)).astype(np.float64).astype(h), np.clip((x + y).astype(h), 0, 1),
            np.fmax(a, -b)], axis=1)
        flag = ((x < y) | ((x >= y) << 1) | (np.isnan(x / x) << 2) | (np.trunc(x).astype(np.int64) << 3)) & 0xFFFF
    np.testing.assert_array_equal(out.view(np.uint16), expect.view(np.uint16))
    np.testing.assert_array_equal(flags, flag)
    np.testing.assert_array_equal(acc2, [n, n * 0.25])  # exact partial sums: any order gives these
    assert acc[0] == n * 0.5 and _bf16_value(accb)[0] == 2.0 * n


def test_device_malloc_and_assert(built, emu):
    from qcuda.protocol.errors import CudaError, Error
    mod = emu.load(built.ptx("heap.cu"))
    used = emu.memory.used
    out = np.zeros(64, np.int32)
    emu.run(mod, "heap", 1, 64, out, np.int32(10))
    np.testing.assert_array_equal(out, np.arange(64) * 45)
    assert emu.memory.used == used  # every thread freed its block
    printed: list[str] = []
    mod.functions["heap"].output = printed.append
    with pytest.raises(CudaError) as e:
        emu.run(mod, "heap", 1, 128, np.zeros(128, np.int32), np.int32(2))
    assert e.value.code == Error.cudaErrorAssert
    assert "thread: [100,0,0] Assertion `i < 100` failed." in "".join(printed)


def test_tiles_wider_than_a_warp(built, emu):
    """tiled_partition<64>/<128> sync through the block's reserved shared memory, as on a GPU."""
    mod = emu.load(built.ptx("coop.cu"))
    blocks, block = 2, 256
    out64, out128 = np.zeros(blocks * block, np.int32), np.zeros(blocks * block, np.int32)
    emu.run(mod, "wide_tiles", blocks, block, out64, out128)
    t = np.tile(np.arange(block), blocks)
    for width, out in ((64, out64), (128, out128)):
        rank = t % width
        partner = t - rank + (width - 1 - rank)
        np.testing.assert_array_equal(out, partner * 7 + width + 1000 * (t // width))
