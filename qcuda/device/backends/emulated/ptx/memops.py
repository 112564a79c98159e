"""Memory instructions: state spaces and generic addresses, ld/st, atomics, cp.async.

Global and constant memory is the device's `DeviceMemory`; shared memory is one byte array per
block of the batch and local memory one per thread, both reached through generic addresses in
windows far above the device heap (`cvta`). Only active threads' addresses are touched, so an
inactive thread never faults.
"""
from __future__ import annotations

import threading
from contextlib import nullcontext
from typing import Callable

import numpy as np

from .....protocol.errors import CudaError, Error
from .floats import half_adder
from .frame import (
    CLUSTER_RANK_SHIFT, CLUSTER_WINDOW, DTYPES, LOCAL_WINDOW, LOWEST_WINDOW, SHARED_WINDOW, WINDOW_SIZE, Frame,
    Unsupported, flush_subnormals,
)
from .parser import Addr, Imm, Instruction, Reg, Vec
from .shapes import Factory, Run, no_op, operands, types_of


_SPACES = ("global", "shared", "local", "const", "param", "cluster")  # cluster: .shared::cluster
ATOMIC_LOCK = threading.Lock()  # one atomic instruction's update of global memory at a time (see make_atom)


def _window_index(fr: Frame, space: str, addrs: np.ndarray, ids, dt: np.dtype):
    """(typed view of the space's bytes, element index per address) for shared, cluster-shared or local memory."""
    size = dt.itemsize
    if space == "shared":
        buf, limit = fr.shared, fr.shared_size
        owner = fr.block_pos if ids is None else fr.block_of_thread[ids]
    elif space == "cluster":
        buf, limit = fr.shared, fr.shared_size
        owner, addrs = cluster_block(fr, addrs, ids)
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


