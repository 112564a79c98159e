"""Exact float arithmetic: correctly rounded fma, directed rounding, half2 and bfloat16.

numpy rounds to nearest in float32 and float64 only. Everything else is derived from exact
error terms: TwoSum and Dekker's TwoProduct give the rounding error of a sum or product, rounding
to odd in float64 followed by rounding to nearest in a narrower format is a single correct
rounding, and a round-to-nearest result plus the sign of its error gives the rz/rm/rp result.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Callable

import numpy as np

from .frame import DTYPES, UINT, Unsupported
from .parser import Instruction
from .shapes import Factory, elementwise, one_type, operands


_SIGN64 = np.uint64(1 << 63)
_SPLITTER = 134217729.0  # 2**27 + 1 (Veltkamp)


def two_sum(a, b):
    """s + e == a + b exactly (Knuth)."""
    s = a + b
    bp = s - a
    return s, (a - (s - bp)) + (b - bp)


def two_prod(a, b):
    """p + e == a * b exactly (Dekker), barring overflow and subnormal products."""
    p = a * b
    t = _SPLITTER * a
    ah = t - (t - a)
    al = a - ah
    t = _SPLITTER * b
    bh = t - (t - b)
    bl = b - bh
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def add_round_odd(x, y) -> np.ndarray:
    """x + y rounded to odd in float64: truncate, and make the last bit 1 if anything was cut."""
    s, err = two_sum(np.asarray(x, np.float64), np.asarray(y, np.float64))
    inexact = (err != 0) & np.isfinite(s)
    bits = np.ascontiguousarray(s).view(np.uint64)
    sign, mag = bits & _SIGN64, bits & ~_SIGN64
    toward_zero = inexact & (np.signbit(err) != np.signbit(s))
    mag = (mag - toward_zero.astype(np.uint64)) | inexact.astype(np.uint64)
    return (sign | mag).view(np.float64)


def fma_narrow(a, b, c, dt: np.dtype) -> np.ndarray:
    """Correctly rounded a*b+c for f32/f16: the product is exact in float64, the sum rounded to
    odd there, and round-to-odd followed by round-to-nearest into a format of at most half the
    precision (less 2 bits) is a single correct rounding."""
    return add_round_odd(np.asarray(a, np.float64) * b, c).astype(dt)


def fma_f64(a, b, c) -> np.ndarray:
    """Correctly rounded a*b+c in float64."""
    return _fma_f64_parts(a, b, c, want_rest=False)[0]


def _fma_f64_parts(a, b, c, want_rest: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(a*b+c rounded to nearest, the sign of the exact value minus it, if wanted): Boldo &
    Melquiond's emulated FMA (rounding to odd) and an exact sum of the parts. The rare lanes whose
    product overflows the Veltkamp splitter or underflows go through exact rationals instead."""
    a, b, c = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (a, b, c)))
    uh, ul = two_prod(a, b)
    th, tl = two_sum(c, uh)
    r = th + add_round_odd(tl, ul)
    rest = _sum_sign([uh, ul, c, -r]) if want_rest else None
    safe = (np.abs(a) < 2.0**995) & (np.abs(b) < 2.0**995) & ((np.abs(uh) > 2.0**-968) | (a == 0) | (b == 0))
    slow = np.flatnonzero(~safe & np.isfinite(a) & np.isfinite(b) & np.isfinite(c))
    if slow.size:
        r = np.array(r)
        for i in slow:
            exact = Fraction(float(a.flat[i])) * Fraction(float(b.flat[i])) + Fraction(float(c.flat[i]))
            try:
                r.flat[i] = float(exact)  # int / int: correctly rounded, subnormals included
            except OverflowError:
                r.flat[i] = math.copysign(math.inf, exact)
            if rest is not None:
                diff = exact - Fraction(r.flat[i]) if math.isfinite(r.flat[i]) else 0
                rest.flat[i] = (diff > 0) - (diff < 0)
    return r, rest


# -- half2, bfloat16, bfloat16x2 ------------------------------------------------------------------------
_PACKED = {"bf16": (1, "bf16"), "f16x2": (2, "f16"), "bf16x2": (2, "bf16")}  # lanes, element format
_PACKED_OPS = ("add", "sub", "mul", "fma", "min", "max", "neg", "abs")


def packed_type(mods: list[str]) -> str | None:
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


def half_adder(ptype: str) -> tuple[np.dtype, Callable]:
    """(raw dtype, add on raw bits) for atom.add on .f16, .bf16, .f16x2 and .bf16x2: each lane
    summed exactly in float64 and rounded once to its format."""
    lanes, fmt = _PACKED.get(ptype, (1, "f16"))

    def add(cur, val):
        a, b = _unpack(cur, fmt, lanes), _unpack(val, fmt, lanes)
        return _pack([a[k].astype(np.float64) + b[k] for k in range(lanes)], fmt)
    return UINT[2 * lanes], add


