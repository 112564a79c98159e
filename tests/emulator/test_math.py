"""The CUDA math library as nvcc compiles it (tests/emulator/kernels/math.cu: its range
reductions, polynomials, slow paths for huge arguments, and the .approx instructions underneath),
run on the emulator and checked against numpy (float) and 80-digit decimal arithmetic (double)
within the error bounds NVIDIA documents: CUDA C++ Programming Guide, appendix "Mathematical
Functions" --
"Single-Precision Mathematical Standard Library Functions with Maximum ULP Error",
"Double-Precision Mathematical Standard Library Functions with Maximum ULP Error" and
"Single-Precision Floating-Point Intrinsic Functions" (whose bounds are absolute errors on
stated ranges, or ulps). An ulp error is counted, as the guide counts it, in representable
steps from the correctly rounded result; a bound of 0 means bit-exact."""
from __future__ import annotations

from decimal import Decimal, localcontext

import numpy as np
import pytest

rng = np.random.default_rng(4242)
N = 512

# Single precision, per output column of math_f32: (name, max ulp error with the default
# -prec-div=true -prec-sqrt=true, max ulp error with both false). From the guide's tables:
# sinf, cosf, expf, exp2f 2; logf, log2f 1; powf 4; rsqrtf 2; sqrtf 0, "otherwise 1" (compute
# capability 5.2 and up); 1/x 0, otherwise 1; x/y 0, otherwise 2.
F32_ULPS = [("sinf", 2, 2), ("cosf", 2, 2), ("expf", 2, 2), ("exp2f", 2, 2), ("logf", 1, 1), ("log2f", 1, 1),
            ("powf", 4, 4), ("sqrtf", 0, 1), ("rsqrtf", 2, 2), ("1/x", 0, 1), ("x/y", 0, 2)]
# Double precision, math_f64: sin, cos 2; exp, exp2, log, log2 1; pow 2; sqrt, 1/x, x/y 0 (IEEE); rsqrt 1.
F64_ULPS = [("sin", 2), ("cos", 2), ("exp", 1), ("exp2", 1), ("log", 1), ("log2", 1), ("pow", 2), ("sqrt", 0),
            ("rsqrt", 1), ("1/x", 0), ("x/y", 0)]


