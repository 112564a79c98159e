"""Warp-level matrix instructions: wmma (CUDA C++'s nvcuda::wmma, the tensor cores' portable API) for the
m16n16k16 shape with f16 inputs and f16 or f32 accumulators, from global or shared memory.

CUDA leaves the mapping of a fragment's elements to lanes unspecified: a program may only load, store, fill
and multiply fragments and treat all of a fragment's elements alike. So the emulator picks its own layout:
lane l of a warp holds accumulator elements l*8 .. l*8+7 of the 16x16 tile (row-major), and the 16 halves of
an a/b fragment hold elements (l*16 + j) % 256, each element twice (as the PTX register counts require).
A warp's 32 threads are consecutive in a frame whose blocks are whole warps, so a fragment is a reshape.
"""
from __future__ import annotations

import numpy as np

from .....protocol.errors import CudaError, Error
from .frame import DTYPES, Frame, Unsupported
from .memops import load_space, store_space
from .parser import Addr, Instruction, Vec
from .shapes import Factory, Run

F16, F32, U32 = np.dtype(np.float16), np.dtype(np.float32), DTYPES["u32"]
TILE = 16
_SPACES = ("global", "shared")
# element of the 16x16 tile held in (lane, slot): accumulators 8 slots a lane, a/b fragments 16
_ACC = (np.arange(32)[:, None] * 8 + np.arange(8)).reshape(-1)
_AB = ((np.arange(32)[:, None] * 16 + np.arange(16)) % 256).reshape(-1)


def make_wmma(inst: Instruction, mods: list[str]) -> Factory:
    if "m16n16k16" not in mods:
        raise Unsupported(f"instruction {inst.opcode} (only the m16n16k16 shape)")
    if mods[0] == "load":
        return _make_load(inst, mods)
    if mods[0] == "store":
        return _make_store(inst, mods)
    if mods[0] == "mma":
        return _make_mma(inst, mods)
    raise Unsupported(f"instruction {inst.opcode}")


def _element_type(mods: list[str]) -> np.dtype:
    kinds = [m for m in mods if m in ("f16", "f32")]
    if not kinds:
        raise Unsupported(f"wmma.{'.'.join(mods)} (types other than f16 and f32)")
    return F16 if kinds[-1] == "f16" else F32


def _regs(op, count: int, inst: Instruction) -> tuple:
    if not isinstance(op, Vec) or len(op.items) != count:
        raise CudaError(Error.cudaErrorInvalidPtx, f"{inst}: expected {count} fragment registers")
    return op.items


def _fragment_shape(which: str, dt: np.dtype) -> tuple[int, np.ndarray]:
    """(registers, element of the tile per (lane, slot)) for an a/b/c/d fragment of `dt` elements."""
    if which in ("a", "b"):
        return 8, _AB  # 16 halves in 8 .b32 registers
    return (4, _ACC) if dt == F16 else (8, _ACC)


def _warps(fr: Frame, m) -> np.ndarray:
    """Indices of the warps that run the instruction (whole warps only, as .sync.aligned requires)."""
    if fr.tpb % 32 or fr.warp_key is None:
        raise Unsupported("wmma in blocks that are not whole warps")
    count = fr.n // 32
    if m is True:
        return np.arange(count)
    active = m.mask.reshape(count, 32)
    if np.any(active.any(axis=1) != active.all(axis=1)):
        raise CudaError(Error.cudaErrorIllegalInstruction, "wmma with part of a warp")
    return np.flatnonzero(active[:, 0])


