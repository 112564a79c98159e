"""PTX instruction semantics, decoded once per module into factories: `decode` and its table,
and the integer, logic, comparison, move and conversion instructions. Memory instructions are
in memops.py, warp and block collectives in warp.py, exact float rounding in floats.py, and
printf/assert/malloc in runtime.py.

`decode(instruction)` parses the opcode and operands once and returns a factory; the factory,
given a `Frame`, binds the operands to that batch's register arrays and returns the function
that runs the instruction: `run(m)`, where m is True (every thread active) or an `Active`.
Anything not implemented raises `Unsupported` (cudaErrorNotSupported) naming the instruction,
never a silent wrong answer.

Float arithmetic is correctly rounded, fma included, in every rounding mode (.rn, and .rz/.rm/.rp
from the exact error of each operation); `.ftz` flushes single-precision subnormal operands and
results; `.sat` clamps to [0, 1]. Multi-word integer arithmetic passes its carry through a hidden
per-thread register (CARRY). Deliberate approximation, a later issue:
`.approx` math (sin, ex2, rsqrt, ...) is computed to full precision, closer than the hardware.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .....protocol.errors import CudaError, Error
from .frame import (
    CLUSTER_RANK_SHIFT, CLUSTER_WINDOW, DTYPES, LOCAL_WINDOW, LOWEST_WINDOW, SHARED_WINDOW, SINT, UINT, WINDOW_SIZE,
    Active, Frame, Unsupported, blend,
)
from .floats import (
    fma_f64, fma_narrow, make_cvt_packed, make_directed, make_packed, packed_type, saturate, step_directed,
)
from .memops import make_atom, make_cp, make_ld, make_mbarrier, make_st
from .parser import Imm, Instruction, PredPair, Reg, Vec
from .runtime import make_builtin
from .shapes import Factory, Run, elementwise, no_op, one_type, operands, pred_source, types_of, ufunc_op
from .matrix import make_wmma
from .warp import make_activemask, make_barrier, make_match, make_redux, make_shfl, make_vote

M32 = np.uint64(0xFFFF_FFFF)
U32 = np.uint64(32)


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
    if x.dtype.kind == "i":  # through the unsigned type of the same width: no sign extension
        return x.astype(UINT[x.dtype.itemsize]).astype(np.uint64)
    return x.astype(np.uint64)


# -- instruction makers ---------------------------------------------------------------------------
def _arith(uf: np.ufunc):
    def make(inst: Instruction, mods: list[str]) -> Factory:
        dt = one_type(inst, mods)
        operands(inst, 3)
        if "cc" in mods:
            return _make_carry(inst, mods)
        if "sat" in mods and dt.kind != "f":
            lo, hi = np.iinfo(dt).min, np.iinfo(dt).max
            wide = np.dtype(np.int64)
            return elementwise(inst, dt, lambda a, b: np.clip(uf(np.asarray(a, wide), np.asarray(b, wide)), lo, hi))
        if "sat" in mods:
            return elementwise(inst, dt, lambda a, b: saturate(uf(a, b), dt))
        return ufunc_op(inst, dt, uf)
    return make


def _make_mul(inst: Instruction, mods: list[str]) -> Factory:
    dt = one_type(inst, mods)
    operands(inst, 3)
    if dt.kind == "f" and "sat" in mods:
        return elementwise(inst, dt, lambda a, b: saturate(np.multiply(a, b), dt))
    if dt.kind == "f":
        return ufunc_op(inst, dt, np.multiply)
    if "wide" in mods:
        wd = _wide(dt)
        return elementwise(inst, dt, lambda a, b: np.multiply(np.asarray(a, wd), np.asarray(b, wd)), out_dt=wd)
    if "hi" in mods:
        return elementwise(inst, dt, _hi_fn(dt))
    return ufunc_op(inst, dt, np.multiply)


def _hi_fn(dt: np.dtype) -> Callable:
    if dt.itemsize == 8:
        return _mulhi_s64 if dt.kind == "i" else _mulhi_u64
    wd, shift = _wide(dt), dt.itemsize * 8
    return lambda a, b: (np.multiply(np.asarray(a, wd), np.asarray(b, wd)) >> shift).astype(dt)


def _make_mad(inst: Instruction, mods: list[str]) -> Factory:
    dt = one_type(inst, mods)
    operands(inst, 4)
    if dt.kind == "f":
        return _make_fma(inst, mods)
    if "cc" in mods:
        return _make_carry(inst, mods)
    if "wide" in mods:
        wd = _wide(dt)
        return elementwise(inst, dt, lambda a, b, c: np.multiply(np.asarray(a, wd), np.asarray(b, wd)) + c,
                            out_dt=wd, src_dts=[dt, dt, wd])
    if "hi" in mods:
        hi = _hi_fn(dt)
        return elementwise(inst, dt, lambda a, b, c: hi(a, b) + c)
    return elementwise(inst, dt, lambda a, b, c: np.multiply(a, b) + c)


CARRY = "%cc.cf"  # the condition code's carry flag: a hidden u32 register, 0 or 1 per thread


def carry_use(inst: Instruction) -> tuple[bool, bool]:
    """(reads, writes) the carry flag: addc/subc/madc read it, a .cc modifier writes it."""
    parts = inst.opcode.split(".")
    return parts[0] in ("addc", "subc", "madc"), parts[0] in ("add", "sub", "mad", "addc", "subc", "madc") \
        and "cc" in parts[1:]


def _make_carry(inst: Instruction, mods: list[str]) -> Factory:
    """Extended-precision integer arithmetic (add.cc, addc, sub.cc, subc, mad.lo/hi.cc, madc):
    the carry (a borrow for sub) goes from one instruction to the next through CARRY, as
    nvcc's multi-word code (double-precision trig argument reduction, 128-bit products) needs."""
    dt = one_type(inst, mods)
    base = inst.opcode.split(".")[0]
    reads, writes = carry_use(inst)
    op = base[:-1] if reads else base
    if dt.kind not in "iu" or dt.itemsize not in (4, 8) or (op == "mad" and not {"lo", "hi"} & set(mods)):
        raise Unsupported(f"instruction {inst.opcode}")
    d, *srcs = operands(inst, 4 if op == "mad" else 3)
    ut, u32 = np.dtype(UINT[dt.itemsize]), DTYPES["u32"]
    high = _hi_fn(dt) if "hi" in mods else None

    def factory(fr: Frame) -> Run:
        gets = [fr.src(x, dt) for x in srcs]
        _, write = fr.dst(d, dt)
        get_cf = fr.src(Reg(CARRY), u32) if reads else None
        write_cf = fr.dst(Reg(CARRY), u32)[1] if writes else None

        def run(m):
            vals = [np.broadcast_to(g(), (fr.n,)) for g in gets]
            if op == "mad":
                a, b, c = vals
                first = high(a, b).astype(ut) if high else np.multiply(a.astype(ut), b.astype(ut))
                x, y = first, c.astype(ut)
            else:
                x, y = vals[0].astype(ut), vals[1].astype(ut)
            cin = get_cf().astype(ut) if reads else ut.type(0)
            if op == "sub":
                t = x - y
                out, cf = t - cin, (x < y) | (t < cin)
            else:
                t = x + y
                out = t + cin
                cf = (t < x) | (out < t)
            write(out.view(dt), m)
            if write_cf is not None:
                write_cf(cf.astype(u32), m)
        return run
    return factory


