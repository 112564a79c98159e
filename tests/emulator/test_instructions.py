"""Single instructions in hand-written PTX, for forms nvcc rarely emits from CUDA C, checked
lane by lane against Python."""
from __future__ import annotations

import numpy as np
import pytest

from qcuda.device.backends.emulated.memory import DeviceMemory
from qcuda.device.backends.emulated.ptx import Module

M32 = 0xFFFFFFFF
rng = np.random.default_rng(7)


def s32(v: int) -> int:
    v &= M32
    return v - (1 << 32) if v >> 31 else v


def instruction_ptx(instruction: str) -> bytes:
    """A kernel k(a, b, c, d): each thread loads a[i], b[i], c[i] into %r1..%r3 (and %f1, %f2),
    runs `instruction`, and stores %r4 to d[i]."""
    return f"""
.version 8.0
.target sm_90
.address_size 64
.visible .entry k(.param .u64 pa, .param .u64 pb, .param .u64 pc, .param .u64 pd)
{{
    .reg .pred %p<4>;
    .reg .b32 %r<8>;
    .reg .f32 %f<4>;
    .reg .b64 %rd<12>;
    ld.param.u64 %rd1, [pa];
    ld.param.u64 %rd2, [pb];
    ld.param.u64 %rd3, [pc];
    ld.param.u64 %rd4, [pd];
    mov.u32 %r5, %tid.x;
    mul.wide.u32 %rd5, %r5, 4;
    add.s64 %rd6, %rd1, %rd5;
    add.s64 %rd7, %rd2, %rd5;
    add.s64 %rd8, %rd3, %rd5;
    add.s64 %rd9, %rd4, %rd5;
    ld.global.u32 %r1, [%rd6];
    ld.global.u32 %r2, [%rd7];
    ld.global.u32 %r3, [%rd8];
    mov.b32 %f1, %r1;
    mov.b32 %f2, %r2;
    mov.u32 %r4, 0;
    {instruction}
    st.global.u32 [%rd9], %r4;
    ret;
}}
""".encode()