def cluster_block(fr: Frame, addrs: np.ndarray, ids) -> tuple[np.ndarray, np.ndarray]:
    """(batch position of the block each .shared::cluster address names, offset in its shared memory). A
    cluster's blocks always share a batch (Kernel.launch), so the block is found from the thread's own."""
    addrs = np.asarray(addrs).astype(np.int64)
    ids = fr.thread_index if ids is None else ids
    own = fr.block_of_thread[ids].astype(np.int64)
    rank = (addrs >> CLUSTER_RANK_SHIFT) - 1
    offset = addrs & ((1 << CLUSTER_RANK_SHIFT) - 1)
    cx, cy, cz = fr.cluster
    if int(rank.max(initial=-1)) >= cx * cy * cz:
        raise CudaError(Error.cudaErrorIllegalAddress, f"a distributed shared memory access to a block of rank "
                                                       f"{int(rank.max())} in a cluster of {cx * cy * cz}")
    gx, gy, _ = fr.grid
    lin = own + fr.first_block
    x, y, z = lin % gx, (lin // gx) % gy, lin // (gx * gy)
    tx, ty, tz = x - x % cx + rank % cx, y - y % cy + (rank // cx) % cy, z - z % cz + rank // (cx * cy)
    target = tx + ty * gx + tz * gx * gy - fr.first_block
    return np.where(rank < 0, own, target), offset


def load_space(fr: Frame, space: str | None, addrs: np.ndarray, ids, dt: np.dtype) -> np.ndarray:
    """Values at per-thread addresses of a state space (None: generic); `ids` are the threads
    the addresses belong to (None: all threads in order)."""
    if space in ("global", "const"):
        return fr.memory.load(addrs, dt)
    if space in ("shared", "local", "cluster"):
        view, idx = _window_index(fr, space, addrs, ids, dt)
        return view[idx]
    if space == "param":
        return _param_view(fr, addrs, dt)
    if addrs.size == 0 or int(addrs.max()) < LOWEST_WINDOW:
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
    if space in ("shared", "local", "cluster"):
        view, idx = _window_index(fr, space, addrs, ids, values.dtype)
        view[idx] = values
        return
    if space == "param":
        raise Unsupported("st.param (a call sequence)")
    if addrs.size == 0 or int(addrs.max()) < LOWEST_WINDOW:
        fr.memory.store(addrs, values)
        return
    ids = fr.thread_index if ids is None else ids
    values = np.broadcast_to(values, addrs.shape)
    for sel, sp, base in _generic_parts(addrs):
        if sel.any():
            store_space(fr, sp, addrs[sel] - np.uint64(base), ids[sel], values[sel])


def _generic_parts(addrs: np.ndarray):
    def inside(base: int) -> np.ndarray:
        return (addrs >= np.uint64(base)) & (addrs < np.uint64(base + WINDOW_SIZE))
    shared, local, cluster = inside(SHARED_WINDOW), inside(LOCAL_WINDOW), inside(CLUSTER_WINDOW)
    return ((~(shared | local | cluster), "global", 0), (shared, "shared", SHARED_WINDOW),
            (local, "local", LOCAL_WINDOW), (cluster, "cluster", CLUSTER_WINDOW))


def _param_view(fr: Frame, addrs: np.ndarray, dt: np.dtype) -> np.ndarray:
    size = dt.itemsize
    off = np.asarray(addrs).astype(np.int64)
    if off.size and (int(off.min()) < 0 or int(off.max()) > fr.params.size - size):
        raise CudaError(Error.cudaErrorIllegalAddress, "ld.param outside the kernel's parameters")
    idx = off[:, None] + np.arange(size)
    return np.ascontiguousarray(fr.params[idx]).view(dt).reshape(off.shape)


def _mem_shape(inst: Instruction, mods: list[str]) -> tuple[str | None, int, np.dtype]:
    mods = ["cluster" if m == "shared::cluster" else m.removesuffix("::cta") for m in mods]
    space = next((m for m in mods if m in _SPACES), None)
    vec = next((int(m[1:]) for m in mods if m in ("v2", "v4", "v8")), 1)
    types = types_of(mods)
    if len(types) != 1:
        raise Unsupported(f"instruction {inst.opcode}")
    return space, vec, types[0]


def make_ld(inst: Instruction, mods: list[str]) -> Factory:
    space, vec, dt = _mem_shape(inst, mods)
    d, a = operands(inst, 2)
    if not isinstance(a, Addr):
        raise CudaError(Error.cudaErrorInvalidPtx, f"{inst}: the source must be an address")
    dests = list(d.items) if isinstance(d, Vec) else [d]
    if len(dests) != vec:
        raise CudaError(Error.cudaErrorInvalidPtx, f"{inst}: {len(dests)} destinations for .v{vec}")
    size = dt.itemsize

    def factory(fr: Frame) -> Run:
        writers = [fr.scatter(r, dt) for r in dests]
        if space == "param" and not isinstance(a.base, Reg):  # uniform: one value for every thread
            addr = fr.kernel.symbol_address(a.base.name) + a.offset if a.base else a.offset
            if addr < 0 or addr + vec * size > fr.params.size:
                raise CudaError(Error.cudaErrorInvalidPtx, f"{inst}: outside the kernel's parameters")
            full = [fr.dst(r, dt)[1] for r in dests]

            def ld_param(m):  # fr.params is replaced when a cached frame serves another launch
                values = fr.params[addr:addr + vec * size].view(dt)
                for k, w in enumerate(full):
                    w(values[k], m)
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


def make_st(inst: Instruction, mods: list[str]) -> Factory:
    space, vec, dt = _mem_shape(inst, mods)
    a, s = operands(inst, 2)
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


def make_atom(inst: Instruction, mods: list[str]) -> Factory:
    """atom/red: the lanes of one instruction take effect one after another in thread order.

    Kernels of several streams run in threads of their own: the read-combine-write of global (and generic)
    memory holds ATOMIC_LOCK, so atomics stay atomic between kernels running at once, as on a GPU.

    Lanes are grouped by memory location (shared and local addresses are per block / thread).
    Associative operations get their old values from a segmented scan in log2(lanes per
    location) steps, and CAS from one step per successful swap, so contention on one address
    costs no per-lane loop; only inc/dec and the half-precision adds (.f16, .bf16, .f16x2,
    .bf16x2: rounded at every step) run one round per lane of the busiest location. f32/f64 add
    is scanned in float64 in a tree order: with several lanes on one address the old values and
    the sum may differ from a serial float32 order in the last bits.
    """
    mods = ["cluster" if m == "shared::cluster" else m.removesuffix("::cta") for m in mods]
    space = next((m for m in mods if m in _SPACES), None)
    op = next((m for m in mods if m in _ATOM_OPS), None)
    half = next((m for m in mods if m in ("f16", "bf16", "f16x2", "bf16x2")), None)
    types = [np.dtype(np.uint8)] if half else types_of(mods)  # a placeholder: half_adder gives the type
    if op is None or len(types) != 1 or "v2" in mods or "v4" in mods \
            or (half and op != "add"):
        raise Unsupported(f"instruction {inst.opcode}")
    dt, half_add = half_adder(half) if half else (types[0], None)
    ftz = op == "add" and dt == np.float32  # PTX: atom.add.f32 flushes subnormal inputs and results
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
            lanes = np.arange(fr.n) if m is True else np.flatnonzero(m.mask)  # positions, not thread ids:
            if m is not True:  # the two differ in a compacted frame
                addrs = addrs[m.mask]
            if addrs.size == 0:
                return
            if space == "cluster":  # a location is a block's offset, however the address names the block
                key, grouping = cluster_block(fr, addrs, ids)
            else:
                key, grouping = _location_owner(fr, space, addrs, ids), addrs
            order = np.lexsort((grouping, key))  # stable: thread order within a location
            sa, sk = grouping[order], key[order]
            starts = np.flatnonzero(np.r_[True, (sa[1:] != sa[:-1]) | (sk[1:] != sk[:-1])])
            counts = np.diff(np.r_[starts, addrs.size])
            rank = np.arange(addrs.size) - np.repeat(starts, counts)
            first = order[starts]
            vals = [np.broadcast_to(g(), (fr.n,))[lanes[order]] for g in getters]
            with nullcontext() if space in ("shared", "local") else ATOMIC_LOCK:
                old, final = update(addrs, ids, first, vals, starts, counts, rank)
            if write is not None:
                out = np.empty(addrs.size, dt)
                out[order] = np.asarray(old).astype(dt)
                write(out, m)

        def update(addrs, ids, first, vals, starts, counts, rank):
            """Read, combine and write back each location touched: one indivisible step."""
            current = load_space(fr, space, addrs[first], ids[first], dt)
            if ftz:
                current, vals = flush_subnormals(current), [flush_subnormals(vals[0])]
            if half_add is not None:  # rounded at every step: lane after lane, as some serial order does
                old, final = _serial_update(half_add, current, vals[0], starts, counts, rank)
            elif op in _REDUCIBLE or op == "exch":
                old, final = _scan_update(op, current, vals[0], starts, counts, rank)
            elif op == "cas":
                old, final = _cas_update(current, vals[0], vals[1], starts, counts)
            else:
                old, final = _serial_update(_ATOM_OPS[op], current, vals[0], starts, counts, rank)
            if ftz:
                old, final = (flush_subnormals(np.asarray(x).astype(dt)) for x in (old, final))
            store_space(fr, space, addrs[first], ids[first], np.asarray(final).astype(dt))
            return old, final
        return atom
    return factory


def _location_owner(fr: Frame, space: str | None, addrs: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Which copy of an address a lane touches: its block for shared memory, itself for local."""
    if space == "shared":
        return fr.block_of_thread[ids]
    if space == "local":
        return ids.copy()
    if space == "cluster":
        return cluster_block(fr, addrs, ids)[0]
    if space is None and addrs.size and int(addrs.max()) >= LOWEST_WINDOW:
        owner = np.full(addrs.size, -1, np.int64)
        for sel, sp, base in _generic_parts(addrs)[1:]:
            owner[sel] = _location_owner(fr, sp, addrs[sel] - np.uint64(base), ids[sel])
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


def make_cp(inst: Instruction, mods: list[str]) -> Factory:
    """cp.async global -> shared, done at once (so commit_group/wait_group have nothing to wait
    for); bytes past the optional source size are zero-filled."""
    if mods[:1] != ["async"]:
        raise Unsupported(f"instruction {inst.opcode}")
    if any(m in ("commit_group", "wait_group", "wait_all") for m in mods):
        return no_op(inst, mods)
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


# mbarrier: a barrier object of 64 bits in shared memory (cuda::barrier, cuda::pipeline). The emulator's own
# encoding (programs treat the object and its phase tokens as opaque): the pending arrivals in bits 0-20, the
# expected arrivals per phase in bits 21-41, the phase number above; a token is the phase an arrival belonged to
# (bits 21 and up) with the pending count after it (bits 0-20).
_MB_BITS = 21
_MB_MASK = (1 << _MB_BITS) - 1
_MBARRIER_OPS = ("init", "arrive", "arrive_drop", "test_wait", "try_wait", "inval", "pending_count")


def make_mbarrier(inst: Instruction, mods: list[str]) -> Factory:
    op = mods[0] if mods else ""
    if op not in _MBARRIER_OPS or "expect_tx" in mods or "noComplete" in mods or any(
            m.endswith("::cluster") for m in mods):
        raise Unsupported(f"instruction {inst.opcode}")
    space = "shared" if any(m.removesuffix("::cta") == "shared" for m in mods) else None
    u64, u32 = DTYPES["u64"], DTYPES["u32"]
    ops = inst.operands

    if op == "pending_count":
        d, state = operands(inst, 2)

        def pending(fr: Frame) -> Run:
            gs, (_, write) = fr.src(state, u64), fr.dst(d, u32)
            return lambda m: write((np.asarray(gs()) & np.uint64(_MB_MASK)).astype(u32), m)
        return pending

    def factory(fr: Frame) -> Run:
        addr_op = ops[0] if op in ("init", "inval") else ops[1]
        ga = fr.address(addr_op)
        if op == "init":
            gcount = fr.src(ops[1], u32)
        elif op in ("arrive", "arrive_drop"):
            gcount = fr.src(ops[2], u32) if len(ops) > 2 else (lambda: np.uint32(1))
            write = fr.scatter(ops[0], u64) if not (isinstance(ops[0], Reg) and ops[0].name == "_") else None
        elif op in ("test_wait", "try_wait"):
            gtoken = fr.src(ops[2], u32 if "parity" in mods else u64)
            write = fr.scatter(ops[0], DTYPES["pred"])

        def active(m, getter):
            value = np.broadcast_to(getter(), (fr.n,))
            return value if m is True else value[m.mask]

        def run(m):
            addrs = ga() if m is True else ga()[m.mask]
            ids = fr.thread_index if m is True else fr.thread_index[m.mask]
            if addrs.size == 0:
                return
            if op == "inval":
                return
            if op == "init":
                count = active(m, gcount).astype(np.uint64)
                word = (count << np.uint64(_MB_BITS)) | count  # phase 0, all arrivals pending
                store_space(fr, space, addrs, ids, word)
                return
            word = load_space(fr, space, addrs, ids, u64)
            phase = word >> np.uint64(2 * _MB_BITS)
            if op in ("test_wait", "try_wait"):
                token = active(m, gtoken).astype(np.uint64)
                if "parity" in mods:
                    done = (phase & np.uint64(1)) != (token & np.uint64(1))
                else:
                    done = phase != (token >> np.uint64(_MB_BITS))
                write(done, m)
                return
            # arrivals of this instruction, per barrier, one after another in thread order
            key = _location_owner(fr, space, addrs, ids)
            rows = np.stack([key.astype(np.uint64), addrs.astype(np.uint64)], axis=1)
            _, first, group = np.unique(rows, axis=0, return_index=True, return_inverse=True)
            group = group.reshape(-1)
            count = active(m, gcount).astype(np.int64)
            total = np.bincount(group, weights=count).astype(np.int64)
            w = word[first]
            pending = (w & np.uint64(_MB_MASK)).astype(np.int64)
            expected = ((w >> np.uint64(_MB_BITS)) & np.uint64(_MB_MASK)).astype(np.int64)
            old_phase = (w >> np.uint64(2 * _MB_BITS)).astype(np.int64)
            if op == "arrive_drop":  # later phases expect fewer arrivals
                expected = expected - total
            pending = pending - total
            completed = pending <= 0
            new_phase = old_phase + completed
            pending = np.where(completed, np.maximum(expected, 0), pending)
            new_word = ((new_phase.astype(np.uint64) << np.uint64(2 * _MB_BITS))
                        | (np.maximum(expected, 0).astype(np.uint64) << np.uint64(_MB_BITS))
                        | pending.astype(np.uint64))
            store_space(fr, space, addrs[first], ids[first], new_word)
            if write is not None:
                token = (old_phase.astype(np.uint64) << np.uint64(_MB_BITS)) | pending.astype(np.uint64)
                write(token[group], m)
        return run
    return factory