def _make_fma(inst: Instruction, mods: list[str]) -> Factory:
    dt = one_type(inst, mods)
    operands(inst, 4)
    if dt == np.float64:
        fn = fma_f64
    else:
        fn = lambda a, b, c: fma_narrow(a, b, c, dt)  # noqa: E731
    if "sat" in mods:
        base = fn
        fn = lambda a, b, c: saturate(base(a, b, c), dt)  # noqa: E731
    return elementwise(inst, dt, fn)


def _make_div(inst: Instruction, mods: list[str]) -> Factory:
    dt = one_type(inst, mods)
    operands(inst, 3)
    if dt.kind == "f":
        return ufunc_op(inst, dt, np.divide)
    return elementwise(inst, dt, _trunc_div)


def _make_rem(inst: Instruction, mods: list[str]) -> Factory:
    dt = one_type(inst, mods)
    operands(inst, 3)
    return elementwise(inst, dt, _rem)


def _make_minmax(int_uf: np.ufunc, float_uf: np.ufunc):
    def make(inst: Instruction, mods: list[str]) -> Factory:
        dt = one_type(inst, mods)
        operands(inst, 3)
        uf = float_uf if dt.kind == "f" else int_uf
        if "relu" in mods:  # negative results (and NaN) become 0
            zero = dt.type(0)
            return elementwise(inst, dt, lambda a, b: np.fmax(uf(a, b), zero) if dt.kind == "f"
                                else np.maximum(uf(a, b), zero))
        if "NaN" in mods:
            return ufunc_op(inst, dt, np.minimum if uf is np.fmin else np.maximum)
        return ufunc_op(inst, dt, uf)
    return make


