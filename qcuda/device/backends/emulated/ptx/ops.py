"""PTX instruction semantics, decoded once per module into factories.

`decode(instruction)` parses the opcode and operands once and returns a factory; the factory,
given a `Frame`, binds the operands to that batch's register arrays and returns the function
that runs the instruction: `run(m)`, where m is True (every thread active) or an `Active`.
Arithmetic computes every lane and blends the active ones in; memory operations touch only the
active threads' addresses, so an inactive thread can never fault. Anything not implemented raises
`Unsupported` (cudaErrorNotSupported) naming the instruction, never a silent wrong answer.

Float arithmetic is correctly rounded, fma included, in every rounding mode (.rn, and .rz/.rm/.rp
from the exact error of each operation; fma.f64 with .rz/.rm/.rp is refused); `.ftz` flushes
single-precision subnormal operands and results. Deliberate approximation, a later issue:
`.approx` math (sin, ex2, rsqrt, ...) is computed to full precision, closer than the hardware.
"""
from __future__ import annotations

import re
from typing import Callable

import numpy as np

from .....protocol.errors import CudaError, Error
from .frame import (
    DTYPES, LOCAL_WINDOW, SHARED_WINDOW, SINT, UINT, WINDOW_SIZE, Active, Frame, Unsupported, blend, int_like,
)
from .parser import Addr, Imm, Instruction, Neg, PredPair, Reg, Sym, Vec

Run = Callable[[object], None]
Factory = Callable[[Frame], Run]
M32 = np.uint64(0xFFFF_FFFF)
U32 = np.uint64(32)


def _types(mods: list[str]) -> list[np.dtype]:
    return [DTYPES[m] for m in mods if m in DTYPES]


def _one_type(inst: Instruction, mods: list[str]) -> np.dtype:
    types = _types(mods)
    if len(types) != 1:
        raise Unsupported(f"instruction {inst.opcode} (type suffix)")
    return types[0]


def _operands(inst: Instruction, n: int) -> list:
    if len(inst.operands) != n:
        raise CudaError(Error.cudaErrorInvalidPtx, f"{inst}: expected {n} operands, got {len(inst.operands)}")
    return inst.operands


# -- generic shapes ---------------------------------------------------------------------------
def _elementwise(inst: Instruction, dt: np.dtype, fn: Callable, out_dt: np.dtype | None = None,
                 src_dts: list[np.dtype] | None = None) -> Factory:
    """d = fn(a, b, ...) where `fn` returns a new array (or scalar)."""
    d, *srcs = inst.operands
    out_dt = out_dt or dt
    src_dts = src_dts or [dt] * len(srcs)

    def factory(fr: Frame) -> Run:
        getters = [fr.src(s, t) for s, t in zip(srcs, src_dts)]
        _, write = fr.dst(d, out_dt)
        if len(getters) == 1:
            (ga,) = getters
            return lambda m: write(fn(ga()), m)
        if len(getters) == 2:
            ga, gb = getters
            return lambda m: write(fn(ga(), gb()), m)
        return lambda m: write(fn(*[g() for g in getters]), m)
    return factory


def _ufunc(inst: Instruction, dt: np.dtype, uf: np.ufunc) -> Factory:
    """d = uf(a[, b]) written straight into the destination register when its width matches."""
    d, *srcs = inst.operands

    def factory(fr: Frame) -> Run:
        getters = [fr.src(s, dt) for s in srcs]
        out, write = fr.dst(d, dt)
        if out is None:
            if len(getters) == 1:
                return lambda m: write(uf(getters[0]()), m)
            return lambda m: write(uf(getters[0](), getters[1]()), m)
        if len(getters) == 1:
            (ga,) = getters
            return lambda m: uf(ga(), out=out) if m is True else blend(out, uf(ga()), m)
        ga, gb = getters
        return lambda m: uf(ga(), gb(), out=out) if m is True else blend(out, uf(ga(), gb()), m)
    return factory


# -- integer helpers ----------------------------------------------------------------------------
def _mulhi_u64(a, b):
    a = np.asarray(a, np.uint64)
    b = np.asarray(b, np.uint64)
    al, ah, bl, bh = a & M32, a >> U32, b & M32, b >> U32
    ll, lh, hl, hh = al * bl, al * bh, ah * bl, ah * bh
    mid = (ll >> U32) + (lh & M32) + (hl & M32)
    return hh + (lh >> U32) + (hl >> U32) + (mid >> U32)


def _mulhi_s64(a, b):
    ua = np.asarray(a, np.int64).view(np.uint64)
    ub = np.asarray(b, np.int64).view(np.uint64)
    hi = _mulhi_u64(ua, ub)
    hi = hi - np.where(np.asarray(a) < 0, ub, np.uint64(0)) - np.where(np.asarray(b) < 0, ua, np.uint64(0))
    return hi.view(np.int64)


def _wide(dt: np.dtype) -> np.dtype:
    return (SINT if dt.kind == "i" else UINT)[dt.itemsize * 2]


def _trunc_div(a, b):
    """C division (toward zero); x/0 gives all ones, as the hardware does."""
    a, b = np.asarray(a), np.asarray(b)
    zero = b == 0
    safe = np.where(zero, 1, b).astype(b.dtype)
    if a.dtype.kind == "u":
        q = a // safe
    else:
        q = (a - np.fmod(a, safe)) // safe
    return np.where(zero, np.array(-1).astype(a.dtype), q).astype(a.dtype)


def _rem(a, b):
    a, b = np.asarray(a), np.asarray(b)
    zero = b == 0
    r = np.fmod(a, np.where(zero, 1, b).astype(b.dtype))
    return np.where(zero, a, r).astype(a.dtype)


def _bit_length(x, bits: int):
    """Number of significant bits of unsigned values (0 for 0)."""
    x = np.asarray(x)
    if bits <= 32:
        return np.frexp(x.astype(np.float64))[1].astype(np.uint32)
    x = x.astype(np.uint64)
    hi = (x >> U32).astype(np.float64)
    lo = (x & M32).astype(np.float64)
    return np.where(hi > 0, np.frexp(hi)[1] + 32, np.frexp(lo)[1]).astype(np.uint32)


_REV8 = np.array([int(f"{i:08b}"[::-1], 2) for i in range(256)], dtype=np.uint8)


def _brev(x):
    x = np.ascontiguousarray(x)
    return _REV8[x.view(np.uint8)].view(x.dtype).byteswap()


def _as_u64(x):
    x = np.asarray(x)
    return x.astype(UINT[x.dtype.itemsize], copy=False).astype(np.uint64) if x.dtype.kind == "i" else x.astype(np.uint64)


# -- instruction makers ---------------------------------------------------------------------------
def _arith(uf: np.ufunc):
    def make(inst: Instruction, mods: list[str]) -> Factory:
        dt = _one_type(inst, mods)
        _operands(inst, 3)
        if "cc" in mods:
            raise Unsupported(f"instruction {inst.opcode} (carry flag)")
        if "sat" in mods and dt.kind != "f":
            lo, hi = np.iinfo(dt).min, np.iinfo(dt).max
            wide = np.dtype(np.int64)
            return _elementwise(inst, dt, lambda a, b: np.clip(uf(np.asarray(a, wide), np.asarray(b, wide)), lo, hi))
        if "sat" in mods:
            return _elementwise(inst, dt, lambda a, b: np.clip(np.nan_to_num(uf(a, b), nan=0.0), 0, 1).astype(dt))
        return _ufunc(inst, dt, uf)
    return make


def _make_mul(inst: Instruction, mods: list[str]) -> Factory:
    dt = _one_type(inst, mods)
    _operands(inst, 3)
    if dt.kind == "f":
        return _ufunc(inst, dt, np.multiply)
    if "wide" in mods:
        wd = _wide(dt)
        return _elementwise(inst, dt, lambda a, b: np.multiply(np.asarray(a, wd), np.asarray(b, wd)), out_dt=wd)
    if "hi" in mods:
        return _elementwise(inst, dt, _hi_fn(dt))
    return _ufunc(inst, dt, np.multiply)


def _hi_fn(dt: np.dtype) -> Callable:
    if dt.itemsize == 8:
        return _mulhi_s64 if dt.kind == "i" else _mulhi_u64
    wd, shift = _wide(dt), dt.itemsize * 8
    return lambda a, b: (np.multiply(np.asarray(a, wd), np.asarray(b, wd)) >> shift).astype(dt)


def _make_mad(inst: Instruction, mods: list[str]) -> Factory:
    dt = _one_type(inst, mods)
    _operands(inst, 4)
    if dt.kind == "f":
        return _make_fma(inst, mods)
    if "cc" in mods:
        raise Unsupported(f"instruction {inst.opcode} (carry flag)")
    if "wide" in mods:
        wd = _wide(dt)
        return _elementwise(inst, dt, lambda a, b, c: np.multiply(np.asarray(a, wd), np.asarray(b, wd)) + c,
                            out_dt=wd, src_dts=[dt, dt, wd])
    if "hi" in mods:
        hi = _hi_fn(dt)
        return _elementwise(inst, dt, lambda a, b, c: hi(a, b) + c)
    return _elementwise(inst, dt, lambda a, b, c: np.multiply(a, b) + c)


def _make_fma(inst: Instruction, mods: list[str]) -> Factory:
    dt = _one_type(inst, mods)
    _operands(inst, 4)
    if dt == np.float64:
        fn = _fma_f64
    else:
        fn = lambda a, b, c: _fma_narrow(a, b, c, dt)  # noqa: E731
    if "sat" in mods:
        base = fn
        fn = lambda a, b, c: np.clip(np.nan_to_num(base(a, b, c), nan=0.0), 0, 1).astype(dt)  # noqa: E731
    return _elementwise(inst, dt, fn)


_SIGN64 = np.uint64(1 << 63)
_SPLITTER = 134217729.0  # 2**27 + 1 (Veltkamp)


