"""Shared shapes of decoded instructions: operand checks, and factories for d = f(a, b, ...).

A factory, given a `Frame`, binds an instruction's operands to that batch's register arrays and
returns `run(m)`, where m is True (every thread active) or an `Active`. Arithmetic computes every
lane and blends the active ones in.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .....protocol.errors import CudaError, Error
from .frame import DTYPES, Frame, Unsupported, blend
from .parser import Instruction, Neg

Run = Callable[[object], None]
Factory = Callable[[Frame], Run]


def types_of(mods: list[str]) -> list[np.dtype]:
    return [DTYPES[m] for m in mods if m in DTYPES]


def one_type(inst: Instruction, mods: list[str]) -> np.dtype:
    types = types_of(mods)
    if len(types) != 1:
        raise Unsupported(f"instruction {inst.opcode} (type suffix)")
    return types[0]


def operands(inst: Instruction, n: int) -> list:
    if len(inst.operands) != n:
        raise CudaError(Error.cudaErrorInvalidPtx, f"{inst}: expected {n} operands, got {len(inst.operands)}")
    return inst.operands


def elementwise(inst: Instruction, dt: np.dtype, fn: Callable, out_dt: np.dtype | None = None,
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


def ufunc_op(inst: Instruction, dt: np.dtype, uf: np.ufunc) -> Factory:
    """d = uf(a[, b]) written straight into the destination register when its width matches."""
    d, *srcs = inst.operands

    def factory(fr: Frame) -> Run:
        getters = [fr.src(s, dt) for s in srcs]
        out, write = fr.dst(d, dt)
        if out is None:
            if len(getters) == 1:
                return lambda m: write(uf(getters[0]()), m)
            return lambda m: write(uf(getters[0](), getters[1]()), m)
        name = d.name
        if len(getters) == 1:
            (ga,) = getters
            return lambda m: uf(ga(), out=out) if m is True or m.clobbers(name) else blend(out, uf(ga()), m)
        ga, gb = getters
        return lambda m: (uf(ga(), gb(), out=out) if m is True or m.clobbers(name)
                          else blend(out, uf(ga(), gb()), m))
    return factory



def pred_source(fr: Frame, op) -> Callable:
    if isinstance(op, Neg):
        g = fr.src(op.reg, DTYPES["pred"])
        return lambda: ~g()
    return fr.src(op, DTYPES["pred"])


def no_op(inst: Instruction, mods: list[str]) -> Factory:
    """Barriers, fences, hints: in lockstep, min-PC execution every thread that has not reached
    this point is run before the threads that have (see kernel.py), which is what bar.sync
    promises; memory is sequentially consistent already."""
    return lambda fr: (lambda m: None)



def full_mask(fr: Frame, m) -> np.ndarray:
    return np.ones(fr.n, dtype=bool) if m is True else m.mask