def _make_unary(uf: np.ufunc):
    def make(inst: Instruction, mods: list[str]) -> Factory:
        dt = one_type(inst, mods)
        operands(inst, 2)
        return ufunc_op(inst, dt, uf)
    return make


def _make_float_fn(fn: Callable):
    def make(inst: Instruction, mods: list[str]) -> Factory:
        dt = one_type(inst, mods)
        operands(inst, 2)
        if dt.kind != "f":
            raise Unsupported(f"instruction {inst.opcode}")
        return elementwise(inst, dt, lambda a: np.asarray(fn(np.asarray(a, np.float64))).astype(dt))
    return make


def _make_copysign(inst: Instruction, mods: list[str]) -> Factory:
    dt = one_type(inst, mods)
    operands(inst, 3)
    return elementwise(inst, dt, lambda a, b: np.copysign(b, a))


def _make_testp(inst: Instruction, mods: list[str]) -> Factory:
    dt = one_type(inst, mods)
    operands(inst, 2)
    tests = {
        "finite": np.isfinite, "infinite": np.isinf, "number": lambda a: ~np.isnan(a),
        "notanumber": np.isnan,
        "normal": lambda a: np.isfinite(a) & (np.abs(a) >= np.finfo(dt).tiny),
        "subnormal": lambda a: (a != 0) & (np.abs(a) < np.finfo(dt).tiny),
    }
    test = next((tests[m] for m in mods if m in tests), None)
    if test is None:
        raise Unsupported(f"instruction {inst.opcode}")
    return elementwise(inst, dt, test, out_dt=DTYPES["pred"])


def _make_shift(kind: str):
    def make(inst: Instruction, mods: list[str]) -> Factory:
        dt = one_type(inst, mods)
        d, a, b = operands(inst, 3)
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
                    name = d.name
                    return lambda m: (uf(ga(), amount, out=out) if m is True or m.clobbers(name)
                                      else blend(out, uf(ga(), amount), m))
                return lambda m: write(uf(ga(), amount), m)
            return factory
        return elementwise(inst, dt, fn, src_dts=[dt, DTYPES["u32"]])
    return make


def _make_bitop(uf: np.ufunc):
    def make(inst: Instruction, mods: list[str]) -> Factory:
        dt = one_type(inst, mods)
        operands(inst, 3 if uf is not np.invert else 2)
        return ufunc_op(inst, dt, uf)
    return make


def _make_cnot(inst: Instruction, mods: list[str]) -> Factory:
    dt = one_type(inst, mods)
    operands(inst, 2)
    return elementwise(inst, dt, lambda a: (np.asarray(a) == 0).astype(dt))


_POPC8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint32)


def _popcount(a) -> np.ndarray:
    a = np.ascontiguousarray(a)
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(a).astype(np.uint32)
    return _POPC8[a.view(np.uint8)].reshape(a.shape + (a.dtype.itemsize,)).sum(axis=-1, dtype=np.uint32)


def _make_popc(inst: Instruction, mods: list[str]) -> Factory:
    dt = one_type(inst, mods)
    operands(inst, 2)
    return elementwise(inst, dt, _popcount, out_dt=DTYPES["u32"])