def _two_sum(a, b):
    """s + e == a + b exactly (Knuth)."""
    s = a + b
    bp = s - a
    return s, (a - (s - bp)) + (b - bp)


def _two_prod(a, b):
    """p + e == a * b exactly (Dekker), barring overflow and subnormal products."""
    p = a * b
    t = _SPLITTER * a
    ah = t - (t - a)
    al = a - ah
    t = _SPLITTER * b
    bh = t - (t - b)
    bl = b - bh
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def _add_round_odd(x, y) -> np.ndarray:
    """x + y rounded to odd in float64: truncate, and make the last bit 1 if anything was cut."""
    s, err = _two_sum(np.asarray(x, np.float64), np.asarray(y, np.float64))
    inexact = (err != 0) & np.isfinite(s)
    bits = np.ascontiguousarray(s).view(np.uint64)
    sign, mag = bits & _SIGN64, bits & ~_SIGN64
    toward_zero = inexact & (np.signbit(err) != np.signbit(s))
    mag = (mag - toward_zero.astype(np.uint64)) | inexact.astype(np.uint64)
    return (sign | mag).view(np.float64)


def _fma_narrow(a, b, c, dt: np.dtype) -> np.ndarray:
    """Correctly rounded a*b+c for f32/f16: the product is exact in float64, the sum rounded to
    odd there, and round-to-odd followed by round-to-nearest into a format of at most half the
    precision (less 2 bits) is a single correct rounding."""
    return _add_round_odd(np.asarray(a, np.float64) * b, c).astype(dt)


def _fma_f64(a, b, c) -> np.ndarray:
    """Correctly rounded a*b+c in float64 (Boldo & Melquiond: emulated FMA by rounding to odd).
    Where the product overflows the splitter or underflows, a*b+c is rounded twice instead."""
    a, b, c = np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(c, np.float64)
    uh, ul = _two_prod(a, b)
    th, tl = _two_sum(c, uh)
    exact = th + _add_round_odd(tl, ul)
    safe = (np.abs(a) < 2.0**995) & (np.abs(b) < 2.0**995) & ((np.abs(uh) > 2.0**-968) | (uh == 0))
    safe &= np.isfinite(exact)
    return np.where(safe, exact, uh + c)


def _make_div(inst: Instruction, mods: list[str]) -> Factory:
    dt = _one_type(inst, mods)
    _operands(inst, 3)
    if dt.kind == "f":
        return _ufunc(inst, dt, np.divide)
    return _elementwise(inst, dt, _trunc_div)


def _make_rem(inst: Instruction, mods: list[str]) -> Factory:
    dt = _one_type(inst, mods)
    _operands(inst, 3)
    return _elementwise(inst, dt, _rem)


def _make_minmax(int_uf: np.ufunc, float_uf: np.ufunc):
    def make(inst: Instruction, mods: list[str]) -> Factory:
        dt = _one_type(inst, mods)
        _operands(inst, 3)
        uf = float_uf if dt.kind == "f" else int_uf
        if "relu" in mods:  # negative results (and NaN) become 0
            zero = dt.type(0)
            return _elementwise(inst, dt, lambda a, b: np.fmax(uf(a, b), zero) if dt.kind == "f"
                                else np.maximum(uf(a, b), zero))
        if "NaN" in mods:
            return _ufunc(inst, dt, np.minimum if uf is np.fmin else np.maximum)
        return _ufunc(inst, dt, uf)
    return make


def _make_unary(uf: np.ufunc):
    def make(inst: Instruction, mods: list[str]) -> Factory:
        dt = _one_type(inst, mods)
        _operands(inst, 2)
        return _ufunc(inst, dt, uf)
    return make


def _make_float_fn(fn: Callable):
    def make(inst: Instruction, mods: list[str]) -> Factory:
        dt = _one_type(inst, mods)
        _operands(inst, 2)
        if dt.kind != "f":
            raise Unsupported(f"instruction {inst.opcode}")
        return _elementwise(inst, dt, lambda a: np.asarray(fn(np.asarray(a, np.float64))).astype(dt))
    return make


def _make_copysign(inst: Instruction, mods: list[str]) -> Factory:
    dt = _one_type(inst, mods)
    _operands(inst, 3)
    return _elementwise(inst, dt, lambda a, b: np.copysign(b, a))


def _make_testp(inst: Instruction, mods: list[str]) -> Factory:
    dt = _one_type(inst, mods)
    _operands(inst, 2)
    tests = {
        "finite": np.isfinite, "infinite": np.isinf, "number": lambda a: ~np.isnan(a),
        "notanumber": np.isnan,
        "normal": lambda a: np.isfinite(a) & (np.abs(a) >= np.finfo(dt).tiny),
        "subnormal": lambda a: (a != 0) & (np.abs(a) < np.finfo(dt).tiny),
    }
    test = next((tests[m] for m in mods if m in tests), None)
    if test is None:
        raise Unsupported(f"instruction {inst.opcode}")
    return _elementwise(inst, dt, test, out_dt=DTYPES["pred"])


def _make_shift(kind: str):
    def make(inst: Instruction, mods: list[str]) -> Factory:
        dt = _one_type(inst, mods)
        d, a, b = _operands(inst, 3)
        bits = dt.itemsize * 8
        if kind == "shr" and dt.kind == "i":
            def fn(x, s):  # arithmetic: shifting by >= width fills with the sign bit
                return np.right_shift(x, np.minimum(s, bits - 1).astype(dt))
        else:
            uf = np.left_shift if kind == "shl" else np.right_shift

            def fn(x, s):
                s = np.asarray(s)
                r = uf(x, np.minimum(s, bits - 1).astype(dt))
                return np.where(s >= bits, np.array(0, dt), r)
        if isinstance(b, Imm) and 0 <= b.value < bits:
            amount = dt.type(b.value)
            uf = np.left_shift if kind == "shl" else np.right_shift

            def factory(fr: Frame) -> Run:
                ga = fr.src(a, dt)
                out, write = fr.dst(d, dt)
                if out is not None:
                    return lambda m: uf(ga(), amount, out=out) if m is True else blend(out, uf(ga(), amount), m)
                return lambda m: write(uf(ga(), amount), m)
            return factory
        return _elementwise(inst, dt, fn, src_dts=[dt, DTYPES["u32"]])
    return make


def _make_bitop(uf: np.ufunc):
    def make(inst: Instruction, mods: list[str]) -> Factory:
        dt = _one_type(inst, mods)
        _operands(inst, 3 if uf is not np.invert else 2)
        return _ufunc(inst, dt, uf)
    return make


def _make_cnot(inst: Instruction, mods: list[str]) -> Factory:
    dt = _one_type(inst, mods)
    _operands(inst, 2)
    return _elementwise(inst, dt, lambda a: (np.asarray(a) == 0).astype(dt))


_POPC8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint32)


def _popcount(a) -> np.ndarray:
    a = np.ascontiguousarray(a)
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(a).astype(np.uint32)
    return _POPC8[a.view(np.uint8)].reshape(a.shape + (a.dtype.itemsize,)).sum(axis=-1, dtype=np.uint32)


def _make_popc(inst: Instruction, mods: list[str]) -> Factory:
    dt = _one_type(inst, mods)
    _operands(inst, 2)
    return _elementwise(inst, dt, _popcount, out_dt=DTYPES["u32"])


def _make_clz(inst: Instruction, mods: list[str]) -> Factory:
    dt = _one_type(inst, mods)
    _operands(inst, 2)
    bits = dt.itemsize * 8
    return _elementwise(inst, dt, lambda a: (np.uint32(bits) - _bit_length(a, bits)).astype(np.uint32),
                        out_dt=DTYPES["u32"])


def _make_bfind(inst: Instruction, mods: list[str]) -> Factory:
    dt = _one_type(inst, mods)
    _operands(inst, 2)
    bits = dt.itemsize * 8
    shiftamt = "shiftamt" in mods
    ut = UINT[dt.itemsize]

    def fn(a):
        a = np.asarray(a)
        if dt.kind == "i":
            a = np.where(a < 0, ~a, a)
        n = _bit_length(a.astype(ut), bits).astype(np.int64)
        pos = n - 1
        if shiftamt:
            pos = np.where(n == 0, -1, bits - 1 - pos)
        return np.where(n == 0, 0xFFFFFFFF, pos).astype(np.uint32)
    return _elementwise(inst, dt, fn, out_dt=DTYPES["u32"])


def _make_brev(inst: Instruction, mods: list[str]) -> Factory:
    dt = _one_type(inst, mods)
    _operands(inst, 2)
    return _elementwise(inst, dt, lambda a: _brev(np.broadcast_to(a, np.shape(a)).astype(dt)))


def _make_bfe(inst: Instruction, mods: list[str]) -> Factory:
    dt = _one_type(inst, mods)
    _operands(inst, 4)
    bits = dt.itemsize * 8
    u32 = DTYPES["u32"]

    def fn(a, b, c):
        ua = _as_u64(a)
        pos = np.asarray(b).astype(np.uint64) & np.uint64(0xFF)
        ln = np.asarray(c).astype(np.uint64) & np.uint64(0xFF)
        shifted = np.where(pos >= bits, np.uint64(0), ua >> np.minimum(pos, np.uint64(bits - 1)))
        # bits of the field that lie past the operand's top read as the sign bit (0 if unsigned)
        avail = np.where(pos >= bits, np.uint64(0), np.uint64(bits) - np.minimum(pos, np.uint64(bits)))
        eff = np.minimum(ln, avail)
        mask = np.where(eff >= 64, np.uint64(0xFFFF_FFFF_FFFF_FFFF),
                        (np.uint64(1) << np.minimum(eff, np.uint64(63))) - np.uint64(1))
        val = shifted & mask
        if dt.kind == "i":
            top = np.minimum(pos + ln - np.uint64(1), np.uint64(bits - 1))
            sbit = np.where(ln == 0, np.uint64(0), (ua >> top) & np.uint64(1))
            val = np.where(sbit == 1, val | ~mask, val)
        return val.astype(UINT[dt.itemsize]).view(dt)
    return _elementwise(inst, dt, fn, src_dts=[dt, u32, u32])