def make_packed(inst: Instruction, base: str, mods: list[str]) -> Factory:
    """add/sub/mul/fma/min/max/neg/abs on .bf16, .f16x2 and .bf16x2: each lane is computed in
    float32 (float64 for fma, rounded to odd) and rounded once to the element format."""
    ptype = packed_type(mods)
    lanes, fmt = _PACKED[ptype]
    if base not in _PACKED_OPS or any(m in mods for m in ("ftz", "sat", "relu", "oob", "rz", "rm", "rp", "NaN")):
        raise Unsupported(f"instruction {inst.opcode}")
    raw_dt = UINT[2 * lanes]
    sign = np.array(0x80008000 if lanes == 2 else 0x8000).astype(raw_dt)[()]
    if base in ("neg", "abs"):
        operands(inst, 2)
        if base == "neg":
            return elementwise(inst, raw_dt, lambda a: np.bitwise_xor(a, sign))
        return elementwise(inst, raw_dt, lambda a: np.bitwise_and(a, ~sign))
    nsrc = 3 if base == "fma" else 2
    operands(inst, nsrc + 1)
    lane_fn = {
        "add": np.add, "sub": np.subtract, "mul": np.multiply, "min": np.fmin, "max": np.fmax,
        "fma": lambda x, y, z: add_round_odd(np.asarray(x, np.float64) * y, z),
    }[base]

    def fn(*args):
        unpacked = [_unpack(a, fmt, lanes) for a in args]
        return _pack([lane_fn(*[u[k] for u in unpacked]) for k in range(lanes)], fmt)
    return elementwise(inst, raw_dt, fn)


def make_cvt_packed(inst: Instruction, mods: list[str]) -> Factory:
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
        operands(inst, 3)
        fmt = _PACKED[dst][1]
        return elementwise(inst, DTYPES["u32"], lambda hi, lo: _pack([lo, hi], fmt, mode), src_dts=[f32, f32])
    if dst == "bf16" and src in ("f32", "f64"):
        operands(inst, 2)
        return elementwise(inst, DTYPES["u16"], lambda x: _pack([x], "bf16", mode), src_dts=[DTYPES[src]])
    if src == "bf16" and dst in ("f32", "f64"):
        operands(inst, 2)
        return elementwise(inst, DTYPES[dst], lambda x: _unpack(x, "bf16", 1)[0].astype(DTYPES[dst]),
                            src_dts=[DTYPES["u16"]])
    raise Unsupported(f"instruction {inst.opcode}")


# -- directed rounding -------------------------------------------------------------------------------
def step_directed(r: np.ndarray, err: np.ndarray, mode: str, finite_inputs) -> np.ndarray:
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


def _sum_sign(terms: list[np.ndarray]) -> np.ndarray:
    """The sign of the exact sum of float64 arrays. Shewchuk's grow-expansion (each two_sum is
    exact) leaves nonoverlapping components of increasing magnitude: the largest nonzero decides."""
    expansion: list[np.ndarray] = []
    for t in terms:
        q, grown = t, []
        for h in expansion:
            q, low = two_sum(q, h)
            grown.append(low)
        expansion = grown + [q]
    sign = np.zeros_like(expansion[0])
    for h in reversed(expansion):
        sign = np.where(sign == 0, np.sign(h), sign)
    return sign


def _narrow_sum(p: np.ndarray, c: np.ndarray, dt: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """p + c (float64) rounded once to the narrower dt, and a value with the sign of the rest. A
    plain float64 sum is not exact when the exponents lie far apart (1 - 2^-130): round to odd."""
    s, e = two_sum(p, c)
    r = add_round_odd(p, c).astype(dt)
    return r, (s - r.astype(np.float64)) + e


def _directed_parts(base: str, dt: np.dtype, args: list) -> tuple[np.ndarray, np.ndarray]:
    """(round-to-nearest result, a value with the sign of exact - result) for one operation."""
    x = [np.asarray(v, np.float64) for v in args]
    f64 = dt == np.float64
    if base in ("add", "sub"):
        b = x[1] if base == "add" else -x[1]
        return two_sum(x[0], b) if f64 else _narrow_sum(x[0], b, dt)
    elif base == "mul":
        if f64:
            return two_prod(x[0], x[1])
        exact = x[0] * x[1]
    elif base in ("fma", "mad"):
        if f64:
            return _fma_f64_parts(x[0], x[1], x[2], want_rest=True)
        return _narrow_sum(x[0] * x[1], x[2], dt)  # the float64 product of narrow floats is exact
    elif base in ("div", "rcp"):
        num, den = (x[0], x[1]) if base == "div" else (np.ones_like(x[0]), x[0])
        r = (num / den).astype(dt)
        rem = fma_f64(-r.astype(np.float64), den, num)  # exact remainder
        return r, rem * np.sign(den)
    else:  # sqrt
        r = np.sqrt(x[0]).astype(dt)
        return r, fma_f64(-r.astype(np.float64), r.astype(np.float64), x[0])
    r = exact.astype(dt)
    return r, exact - r.astype(np.float64)


def saturate(x, dt: np.dtype):
    """.sat on a float result: clamped to [0, 1], NaN and -0 to +0 (adding +0 turns -0 into +0)."""
    return np.clip(np.nan_to_num(x, nan=0.0), 0, 1).astype(dt) + dt.type(0)


def make_directed(inst: Instruction, base: str, mode: str) -> Factory:
    mods = inst.opcode.split(".")[1:]
    dt = one_type(inst, mods)
    if dt.kind != "f" or dt == np.float16:
        raise Unsupported(f"instruction {inst.opcode} (directed rounding)")
    nsrc = {"sqrt": 1, "rcp": 1, "fma": 3, "mad": 3}.get(base, 2)
    operands(inst, nsrc + 1)

    def fn(*args):
        r, err = _directed_parts(base, dt, list(args))
        finite = np.logical_and.reduce([np.isfinite(np.asarray(a)) for a in args])
        out = step_directed(r, err, mode, finite)
        return saturate(out, dt) if "sat" in mods else out
    return elementwise(inst, dt, fn)