def _make_clz(inst: Instruction, mods: list[str]) -> Factory:
    dt = one_type(inst, mods)
    operands(inst, 2)
    bits = dt.itemsize * 8
    return elementwise(inst, dt, lambda a: (np.uint32(bits) - _bit_length(a, bits)).astype(np.uint32),
                        out_dt=DTYPES["u32"])


def _make_bfind(inst: Instruction, mods: list[str]) -> Factory:
    dt = one_type(inst, mods)
    operands(inst, 2)
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
    return elementwise(inst, dt, fn, out_dt=DTYPES["u32"])


def _make_brev(inst: Instruction, mods: list[str]) -> Factory:
    dt = one_type(inst, mods)
    operands(inst, 2)
    return elementwise(inst, dt, lambda a: _brev(np.broadcast_to(a, np.shape(a)).astype(dt)))


def _make_bfe(inst: Instruction, mods: list[str]) -> Factory:
    dt = one_type(inst, mods)
    operands(inst, 4)
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
    return elementwise(inst, dt, fn, src_dts=[dt, u32, u32])


def _make_bfi(inst: Instruction, mods: list[str]) -> Factory:
    dt = one_type(inst, mods)
    operands(inst, 5)
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
    return elementwise(inst, dt, fn, src_dts=[dt, dt, u32, u32])


