"""Warp- and block-wide collectives: shuffles, votes, the active mask, match, redux, bar.red.

A warp is 32 consecutive threads of a block (the last may be partial); every lane of a warp runs
the same step together in the emulator, so a shuffle is a gather from the register array.
"""
from __future__ import annotations

import numpy as np

from .frame import DTYPES, Frame, Unsupported
from .parser import Instruction, PredPair
from .shapes import Factory, Run, full_mask, no_op, one_type, operands, pred_source


def make_shfl(inst: Instruction, mods: list[str]) -> Factory:
    """shfl.sync: every active lane reads another lane's register of the same step (PTX ISA rules
    for the source lane, clamp and sub-warp segment)."""
    mode = next((x for x in mods if x in ("up", "down", "bfly", "idx")), None)
    dt = one_type(inst, mods)
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
    return _class_ballot(fr, fr.warp_key, bits)


def make_vote(inst: Instruction, mods: list[str]) -> Factory:
    mode = next((x for x in mods if x in ("all", "any", "uni", "ballot")), None)
    if mode is None or len(inst.operands) not in (2, 3):
        raise Unsupported(f"instruction {inst.opcode}")
    d, a = inst.operands[:2]

    def factory(fr: Frame) -> Run:
        ga = pred_source(fr, a)
        _, write = fr.dst(d, DTYPES["u32"] if mode == "ballot" else DTYPES["pred"])

        def run(m):
            active = full_mask(fr, m)
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


def make_activemask(inst: Instruction, mods: list[str]) -> Factory:
    (d,) = operands(inst, 1)

    def factory(fr: Frame) -> Run:
        _, write = fr.dst(d, DTYPES["u32"])
        return lambda m: write(_warp_ballot(fr, full_mask(fr, m)), m)
    return factory


def make_match(inst: Instruction, mods: list[str]) -> Factory:
    """match.any.sync: each lane gets the mask of active lanes of its warp holding the same value.
    match.all.sync: membermask where every active lane of the warp holds the same value, else 0
    (and the optional predicate says which). As for vote, the active lanes stand for membermask."""
    mode = next((x for x in mods if x in ("any", "all")), None)
    dt = one_type(inst, mods)
    if mode is None or dt.itemsize not in (4, 8) or len(inst.operands) != 3:
        raise Unsupported(f"instruction {inst.opcode}")
    d, a, member = inst.operands
    first, second = (d.first, d.second) if isinstance(d, PredPair) else (d, None)
    if mode == "any" and second is not None:
        raise Unsupported(f"instruction {inst.opcode} with a predicate")
    u32 = DTYPES["u32"]

    def factory(fr: Frame) -> Run:
        ga, gm = fr.src(a, dt), fr.src(member, u32)
        _, write = fr.dst(first, u32)
        write_p = fr.dst(second, DTYPES["pred"])[1] if second is not None else None

        def run(m):
            active = full_mask(fr, m)
            values = np.broadcast_to(ga(), (fr.n,))
            order = np.lexsort((values, fr.warp_key))  # a class per (warp, value)
            sv, sw = values[order], fr.warp_key[order]
            cls = np.empty(fr.n, np.int64)
            cls[order] = np.cumsum(np.r_[True, (sv[1:] != sv[:-1]) | (sw[1:] != sw[:-1])]) - 1
            same = _class_ballot(fr, cls, active)
            if mode == "any":
                write(same, m)
                return
            uniform = same == _warp_ballot(fr, active)
            write(np.where(uniform, np.broadcast_to(gm(), (fr.n,)), 0).astype(np.uint32), m)
            if write_p is not None:
                write_p(uniform, m)
        return run
    return factory


def _class_ballot(fr: Frame, cls: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Per thread: the mask (uint32) of the lanes of its class (its warp, or part of it) with `bits`
    set; a float64 bincount sums the lane bits exactly and in one pass."""
    weights = np.where(bits, np.left_shift(1, fr.lane).astype(np.float64), 0.0)
    return np.bincount(cls, weights, minlength=int(cls.max()) + 1).astype(np.uint32)[cls]


_REDUX = {"add": np.add, "min": np.minimum, "max": np.maximum,
          "and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor}


def make_redux(inst: Instruction, mods: list[str]) -> Factory:
    op = next((x for x in mods if x in _REDUX), None)
    dt = one_type(inst, mods)
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
            active = full_mask(fr, m)
            acc = np.full(nwarps, np.array(identity).astype(dt), dtype=dt)
            uf.at(acc, fr.warp_key[active], np.broadcast_to(ga(), (fr.n,))[active])
            write(acc[fr.warp_key], m)
        return run
    return factory


def make_barrier(inst: Instruction, mods: list[str]) -> Factory:
    """bar.sync and friends; bar.red also reduces a predicate over the block (__syncthreads_or)."""
    if "red" not in mods:
        return no_op(inst, mods)
    op = next((x for x in mods if x in ("popc", "and", "or")), None)
    if op is None or len(inst.operands) not in (3, 4):
        raise Unsupported(f"instruction {inst.opcode}")
    d, c = inst.operands[0], inst.operands[-1]

    def factory(fr: Frame) -> Run:
        gc = pred_source(fr, c)
        _, write = fr.dst(d, DTYPES["u32"] if op == "popc" else DTYPES["pred"])

        def run(m):
            active = full_mask(fr, m)
            yes = np.bincount(fr.block_pos, np.asarray(gc()) & active, minlength=fr.nblocks)
            everyone = np.bincount(fr.block_pos, active, minlength=fr.nblocks)
            per_block = {"popc": lambda: yes.astype(np.uint32), "and": lambda: yes == everyone,
                         "or": lambda: yes > 0}[op]()
            write(per_block[fr.block_pos], m)
        return run
    return factory