def _make_bfi(inst: Instruction, mods: list[str]) -> Factory:
    dt = _one_type(inst, mods)
    _operands(inst, 5)
    bits = dt.itemsize * 8
    u32 = DTYPES["u32"]
    ones = np.uint64(0xFFFF_FFFF_FFFF_FFFF)

    def fn(a, b, c, d):
        ua, ub = _as_u64(a), _as_u64(b)
        pos = np.asarray(c).astype(np.uint64) & np.uint64(0xFF)
        ln = np.asarray(d).astype(np.uint64) & np.uint64(0xFF)
        field = np.where(ln >= 64, ones, (np.uint64(1) << np.minimum(ln, np.uint64(63))) - np.uint64(1))
        p = np.minimum(pos, np.uint64(63))
        mask = field << p
        if bits < 64:
            mask &= np.uint64((1 << bits) - 1)
        val = np.where(pos >= bits, ub, (ub & ~mask) | ((ua << p) & mask))
        return val.astype(UINT[dt.itemsize]).view(dt)
    return _elementwise(inst, dt, fn, src_dts=[dt, dt, u32, u32])


def _make_prmt(inst: Instruction, mods: list[str]) -> Factory:
    _operands(inst, 4)
    if any(m in mods for m in ("f4e", "b4e", "rc8", "ecl", "ecr", "rc16")):
        raise Unsupported(f"instruction {inst.opcode} (byte-permute mode)")
    u32 = DTYPES["u32"]

    def fn(a, b, c):
        x = _as_u64(a) | (_as_u64(b) << U32)
        c = np.asarray(c).astype(np.uint64)
        out = np.zeros(np.broadcast(x, c).shape, np.uint64)
        for i in range(4):
            sel = (c >> np.uint64(4 * i)) & np.uint64(0xF)
            byte = (x >> ((sel & np.uint64(7)) * np.uint64(8))) & np.uint64(0xFF)
            sign = np.where(byte & np.uint64(0x80), np.uint64(0xFF), np.uint64(0))
            byte = np.where(sel & np.uint64(8), sign, byte)
            out |= byte << np.uint64(8 * i)
        return out.astype(np.uint32)
    return _elementwise(inst, u32, fn)


def _make_lop3(inst: Instruction, mods: list[str]) -> Factory:
    dt = _one_type(inst, mods)
    d, a, b, c, lut = _operands(inst, 5)
    if not isinstance(lut, Imm):
        raise Unsupported("lop3 with a register lookup table")
    table = int(lut.value) & 0xFF

    def fn(x, y, z):
        x, y, z = np.asarray(x), np.asarray(y), np.asarray(z)
        out = np.zeros(np.broadcast(x, y, z).shape, dt)
        for i in range(8):
            if table >> i & 1:
                out |= (x if i & 4 else ~x) & (y if i & 2 else ~y) & (z if i & 1 else ~z)
        return out
    return _elementwise(inst, dt, fn, src_dts=[dt, dt, dt])


def _make_shf(inst: Instruction, mods: list[str]) -> Factory:
    dt = _one_type(inst, mods)
    _operands(inst, 4)
    left, wrap = "l" in mods, "wrap" in mods

    def fn(a, b, c):
        x = _as_u64(a) | (_as_u64(b) << U32)
        n = np.asarray(c).astype(np.uint64)
        n = n & np.uint64(31) if wrap else np.minimum(n, np.uint64(32))
        if left:
            return ((x << n) >> U32).astype(np.uint32)
        return ((x >> n) & M32).astype(np.uint32)
    return _elementwise(inst, dt, fn, src_dts=[dt, dt, DTYPES["u32"]])


_INT_CMP = {
    "eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal, "gt": np.greater,
    "ge": np.greater_equal, "lo": np.less, "ls": np.less_equal, "hi": np.greater, "hs": np.greater_equal,
}
_FLOAT_CMP = {
    "eq": np.equal, "ne": lambda a, b: np.less(a, b) | np.greater(a, b), "lt": np.less,
    "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
    "equ": lambda a, b: ~(np.less(a, b) | np.greater(a, b)), "neu": np.not_equal,
    "ltu": lambda a, b: ~np.greater_equal(a, b), "leu": lambda a, b: ~np.greater(a, b),
    "gtu": lambda a, b: ~np.less_equal(a, b), "geu": lambda a, b: ~np.less(a, b),
    "num": lambda a, b: ~(np.isnan(a) | np.isnan(b)), "nan": lambda a, b: np.isnan(a) | np.isnan(b),
}
_BOOL = {"and": np.logical_and, "or": np.logical_or, "xor": np.logical_xor}


def _compare(inst: Instruction, mods: list[str], dt: np.dtype) -> Callable:
    table = _FLOAT_CMP if dt.kind == "f" else _INT_CMP
    cmp = next((table[m] for m in mods if m in table), None)
    if cmp is None:
        raise Unsupported(f"instruction {inst.opcode} (comparison)")
    return cmp


def _pred_source(fr: Frame, op) -> Callable:
    if isinstance(op, Neg):
        g = fr.src(op.reg, DTYPES["pred"])
        return lambda: ~g()
    return fr.src(op, DTYPES["pred"])


def _make_setp(inst: Instruction, mods: list[str]) -> Factory:
    types = _types(mods)
    dt = types[-1]
    cmp = _compare(inst, mods, dt)
    boolop = next((_BOOL[m] for m in mods if m in _BOOL), None)
    ops = inst.operands
    if len(ops) != (4 if boolop else 3):
        raise CudaError(Error.cudaErrorInvalidPtx, f"{inst}: wrong operand count")
    d = ops[0]
    first, second = (d.first, d.second) if isinstance(d, PredPair) else (d, None)
    pred = DTYPES["pred"]

    def factory(fr: Frame) -> Run:
        ga, gb = fr.src(ops[1], dt), fr.src(ops[2], dt)
        gc = _pred_source(fr, ops[3]) if boolop else None
        out, write = fr.dst(first, pred)
        write2 = fr.dst(second, pred)[1] if second is not None else None

        if boolop is None and write2 is None and out is not None and isinstance(cmp, np.ufunc):
            return lambda m: cmp(ga(), gb(), out=out) if m is True else blend(out, cmp(ga(), gb()), m)

        def run(m):
            t = np.asarray(cmp(ga(), gb()))
            if boolop is not None:
                c = gc()
                if write2 is not None:
                    write2(boolop(~t, c), m)
                write(boolop(t, c), m)
            else:
                if write2 is not None:
                    write2(~t, m)
                write(t, m)
        return run
    return factory


def _make_set(inst: Instruction, mods: list[str]) -> Factory:
    types = _types(mods)
    if len(types) != 2 or len(inst.operands) != 3:
        raise Unsupported(f"instruction {inst.opcode}")
    out_dt, dt = types
    cmp = _compare(inst, mods, dt)
    true = out_dt.type(1.0) if out_dt.kind == "f" else np.array(-1).astype(out_dt)[()]
    return _elementwise(inst, dt, lambda a, b: np.where(cmp(a, b), true, out_dt.type(0)), out_dt=out_dt)


def _make_selp(inst: Instruction, mods: list[str]) -> Factory:
    dt = _one_type(inst, mods)
    d, a, b, c = _operands(inst, 4)

    def factory(fr: Frame) -> Run:
        ga, gb, gc = fr.src(a, dt), fr.src(b, dt), _pred_source(fr, c)
        _, write = fr.dst(d, dt)
        return lambda m: write(np.where(gc(), ga(), gb()), m)
    return factory


def _make_mov(inst: Instruction, mods: list[str]) -> Factory:
    dt = _one_type(inst, mods)
    d, a = _operands(inst, 2)
    if isinstance(d, Vec) or isinstance(a, Vec):
        return _pack_unpack(inst, dt, d, a)

    def factory(fr: Frame) -> Run:
        ga = fr.src(a, dt)
        _, write = fr.dst(d, dt)
        return lambda m: write(ga(), m)
    return factory


