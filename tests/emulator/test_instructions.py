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


def _run(instruction: str, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Each thread loads a[i], b[i], c[i] into %r1..%r3, runs `instruction` (writing %r4)."""
    ptx = f"""
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


FLOAT_CASES = [
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
    ("cvt.sat.f32.f32 %f3, %f1;\n    mov.b32 %r4, %f3;", lambda f, g: 0.0 if np.isnan(f) else np.clip(f, 0, 1)),
]


@pytest.mark.parametrize("instruction,ref", FLOAT_CASES,
                         ids=[c[0].split()[0] + str(i) for i, c in enumerate(FLOAT_CASES)])
def test_float_instruction(instruction, ref):
    n = 96
    f = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 12, n)).astype(np.float32)
    g = (rng.standard_normal(n) * 100).astype(np.float32)
    f[:8] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, 2.5, -3.5]
    g[:8] = [1.0, np.nan, 2.0, -0.0, 0.0, -1.0, 2.5, np.nan]
    got = _run(instruction, f.view(np.uint32), g.view(np.uint32), np.zeros(n, np.uint32))
    with np.errstate(invalid="ignore"):
        expect = [ref(x, y) for x, y in zip(f, g)]
    expect = np.array([np.float32(e).view(np.uint32) if isinstance(e, (float, np.floating)) else e % 2**32
                       for e in expect], dtype=np.uint64).astype(np.uint32)
    np.testing.assert_array_equal(got, expect)