# prmt's modes: for each value of c[1:0], the source byte of d.b0, d.b1, d.b2, d.b3 (PTX ISA table)
_PRMT_MODES = {
    "f4e": ((0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (3, 4, 5, 6)),
    "b4e": ((0, 7, 6, 5), (1, 0, 7, 6), (2, 1, 0, 7), (3, 2, 1, 0)),
    "rc8": ((0, 0, 0, 0), (1, 1, 1, 1), (2, 2, 2, 2), (3, 3, 3, 3)),
    "ecl": ((0, 1, 2, 3), (1, 1, 2, 3), (2, 2, 2, 3), (3, 3, 3, 3)),
    "ecr": ((0, 0, 0, 0), (0, 1, 1, 1), (0, 1, 2, 2), (0, 1, 2, 3)),
    "rc16": ((0, 1, 0, 1), (2, 3, 2, 3), (0, 1, 0, 1), (2, 3, 2, 3)),
}


def _make_prmt(inst: Instruction, mods: list[str]) -> Factory:
    operands(inst, 4)
    mode = next((_PRMT_MODES[m] for m in mods if m in _PRMT_MODES), None)
    u32 = DTYPES["u32"]

    def fn(a, b, c):
        x = _as_u64(a) | (_as_u64(b) << U32)
        c = np.asarray(c).astype(np.uint64)
        out = np.zeros(np.broadcast(x, c).shape, np.uint64)
        if mode is not None:
            table = np.array(mode, dtype=np.uint64)[(c & np.uint64(3)).astype(np.intp)]
        for i in range(4):
            if mode is not None:
                byte = (x >> (table[..., i] * np.uint64(8))) & np.uint64(0xFF)
            else:  # default: a selector nibble per byte; its bit 3 replicates the byte's sign
                sel = (c >> np.uint64(4 * i)) & np.uint64(0xF)
                byte = (x >> ((sel & np.uint64(7)) * np.uint64(8))) & np.uint64(0xFF)
                sign = np.where(byte & np.uint64(0x80), np.uint64(0xFF), np.uint64(0))
                byte = np.where(sel & np.uint64(8), sign, byte)
            out |= byte << np.uint64(8 * i)
        return out.astype(np.uint32)
    return elementwise(inst, u32, fn)


def _make_lop3(inst: Instruction, mods: list[str]) -> Factory:
    dt = one_type(inst, mods)
    d, a, b, c, lut = operands(inst, 5)
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
    return elementwise(inst, dt, fn, src_dts=[dt, dt, dt])


def _make_shf(inst: Instruction, mods: list[str]) -> Factory:
    dt = one_type(inst, mods)
    operands(inst, 4)
    left, wrap = "l" in mods, "wrap" in mods

    def fn(a, b, c):
        x = _as_u64(a) | (_as_u64(b) << U32)
        n = np.asarray(c).astype(np.uint64)
        n = n & np.uint64(31) if wrap else np.minimum(n, np.uint64(32))
        if left:
            return ((x << n) >> U32).astype(np.uint32)
        return ((x >> n) & M32).astype(np.uint32)
    return elementwise(inst, dt, fn, src_dts=[dt, dt, DTYPES["u32"]])


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


def _make_setp(inst: Instruction, mods: list[str]) -> Factory:
    types = types_of(mods)
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
        gc = pred_source(fr, ops[3]) if boolop else None
        out, write = fr.dst(first, pred)
        write2 = fr.dst(second, pred)[1] if second is not None else None

        if boolop is None and write2 is None and out is not None and isinstance(cmp, np.ufunc):
            name = first.name
            return lambda m: (cmp(ga(), gb(), out=out) if m is True or m.clobbers(name)
                              else blend(out, cmp(ga(), gb()), m))

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
    types = types_of(mods)
    if len(types) != 2 or len(inst.operands) != 3:
        raise Unsupported(f"instruction {inst.opcode}")
    out_dt, dt = types
    cmp = _compare(inst, mods, dt)
    true = out_dt.type(1.0) if out_dt.kind == "f" else np.array(-1).astype(out_dt)[()]
    return elementwise(inst, dt, lambda a, b: np.where(cmp(a, b), true, out_dt.type(0)), out_dt=out_dt)


def _make_selp(inst: Instruction, mods: list[str]) -> Factory:
    dt = one_type(inst, mods)
    d, a, b, c = operands(inst, 4)

    def factory(fr: Frame) -> Run:
        ga, gb, gc = fr.src(a, dt), fr.src(b, dt), pred_source(fr, c)
        _, write = fr.dst(d, dt)
        return lambda m: write(np.where(gc(), ga(), gb()), m)
    return factory


def _make_mov(inst: Instruction, mods: list[str]) -> Factory:
    dt = one_type(inst, mods)
    d, a = operands(inst, 2)
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
    if packed_type(mods):
        return make_cvt_packed(inst, mods)
    types = types_of(mods)
    if len(types) != 2:
        raise Unsupported(f"instruction {inst.opcode}")
    dt, at = types
    d, a = operands(inst, 2)
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
                return step_directed(r, np.sign(err).astype(np.float64), frnd, True)
    else:  # float -> float
        if irnd is not None:
            rnd = _FLOAT_TO_INT_ROUND[irnd]
            fn = lambda x: rnd(np.asarray(x)).astype(dt)  # noqa: E731
        elif dt.itemsize < at.itemsize and frnd not in (None, "rn"):
            def fn(x):
                x64 = np.asarray(x, np.float64)
                r = x64.astype(dt)
                return step_directed(r, x64 - r.astype(np.float64), frnd, np.isfinite(x64))
        else:
            fn = lambda x: np.asarray(x).astype(dt)  # noqa: E731
        if sat:
            base = fn
            fn = lambda x: saturate(base(x), dt)  # noqa: E731
    return elementwise(inst, dt, fn, src_dts=[at])


def _make_cvta(inst: Instruction, mods: list[str]) -> Factory:
    dt = one_type(inst, mods)
    d, a = operands(inst, 2)
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
    return elementwise(inst, dt, fn)


def _make_mapa(inst: Instruction, mods: list[str]) -> Factory:
    """mapa: the address of the same shared variable in the block of rank `b` of the cluster (distributed shared
    memory): generic (a generic shared address in, a generic one out) or .shared::cluster (32-bit offsets)."""
    dt = one_type(inst, [m for m in mods if m != "shared::cluster"])
    operands(inst, 3)
    rank_bits = np.uint64(CLUSTER_RANK_SHIFT)
    offset_mask = np.uint64((1 << CLUSTER_RANK_SHIFT) - 1)

    def fn(a, b):
        a, b = np.asarray(a).astype(np.uint64), np.asarray(b).astype(np.uint64)
        if "shared::cluster" in mods:
            return ((b + np.uint64(1)) << rank_bits) | (a & offset_mask)
        within = np.where(a >= np.uint64(SHARED_WINDOW), a - np.uint64(SHARED_WINDOW), a - np.uint64(CLUSTER_WINDOW))
        return np.uint64(CLUSTER_WINDOW) + ((b + np.uint64(1)) << rank_bits) + (within & offset_mask)
    return elementwise(inst, dt, lambda a, b: fn(a, b).astype(dt), src_dts=[dt, DTYPES["u32"]])


def _make_isspacep(inst: Instruction, mods: list[str]) -> Factory:
    d, a = operands(inst, 2)
    space = mods[0] if mods else ""
    lo = {"shared": SHARED_WINDOW, "local": LOCAL_WINDOW}.get(space)
    u64 = DTYPES["u64"]
    if space == "global":
        fn = lambda x: np.asarray(x) < np.uint64(LOWEST_WINDOW)  # noqa: E731
    elif space == "shared::cluster":
        fn = lambda x: (np.asarray(x) >= np.uint64(CLUSTER_WINDOW)) & (  # noqa: E731
            (np.asarray(x) < np.uint64(CLUSTER_WINDOW + WINDOW_SIZE)) | (np.asarray(x) >= np.uint64(SHARED_WINDOW)))
    elif lo is not None:
        fn = lambda x: (np.asarray(x) >= np.uint64(lo)) & (np.asarray(x) < np.uint64(lo + WINDOW_SIZE))  # noqa: E731
    else:
        raise Unsupported(f"instruction {inst.opcode}")
    return elementwise(inst, u64, fn, out_dt=DTYPES["pred"])


def _make_dp(inst: Instruction, mods: list[str]) -> Factory:
    """dp4a / dp2a: dot product of packed bytes (and halves), plus an accumulator."""
    types = types_of(mods)
    d, a, b, c = operands(inst, 4)
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
    return elementwise(inst, out_dt, fn, src_dts=[DTYPES["u32"], DTYPES["u32"], out_dt])


def _make_mul24(inst: Instruction, mods: list[str]) -> Factory:
    dt = one_type(inst, mods)
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
        return elementwise(inst, dt, lambda x, y, z: (product(x, y) + np.asarray(z).astype(np.int64)).astype(dt))
    return elementwise(inst, dt, lambda x, y: product(x, y).astype(dt))


def _make_sad(inst: Instruction, mods: list[str]) -> Factory:
    dt = one_type(inst, mods)
    operands(inst, 4)
    wide = np.int64 if dt.itemsize < 8 else (np.int64 if dt.kind == "i" else np.uint64)

    def fn(a, b, c):
        a, b = np.asarray(a).astype(wide), np.asarray(b).astype(wide)
        return (np.where(a > b, a - b, b - a) + np.asarray(c).astype(wide)).astype(dt)
    return elementwise(inst, dt, fn)


def _make_trap(inst: Instruction, mods: list[str]) -> Factory:
    def run(m):
        raise CudaError(Error.cudaErrorLaunchFailure, "the kernel executed trap")
    return lambda fr: run


_MAKERS: dict[str, Callable[[Instruction, list[str]], Factory]] = {
    "add": _arith(np.add), "sub": _arith(np.subtract),
    "addc": _make_carry, "subc": _make_carry, "madc": _make_carry,
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
    "mov": _make_mov, "cvt": _make_cvt, "cvta": _make_cvta, "isspacep": _make_isspacep, "mapa": _make_mapa,
    "ld": make_ld, "ldu": make_ld, "st": make_st, "atom": make_atom, "red": make_atom,
    "bar": make_barrier, "barrier": make_barrier, "membar": no_op, "fence": no_op,
    "nanosleep": no_op, "prefetch": no_op, "prefetchu": no_op,
    "cp": make_cp, "dp4a": _make_dp, "dp2a": _make_dp, "mul24": _make_mul24, "mad24": _make_mul24, "sad": _make_sad,
    "trap": _make_trap, "shfl": make_shfl, "vote": make_vote, "activemask": make_activemask,
    "redux": make_redux, "match": make_match, "wmma": make_wmma, "mbarrier": make_mbarrier, "qcuda": make_builtin,
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
    packed = parts[0] not in ("cvt", "atom", "red") and packed_type(parts[1:])
    try:
        if packed:
            factory = make_packed(inst, parts[0], parts[1:])
        elif directed:
            factory = make_directed(inst, parts[0], directed.pop())
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