def _ulps(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Representable steps between got and ref (same float type); NaN against NaN is 0."""
    bits = {4: np.int32, 8: np.int64}[got.dtype.itemsize]
    def key(x):  # an integer per float, in the floats' order (-0 and +0 both 0)
        i = x.view(bits).astype(object)
        return np.array([v if v >= 0 else -(v & ((1 << (8 * got.dtype.itemsize - 1)) - 1)) for v in i], object)
    both_nan = np.isnan(got) & np.isnan(ref)
    dist = np.abs(key(got) - key(ref))
    return np.where(both_nan, 0, np.where(np.isnan(got) | np.isnan(ref), 1 << 62, dist)).astype(np.int64)


def _inputs(dt) -> tuple[np.ndarray, np.ndarray]:
    """x: magnitudes from 1e-3 to 1e3, then zeros, tiny and huge values (the trig functions'
    slow argument reduction); y: exponents for exp and pow in [-8, 8], never 0."""
    x = (rng.standard_normal(N) * 10.0 ** rng.uniform(-3, 3, N)).astype(dt)
    x[:8] = [0.0, -0.0, 1e-30, 3.0e5, -1.5e7, 1e30, 105615.0, -np.pi]
    y = rng.uniform(-8, 8, N).astype(dt)
    y[y == 0] = 1
    return x, y


def _check(name: str, got: np.ndarray, ref: np.ndarray, bound: int) -> None:
    err = _ulps(got, ref)
    bad = np.flatnonzero(err > bound)
    assert bad.size == 0, f"{name}: {err.max()} ulps > {bound} at {bad[:5]}: got {got[bad[:3]]}, want {ref[bad[:3]]}"


@pytest.mark.parametrize("approx", [False, True], ids=["prec", "fast-div-sqrt"])
def test_float_math_within_the_guides_bounds(built, emu, approx):
    flags = ("-prec-div=false", "-prec-sqrt=false") if approx else ()
    mod = emu.load(built.ptx("math.cu", *flags))
    x, y = _inputs(np.float32)
    out = np.zeros((N, 17), np.float32)
    emu.run(mod, "math_f32", (N + 127) // 128, 128, x, y, out, np.int32(N))
    a, b = x.astype(np.float64), y.astype(np.float64)
    pos = (np.abs(x) * np.float32(0.25) + np.float32(1e-3)).astype(np.float64)  # as the kernel rounds it
    with np.errstate(over="ignore", divide="ignore"):
        exact = [np.sin(a), np.cos(a), np.exp(b), np.exp2(b), np.log(pos), np.log2(pos), pos ** b, np.sqrt(pos),
                 1 / np.sqrt(pos), 1 / a, a / b]
        for col, (name, prec, fast) in enumerate(F32_ULPS):
            _check(name, out[:, col], exact[col].astype(np.float32), fast if approx else prec)
        # intrinsics ("Single-Precision Floating-Point Intrinsic Functions"): __sinf, __cosf: absolute
        # error 2^-21.41 and 2^-21.19 for x in [-pi, pi] (the kernel keeps r there), "larger otherwise"
        r = (np.fmod(np.abs(x), np.float32(6.2831853)) - np.float32(3.1415926)).astype(np.float64)
        assert np.abs(out[:, 11] - np.sin(r)).max() <= 2 ** -21.41
        assert np.abs(out[:, 12] - np.cos(r)).max() <= 2 ** -21.19
        # __expf: 2 + floor(|1.173 x|) ulps
        assert (_ulps(out[:, 13], np.exp(b).astype(np.float32)) <= 2 + np.floor(np.abs(1.173 * b))).all()
        # __logf: absolute 2^-21.41 for x in [0.5, 2], else 3 ulps; __log2f: 2^-22 there, else 2 ulps
        near = (pos >= 0.5) & (pos <= 2)
        for col, fn, absolute, ulps in [(14, np.log, 2 ** -21.41, 3), (15, np.log2, 2 ** -22, 2)]:
            assert np.abs(out[near, col] - fn(pos[near])).max() <= absolute
            _check(f"column {col}", out[~near, col], fn(pos[~near]).astype(np.float32), ulps)
        # __fdividef: 2 ulps for |y| in [2^-126, 2^126]
        _check("__fdividef", out[:, 16], (a / b).astype(np.float32), 2)


def _pi(digits: int) -> Decimal:
    """pi to `digits` digits (the decimal module's documented series)."""
    with localcontext() as ctx:
        ctx.prec = digits + 2
        three = Decimal(3)
        last, t, total, n, na, d, da = 0, three, 3, 1, 0, 0, 24
        while total != last:
            last = total
            n, na = n + na, na + 8
            d, da = d + da, da + 32
            t = (t * n) / d
            total += t
    return +total


def _sin_cos(x: Decimal, pi: Decimal) -> tuple[Decimal, Decimal]:
    """Taylor series after reducing x modulo 2pi (pi carries enough digits for |x| up to 1e30)."""
    r = x % (2 * pi)
    s = c = Decimal(0)
    term, k = Decimal(1), 0  # r^k / k!
    while k < 2 or abs(term) > Decimal(10) ** -90:
        sign = -1 if k % 4 >= 2 else 1
        if k % 2:
            s += sign * term
        else:
            c += sign * term
        k += 1
        term = term * r / k
    return s, c


def _exact_f64(a: float, b: float, p: float) -> list[float]:
    """The kernel's functions correctly rounded: 80-digit decimal arithmetic, then float(), which
    rounds a decimal to the nearest double (these results are never that close to a midpoint)."""
    with localcontext() as ctx:
        ctx.prec = 80
        pi = _pi(150)
        da, db, dp = Decimal(a), Decimal(b), Decimal(p)
        ln2 = Decimal(2).ln()
        with localcontext() as wide:
            wide.prec = 150
            s, c = _sin_cos(da, pi)
        root = dp.sqrt()
        vals = [s, c, db.exp(), (db * ln2).exp(), dp.ln(), dp.ln() / ln2, (db * dp.ln()).exp(), root, 1 / root,
                1 / da if da else Decimal("Infinity").copy_sign(Decimal(str(a))), da / db]
    return [float(v) for v in vals]


def test_double_math_within_the_guides_bounds(built, emu):
    mod = emu.load(built.ptx("math.cu"))
    x, y = _inputs(np.float64)
    out = np.zeros((N, 11))
    emu.run(mod, "math_f64", (N + 127) // 128, 128, x, y, out, np.int32(N))
    pos = np.abs(x) * 0.25 + 1e-3
    ref = np.array([_exact_f64(float(a), float(b), float(p)) for a, b, p in zip(x, y, pos)])
    for col, (name, bound) in enumerate(F64_ULPS):
        _check(name, out[:, col], ref[:, col], bound)