def _tile_addresses(fr: Frame, ga, gs, lead: np.ndarray, layout: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(addresses, owning thread ids) of each warp's tile elements, row-major over the tile: each warp's lane 0
    names the tile (its first element and the row or column stride in elements)."""
    base = np.broadcast_to(ga(), (fr.n,))[lead].astype(np.uint64)
    stride = np.broadcast_to(gs(), (fr.n,))[lead].astype(np.int64)[:, None, None]
    r, c = np.arange(TILE)[:, None], np.arange(TILE)[None, :]
    offsets = ((r * stride + c) if layout == "row" else (c * stride + r)) * size
    addrs = (base[:, None, None] + offsets.astype(np.uint64)).reshape(-1)
    return addrs, np.repeat(fr.thread_index[lead], TILE * TILE)


def _to_registers(tiles: np.ndarray, which: str, dt: np.dtype) -> list[np.ndarray]:
    """(warps, 16, 16) tiles -> per-register arrays (warps*32,) of the fragment's raw register values."""
    nregs, element = _fragment_shape(which, dt)
    slots = tiles.reshape(len(tiles), 256)[:, element].reshape(len(tiles), 32, -1)  # (warps, lane, slot)
    if dt == F16:
        raw = slots.astype(F16).view(np.uint16).astype(np.uint32)
        pairs = raw[..., 0::2] | (raw[..., 1::2] << np.uint32(16))
        return [pairs[..., k].reshape(-1) for k in range(nregs)]
    return [slots[..., k].astype(F32).reshape(-1) for k in range(nregs)]


def _from_registers(values: list[np.ndarray], which: str, dt: np.dtype, warps: int) -> np.ndarray:
    """Per-register arrays (warps*32,) -> (warps, 16, 16) tiles (the first copy of a duplicated element)."""
    nregs, element = _fragment_shape(which, dt)
    if dt == F16:
        raw = np.stack([np.asarray(v).astype(np.uint32).reshape(warps, 32) for v in values], axis=-1)
        halves = np.stack([raw & np.uint32(0xFFFF), raw >> np.uint32(16)], axis=-1).reshape(warps, 32, -1)
        slots = halves.astype(np.uint16).view(F16).astype(F32)
    else:
        slots = np.stack([np.asarray(v).astype(F32).reshape(warps, 32) for v in values], axis=-1)
    tiles = np.empty((warps, 256), F32)
    flat = slots.reshape(warps, -1)
    tiles[:, element[::-1]] = flat[:, ::-1]  # later slots first: the first copy of each element wins
    return tiles.reshape(warps, TILE, TILE)


def _transfer(inst: Instruction, mods: list[str], which: str):
    """(layout, space, element type, address operand, fragment registers, stride operand) of a wmma.load
    (`{regs}, [addr], stride`) or wmma.store (`[addr], {regs}, stride`)."""
    layout = next((m for m in mods if m in ("row", "col")), None)
    space = next((m for m in mods if m in _SPACES), None)
    if layout is None or len(inst.operands) != 3 or any(
            m in ("s8", "u8", "s4", "u4", "b1", "bf16", "tf32", "f64", "s32") for m in mods):
        raise Unsupported(f"instruction {inst.opcode}")
    dt = _element_type(mods)
    if which not in ("a", "b", "c", "d") or (which in ("a", "b") and dt != F16):
        raise Unsupported(f"instruction {inst.opcode}")
    first, second, stride = inst.operands
    address, fragment = (second, first) if mods[0] == "load" else (first, second)
    if not isinstance(address, Addr):
        raise CudaError(Error.cudaErrorInvalidPtx, f"{inst}: the memory operand must be an address")
    return layout, space, dt, address, _regs(fragment, _fragment_shape(which, dt)[0], inst), stride


def _make_load(inst: Instruction, mods: list[str]) -> Factory:
    which = mods[1]
    if which == "d":
        raise Unsupported(f"instruction {inst.opcode}")
    layout, space, dt, a, regs, stride = _transfer(inst, mods, which)

    def factory(fr: Frame) -> Run:
        ga, gs = fr.address(a), fr.src(stride, U32)
        writers = [fr.scatter(r, U32 if dt == F16 else F32) for r in regs]

        def run(m):
            warps = _warps(fr, m)
            lead = warps * 32
            addrs, ids = _tile_addresses(fr, ga, gs, lead, layout, dt.itemsize)
            tiles = load_space(fr, space, addrs, ids, dt).reshape(len(warps), TILE, TILE)
            lanes = (lead[:, None] + np.arange(32)).reshape(-1)
            for w, value in zip(writers, _to_registers(tiles, which, dt)):
                full = np.zeros(fr.n, value.dtype)
                full[lanes] = value
                w(full if m is True else full[m.mask], m)
        return run
    return factory


def _make_store(inst: Instruction, mods: list[str]) -> Factory:
    if mods[1] != "d":
        raise Unsupported(f"instruction {inst.opcode}")
    layout, space, dt, a, regs, stride = _transfer(inst, mods, "d")

    def factory(fr: Frame) -> Run:
        ga, gs = fr.address(a), fr.src(stride, U32)
        getters = [fr.src(r, U32 if dt == F16 else F32) for r in regs]

        def run(m):
            warps = _warps(fr, m)
            lead = warps * 32
            lanes = (lead[:, None] + np.arange(32)).reshape(-1)
            values = [np.broadcast_to(g(), (fr.n,))[lanes] for g in getters]
            tiles = _from_registers(values, "d", dt, len(warps))
            addrs, ids = _tile_addresses(fr, ga, gs, lead, layout, dt.itemsize)
            store_space(fr, space, addrs, ids, tiles.reshape(-1).astype(dt))
        return run
    return factory


def _make_mma(inst: Instruction, mods: list[str]) -> Factory:
    kinds = [m for m in mods if m in ("f16", "f32")]
    if len(kinds) != 2 or len(inst.operands) != 4 or any(m in ("satfinite",) for m in mods):
        raise Unsupported(f"instruction {inst.opcode}")
    dtype, ctype = (F16 if k == "f16" else F32 for k in kinds)
    d, a, b, c = inst.operands
    dregs, aregs, bregs = _regs(d, _fragment_shape("d", dtype)[0], inst), _regs(a, 8, inst), _regs(b, 8, inst)
    cregs = _regs(c, _fragment_shape("c", ctype)[0], inst)

    def factory(fr: Frame) -> Run:
        ga = [fr.src(r, U32) for r in aregs]
        gb = [fr.src(r, U32) for r in bregs]
        gc = [fr.src(r, U32 if ctype == F16 else F32) for r in cregs]
        writers = [fr.dst(r, U32 if dtype == F16 else F32)[1] for r in dregs]

        def run(m):
            warps = _warps(fr, m)
            lanes = ((warps * 32)[:, None] + np.arange(32)).reshape(-1)

            def tiles(getters, which, dt):
                return _from_registers([np.broadcast_to(g(), (fr.n,))[lanes] for g in getters], which, dt, len(warps))
            # f16 products are exact in f32; the sums are rounded in f32 (in some order, as on a tensor core)
            out = np.matmul(tiles(ga, "a", F16), tiles(gb, "b", F16)) + tiles(gc, "c", ctype)
            for w, value in zip(writers, _to_registers(out.astype(F32), "d", dtype)):
                full = np.zeros(fr.n, value.dtype)
                full[lanes] = value
                w(full, m)
        return run
    return factory