def _run(instruction: str, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    ptx = instruction_ptx(instruction)
    memory = DeviceMemory(1 << 24)
    k = Module.load(ptx, memory).functions["k"]
    ptrs = []
    for arr in (a, b, c, np.zeros_like(a)):
        p = memory.alloc(arr.nbytes)
        memory.write(p, arr.astype(np.uint32).tobytes())
        ptrs.append(p)
    k.launch((1, 1, 1), (a.size, 1, 1), 0, np.array(ptrs, np.uint64).tobytes())
    return np.frombuffer(memory.read(ptrs[3], a.nbytes), np.uint32).copy()


def _lop3(x, y, z, lut):
    return sum(((lut >> ((((x >> i) & 1) << 2) | (((y >> i) & 1) << 1) | ((z >> i) & 1))) & 1) << i for i in range(32))


CASES = [
    ("mul24.lo.u32 %r4, %r1, %r2;", lambda x, y, z: ((x & 0xFFFFFF) * (y & 0xFFFFFF)) & M32),
    ("mul24.hi.s32 %r4, %r1, %r2;",
     lambda x, y, z: ((s32(x << 8) >> 8) * (s32(y << 8) >> 8) >> 16) & M32),
    ("mad24.lo.s32 %r4, %r1, %r2, %r3;",
     lambda x, y, z: ((s32(x << 8) >> 8) * (s32(y << 8) >> 8) + s32(z)) & M32),
    ("sad.u32 %r4, %r1, %r2, %r3;", lambda x, y, z: (abs(x - y) + z) & M32),
    ("sad.s32 %r4, %r1, %r2, %r3;", lambda x, y, z: (abs(s32(x) - s32(y)) + z) & M32),
    ("lop3.b32 %r4, %r1, %r2, %r3, 0x96;", lambda x, y, z: x ^ y ^ z),
    ("lop3.b32 %r4, %r1, %r2, %r3, 0xE8;", lambda x, y, z: _lop3(x, y, z, 0xE8)),
    ("shf.r.clamp.b32 %r4, %r1, %r2, %r3;",
     lambda x, y, z: ((((y << 32) | x) >> min(z, 32)) & M32)),
    ("shf.l.clamp.b32 %r4, %r1, %r2, %r3;",
     lambda x, y, z: ((((y << 32) | x) << min(z, 32)) >> 32) & M32),
    ("bfind.s32 %r4, %r1;",
     lambda x, y, z: ((~s32(x) if s32(x) < 0 else s32(x)).bit_length() - 1) & M32),
    ("bfind.u32 %r4, %r1;", lambda x, y, z: (x.bit_length() - 1) & M32),
    ("cnot.b32 %r4, %r1;", lambda x, y, z: int(x == 0)),
    ("min.s32 %r4, %r1, %r2;", lambda x, y, z: min(s32(x), s32(y)) & M32),
    ("max.u32 %r4, %r1, %r2;", lambda x, y, z: max(x, y)),
    ("min.relu.s32 %r4, %r1, %r2;", lambda x, y, z: max(min(s32(x), s32(y)), 0)),
    ("add.sat.s32 %r4, %r1, %r2;", lambda x, y, z: max(min(s32(x) + s32(y), 2**31 - 1), -2**31) & M32),
    ("shr.s32 %r4, %r1, %r2;", lambda x, y, z: (s32(x) >> min(y, 31)) & M32),
    ("shl.b32 %r4, %r1, %r2;", lambda x, y, z: (x << y) & M32 if y < 32 else 0),
    ("rem.s32 %r4, %r1, %r2;",
     lambda x, y, z: (abs(s32(x)) % abs(s32(y)) * (-1 if s32(x) < 0 else 1)) & M32 if s32(y) else x),
    ("setp.lt.s32 %p1|%p2, %r1, %r2;\n    selp.u32 %r4, 1, 2, %p2;",
     lambda x, y, z: 2 if s32(x) < s32(y) else 1),
    ("setp.lt.u32 %p3, %r3, 5;\n    setp.ne.and.u32 %p1, %r1, %r2, !%p3;\n    selp.u32 %r4, 7, 9, %p1;",
     lambda x, y, z: 7 if (x != y and not z < 5) else 9),
    ("set.gt.u32.s32 %r4, %r1, %r2;", lambda x, y, z: M32 if s32(x) > s32(y) else 0),
    ("@%p1 mov.u32 %r4, 5;", lambda x, y, z: 0),  # %p1 is never set: false in every thread
    ("prmt.b32 %r4, %r1, %r2, %r3;", None),
    *[(f"prmt.b32.{mode} %r4, %r1, %r2, %r3;", lambda x, y, z, t=table: sum(
        (((x | (y << 32)) >> (8 * t[z & 3][i])) & 0xFF) << (8 * i) for i in range(4)))
      for mode, table in [("f4e", ((0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (3, 4, 5, 6))),
                          ("b4e", ((0, 7, 6, 5), (1, 0, 7, 6), (2, 1, 0, 7), (3, 2, 1, 0))),
                          ("ecl", ((0, 1, 2, 3), (1, 1, 2, 3), (2, 2, 2, 3), (3, 3, 3, 3))),
                          ("ecr", ((0, 0, 0, 0), (0, 1, 1, 1), (0, 1, 2, 2), (0, 1, 2, 3)))]],
    # carry chains (multi-word arithmetic): the flag passes from a .cc instruction to addc/subc/madc
    ("add.cc.u32 %r6, %r1, %r2;\n    addc.u32 %r4, %r3, 7;", lambda x, y, z: (z + 7 + ((x + y) >> 32)) & M32),
    ("add.cc.u32 %r6, %r1, %r2;\n    addc.cc.u32 %r7, %r1, %r3;\n    addc.u32 %r4, 0, 0;",
     lambda x, y, z: (x + z + ((x + y) >> 32)) >> 32),
    ("sub.cc.u32 %r6, %r1, %r2;\n    subc.u32 %r4, %r3, 0;", lambda x, y, z: (z - (x < y)) & M32),
    ("sub.cc.s32 %r6, %r1, %r2;\n    subc.cc.u32 %r7, %r3, %r1;\n    subc.u32 %r4, 0, 0;",
     lambda x, y, z: -int(z < x + (x < y)) & M32),
    ("mad.lo.cc.u32 %r6, %r1, %r2, %r3;\n    madc.hi.u32 %r4, %r1, %r2, 0;",
     lambda x, y, z: ((x * y >> 32) + (((x * y & M32) + z) >> 32)) & M32),
    ("mad.hi.cc.s32 %r6, %r1, %r2, %r3;\n    madc.lo.cc.u32 %r7, %r1, %r2, %r1;\n    addc.u32 %r4, 0, 0;",
     lambda x, y, z: ((x * y & M32) + x + (((s32(x) * s32(y) >> 32) & M32) + z >> 32)) >> 32),
    ("brev.b32 %r4, %r1;", lambda x, y, z: int(f"{x:032b}"[::-1], 2)),
    ("popc.b32 %r4, %r1;", lambda x, y, z: bin(x).count("1")),
]


@pytest.mark.parametrize("instruction,ref", CASES, ids=[c[0].split()[0] + str(i) for i, c in enumerate(CASES)])
def test_integer_instruction(instruction, ref):
    n = 128
    a = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    b = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    c = rng.integers(0, 40, n, dtype=np.uint32)
    a[:4], b[:4] = [0, 1, M32, 0x80000000], [0, 33, 7, 31]
    b[4:8] = [1, 0, 0, 0]
    if ref is None:  # prmt: bytes picked by selector nibbles, sign-replicated when bit 3 is set
        c = rng.integers(0, 2**16, n, dtype=np.uint32)

        def ref(x, y, z):
            both, out = x | (y << 32), 0
            for i in range(4):
                sel = (z >> (4 * i)) & 0xF
                byte = (both >> (8 * (sel & 7))) & 0xFF
                out |= ((0xFF if byte & 0x80 else 0) if sel & 8 else byte) << (8 * i)
            return out
    got = _run(instruction, a, b, c)
    expect = np.array([ref(int(x), int(y), int(z)) for x, y, z in zip(a, b, c)], dtype=np.uint64)
    np.testing.assert_array_equal(got, expect.astype(np.uint32))


def _ftz(x) -> np.float32:
    x = np.float32(x)
    return np.copysign(np.float32(0), x) if abs(x) < np.finfo(np.float32).tiny else x


FLOAT_CASES = [
    ("mul.ftz.f32 %f3, %f1, %f2;\n    mov.b32 %r4, %f3;", lambda f, g: _ftz(_ftz(f) * _ftz(g))),
    ("mul.f32 %f3, %f1, %f2;\n    mov.b32 %r4, %f3;", lambda f, g: np.float32(f) * np.float32(g)),
    ("setp.eq.ftz.f32 %p1, %f1, 0f00000000;\n    selp.u32 %r4, 1, 0, %p1;", lambda f, g: int(_ftz(f) == 0)),
    ("testp.finite.f32 %p1, %f1;\n    selp.u32 %r4, 1, 0, %p1;", lambda f, g: int(np.isfinite(f))),
    ("testp.subnormal.f32 %p1, %f1;\n    selp.u32 %r4, 1, 0, %p1;",
     lambda f, g: int(f != 0 and abs(f) < np.finfo(np.float32).tiny)),
    ("copysign.f32 %f3, %f1, %f2;\n    mov.b32 %r4, %f3;", lambda f, g: np.copysign(g, f)),
    ("setp.neu.f32 %p1, %f1, %f2;\n    selp.u32 %r4, 1, 0, %p1;", lambda f, g: int(not f == g)),
    ("setp.ne.f32 %p1, %f1, %f2;\n    selp.u32 %r4, 1, 0, %p1;", lambda f, g: int(f < g or f > g)),
    ("setp.gtu.f32 %p1, %f1, %f2;\n    selp.u32 %r4, 1, 0, %p1;", lambda f, g: int(not f <= g)),
    ("max.f32 %f3, %f1, %f2;\n    mov.b32 %r4, %f3;", lambda f, g: np.fmax(f, g)),
    ("cvt.rni.f32.f32 %f3, %f1;\n    mov.b32 %r4, %f3;", lambda f, g: np.rint(f)),
    ("cvt.rzi.s32.f32 %r4, %f1;", lambda f, g: 0 if np.isnan(f) else int(np.clip(np.trunc(float(f)), -2**31, 2**31 - 1))),
    ("cvt.rmi.u32.f32 %r4, %f1;", lambda f, g: 0 if np.isnan(f) else int(np.clip(np.floor(float(f)), 0, 2**32 - 1))),
    ("cvt.sat.f32.f32 %f3, %f1;\n    mov.b32 %r4, %f3;", lambda f, g: _sat(f)),
    ("add.sat.f32 %f3, %f1, %f2;\n    mov.b32 %r4, %f3;", lambda f, g: _sat(f + g)),
    ("mul.ftz.sat.f32 %f3, %f1, %f2;\n    mov.b32 %r4, %f3;", lambda f, g: _sat(_ftz(_ftz(f) * _ftz(g)))),
    # PTX: atom.add.f32 flushes subnormal inputs (the memory operand too) and results
    ("atom.global.add.f32 %f3, [%rd7], %f1;\n    ld.global.f32 %f2, [%rd7];\n    mov.b32 %r4, %f2;",
     lambda f, g: _ftz(_ftz(f) + _ftz(g))),
    ("add.rz.sat.f32 %f3, %f1, %f2;\n    mov.b32 %r4, %f3;",
     lambda f, g: _sat(_directed_ref("add", "rz", [f, g], np.float32) if np.isfinite(f + g) else f + g)),
    ("fma.rn.sat.f32 %f3, %f1, %f2, %f2;\n    mov.b32 %r4, %f3;",
     lambda f, g: _sat(np.float32(np.float64(f) * np.float64(g) + np.float64(g)))),  # exact product: one rounding
]


def _sat(x) -> np.float32:
    """.sat: clamped to [0, 1], NaN and -0 to +0 (what the H100 gives)."""
    return np.float32(0.0) if np.isnan(x) or x == 0 else np.clip(np.float32(x), np.float32(0), np.float32(1))


@pytest.mark.parametrize("instruction,ref", FLOAT_CASES,
                         ids=[c[0].split()[0] + str(i) for i, c in enumerate(FLOAT_CASES)])
def test_float_instruction(instruction, ref):
    n = 96
    f = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 12, n)).astype(np.float32)
    g = (rng.standard_normal(n) * 100).astype(np.float32)
    f[:10] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, 2.5, -3.5, 1e-20, -3e-39]
    g[:10] = [1.0, np.nan, 2.0, -0.0, 0.0, -1.0, 2.5, np.nan, 1e-20, 1.0]
    f[10:12], g[10:12] = [1e-39, 2e-38], [1e-39, -1.5e-38]  # subnormal sums of subnormal and of normal floats
    got = _run(instruction, f.view(np.uint32), g.view(np.uint32), np.zeros(n, np.uint32))
    with np.errstate(invalid="ignore"):
        expect = [ref(x, y) for x, y in zip(f, g)]
    expect = np.array([np.float32(e).view(np.uint32) if isinstance(e, (float, np.floating)) else e % 2**32
                       for e in expect], dtype=np.uint64).astype(np.uint32)
    np.testing.assert_array_equal(got, expect)