def _pack_unpack(inst: Instruction, dt: np.dtype, d, a) -> Factory:
    """mov.b64 %rd, {%r1, %r2} and its inverse: the parts are the little-endian pieces."""
    if isinstance(d, Vec) and isinstance(a, Vec):
        raise Unsupported(f"instruction {inst.opcode} with two vectors")
    parts = (d if isinstance(d, Vec) else a).items
    part_dt = UINT[dt.itemsize // len(parts)]
    whole_dt = UINT[dt.itemsize]

    def factory(fr: Frame) -> Run:
        n = fr.n
        if isinstance(a, Vec):
            getters = [fr.src(p, part_dt) for p in parts]
            _, write = fr.dst(d, whole_dt)

            def pack(m):
                cols = [np.broadcast_to(g(), (n,)) for g in getters]
                write(np.stack(cols, axis=1).view(whole_dt).reshape(n), m)
            return pack
        ga = fr.src(a, whole_dt)
        writers = [fr.dst(p, part_dt)[1] for p in parts]

        def unpack(m):
            whole = np.ascontiguousarray(np.broadcast_to(ga(), (n,)))
            pieces = whole.view(part_dt).reshape(n, len(parts))
            for k, w in enumerate(writers):
                w(pieces[:, k], m)
        return unpack
    return factory


_FLOAT_TO_INT_ROUND = {"rni": np.rint, "rzi": np.trunc, "rmi": np.floor, "rpi": np.ceil}


def _make_cvt(inst: Instruction, mods: list[str]) -> Factory:
    if _packed_type(mods):
        return _make_cvt_packed(inst, mods)
    types = _types(mods)
    if len(types) != 2:
        raise Unsupported(f"instruction {inst.opcode}")
    dt, at = types
    d, a = _operands(inst, 2)
    sat = "sat" in mods
    irnd = next((m for m in mods if m in _FLOAT_TO_INT_ROUND), None)
    frnd = next((m for m in mods if m in ("rn", "rz", "rm", "rp")), None)

    if dt.kind != "f" and at.kind != "f":
        if sat:
            lo = max(np.iinfo(dt).min, np.iinfo(at).min)
            hi = min(np.iinfo(dt).max, np.iinfo(at).max)
            lo_c, hi_c = at.type(lo), at.type(hi)
            fn = lambda x: np.clip(x, lo_c, hi_c).astype(dt)  # noqa: E731
        else:
            fn = lambda x: np.asarray(x).astype(dt)  # noqa: E731
    elif dt.kind != "f":  # float -> int: round, then saturate (PTX always saturates; NaN -> 0)
        rnd = _FLOAT_TO_INT_ROUND.get(irnd or "rzi")
        info = np.iinfo(dt)
        lo_f, hi_f = float(info.min), float(info.max)
        lo_v, hi_v = dt.type(info.min), dt.type(info.max)

        def fn(x):
            r = rnd(np.asarray(x, np.float64))
            r = np.where(np.isnan(r), 0.0, r)
            out = np.clip(r, lo_f, hi_f).astype(dt)
            out = np.where(r >= hi_f, hi_v, out)
            return np.where(r <= lo_f, lo_v, out)
    elif at.kind != "f":  # int -> float
        if frnd in (None, "rn"):
            fn = lambda x: np.asarray(x).astype(dt)  # noqa: E731
        else:
            if np.finfo(np.longdouble).nmant < 63:
                raise Unsupported(f"instruction {inst.opcode} on this host (no 64-bit long double)")

            def fn(x):  # long double holds every 64-bit integer exactly: the error's sign is exact
                r = np.asarray(x).astype(dt)
                err = np.asarray(x).astype(np.longdouble) - r.astype(np.longdouble)
                return _step_directed(r, np.sign(err).astype(np.float64), frnd, True)
    else:  # float -> float
        if irnd is not None:
            rnd = _FLOAT_TO_INT_ROUND[irnd]
            fn = lambda x: rnd(np.asarray(x)).astype(dt)  # noqa: E731
        elif dt.itemsize < at.itemsize and frnd not in (None, "rn"):
            def fn(x):
                x64 = np.asarray(x, np.float64)
                r = x64.astype(dt)
                return _step_directed(r, x64 - r.astype(np.float64), frnd, np.isfinite(x64))
        else:
            fn = lambda x: np.asarray(x).astype(dt)  # noqa: E731
        if sat:
            base = fn
            fn = lambda x: np.clip(np.nan_to_num(base(x), nan=0.0), 0, 1).astype(dt)  # noqa: E731
    return _elementwise(inst, dt, fn, src_dts=[at])


def _make_cvta(inst: Instruction, mods: list[str]) -> Factory:
    dt = _one_type(inst, mods)
    d, a = _operands(inst, 2)
    to = "to" in mods
    space = next((m for m in mods if m in ("global", "shared", "local", "const", "param")), None)
    if space is None:
        raise Unsupported(f"instruction {inst.opcode}")
    if space in ("global", "const"):
        fn = lambda x: np.asarray(x)  # noqa: E731 (global and const addresses are generic ones)
    elif space == "param":
        raise Unsupported(f"instruction {inst.opcode} (generic addresses of kernel parameters)")
    else:
        window = np.uint64(SHARED_WINDOW if space == "shared" else LOCAL_WINDOW)
        if to:
            fn = lambda x: (np.asarray(x).astype(np.uint64) - window).astype(dt)  # noqa: E731
        else:
            fn = lambda x: (np.asarray(x).astype(np.uint64) + window).astype(dt)  # noqa: E731
    return _elementwise(inst, dt, fn)


def _make_isspacep(inst: Instruction, mods: list[str]) -> Factory:
    d, a = _operands(inst, 2)
    space = mods[0] if mods else ""
    lo = {"shared": SHARED_WINDOW, "local": LOCAL_WINDOW}.get(space)
    u64 = DTYPES["u64"]
    if space == "global":
        fn = lambda x: np.asarray(x) < np.uint64(LOCAL_WINDOW)  # noqa: E731
    elif lo is not None:
        fn = lambda x: (np.asarray(x) >= np.uint64(lo)) & (np.asarray(x) < np.uint64(lo + WINDOW_SIZE))  # noqa: E731
    else:
        raise Unsupported(f"instruction {inst.opcode}")
    return _elementwise(inst, u64, fn, out_dt=DTYPES["pred"])


# -- memory ------------------------------------------------------------------------------------
_SPACES = ("global", "shared", "local", "const", "param")


def _window_index(fr: Frame, space: str, addrs: np.ndarray, ids, dt: np.dtype):
    """(typed view of the space's bytes, element index per address) for shared or local memory."""
    size = dt.itemsize
    if space == "shared":
        buf, limit = fr.shared, fr.shared_size
        owner = fr.block_of_thread if ids is None else fr.block_of_thread[ids]
    else:
        buf, limit = fr.local, fr.local_size
        owner = fr.thread_index if ids is None else ids
    off = np.asarray(addrs).astype(np.int64)
    if off.size:
        if int(off.min()) < 0 or int(off.max()) > limit - size:
            bad = int(off[(off < 0) | (off > limit - size)][0]) & 0xFFFF_FFFF_FFFF_FFFF
            raise CudaError(Error.cudaErrorIllegalAddress,
                            f"{size}-byte .{space} access at 0x{bad:x}, outside the {limit} bytes of .{space} memory")
        if size > 1 and np.any(off & (size - 1)):
            raise CudaError(Error.cudaErrorMisalignedAddress, f"{size}-byte .{space} access at a misaligned address")
    return buf.view(dt), (owner * limit + off) // size


def load_space(fr: Frame, space: str | None, addrs: np.ndarray, ids, dt: np.dtype) -> np.ndarray:
    """Values at per-thread addresses of a state space (None: generic); `ids` are the threads
    the addresses belong to (None: all threads in order)."""
    if space in ("global", "const"):
        return fr.memory.load(addrs, dt)
    if space in ("shared", "local"):
        view, idx = _window_index(fr, space, addrs, ids, dt)
        return view[idx]
    if space == "param":
        return _param_view(fr, addrs, dt)
    if addrs.size == 0 or int(addrs.max()) < LOCAL_WINDOW:
        return fr.memory.load(addrs, dt)
    out = np.empty(addrs.size, dt)
    ids = fr.thread_index if ids is None else ids
    for sel, sp, base in _generic_parts(addrs):
        if sel.any():
            out[sel] = load_space(fr, sp, addrs[sel] - np.uint64(base), ids[sel], dt)
    return out


def store_space(fr: Frame, space: str | None, addrs: np.ndarray, ids, values) -> None:
    if space in ("global", "const"):
        fr.memory.store(addrs, values)
        return
    values = np.asarray(values)
    if space in ("shared", "local"):
        view, idx = _window_index(fr, space, addrs, ids, values.dtype)
        view[idx] = values
        return
    if space == "param":
        raise Unsupported("st.param (a call sequence)")
    if addrs.size == 0 or int(addrs.max()) < LOCAL_WINDOW:
        fr.memory.store(addrs, values)
        return
    ids = fr.thread_index if ids is None else ids
    values = np.broadcast_to(values, addrs.shape)
    for sel, sp, base in _generic_parts(addrs):
        if sel.any():
            store_space(fr, sp, addrs[sel] - np.uint64(base), ids[sel], values[sel])


def _generic_parts(addrs: np.ndarray):
    shared = (addrs >= np.uint64(SHARED_WINDOW)) & (addrs < np.uint64(SHARED_WINDOW + WINDOW_SIZE))
    local = (addrs >= np.uint64(LOCAL_WINDOW)) & (addrs < np.uint64(LOCAL_WINDOW + WINDOW_SIZE))
    return ((~(shared | local), "global", 0), (shared, "shared", SHARED_WINDOW), (local, "local", LOCAL_WINDOW))


def _param_view(fr: Frame, addrs: np.ndarray, dt: np.dtype) -> np.ndarray:
    size = dt.itemsize
    off = np.asarray(addrs).astype(np.int64)
    if off.size and (int(off.min()) < 0 or int(off.max()) > fr.params.size - size):
        raise CudaError(Error.cudaErrorIllegalAddress, "ld.param outside the kernel's parameters")
    idx = off[:, None] + np.arange(size)
    return np.ascontiguousarray(fr.params[idx]).view(dt).reshape(off.shape)


def _mem_shape(inst: Instruction, mods: list[str]) -> tuple[str | None, int, np.dtype]:
    if any(m.endswith("::cluster") for m in mods):
        raise Unsupported(f"instruction {inst.opcode} (cluster shared memory)")
    mods = [m.removesuffix("::cta") for m in mods]
    space = next((m for m in mods if m in _SPACES), None)
    vec = next((int(m[1:]) for m in mods if m in ("v2", "v4", "v8")), 1)
    types = _types(mods)
    if len(types) != 1:
        raise Unsupported(f"instruction {inst.opcode}")
    return space, vec, types[0]


def _make_ld(inst: Instruction, mods: list[str]) -> Factory:
    space, vec, dt = _mem_shape(inst, mods)
    d, a = _operands(inst, 2)
    if not isinstance(a, Addr):
        raise CudaError(Error.cudaErrorInvalidPtx, f"{inst}: the source must be an address")
    dests = list(d.items) if isinstance(d, Vec) else [d]
    if len(dests) != vec:
        raise CudaError(Error.cudaErrorInvalidPtx, f"{inst}: {len(dests)} destinations for .v{vec}")
    size = dt.itemsize

    def factory(fr: Frame) -> Run:
        writers = [fr.scatter(r, dt) for r in dests]
        if space == "param" and not isinstance(a.base, Reg):  # uniform: read once per launch
            addr = fr.kernel.symbol_address(a.base.name) + a.offset if a.base else a.offset
            values = [_param_view(fr, np.array([addr + k * size]), dt)[0] for k in range(vec)]
            full = [fr.dst(r, dt)[1] for r in dests]

            def ld_param(m):
                for w, v in zip(full, values):
                    w(v, m)
            return ld_param
        ga = fr.address(a)

        def ld(m):
            addrs = ga()
            ids = None
            if m is not True:
                ids = fr.thread_index[m.mask]
                addrs = addrs[m.mask]
            if vec > 1 and addrs.size and np.any(addrs % np.uint64(size * vec)):
                raise CudaError(Error.cudaErrorMisalignedAddress, f"{inst}: misaligned vector access")
            for k, w in enumerate(writers):
                w(load_space(fr, space, addrs + np.uint64(k * size) if k else addrs, ids, dt), m)
        return ld
    return factory


def _make_st(inst: Instruction, mods: list[str]) -> Factory:
    space, vec, dt = _mem_shape(inst, mods)
    a, s = _operands(inst, 2)
    if not isinstance(a, Addr):
        raise CudaError(Error.cudaErrorInvalidPtx, f"{inst}: the destination must be an address")
    srcs = list(s.items) if isinstance(s, Vec) else [s]
    if len(srcs) != vec:
        raise CudaError(Error.cudaErrorInvalidPtx, f"{inst}: {len(srcs)} sources for .v{vec}")
    size = dt.itemsize

    def factory(fr: Frame) -> Run:
        ga = fr.address(a)
        getters = [fr.src(r, dt) for r in srcs]

        def st(m):
            addrs = ga()
            ids = None
            if m is not True:
                ids = fr.thread_index[m.mask]
                addrs = addrs[m.mask]
            if vec > 1 and addrs.size and np.any(addrs % np.uint64(size * vec)):
                raise CudaError(Error.cudaErrorMisalignedAddress, f"{inst}: misaligned vector access")
            for k, g in enumerate(getters):
                v = g()
                if m is not True and np.ndim(v):
                    v = v[m.mask]
                v = np.asarray(v, dtype=dt)
                store_space(fr, space, addrs + np.uint64(k * size) if k else addrs, ids, v)
        return st
    return factory


def _make_atom(inst: Instruction, mods: list[str]) -> Factory:
    """atom/red: the lanes of one instruction take effect one after another in thread order.

    Lanes are grouped by memory location (shared and local addresses are per block / thread).
    Associative operations get their old values from a segmented scan in log2(lanes per
    location) steps, and CAS from one step per successful swap, so contention on one address
    costs no per-lane loop; only inc/dec run one round per lane of the busiest location. Float
    add is scanned in float64 in a tree order: with several lanes on one address the old values
    and the sum may differ from a serial float32 order in the last bits.
    """
    space = next((m.removesuffix("::cta") for m in mods if m.removesuffix("::cta") in _SPACES), None)
    op = next((m for m in mods if m in _ATOM_OPS), None)
    types = _types(mods)
    if op is None or len(types) != 1 or "v2" in mods or "v4" in mods or any(m.endswith("::cluster") for m in mods):
        raise Unsupported(f"instruction {inst.opcode}")
    dt = types[0]
    ops = inst.operands
    if inst.opcode.startswith("red"):
        d, (a, *srcs) = None, ops
    else:
        d, a, *srcs = ops
    if not isinstance(a, Addr) or len(srcs) != (2 if op == "cas" else 1):
        raise CudaError(Error.cudaErrorInvalidPtx, f"{inst}: bad operands")

    def factory(fr: Frame) -> Run:
        ga = fr.address(a)
        getters = [fr.src(s, dt) for s in srcs]
        write = fr.scatter(d, dt) if d is not None else None

        def atom(m):
            addrs = ga()
            ids = fr.thread_index if m is True else fr.thread_index[m.mask]
            if m is not True:
                addrs = addrs[m.mask]
            if addrs.size == 0:
                return
            key = _location_owner(fr, space, addrs, ids)
            order = np.lexsort((addrs, key))  # stable: thread order within a location
            sa, sk = addrs[order], key[order]
            starts = np.flatnonzero(np.r_[True, (sa[1:] != sa[:-1]) | (sk[1:] != sk[:-1])])
            counts = np.diff(np.r_[starts, addrs.size])
            rank = np.arange(addrs.size) - np.repeat(starts, counts)
            first = order[starts]
            current = load_space(fr, space, addrs[first], ids[first], dt)
            vals = [np.broadcast_to(g(), (fr.n,))[ids][order] for g in getters]
            if op in _REDUCIBLE or op == "exch":
                old, final = _scan_update(op, current, vals[0], starts, counts, rank)
            elif op == "cas":
                old, final = _cas_update(current, vals[0], vals[1], starts, counts)
            else:
                old, final = _serial_update(_ATOM_OPS[op], current, vals[0], starts, counts, rank)
            store_space(fr, space, addrs[first], ids[first], np.asarray(final).astype(dt))
            if write is not None:
                out = np.empty(addrs.size, dt)
                out[order] = np.asarray(old).astype(dt)
                write(out, m)
        return atom
    return factory


def _location_owner(fr: Frame, space: str | None, addrs: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Which copy of an address a lane touches: its block for shared memory, itself for local."""
    if space == "shared":
        return fr.block_of_thread[ids]
    if space == "local":
        return ids.copy()
    if space is None and addrs.size and int(addrs.max()) >= LOCAL_WINDOW:
        owner = np.full(addrs.size, -1, np.int64)
        for sel, sp, _ in _generic_parts(addrs)[1:]:
            owner[sel] = _location_owner(fr, sp, addrs[sel], ids[sel])
        return owner
    return np.zeros(addrs.size, np.int64)


def _scan_update(op: str, current, values, starts, counts, rank):
    """Old value per lane (sorted order) and final value per location for an associative op:
    a segmented inclusive scan (Hillis-Steele), shifted by one lane."""
    n = values.size
    ends = starts + counts - 1
    if op == "exch":
        old = np.empty(n, values.dtype)
        old[1:] = values[:-1]
        old[starts] = current
        return old, values[ends]
    uf = _REDUCIBLE[op]
    acc = values.astype(np.float64) if values.dtype.kind == "f" else values.copy()
    step = 1
    top = int(rank.max())
    while step <= top:
        lanes = np.flatnonzero(rank >= step)
        acc[lanes] = uf(acc[lanes], acc[lanes - step])  # fancy indexing reads before it writes
        step *= 2
    base = np.repeat(current.astype(acc.dtype), counts)
    excl = np.empty_like(acc)
    excl[1:] = acc[:-1]
    old = np.where(rank > 0, uf(base, excl), base)
    return old, uf(current.astype(acc.dtype), acc[ends])


def _cas_update(current, compare, swap, starts, counts):
    """Serial compare-and-swap: each step finds, per location, the next lane whose compare value
    matches; the lanes before it fail, it succeeds and changes the value the rest compare with."""
    n = compare.size
    lane = np.arange(n)
    group = np.repeat(np.arange(starts.size), counts)
    end = starts + counts
    old = np.empty(n, current.dtype)
    cur = current.copy()
    pos = starts.copy()  # first undecided lane of each location
    while True:
        pending = lane >= pos[group]
        if not pending.any():
            return old, cur
        match = pending & (compare == cur[group])
        hit = end.copy()
        np.minimum.at(hit, group[match], lane[match])
        fail = pending & (lane < hit[group])
        old[fail] = cur[group[fail]]
        won = np.flatnonzero(hit < end)
        old[hit[won]] = cur[won]
        cur[won] = swap[hit[won]]
        pos = np.where(hit < end, hit + 1, end)


def _serial_update(fn, current, values, starts, counts, rank):
    old = np.empty(values.size, current.dtype)
    cur = current.copy()
    group = np.repeat(np.arange(starts.size), counts)
    for r in range(int(rank.max()) + 1):  # round r: the r-th lane of every location
        lanes = np.flatnonzero(rank == r)
        g = group[lanes]
        old[lanes] = cur[g]
        cur[g] = fn(cur[g], values[lanes])
    return old, cur


def _inc(cur, b):
    return np.where(cur >= b, 0, cur + 1).astype(cur.dtype)


def _dec(cur, b):
    return np.where((cur == 0) | (cur > b), b, cur - 1).astype(cur.dtype)


_REDUCIBLE = {"add": np.add, "min": np.minimum, "max": np.maximum,
              "and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor}
_ATOM_OPS: dict[str, Callable] = {
    "add": np.add, "min": np.minimum, "max": np.maximum, "exch": lambda cur, b: b,
    "and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor,
    "cas": lambda cur, b, c: np.where(cur == b, c, cur), "inc": _inc, "dec": _dec,
}


def _make_cp(inst: Instruction, mods: list[str]) -> Factory:
    """cp.async global -> shared, done at once (so commit_group/wait_group have nothing to wait
    for); bytes past the optional source size are zero-filled."""
    if mods[:1] != ["async"]:
        raise Unsupported(f"instruction {inst.opcode}")
    if any(m in ("commit_group", "wait_group", "wait_all") for m in mods):
        return _no_op(inst, mods)
    if "bulk" in mods or "shared" not in [m.removesuffix("::cta") for m in mods] or "global" not in mods:
        raise Unsupported(f"instruction {inst.opcode}")
    ops = inst.operands
    if len(ops) not in (3, 4) or not all(isinstance(x, Addr) for x in ops[:2]) or not isinstance(ops[2], Imm):
        raise Unsupported(f"this form of {inst.opcode}")
    dst, src, size = ops[0], ops[1], int(ops[2].value)
    if size not in (4, 8, 16):
        raise CudaError(Error.cudaErrorInvalidPtx, f"{inst}: cp-size must be 4, 8 or 16")
    u8, u32 = np.dtype(np.uint8), DTYPES["u32"]
    offsets = np.arange(size, dtype=np.uint64)

    def factory(fr: Frame) -> Run:
        gd, gs = fr.address(dst), fr.address(src)
        gsize = fr.src(ops[3], u32) if len(ops) == 4 else None

        def run(m):
            d, s_ = gd(), gs()
            ids = fr.thread_index
            if m is not True:
                ids, d, s_ = ids[m.mask], d[m.mask], s_[m.mask]
            if d.size == 0:
                return
            if np.any(d % np.uint64(size)) or np.any(s_ % np.uint64(size)):
                raise CudaError(Error.cudaErrorMisalignedAddress, f"{inst}: addresses must be {size}-byte aligned")
            keep = np.ones((d.size, size), dtype=bool)
            if gsize is not None:
                n_src = np.broadcast_to(gsize(), (fr.n,))
                n_src = n_src if m is True else n_src[m.mask]
                keep = offsets[None, :] < n_src[:, None].astype(np.uint64)
            data = np.zeros((d.size, size), dtype=u8)
            src_addrs = (s_[:, None] + offsets[None, :])[keep]
            data[keep] = load_space(fr, "global", src_addrs, None, u8)
            rows = np.repeat(ids, size)
            store_space(fr, "shared", (d[:, None] + offsets[None, :]).ravel(), rows, data.ravel())
        return run
    return factory


# -- warp-level ----------------------------------------------------------------------------------
def _full_mask(fr: Frame, m) -> np.ndarray:
    return np.ones(fr.n, dtype=bool) if m is True else m.mask


def _make_shfl(inst: Instruction, mods: list[str]) -> Factory:
    """shfl.sync: every active lane reads another lane's register of the same step (PTX ISA rules
    for the source lane, clamp and sub-warp segment)."""
    mode = next((x for x in mods if x in ("up", "down", "bfly", "idx")), None)
    dt = _one_type(inst, mods)
    ops = inst.operands
    if mode is None or len(ops) not in (4, 5):
        raise Unsupported(f"instruction {inst.opcode}")
    d, a, b, c = ops[:4]
    first, second = (d.first, d.second) if isinstance(d, PredPair) else (d, None)
    u32 = DTYPES["u32"]

    def factory(fr: Frame) -> Run:
        ga, gb, gc = fr.src(a, dt), fr.src(b, u32), fr.src(c, u32)
        _, write = fr.dst(first, dt)
        write_p = fr.dst(second, DTYPES["pred"])[1] if second is not None else None
        lane = fr.lane

        def run(m):
            bval = np.asarray(gb()).astype(np.int64) & 31
            cval = np.asarray(gc()).astype(np.int64)
            seg = (cval >> 8) & 31
            max_lane = (lane & seg) | (cval & 31 & ~seg)
            if mode == "up":
                j = lane - bval
                ok = j >= max_lane
            else:
                j = {"down": lambda: lane + bval, "bfly": lambda: lane ^ bval,
                     "idx": lambda: (lane & seg) | (bval & ~seg)}[mode]()
                ok = j <= max_lane
            src = fr.warp_base + np.where(ok, j, lane)
            src = np.where(src < fr.block_end, src, fr.thread_index)
            write(np.broadcast_to(ga(), (fr.n,))[src], m)
            if write_p is not None:
                write_p(ok, m)
        return run
    return factory


def _warp_ballot(fr: Frame, bits: np.ndarray) -> np.ndarray:
    """Per thread: the ballot (uint32) of its warp over `bits`."""
    weights = np.where(bits, np.left_shift(1, fr.lane).astype(np.float64), 0.0)
    per_warp = np.bincount(fr.warp_key, weights, minlength=fr.nblocks * fr.warps_per_block)
    return per_warp.astype(np.uint32)[fr.warp_key]


def _make_vote(inst: Instruction, mods: list[str]) -> Factory:
    mode = next((x for x in mods if x in ("all", "any", "uni", "ballot")), None)
    if mode is None or len(inst.operands) not in (2, 3):
        raise Unsupported(f"instruction {inst.opcode}")
    d, a = inst.operands[:2]

    def factory(fr: Frame) -> Run:
        ga = _pred_source(fr, a)
        _, write = fr.dst(d, DTYPES["u32"] if mode == "ballot" else DTYPES["pred"])

        def run(m):
            active = _full_mask(fr, m)
            yes = _warp_ballot(fr, np.asarray(ga()) & active)
            if mode == "ballot":
                write(yes, m)
                return
            everyone = _warp_ballot(fr, active)
            result = {"all": lambda: yes == everyone, "any": lambda: yes != 0,
                      "uni": lambda: (yes == 0) | (yes == everyone)}[mode]()
            write(result, m)
        return run
    return factory


def _make_activemask(inst: Instruction, mods: list[str]) -> Factory:
    (d,) = _operands(inst, 1)

    def factory(fr: Frame) -> Run:
        _, write = fr.dst(d, DTYPES["u32"])
        return lambda m: write(_warp_ballot(fr, _full_mask(fr, m)), m)
    return factory


_REDUX = {"add": np.add, "min": np.minimum, "max": np.maximum,
          "and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor}


def _make_redux(inst: Instruction, mods: list[str]) -> Factory:
    op = next((x for x in mods if x in _REDUX), None)
    dt = _one_type(inst, mods)
    if op is None or dt.kind == "f" or len(inst.operands) != 3:
        raise Unsupported(f"instruction {inst.opcode}")
    d, a, _ = inst.operands
    uf = _REDUX[op]
    identity = {"add": 0, "or": 0, "xor": 0, "and": -1, "min": np.iinfo(dt).max, "max": np.iinfo(dt).min}[op]

    def factory(fr: Frame) -> Run:
        ga = fr.src(a, dt)
        _, write = fr.dst(d, dt)
        nwarps = fr.nblocks * fr.warps_per_block

        def run(m):
            active = _full_mask(fr, m)
            acc = np.full(nwarps, np.array(identity).astype(dt), dtype=dt)
            uf.at(acc, fr.warp_key[active], np.broadcast_to(ga(), (fr.n,))[active])
            write(acc[fr.warp_key], m)
        return run
    return factory


# -- device printf -----------------------------------------------------------------------------------
_FORMAT = re.compile(r"%([-+ #0]*)(\*|\d+)?(?:\.(\*|\d+))?(hh|h|ll|l|j|z|t|L)?([diouxXeEfFgGaAcsp%])")
MAX_STRING = 4096


def _read_bytes(fr: Frame, addr: int, thread: int, size: int) -> bytes:
    """`size` bytes at a generic address as one thread sees it."""
    values = load_space(fr, None, np.arange(addr, addr + size, dtype=np.uint64),
                        np.full(size, thread, dtype=np.int64), np.dtype(np.uint8))
    return values.tobytes()


def _read_cstring(fr: Frame, addr: int, thread: int) -> str:
    out = bytearray()
    while len(out) < MAX_STRING:
        byte = _read_bytes(fr, addr + len(out), thread, 1)
        if byte == b"\0":
            break
        out += byte
    return out.decode("utf-8", errors="replace")


def format_printf(fr: Frame, fmt_addr: int, args_addr: int, thread: int) -> str:
    """C printf of a format string and vprintf's packed argument buffer (each argument aligned
    to its size; float arguments were promoted to double)."""
    fmt = _read_cstring(fr, fmt_addr, thread)
    pos = 0

    def take(size: int, kind: str):
        nonlocal pos
        pos = _align_up(pos, size)
        raw = _read_bytes(fr, args_addr + pos, thread, size)
        pos += size
        return np.frombuffer(raw, {"i": SINT, "u": UINT}[kind][size] if kind != "f" else np.float64)[0].item()

    def convert(m: re.Match) -> str:
        flags, width, precision, length, conv = m.groups()
        if conv == "%":
            return "%"
        if width == "*":
            width = str(take(4, "i"))
        if precision == "*":
            precision = str(take(4, "i"))
        spec = "%" + flags + (width or "") + ("." + precision if precision is not None else "")
        if conv in "diouxXc":
            size = 8 if length in ("l", "ll", "j", "z", "t") else 4
            value = take(size, "i" if conv in "di" else "u")
            if conv == "c":
                return (spec + "c") % chr(value & 0xFF)
            return (spec + ("d" if conv in "iu" else conv)) % value
        if conv in "eEfFgGaA":
            value = take(8, "f")
            return value.hex() if conv in "aA" else (spec + conv) % value
        address = take(8, "u")
        if conv == "p":
            return (spec + "s") % f"0x{address:x}"
        return (spec + "s") % (_read_cstring(fr, address, thread) if address else "(null)")
    return _FORMAT.sub(convert, fmt)


def _align_up(n: int, a: int) -> int:
    return -(-n // a) * a


def _builtin(fn: Callable, nargs: int) -> Callable[[Instruction, list[str]], Factory]:
    """A libdevice function the emulator implements itself (see inline.BUILTINS): `fn(fr, ids,
    args)` gets the calling threads and their arguments (one uint64 array per argument) and
    returns their return values, or None."""
    def make(inst: Instruction, mods: list[str]) -> Factory:
        rets, args = inst.operands
        if len(args.items) != nargs:
            raise Unsupported(f"{mods[0]} with {len(args.items)} arguments")
        u64 = np.dtype(np.uint64)

        def factory(fr: Frame) -> Run:
            slots = [fr.kernel.symbol_address(a.name) for a in args.items]
            ret_slot = fr.kernel.symbol_address(rets.items[0].name) if rets.items else None

            def run(m):
                ids = fr.thread_index if m is True else fr.thread_index[m.mask]
                if ids.size == 0:
                    return
                values = [load_space(fr, "local", np.full(ids.size, slot, np.uint64), ids, u64) for slot in slots]
                result = fn(fr, ids, values)
                if ret_slot is not None and result is not None:
                    store_space(fr, "local", np.full(ids.size, ret_slot, np.uint64), ids, result)
            return run
        return factory
    return make


def _vprintf(fr: Frame, ids, args):
    texts = [format_printf(fr, int(f), int(b), int(t)) for f, b, t in zip(*args, ids)]
    fr.kernel.output("".join(texts))
    return np.array([len(t) for t in texts], dtype=np.int32)


def _assertfail(fr: Frame, ids, args):
    """A failed device assert: print the GPU's message for the first failing thread and fail the
    launch with cudaErrorAssert."""
    t = int(ids[0])
    msg, file, func = (_read_cstring(fr, int(args[k][0]), t) for k in (0, 1, 3))
    line = int(args[2][0]) & 0xFFFFFFFF
    block = ",".join(str(int(fr.sregs[f"%ctaid.{c}"][t])) for c in "xyz")
    thread = ",".join(str(int(fr.sregs[f"%tid.{c}"][t])) for c in "xyz")
    text = f"{file}:{line}: {func}: block: [{block}], thread: [{thread}] Assertion `{msg}` failed.\n"
    fr.kernel.output(text)
    raise CudaError(Error.cudaErrorAssert, text.strip())


def _malloc(fr: Frame, ids, args):
    """Device-side malloc: one allocation per calling thread; NULL when memory runs out."""
    out = np.zeros(ids.size, np.uint64)
    for k, size in enumerate(args[0]):
        try:
            out[k] = fr.memory.alloc(int(size))
        except CudaError:
            out[k] = 0
    return out


def _free(fr: Frame, ids, args):
    for ptr in args[0]:
        if int(ptr):
            try:
                fr.memory.free(int(ptr))
            except CudaError:
                raise CudaError(Error.cudaErrorIllegalAddress,
                                f"free(0x{int(ptr):x}) of memory that device malloc did not return") from None
    return None


_BUILTINS = {"vprintf": _builtin(_vprintf, 2), "__assertfail": _builtin(_assertfail, 5),
             "malloc": _builtin(_malloc, 1), "free": _builtin(_free, 1)}


def _make_builtin(inst: Instruction, mods: list[str]) -> Factory:
    make = _BUILTINS.get(mods[0]) if len(mods) == 1 else None
    if make is None:
        raise Unsupported(f"instruction {inst.opcode}")
    return make(inst, mods)


def _no_op(inst: Instruction, mods: list[str]) -> Factory:
    """Barriers, fences, hints: in lockstep, min-PC execution every thread that has not reached
    this point is run before the threads that have (see kernel.py), which is what bar.sync
    promises; memory is sequentially consistent already."""
    return lambda fr: (lambda m: None)


def _make_barrier(inst: Instruction, mods: list[str]) -> Factory:
    """bar.sync and friends; bar.red also reduces a predicate over the block (__syncthreads_or)."""
    if "red" not in mods:
        return _no_op(inst, mods)
    op = next((x for x in mods if x in ("popc", "and", "or")), None)
    if op is None or len(inst.operands) not in (3, 4):
        raise Unsupported(f"instruction {inst.opcode}")
    d, c = inst.operands[0], inst.operands[-1]

    def factory(fr: Frame) -> Run:
        gc = _pred_source(fr, c)
        _, write = fr.dst(d, DTYPES["u32"] if op == "popc" else DTYPES["pred"])

        def run(m):
            active = _full_mask(fr, m)
            yes = np.bincount(fr.block_of_thread, np.asarray(gc()) & active, minlength=fr.nblocks)
            everyone = np.bincount(fr.block_of_thread, active, minlength=fr.nblocks)
            per_block = {"popc": lambda: yes.astype(np.uint32), "and": lambda: yes == everyone,
                         "or": lambda: yes > 0}[op]()
            write(per_block[fr.block_of_thread], m)
        return run
    return factory


def _make_dp(inst: Instruction, mods: list[str]) -> Factory:
    """dp4a / dp2a: dot product of packed bytes (and halves), plus an accumulator."""
    types = _types(mods)
    d, a, b, c = _operands(inst, 4)
    if len(types) != 2 or (inst.opcode.startswith("dp2a") and not ({"lo", "hi"} & set(mods))):
        raise Unsupported(f"instruction {inst.opcode}")
    at, bt = types
    four = inst.opcode.startswith("dp4a")
    hi = "hi" in mods
    out_dt = DTYPES["s32"] if at.kind == "i" or bt.kind == "i" else DTYPES["u32"]

    def parts(x, dt, width):
        x = np.asarray(x).astype(np.uint32).astype(np.int64)
        n = 32 // width
        vals = [(x >> (width * k)) & ((1 << width) - 1) for k in range(n)]
        if dt.kind == "i":
            vals = [np.where(v >= 1 << (width - 1), v - (1 << width), v) for v in vals]
        return vals

    def fn(x, y, z):
        xs = parts(x, at, 8 if four else 16)
        ys = parts(y, bt, 8)
        if not four:
            ys = ys[2:] if hi else ys[:2]
        total = sum(p * q for p, q in zip(xs, ys)) + np.asarray(z).astype(np.int64)
        return total.astype(out_dt)
    return _elementwise(inst, out_dt, fn, src_dts=[DTYPES["u32"], DTYPES["u32"], out_dt])


def _make_mul24(inst: Instruction, mods: list[str]) -> Factory:
    dt = _one_type(inst, mods)
    ops = inst.operands
    if dt.itemsize != 4 or len(ops) != (4 if inst.opcode.startswith("mad") else 3):
        raise Unsupported(f"instruction {inst.opcode}")
    signed = dt.kind == "i"

    def low24(x):
        x = np.asarray(x).astype(np.int64) & 0xFFFFFF
        return np.where(x >= 1 << 23, x - (1 << 24), x) if signed else x

    def product(x, y):
        p = low24(x) * low24(y)  # 48 bits, exact in int64
        return (p >> 16) if "hi" in mods else p

    if len(ops) == 4:
        return _elementwise(inst, dt, lambda x, y, z: (product(x, y) + np.asarray(z).astype(np.int64)).astype(dt))
    return _elementwise(inst, dt, lambda x, y: product(x, y).astype(dt))


def _make_sad(inst: Instruction, mods: list[str]) -> Factory:
    dt = _one_type(inst, mods)
    _operands(inst, 4)
    wide = np.int64 if dt.itemsize < 8 else (np.int64 if dt.kind == "i" else np.uint64)

    def fn(a, b, c):
        a, b = np.asarray(a).astype(wide), np.asarray(b).astype(wide)
        return (np.where(a > b, a - b, b - a) + np.asarray(c).astype(wide)).astype(dt)
    return _elementwise(inst, dt, fn)


def _make_trap(inst: Instruction, mods: list[str]) -> Factory:
    def run(m):
        raise CudaError(Error.cudaErrorLaunchFailure, "the kernel executed trap")
    return lambda fr: run


# -- half2, bfloat16, bfloat16x2 ------------------------------------------------------------------------
_PACKED = {"bf16": (1, "bf16"), "f16x2": (2, "f16"), "bf16x2": (2, "bf16")}  # lanes, element format
_PACKED_OPS = ("add", "sub", "mul", "fma", "min", "max", "neg", "abs")


def _packed_type(mods: list[str]) -> str | None:
    return next((m for m in mods if m in _PACKED), None)


def _unpack(raw, fmt: str, lanes: int) -> list[np.ndarray]:
    """The lanes of packed registers (low half first) as float32."""
    raw = np.asarray(raw).astype(UINT[2 * lanes]).reshape(-1)
    halves = raw.view(np.uint16).reshape(-1, lanes) if lanes == 2 else raw.reshape(-1, 1)
    if fmt == "f16":
        return [halves[:, k].view(np.float16).astype(np.float32) for k in range(lanes)]
    return [(halves[:, k].astype(np.uint32) << np.uint32(16)).view(np.float32) for k in range(lanes)]


def _f32_to_bf16(x, mode: str = "rn") -> np.ndarray:
    x = np.ascontiguousarray(x, np.float32)
    bits = x.view(np.uint32)
    if mode == "rz":
        out = (bits >> np.uint32(16)).astype(np.uint16)
    else:
        out = ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FFF), out)


def _f64_to_f32_odd(x) -> np.ndarray:
    """float64 to float32 rounded to odd, so a second rounding (to bf16) rounds once in effect."""
    x = np.asarray(x, np.float64)
    r = x.astype(np.float32)
    inexact = (r.astype(np.float64) != x) & np.isfinite(x)
    away = inexact & (np.abs(r.astype(np.float64)) > np.abs(x))
    r = np.where(away, np.nextafter(r, np.float32(0)), r)
    bits = np.ascontiguousarray(r).view(np.uint32) | inexact.astype(np.uint32)
    return bits.view(np.float32)


def _pack(values: list, fmt: str, mode: str = "rn") -> np.ndarray:
    """Round float32/float64 lanes to the element format and pack them (low half first)."""
    if fmt == "f16":
        halves = [np.asarray(v).astype(np.float16).view(np.uint16) for v in values]
    else:
        halves = [_f32_to_bf16(_f64_to_f32_odd(v) if np.asarray(v).dtype == np.float64 else v, mode)
                  for v in values]
    halves = [np.asarray(h).reshape(-1) for h in halves]
    if len(halves) == 1:
        return halves[0]
    n = max(h.size for h in halves)
    return np.stack([np.broadcast_to(h, (n,)) for h in halves], axis=1).view(np.uint32).reshape(n)


def _make_packed(inst: Instruction, base: str, mods: list[str]) -> Factory:
    """add/sub/mul/fma/min/max/neg/abs on .bf16, .f16x2 and .bf16x2: each lane is computed in
    float32 (float64 for fma, rounded to odd) and rounded once to the element format."""
    ptype = _packed_type(mods)
    lanes, fmt = _PACKED[ptype]
    if base not in _PACKED_OPS or any(m in mods for m in ("ftz", "sat", "relu", "oob", "rz", "rm", "rp", "NaN")):
        raise Unsupported(f"instruction {inst.opcode}")
    raw_dt = UINT[2 * lanes]
    sign = np.array(0x80008000 if lanes == 2 else 0x8000).astype(raw_dt)[()]
    if base in ("neg", "abs"):
        _operands(inst, 2)
        if base == "neg":
            return _elementwise(inst, raw_dt, lambda a: np.bitwise_xor(a, sign))
        return _elementwise(inst, raw_dt, lambda a: np.bitwise_and(a, ~sign))
    nsrc = 3 if base == "fma" else 2
    _operands(inst, nsrc + 1)
    lane_fn = {
        "add": np.add, "sub": np.subtract, "mul": np.multiply, "min": np.fmin, "max": np.fmax,
        "fma": lambda x, y, z: _add_round_odd(np.asarray(x, np.float64) * y, z),
    }[base]

    def fn(*args):
        unpacked = [_unpack(a, fmt, lanes) for a in args]
        return _pack([lane_fn(*[u[k] for u in unpacked]) for k in range(lanes)], fmt)
    return _elementwise(inst, raw_dt, fn)


def _make_cvt_packed(inst: Instruction, mods: list[str]) -> Factory:
    """cvt to and from .bf16, and the two-float packings cvt.rn.{f16x2,bf16x2}.f32 d, hi, lo."""
    types = [m for m in mods if m in DTYPES or m in _PACKED]
    if len(types) != 2 or any(m in mods for m in ("relu", "satfinite", "sat", "ftz")):
        raise Unsupported(f"instruction {inst.opcode}")
    dst, src = types
    mode = "rz" if "rz" in mods else "rn"
    if "rm" in mods or "rp" in mods or (mode == "rz" and dst != "bf16"):
        raise Unsupported(f"instruction {inst.opcode} (rounding mode)")
    f32 = DTYPES["f32"]
    if dst in ("f16x2", "bf16x2") and src == "f32":
        _operands(inst, 3)
        fmt = _PACKED[dst][1]
        return _elementwise(inst, DTYPES["u32"], lambda hi, lo: _pack([lo, hi], fmt, mode), src_dts=[f32, f32])
    if dst == "bf16" and src in ("f32", "f64"):
        _operands(inst, 2)
        return _elementwise(inst, DTYPES["u16"], lambda x: _pack([x], "bf16", mode), src_dts=[DTYPES[src]])
    if src == "bf16" and dst in ("f32", "f64"):
        _operands(inst, 2)
        return _elementwise(inst, DTYPES[dst], lambda x: _unpack(x, "bf16", 1)[0].astype(DTYPES[dst]),
                            src_dts=[DTYPES["u16"]])
    raise Unsupported(f"instruction {inst.opcode}")


# -- directed rounding -------------------------------------------------------------------------------
def _step_directed(r: np.ndarray, err: np.ndarray, mode: str, finite_inputs) -> np.ndarray:
    """Turn the round-to-nearest result `r` into the rz/rm/rp one, given the sign of the exact
    result minus `r` (`err`) and whether the inputs were finite (to undo overflow to infinity)."""
    r = np.asarray(r)
    err = np.where(np.isnan(err), 0.0, err)
    if mode == "rz":
        step = (err != 0) & (np.signbit(err) != np.signbit(r)) & (r != 0)
        toward = np.zeros_like(r)
    else:
        step = err < 0 if mode == "rm" else err > 0
        toward = np.full_like(r, -np.inf if mode == "rm" else np.inf)
    out = np.where(step, np.nextafter(r, toward), r)
    overflow = np.isinf(r) & finite_inputs
    if np.any(overflow):
        big = np.finfo(r.dtype).max
        fixed = {"rz": np.copysign(big, r), "rm": np.where(r > 0, big, r),
                 "rp": np.where(r < 0, -big, r)}[mode].astype(r.dtype)
        out = np.where(overflow, fixed, out)
    return out.astype(r.dtype)


def _directed_parts(base: str, dt: np.dtype, args: list) -> tuple[np.ndarray, np.ndarray]:
    """(round-to-nearest result, a value with the sign of exact - result) for one operation."""
    x = [np.asarray(v, np.float64) for v in args]
    f64 = dt == np.float64
    if base in ("add", "sub"):
        b = x[1] if base == "add" else -x[1]
        if f64:
            return _two_sum(x[0], b)
        exact = x[0] + b
    elif base == "mul":
        if f64:
            return _two_prod(x[0], x[1])
        exact = x[0] * x[1]
    elif base in ("fma", "mad"):
        if f64:
            raise Unsupported("fma.f64 with directed rounding")
        s, e = _two_sum(x[0] * x[1], x[2])
        r = _add_round_odd(x[0] * x[1], x[2]).astype(dt)
        return r, (s - r.astype(np.float64)) + e
    elif base in ("div", "rcp"):
        num, den = (x[0], x[1]) if base == "div" else (np.ones_like(x[0]), x[0])
        r = (num / den).astype(dt)
        rem = _fma_f64(-r.astype(np.float64), den, num)  # exact remainder
        return r, rem * np.sign(den)
    else:  # sqrt
        r = np.sqrt(x[0]).astype(dt)
        return r, _fma_f64(-r.astype(np.float64), r.astype(np.float64), x[0])
    r = exact.astype(dt)
    return r, exact - r.astype(np.float64)


def _make_directed(inst: Instruction, base: str, mode: str) -> Factory:
    dt = _one_type(inst, inst.opcode.split(".")[1:])
    if dt.kind != "f" or dt == np.float16:
        raise Unsupported(f"instruction {inst.opcode} (directed rounding)")
    nsrc = {"sqrt": 1, "rcp": 1, "fma": 3, "mad": 3}.get(base, 2)
    _operands(inst, nsrc + 1)

    def fn(*args):
        r, err = _directed_parts(base, dt, list(args))
        finite = np.logical_and.reduce([np.isfinite(np.asarray(a)) for a in args])
        return _step_directed(r, err, mode, finite)
    return _elementwise(inst, dt, fn)


_MAKERS: dict[str, Callable[[Instruction, list[str]], Factory]] = {
    "add": _arith(np.add), "sub": _arith(np.subtract),
    "mul": _make_mul, "mad": _make_mad, "fma": _make_fma, "div": _make_div, "rem": _make_rem,
    "min": _make_minmax(np.minimum, np.fmin), "max": _make_minmax(np.maximum, np.fmax),
    "abs": _make_unary(np.abs), "neg": _make_unary(np.negative),
    "sqrt": _make_float_fn(np.sqrt), "rsqrt": _make_float_fn(lambda x: 1.0 / np.sqrt(x)),
    "rcp": _make_float_fn(lambda x: 1.0 / x), "sin": _make_float_fn(np.sin), "cos": _make_float_fn(np.cos),
    "lg2": _make_float_fn(np.log2), "ex2": _make_float_fn(np.exp2), "tanh": _make_float_fn(np.tanh),
    "copysign": _make_copysign, "testp": _make_testp,
    "and": _make_bitop(np.bitwise_and), "or": _make_bitop(np.bitwise_or), "xor": _make_bitop(np.bitwise_xor),
    "not": _make_bitop(np.invert), "cnot": _make_cnot,
    "shl": _make_shift("shl"), "shr": _make_shift("shr"),
    "popc": _make_popc, "clz": _make_clz, "brev": _make_brev, "bfind": _make_bfind,
    "bfe": _make_bfe, "bfi": _make_bfi, "prmt": _make_prmt, "lop3": _make_lop3, "shf": _make_shf,
    "setp": _make_setp, "set": _make_set, "selp": _make_selp,
    "mov": _make_mov, "cvt": _make_cvt, "cvta": _make_cvta, "isspacep": _make_isspacep,
    "ld": _make_ld, "ldu": _make_ld, "st": _make_st, "atom": _make_atom, "red": _make_atom,
    "bar": _make_barrier, "barrier": _make_barrier, "membar": _no_op, "fence": _no_op,
    "nanosleep": _no_op, "prefetch": _no_op, "prefetchu": _no_op,
    "cp": _make_cp, "dp4a": _make_dp, "dp2a": _make_dp, "mul24": _make_mul24, "mad24": _make_mul24, "sad": _make_sad,
    "trap": _make_trap, "shfl": _make_shfl, "vote": _make_vote, "activemask": _make_activemask,
    "redux": _make_redux, "qcuda": _make_builtin,
}


def _flushing(factory: Factory) -> Factory:
    """Bind with f32 sources and results flushed to zero when subnormal (.ftz)."""
    def bind(fr: Frame) -> Run:
        fr.ftz = True
        try:
            return factory(fr)
        finally:
            fr.ftz = False
    return bind


_ROUNDED = ("add", "sub", "mul", "mad", "fma", "div", "sqrt", "rcp")
_DIRECTED = {"rz", "rm", "rp"}


def decode(inst: Instruction) -> Factory:
    """The factory for one instruction (not bra/ret/exit: kernel.py handles control flow)."""
    parts = inst.opcode.split(".")
    maker = _MAKERS.get(parts[0])
    if maker is None:
        raise Unsupported(f"instruction {inst.opcode} (line {inst.line})")
    directed = _DIRECTED.intersection(parts[1:]) if parts[0] in _ROUNDED else None
    packed = parts[0] != "cvt" and _packed_type(parts[1:])
    try:
        if packed:
            factory = _make_packed(inst, parts[0], parts[1:])
        elif directed:
            factory = _make_directed(inst, parts[0], directed.pop())
        else:
            factory = maker(inst, parts[1:])
    except Unsupported as e:
        raise Unsupported(f"{e.detail.removeprefix('the PTX emulator does not support ')} (line {inst.line})") from None
    if "ftz" in parts:
        factory = _flushing(factory)
    if inst.guard is None:
        return factory
    name, negated = inst.guard

    def guarded(fr: Frame) -> Run:
        run = factory(fr)
        pred = fr.src(Reg(name), DTYPES["pred"])

        def run_guarded(m):
            p = pred()
            active = ~p if negated else p.copy()
            if m is not True:
                active &= m.mask
            run(Active(active))
        return run_guarded
    return guarded
