"""The state of one batch of thread blocks while it runs: registers, special registers, shared and
local memory, and the operand accessors the decoded instructions bind to.

Every register is one numpy array with an element per thread of the batch (threads of a block
are consecutive, blocks follow each other), so one instruction is a few whole-array operations.
A register is stored in its declared type; an instruction that uses it as another type of the
same width gets a view (no copy), which is how PTX's untyped `.bN` registers behave.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from .....protocol.errors import CudaError, Error
from .parser import Addr, Imm, Reg, Sym

# Generic-address windows for the per-block and per-thread spaces (`cvta`), far above anything
# the device heap or mapped host memory can occupy.
SHARED_WINDOW = 0xFFFF_0000_0000_0000
LOCAL_WINDOW = 0xFFFE_0000_0000_0000
CLUSTER_WINDOW = 0xFFFD_0000_0000_0000  # another block of the cluster's shared memory (distributed shared memory)
WINDOW_SIZE = 1 << 32
LOWEST_WINDOW = CLUSTER_WINDOW  # generic addresses below this one are global
# A .shared::cluster address (and CLUSTER_WINDOW + it, generically): the block's rank + 1 above this bit, the
# offset in that block's shared memory below it; rank bits 0 mean the block's own shared memory.
CLUSTER_RANK_SHIFT = 24

DTYPES: dict[str, np.dtype] = {
    name: np.dtype(dt)
    for name, dt in {
        "b8": np.uint8, "u8": np.uint8, "s8": np.int8,
        "b16": np.uint16, "u16": np.uint16, "s16": np.int16, "f16": np.float16,
        "b32": np.uint32, "u32": np.uint32, "s32": np.int32, "f32": np.float32,
        "b64": np.uint64, "u64": np.uint64, "s64": np.int64, "f64": np.float64,
        "pred": np.bool_,
    }.items()
}
# registers may also be declared with the packed and brain-float types: raw bits here
REG_DTYPES = {**DTYPES, "bf16": np.dtype(np.uint16), "f16x2": np.dtype(np.uint32), "bf16x2": np.dtype(np.uint32)}
UINT = {1: np.dtype(np.uint8), 2: np.dtype(np.uint16), 4: np.dtype(np.uint32), 8: np.dtype(np.uint64)}
SINT = {1: np.dtype(np.int8), 2: np.dtype(np.int16), 4: np.dtype(np.int32), 8: np.dtype(np.int64)}

Getter = Callable[[], object]
Writer = Callable[[object, object], None]


class Unsupported(CudaError):
    """An instruction or operand form the emulator does not implement."""

    def __init__(self, what: str) -> None:
        super().__init__(Error.cudaErrorNotSupported, f"the PTX emulator does not support {what}")


class Active:
    """The threads running the current step when not all of them are (then it is just True).

    numpy's `where=` branches per element and is several times slower on divergent masks, so a
    write under a partial mask is a scatter to the active lanes when they are few, else a
    bitwise select (`d ^= (v ^ d) & bits`). Cheaper still: a register that no inactive thread
    will read again (`live`: the registers live where they wait) is written in every lane.
    """

    __slots__ = ("mask", "index", "_bits", "live")
    SPARSE = 0.15  # below this active fraction, scatter by index

    def __init__(self, mask: np.ndarray, live: frozenset[str] | None = None, count: int | None = None) -> None:
        self.mask = mask
        self.live = live  # None: every register may still be read by an inactive thread
        count = int(np.count_nonzero(mask)) if count is None else count
        self.index = np.flatnonzero(mask) if count < self.SPARSE * mask.size else None
        self._bits: dict[int, np.ndarray] = {}

    def clobbers(self, name: str) -> bool:
        """True when no inactive thread reads register `name` again: write every lane."""
        return self.live is not None and name not in self.live

    def bits(self, size: int) -> np.ndarray:
        """All-ones in active lanes, zero elsewhere, as unsigned integers of `size` bytes."""
        b = self._bits.get(size)
        if b is None:
            b = self._bits[size] = np.negative(self.mask.view(np.int8).astype(SINT[size])).view(UINT[size])
        return b


def blend(dst: np.ndarray, value, m) -> None:
    """dst[active] = value (broadcast, converted to dst's type); every lane when m is True."""
    if m is True:
        np.copyto(dst, value, casting="unsafe")
        return
    v = np.asarray(value)
    if v.dtype != dst.dtype:
        v = v.astype(dst.dtype)
    if m.index is not None:
        dst[m.index] = v[m.index] if v.ndim else v
        return
    ut = UINT[dst.dtype.itemsize]
    d = dst.view(ut)
    t = np.bitwise_xor(v.view(ut), d)
    np.bitwise_and(t, m.bits(dst.dtype.itemsize), out=t)
    np.bitwise_xor(d, t, out=d)


_TINY32 = np.float32(np.finfo(np.float32).tiny)
F32 = np.dtype(np.float32)


def flush_subnormals(x):
    """.ftz: single-precision subnormals read and written as zero of the same sign."""
    x = np.asarray(x)
    return np.where(np.abs(x) < _TINY32, np.copysign(np.float32(0), x), x).astype(np.float32, copy=False)


def int_like(dt: np.dtype, signed: bool) -> np.dtype:
    return (SINT if signed else UINT)[dt.itemsize]


def imm_scalar(imm: Imm, dt: np.dtype):
    """An immediate as a numpy scalar of `dt`, wrapped the way PTX wraps it."""
    if dt == np.bool_:
        return np.bool_(bool(imm.value))
    if imm.bits:
        raw = np.array(imm.value, dtype=UINT[imm.bits // 8])
        as_float = raw.view(np.float32 if imm.bits == 32 else np.float64)[()]
        if dt.kind == "f":
            return dt.type(as_float)
        if dt.itemsize * 8 == imm.bits:
            return raw.view(dt)[()]
        raise Unsupported(f"a float literal as a .{dt.name} operand")
    if dt.kind == "f":
        return dt.type(imm.value)
    if imm.is_float:
        raise Unsupported(f"a float literal as a .{dt.name} operand")
    bits = dt.itemsize * 8
    return np.array(int(imm.value) & ((1 << bits) - 1), dtype=UINT[dt.itemsize]).view(dt)[()]


# Special registers of thread block clusters (sm_90)
CLUSTER_REGISTERS = ("%cluster_", "%clusterid", "%nclusterid", "%is_explicit_cluster")
# Shared memory the system keeps at the end of each block's (1 KiB on sm_80 and later): cooperative groups
# keep the barriers of tiles wider than a warp there, found through %reserved_smem_offset_* registers.
RESERVED_SMEM = 1024
RESERVED_PREFIX = "%reserved_smem_offset"


class Frame:
    """One batch of `nblocks` blocks of `tpb` threads, bound to a kernel's registers and layout."""

    def __init__(self, kernel, nblocks: int, block: tuple[int, int, int], grid: tuple[int, int, int],
                 shared_bytes: int, params: np.ndarray, memory, dynamic_shared: int = 0,
                 cluster: tuple[int, int, int] = (1, 1, 1)) -> None:
        self.kernel = kernel
        self.block, self.grid, self.cluster = block, grid, cluster
        self.tpb = block[0] * block[1] * block[2]
        self.nblocks = nblocks
        self.n = n = nblocks * self.tpb
        self.memory = memory
        self.params = params
        self.regs: dict[str, np.ndarray] = {
            name: np.zeros(n, dtype=REG_DTYPES[t]) for name, t in kernel.regs.items()
        }
        self._views: dict[tuple[str, np.dtype], np.ndarray] = {}
        self.ftz = False  # set while binding a .ftz instruction: f32 operands are flushed
        self.shared_size = shared_bytes
        self.shared = np.zeros(max(nblocks * shared_bytes, 16), dtype=np.uint8)
        self.local_size = kernel.local_size
        self.local = np.zeros(max(n * self.local_size, 16), dtype=np.uint8)
        t = np.arange(n, dtype=np.int64)
        # thread_index: position -> thread id (the same here; a compacted frame holds a subset).
        # block_of_thread is indexed by thread id, block_pos by position.
        self.thread_index = t
        self.block_of_thread = self.block_pos = t // self.tpb
        lin = (t % self.tpb).astype(np.uint32)
        lane = lin % 32
        # warps: 32 consecutive threads of a block; the last one of a block may be partial
        self.warps_per_block = -(-self.tpb // 32)
        self.warp_key = self.block_of_thread * self.warps_per_block + lin // 32
        self.warp_base = t - lane
        self.block_end = (self.block_of_thread + 1) * self.tpb
        self.lane = lane.astype(np.int64)
        le = ((np.uint64(2) << lane.astype(np.uint64)) - np.uint64(1)).astype(np.uint32)
        lt = ((np.uint64(1) << lane.astype(np.uint64)) - np.uint64(1)).astype(np.uint32)
        bx, by, _ = block
        self.sregs: dict[str, np.ndarray] = {
            "%tid.x": lin % bx, "%tid.y": (lin // bx) % by, "%tid.z": lin // (bx * by),
            "%laneid": lane, "%warpid": lin // 32,
            "%lanemask_eq": np.left_shift(np.uint32(1), lane), "%lanemask_lt": lt, "%lanemask_le": le,
            "%lanemask_gt": ~le, "%lanemask_ge": ~lt,
            "%ctaid.x": np.zeros(n, np.uint32), "%ctaid.y": np.zeros(n, np.uint32),
            "%ctaid.z": np.zeros(n, np.uint32),
        }
        uniform = {
            "%ntid.x": block[0], "%ntid.y": block[1], "%ntid.z": block[2],
            "%nctaid.x": grid[0], "%nctaid.y": grid[1], "%nctaid.z": grid[2],
            "%nwarpid": -(-self.tpb // 32), "%smid": 0, "%nsmid": 1, "%gridid": 0,
            "%dynamic_smem_size": dynamic_shared, "%total_smem_size": shared_bytes,
        }
        if kernel.uses_cluster:
            for axis, c, g in zip("xyz", cluster, grid):
                self.sregs[f"%cluster_ctaid.{axis}"] = np.zeros(n, np.uint32)
                self.sregs[f"%clusterid.{axis}"] = np.zeros(n, np.uint32)
                uniform[f"%cluster_nctaid.{axis}"] = c
                uniform[f"%nclusterid.{axis}"] = g // c
            self.sregs["%cluster_ctarank"] = np.zeros(n, np.uint32)
            uniform["%cluster_nctarank"] = cluster[0] * cluster[1] * cluster[2]
            uniform["%is_explicit_cluster"] = int(kernel.explicit_cluster or cluster != (1, 1, 1))
        if kernel.reserved_smem:
            base = shared_bytes - RESERVED_SMEM
            uniform.update({f"{RESERVED_PREFIX}_begin": base, f"{RESERVED_PREFIX}_end": shared_bytes,
                            f"{RESERVED_PREFIX}_cap": RESERVED_SMEM, f"{RESERVED_PREFIX}_0": base,
                            f"{RESERVED_PREFIX}_1": base + 16})
        self.uniform = {k: np.uint32(v) for k, v in uniform.items()}
        self.envregs = (0, 0)  # %envreg1, %envreg2: a cooperative launch's grid workspace (see Kernel.launch)

    @property
    def nbytes(self) -> int:
        """Memory the frame holds (what caching it between launches costs)."""
        return (sum(a.nbytes for a in self.regs.values()) + sum(a.nbytes for a in self.sregs.values())
                + self.shared.nbytes + self.local.nbytes)

    def start(self, first_block: int) -> None:
        """Point the batch at blocks first_block.. of the grid; clear per-block memory."""
        self.first_block = first_block
        lin = (self.block_of_thread + first_block).astype(np.uint32)
        gx, gy, _ = self.grid
        self.sregs["%ctaid.x"][:] = lin % gx
        self.sregs["%ctaid.y"][:] = (lin // gx) % gy
        self.sregs["%ctaid.z"][:] = lin // (gx * gy)
        if self.kernel.uses_cluster:
            cx, cy, _ = self.cluster
            pos = [self.sregs[f"%ctaid.{axis}"] for axis in "xyz"]
            for axis, p, c in zip("xyz", pos, self.cluster):
                self.sregs[f"%cluster_ctaid.{axis}"][:] = p % c
                self.sregs[f"%clusterid.{axis}"][:] = p // c
            self.sregs["%cluster_ctarank"][:] = pos[0] % cx + (pos[1] % cy) * cx + (pos[2] % self.cluster[2]) * cx * cy
        self.shared.fill(0)
        self.local.fill(0)

    def compact(self, positions: np.ndarray) -> "Frame":
        """A frame of just these threads (their registers copied), sharing this one's memory:
        a long loop run by a few threads then costs in proportion to them, not to the batch."""
        sub = object.__new__(Frame)
        sub.__dict__.update(self.__dict__)
        sub.n = positions.size
        sub.regs = {name: arr[positions] for name, arr in self.regs.items()}
        sub._views = {}
        sub.sregs = {name: arr[positions] for name, arr in self.sregs.items()}
        sub.thread_index = self.thread_index[positions]
        sub.block_pos = self.block_pos[positions]
        for name in ("warp_key", "warp_base", "block_end", "lane"):  # kernels with warp collectives never compact
            setattr(sub, name, None)
        return sub

    def expand(self, sub: "Frame", positions: np.ndarray) -> None:
        """Copy a compacted frame's registers back into these threads."""
        for name, arr in self.regs.items():
            arr[positions] = sub.regs[name]

    # -- operands ---------------------------------------------------------------------------
    def view(self, name: str, dt: np.dtype) -> np.ndarray | None:
        """Register `name` seen as `dt` without a copy, or None when the widths differ."""
        key = (name, dt)
        v = self._views.get(key)
        if v is None:
            store = self.regs.get(name)
            if store is None:
                raise CudaError(Error.cudaErrorInvalidPtx, f"undeclared register {name}")
            if store.dtype == dt:
                v = store
            elif store.dtype.itemsize == dt.itemsize and dt != np.bool_ and store.dtype != np.bool_:
                v = store.view(dt)
            else:
                return None
            self._views[key] = v
        return v

    def src(self, op, dt: np.dtype) -> Getter:
        """A getter for a source operand's value as `dt` (array of n, or a scalar)."""
        get = self._src(op, dt)
        if self.ftz and dt == F32:
            return lambda: flush_subnormals(get())
        return get

    def _src(self, op, dt: np.dtype) -> Getter:
        if isinstance(op, Imm):
            value = imm_scalar(op, dt)
            return lambda: value
        if isinstance(op, Reg):
            name = op.name
            if name in self.regs:
                v = self.view(name, dt)
                if v is not None:
                    return lambda: v
                store = self.regs[name]
                if store.dtype == np.bool_ or dt == np.bool_ or store.dtype.kind == "f" or dt.kind == "f":
                    raise Unsupported(f"register {name} (.{store.dtype}) used as .{dt}")
                src = store.view(int_like(store.dtype, dt.kind == "i"))
                return lambda: src.astype(dt)
            return self.special(name, dt)
        if isinstance(op, Sym):
            value = self.kernel.symbol_address(op.name)
            c = dt.type(value)
            return lambda: c
        raise Unsupported(f"operand {op!r} here")

    def special(self, name: str, dt: np.dtype) -> Getter:
        arr = self.sregs.get(name)
        if arr is not None:  # %ctaid changes in place between batches: convert on each read
            if arr.dtype == dt:
                return lambda: arr
            return lambda: arr.astype(dt)
        u = self.uniform.get(name)
        if u is not None:
            c = dt.type(u)
            return lambda: c
        if name.startswith("%envreg") and name[7:].isdigit():
            index = int(name[7:])
            return lambda: dt.type(self.envregs[index - 1] if index in (1, 2) else 0)
        if name in ("%clock", "%clock64", "%globaltimer", "%globaltimer_lo"):
            return lambda: dt.type(time.perf_counter_ns() & ((1 << (8 * dt.itemsize)) - 1))
        raise Unsupported(f"special register {name}")

    def dst(self, op, dt: np.dtype, signed: bool | None = None) -> tuple[np.ndarray | None, Writer]:
        """(direct view or None, writer(value, mask)) for a destination register written as `dt`.

        A narrower value into a wider register is zero- or sign-extended (`signed`, default: the
        value type's own signedness), as `ld.u8` into a .b16 register is.
        """
        if not isinstance(op, Reg):
            raise Unsupported(f"destination {op!r}")
        if op.name == "_":
            return None, lambda value, m: None
        if op.name not in self.regs:
            raise CudaError(Error.cudaErrorInvalidPtx, f"undeclared or read-only register {op.name}")
        v = self.view(op.name, dt)
        name = op.name
        if v is not None and self.ftz and dt == F32:
            def write_flushed(value, m, v=v):
                blend(v, flush_subnormals(value), True if m is True or m.clobbers(name) else m)
            return None, write_flushed
        if v is not None:
            def write(value, m, v=v):
                blend(v, value, True if m is True or m.clobbers(name) else m)
            return v, write
        store = self.regs[op.name]
        if store.dtype == np.bool_ or dt == np.bool_ or store.dtype.kind == "f" or dt.kind == "f":
            raise Unsupported(f"register {op.name} (.{store.dtype}) written as .{dt}")
        sign = dt.kind == "i" if signed is None else signed
        target = store.view(int_like(store.dtype, sign))
        vt = int_like(dt, sign)

        def write_ext(value, m):
            blend(target, np.asarray(value).astype(vt, copy=False), True if m is True or m.clobbers(name) else m)
        return None, write_ext

    def scatter(self, op, dt: np.dtype) -> Writer:
        """writer(values, mask) for values computed only for the active threads (a load's result)."""
        view, write = self.dst(op, dt)
        if view is None and op.name == "_":
            return write
        if view is not None:
            def put(values, m):
                if m is True:
                    view[...] = values
                else:
                    view[m.mask if m.index is None else m.index] = values
            return put
        store = self.regs[op.name]
        target = store.view(int_like(store.dtype, dt.kind == "i"))

        def put_ext(values, m):
            values = np.asarray(values).astype(int_like(dt, dt.kind == "i"), copy=False)
            if m is True:
                target[...] = values
            else:
                target[m.mask if m.index is None else m.index] = values
        return put_ext

    def address(self, op: Addr) -> Getter:
        """Per-thread byte addresses (uint64 array of n) of an `[base+offset]` operand."""
        off = np.uint64(op.offset % (1 << 64))
        if isinstance(op.base, Reg):
            if op.base.name in self.regs:
                store = self.regs[op.base.name]
                base = self.view(op.base.name, UINT[store.dtype.itemsize])
                if base is None:
                    raise Unsupported(f"register {op.base.name} as an address")
            else:
                base = np.asarray(self.special(op.base.name, np.dtype(np.uint64))())
            if base.dtype == np.uint64:
                if op.offset == 0:
                    return lambda: base
                return lambda: base + off
            return lambda: base.astype(np.uint64) + off
        if isinstance(op.base, Sym):
            value = np.full(self.n, (self.kernel.symbol_address(op.base.name) + op.offset) % (1 << 64), np.uint64)
        else:
            value = np.full(self.n, op.offset % (1 << 64), np.uint64)
        return lambda: value