def _directed_ref(op: str, mode: str, xs: list[float], dt) -> float:
    """The exactly rounded result from rational arithmetic."""
    from fractions import Fraction
    import math
    q = [Fraction(float(v)) for v in xs]
    if op == "sqrt":
        if q[0] < 0:
            return math.nan
        exact = Fraction(math.sqrt(float(q[0])))  # refined below by bisection on the float grid
    else:
        exact = {"add": lambda: q[0] + q[1], "sub": lambda: q[0] - q[1], "mul": lambda: q[0] * q[1],
                 "div": lambda: q[0] / q[1], "fma": lambda: q[0] * q[1] + q[2]}[op]()
    f = dt(float(exact))
    lo, hi = f, f
    down, up = np.nextafter(f, dt(-np.inf)), np.nextafter(f, dt(np.inf))
    cmp = (lambda y: Fraction(float(y)) ** 2 - q[0]) if op == "sqrt" else (lambda y: Fraction(float(y)) - exact)
    if cmp(f) > 0:
        lo, hi = down, f
    elif cmp(f) < 0:
        lo, hi = f, up
    else:
        return float(f)
    if mode == "rm":
        return float(lo)
    if mode == "rp":
        return float(hi)
    return float(lo if hi > 0 else hi)  # rz: toward zero


def directed_ptx(op: str, mode: str, ty: str) -> bytes:
    """A kernel k(x0, x1, x2, d): d[i] = op.mode.ty(x0[i], ...) for one thread per element."""
    dt = np.float32 if ty == "f32" else np.float64
    nops = {"sqrt": 1, "fma": 3}.get(op, 2)
    srcs = ", ".join(f"%x{k}" for k in range(nops))
    word = "b32" if ty == "f32" else "b64"
    return f"""
.version 8.0
.target sm_90
.address_size 64
.visible .entry k(.param .u64 p0, .param .u64 p1, .param .u64 p2, .param .u64 pd)
{{
    .reg .{ty} %x<4>;
    .reg .b32 %r<2>;
    .reg .b64 %rd<12>;
    mov.u32 %r1, %tid.x;
    mul.wide.u32 %rd5, %r1, {np.dtype(dt).itemsize};
    ld.param.u64 %rd1, [p0];
    ld.param.u64 %rd2, [p1];
    ld.param.u64 %rd3, [p2];
    ld.param.u64 %rd4, [pd];
    add.s64 %rd1, %rd1, %rd5;
    add.s64 %rd2, %rd2, %rd5;
    add.s64 %rd3, %rd3, %rd5;
    add.s64 %rd4, %rd4, %rd5;
    ld.global.{ty} %x0, [%rd1];
    ld.global.{ty} %x1, [%rd2];
    ld.global.{ty} %x2, [%rd3];
    {op}.{mode}.{ty} %x3, {srcs};
    st.global.{word} [%rd4], %x3;
    ret;
}}
""".encode()


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "fma", "sqrt"])
@pytest.mark.parametrize("mode", ["rz", "rm", "rp"])
@pytest.mark.parametrize("ty", ["f32", "f64"])
def test_directed_rounding(op, mode, ty):
    dt = np.float32 if ty == "f32" else np.float64
    n = 64
    xs = [(rng.standard_normal(n) * 10.0 ** rng.integers(-5, 5, n)).astype(dt) for _ in range(3)]
    if op == "sqrt":
        xs[0] = np.abs(xs[0])
    if op in ("add", "sub", "fma"):  # exponents far apart: a float64 sum of two floats is not exact
        xs[1][:2] = [np.finfo(dt).tiny / 3, -np.finfo(dt).tiny / 3]
        xs[2][:2] = xs[1][:2]
    nops = {"sqrt": 1, "fma": 3}.get(op, 2)
    ptx = directed_ptx(op, mode, ty)
    memory = DeviceMemory(1 << 24)
    k = Module.load(ptx, memory).functions["k"]
    ptrs = [memory.alloc(n * 8) for _ in range(4)]
    for p, arr in zip(ptrs, xs):
        memory.write(p, arr.tobytes())
    k.launch((1, 1, 1), (n, 1, 1), 0, np.array(ptrs, np.uint64).tobytes())
    got = np.frombuffer(memory.read(ptrs[3], n * np.dtype(dt).itemsize), dt)
    expect = np.array([_directed_ref(op, mode, [x[i] for x in xs[:nops]], dt) for i in range(n)], dt)
    np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize("mode", ["rz", "rm", "rp"])
@pytest.mark.parametrize("src,dst", [("f64", "f32"), ("s64", "f32"), ("u64", "f32"), ("s32", "f32"),
                                     ("s64", "f64"), ("u64", "f64"), ("s32", "f64")])
def test_directed_conversion(mode, src, dst):
    from fractions import Fraction
    dt = np.dtype(np.float32 if dst == "f32" else np.float64)
    n = 64
    if src == "f64":
        x = rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, n)
        x[:3] = [1e300, -1e300, 1 + 2**-30]
    else:
        x = rng.integers(-2**62 if src != "u64" else 0, 2**62, n, dtype=np.int64).astype({"s64": np.int64, "u64": np.uint64, "s32": np.int32}[src])
    width = x.dtype.itemsize
    ptx = f"""
.version 8.0
.target sm_90
.address_size 64
.visible .entry k(.param .u64 p0, .param .u64 pd)
{{
    .reg .{src} %x;
    .reg .{dst} %f;
    .reg .b32 %r<2>;
    .reg .b64 %rd<8>;
    mov.u32 %r1, %tid.x;
    ld.param.u64 %rd1, [p0];
    ld.param.u64 %rd2, [pd];
    mul.wide.u32 %rd3, %r1, {width};
    add.s64 %rd1, %rd1, %rd3;
    mul.wide.u32 %rd4, %r1, {dt.itemsize};
    add.s64 %rd2, %rd2, %rd4;
    ld.global.{src} %x, [%rd1];
    cvt.{mode}.{dst}.{src} %f, %x;
    st.global.{dst} [%rd2], %f;
    ret;
}}
""".encode()
    memory = DeviceMemory(1 << 24)
    k = Module.load(ptx, memory).functions["k"]
    p0, pd = memory.alloc(x.nbytes), memory.alloc(dt.itemsize * n)
    memory.write(p0, x.tobytes())
    k.launch((1, 1, 1), (n, 1, 1), 0, np.array([p0, pd], np.uint64).tobytes())
    got = np.frombuffer(memory.read(pd, dt.itemsize * n), dt)
    big = float(np.finfo(dt).max)
    for g, v in zip(got, x):
        exact = Fraction(int(v)) if src != "f64" else Fraction(float(v))
        if abs(exact) > Fraction(big):  # beyond the largest float: rz saturates, rm/rp by sign
            over = {"rz": np.copysign(big, float(exact)),
                    "rm": big if exact > 0 else -np.inf, "rp": np.inf if exact > 0 else -big}[mode]
            assert g == dt.type(over)
            continue
        down_ok = Fraction(float(g)) <= exact and Fraction(float(np.nextafter(g, dt.type(np.inf)))) > exact
        up_ok = Fraction(float(g)) >= exact and Fraction(float(np.nextafter(g, dt.type(-np.inf)))) < exact
        if mode == "rm":
            assert down_ok, (v, g)
        elif mode == "rp":
            assert up_ok, (v, g)
        else:
            assert (down_ok if exact >= 0 else up_ok), (v, g)
