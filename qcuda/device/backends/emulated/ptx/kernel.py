"""A kernel: its parameter layout, memory layout, basic blocks, and the SIMT scheduler.

Execution model. A batch of whole thread blocks runs at once; every register is an array with
an element per thread. Instructions are grouped into basic blocks, and each thread has the index
of the basic block it runs next. The scheduler always runs the lowest such index among the
threads still alive ("min-PC"), with exactly the threads waiting there active. Because blocks are
numbered in program order, threads that diverge at a branch reconverge at the first block both
paths reach, a loop runs until its last thread leaves it, and a thread never passes a point
(a `bar.sync`) while another thread of the batch still has to reach it: barriers need no code.
Blocks of a batch never interact except through memory, where CUDA gives no ordering anyway.

Divergence costs little: while no thread has diverged the active set is the constant True; a
register that no waiting thread will read again (liveness per basic block) is written in every
lane without masking; and a loop entered by a small part of a large batch runs in a compacted
frame of just those threads until they reach the block where the others wait.

The one thing min-PC cannot run is a thread spinning until a thread at a later point of the
program (in another block or warp) writes a flag: the spinning thread always goes first, so the
launch never ends. CUDA does not promise such code works either; `Kernel.time_limit` bounds it.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .....protocol.errors import CudaError, Error
from .....protocol.messages import MAX_CLUSTER_BLOCKS
from .frame import CLUSTER_REGISTERS, DTYPES, REG_DTYPES, RESERVED_PREFIX, RESERVED_SMEM, Active, Frame, Unsupported, blend
from .inline import expand_calls
from .ops import CARRY, Factory, carry_use, decode
from .parser import Addr, Function, Instruction, Neg, PredPair, Reg, Sym, Variable, Vec

MAX_BLOCK_THREADS = 1024
MAX_BLOCK_DIMS = (1024, 1024, 64)
MAX_GRID_DIMS = (2**31 - 1, 65535, 65535)
MAX_SHARED_BYTES = 227 * 1024  # per block, as on sm_90
BATCH_THREADS = 1 << 17  # threads run together: large enough that numpy's per-call cost vanishes
BATCH_BYTES = 256 << 20  # ... and small enough that registers stay within this much memory
CACHED_FRAME_BYTES = 4 << 20  # frames this small stay bound between launches (one per shape)
COMPACT_RATIO = 8  # a loop entered by at most 1/8 of a frame's threads runs in a frame of its own
COMPACT_MIN_THREADS = 4096  # ... when the frame is at least this big (else copying costs more)
_FALL, _BRA, _EXIT = 0, 1, 2
_COLLECTIVE = ("shfl", "vote", "activemask", "redux", "match", "wmma")  # need whole warps: never compacted


@dataclass
class _Block:
    insts: list[Instruction]
    factories: list[Factory]
    kind: int  # _FALL, _BRA or _EXIT
    target: int  # _BRA: block index
    guard: tuple[str, bool] | None


def _align(n: int, a: int) -> int:
    return -(-n // a) * a


class Kernel:
    """One `.entry` of a loaded module, ready to launch."""

    def __init__(self, fn: Function, module_vars: dict[str, Variable], global_addrs: dict[str, int],
                 memory, functions: dict[str, Function]) -> None:
        self.name = fn.name
        self.memory = memory
        self.regs: dict[str, str] = {}
        self.output: Callable[[str], object] = _print  # where device printf goes; the backend may redirect
        self.time_limit: float | None = None  # seconds a launch may run before cudaErrorLaunchTimeout
        self.error: CudaError | None = None
        try:
            fn = expand_calls(fn, functions)
        except CudaError as e:
            self._fail(e)
        for reg, t in fn.regs.items():
            if t in REG_DTYPES:
                self.regs[reg] = t
            else:
                self._fail(Unsupported(f"registers of type .{t} ({reg})"))
        if any(any(carry_use(i)) for i in fn.body if isinstance(i, Instruction)):
            self.regs[CARRY] = "u32"
        self._symbols: dict[str, int] = {}
        self.param_layout: list[tuple[int, int]] = []
        offset = 0
        for p in fn.params:
            offset = _align(offset, p.align)
            self.param_layout.append((offset, p.size))
            self._symbols[p.name] = offset
            offset += p.size
        self.param_size = offset
        maxntid = fn.directives.get(".maxntid")
        self.max_threads = _product(maxntid) if maxntid else MAX_BLOCK_THREADS
        self.req_threads = fn.directives.get(".reqntid")
        required = fn.directives.get(".reqnctapercluster")
        self.required_cluster = tuple(required) + (1,) * (3 - len(required)) if required else None
        self.explicit_cluster = required is not None or ".explicitcluster" in fn.directives
        self.uses_cluster = _reads_cluster_registers(fn)

        used = _referenced_symbols(fn)
        shared = [v for v in fn.variables if v.space == "shared"]
        shared += [v for name, v in module_vars.items() if v.space == "shared" and name in used]
        self.static_shared = 0
        self._dynamic: list[str] = []
        self.dynamic_align = 16
        for v in shared:
            if v.extern or v.count is None:
                self._dynamic.append(v.name)
                self.dynamic_align = max(self.dynamic_align, v.align)
                continue
            self.static_shared = _align(self.static_shared, v.align)
            self._symbols[v.name] = self.static_shared
            self.static_shared += v.size
        self.local_size = 0
        for v in fn.variables:
            if v.space == "local":
                self.local_size = _align(self.local_size, v.align)
                self._symbols[v.name] = self.local_size
                self.local_size += v.size
        self.local_size = _align(self.local_size, 16)
        for name in used:
            if name in global_addrs:
                self._symbols[name] = global_addrs[name]
        self._dynamic_base = _align(self.static_shared, self.dynamic_align)
        for name in self._dynamic:
            self._symbols[name] = self._dynamic_base
        self.reserved_smem = _reads_reserved_smem(fn)
        self.grid_workspace = _reads_envreg(fn)

        self._blocks = self._build_blocks(fn)
        collective = any(i.opcode.split(".")[0] in _COLLECTIVE or (i.opcode.startswith("bar") and ".red" in i.opcode)
                         for b in self._blocks for i in b.insts)
        self._loop_heads = set() if collective else {
            b.target for k, b in enumerate(self._blocks) if b.kind == _BRA and b.target <= k}
        self._live_in = _liveness(self._blocks)
        self._frames: dict[tuple, tuple[Frame, list]] = {}  # launch shape -> a bound, idle frame
        self._live_cache: dict[bytes, frozenset[str]] = {}
        self._reg_bytes = sum(REG_DTYPES[t].itemsize for t in self.regs.values())

    # -- decoding ---------------------------------------------------------------------------
    def _build_blocks(self, fn: Function) -> list[_Block]:
        """Split the body into basic blocks and decode each instruction once."""
        groups: list[tuple[list[str], list[Instruction]]] = [([], [])]
        for item in fn.body:
            if isinstance(item, str):
                if groups[-1][1]:
                    groups.append(([], []))
                groups[-1][0].append(item)
                continue
            groups[-1][1].append(item)
            base = item.opcode.split(".")[0]
            if base in ("bra", "ret", "exit"):
                groups.append(([], []))
        labels = {label: i for i, (names, _) in enumerate(groups) for label in names}
        blocks = []
        for i, (_, insts) in enumerate(groups):
            kind, target, guard = _FALL, i + 1, None
            body = insts
            if insts and insts[-1].opcode.split(".")[0] in ("bra", "ret", "exit"):
                last = insts[-1]
                body = insts[:-1]
                guard = last.guard
                if last.opcode.startswith("bra"):
                    kind = _BRA
                    if len(last.operands) != 1 or not isinstance(last.operands[0], Sym) or \
                            last.operands[0].name not in labels:
                        self._fail(CudaError(Error.cudaErrorInvalidPtx, f"{last}: unknown branch target"))
                        target = i + 1
                    else:
                        target = labels[last.operands[0].name]
                else:
                    kind = _EXIT
            factories = []
            for inst in body:
                try:
                    factories.append(decode(inst))
                except CudaError as e:
                    self._fail(e)
                except (ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
                    self._fail(CudaError(Error.cudaErrorInvalidPtx, f"{inst}: malformed operands ({e})"))
            blocks.append(_Block(body, factories, kind, target, guard))
        return blocks

    def _fail(self, error: CudaError) -> None:
        if self.error is None:
            self.error = error

    def symbol_address(self, name: str) -> int:
        """The address a symbol names in its own state space (what `mov %r, name` yields)."""
        try:
            return self._symbols[name]
        except KeyError:
            raise Unsupported(f"symbol {name} (an undefined or external name)") from None

    # -- launching --------------------------------------------------------------------------
    def _check_config(self, grid, block, shared_bytes: int, params: bytes) -> None:
        def bad(why: str) -> CudaError:
            return CudaError(Error.cudaErrorInvalidConfiguration, f"{self.name}<<<{grid}, {block}>>>: {why}")

        if len(grid) != 3 or len(block) != 3 or min(*grid, *block) < 1:
            raise bad("every grid and block dimension must be at least 1")
        if any(b > m for b, m in zip(block, MAX_BLOCK_DIMS)) or _product(block) > MAX_BLOCK_THREADS:
            raise bad(f"a block may have at most {MAX_BLOCK_DIMS} and {MAX_BLOCK_THREADS} threads in all")
        if any(g > m for g, m in zip(grid, MAX_GRID_DIMS)):
            raise bad(f"the grid may be at most {MAX_GRID_DIMS}")
        if _product(block) > self.max_threads or (self.req_threads and tuple(block[:len(self.req_threads)])
                                                     != tuple(self.req_threads)):
            raise bad("the block does not match the kernel's .maxntid/.reqntid")
        if shared_bytes < 0 or self._dynamic_base + shared_bytes > MAX_SHARED_BYTES:
            raise bad(f"{self._dynamic_base + shared_bytes} bytes of shared memory exceed {MAX_SHARED_BYTES}")
        if len(params) < self.param_size:
            raise CudaError(Error.cudaErrorInvalidValue,
                            f"{self.name} takes {self.param_size} bytes of parameters, got {len(params)}")

    def cluster_shape(self, grid: tuple[int, int, int], cluster: tuple[int, int, int] | None) -> tuple[int, int, int]:
        """The launch's cluster shape (`cluster`, else the kernel's .reqnctapercluster, else one block); checked
        as sm_90 checks it (cudaErrorInvalidClusterSize)."""
        shape = cluster or self.required_cluster or (1, 1, 1)
        if cluster is not None and self.required_cluster is not None and tuple(cluster) != self.required_cluster:
            raise CudaError(Error.cudaErrorInvalidClusterSize,
                            f"clusters {cluster}: kernel {self.name} was compiled for {self.required_cluster}")
        if _product(shape) > MAX_CLUSTER_BLOCKS or any(g % c for g, c in zip(grid, shape)):
            raise CudaError(Error.cudaErrorInvalidClusterSize, f"grid {grid} in clusters {shape} (at most "
                                                               f"{MAX_CLUSTER_BLOCKS} blocks, a whole number of them)")
        return shape

    def launch(self, grid: tuple[int, int, int], block: tuple[int, int, int], shared_bytes: int,
               params: bytes, cooperative: bool = False, cluster: tuple[int, int, int] | None = None) -> None:
        """Run the whole grid to completion; raises CudaError.

        `cluster`: thread block clusters of that shape (None: as compiled). A cluster's blocks always run in
        one batch, so min-PC scheduling makes `barrier.cluster` hold as it makes `bar.sync` hold.

        `cooperative`: the whole grid runs as one batch, and %envreg1/%envreg2 (the high and low halves of
        the grid's workspace, which `cg::this_grid().sync()` counts arrivals in) point at zeroed device
        memory; otherwise they are 0, so the grid group is not valid and a grid sync traps. One batch is what makes a grid sync
        work under min-PC scheduling: every block's arrival (an atomic add) runs before any block's wait
        loop, so the wait ends at once. The caller keeps the grid small enough to be resident (CUDA's
        cudaErrorCooperativeLaunchTooLarge) and sets it for ordinary launches of such grids too."""
        grid, block = tuple(int(g) for g in grid), tuple(int(b) for b in block)
        self._check_config(grid, block, shared_bytes, params)
        shape = self.cluster_shape(grid, cluster)
        if self.error is not None:
            raise CudaError(self.error.code, f"kernel {self.name}: {self.error.detail}")
        tpb = _product(block)
        nblocks = _product(grid)
        shared = _align(self._dynamic_base + shared_bytes, 16) if self._dynamic or self.static_shared else 0
        if self.reserved_smem:  # the system's part of each block's shared memory, after the program's
            shared += RESERVED_SMEM
        per_thread = self._reg_bytes + self.local_size + shared / tpb + 48
        batch_threads = max(tpb, min(BATCH_THREADS, int(BATCH_BYTES // per_thread)))
        per_batch = max(1, batch_threads // tpb)
        span = _cluster_span(grid, shape)  # whole clusters per batch
        per_batch = max(span, per_batch // span * span)
        workspace = 0
        if cooperative:
            per_batch = nblocks
            workspace = self.memory.alloc(16)
            self.memory.view(workspace, 16)[:] = 0
        param_bytes = np.frombuffer(bytes(params[:self.param_size]) + bytes(16), dtype=np.uint8)
        frames: dict[tuple, tuple[Frame, list]] = {}
        deadline = time.monotonic() + self.time_limit if self.time_limit is not None else None
        try:
            with np.errstate(all="ignore"):
                for first in range(0, nblocks, per_batch):
                    count = min(per_batch, nblocks - first)
                    key = (grid, block, shared_bytes, count, shape)
                    if key not in frames:
                        # a small frame of an earlier launch is reused: binding costs more than running
                        cached = self._frames.pop(key, None)
                        if cached is None:
                            frame = Frame(self, count, block, grid, shared, param_bytes, self.memory, shared_bytes,
                                          shape)
                            cached = (frame, self._bind(frame))
                        frames[key] = cached
                    frame, bound = frames[key]
                    frame.params = param_bytes
                    frame.envregs = (workspace >> 32, workspace & 0xFFFF_FFFF)
                    frame.start(first)
                    self._run(frame, bound, deadline)
        finally:
            if workspace:
                self.memory.free(workspace)
            for key, (frame, bound) in frames.items():
                if frame.nbytes <= CACHED_FRAME_BYTES:
                    self._frames[key] = (frame, bound)

    def _bind(self, frame: Frame) -> list:
        bound = []
        for blk in self._blocks:
            runs = []
            for inst, f in zip(blk.insts, blk.factories):
                try:
                    runs.append(f(frame))
                except (ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
                    raise CudaError(Error.cudaErrorInvalidPtx, f"{inst}: malformed operands ({e})") from None
            pred = frame.src(Reg(blk.guard[0]), DTYPES["pred"]) if blk.guard else None
            bound.append((runs, blk, pred))
        return bound

    def _run(self, frame: Frame, bound: list, deadline: float | None, cur: int = 0,
             limit: int | None = None) -> np.ndarray:
        """Min-PC scheduling over basic blocks (see the module docstring), from block `cur` with
        every thread active, until every thread is at block `limit` or beyond (default: until
        all have exited). Returns each thread's next block."""
        n = frame.n
        exit_index = len(bound)
        limit = exit_index if limit is None else limit
        nxt = np.full(n, cur, dtype=np.int32)
        m = True
        while True:
            if cur >= limit:
                if m is True:
                    nxt.fill(cur)
                return nxt
            if deadline is not None and time.monotonic() > deadline:
                raise CudaError(Error.cudaErrorLaunchTimeout,
                                f"kernel {self.name} ran longer than its {self.time_limit} s limit")
            runs, blk, pred = bound[cur]
            i = 0
            try:
                for i, run in enumerate(runs):  # noqa: B007 (i names the failing instruction)
                    run(m)
            except CudaError as e:
                raise CudaError(e.code, f"{e.detail} [kernel {self.name}, {blk.insts[i]}]") from None
            except (ValueError, TypeError, IndexError, OverflowError, MemoryError) as e:
                raise CudaError(Error.cudaErrorLaunchFailure,
                                f"emulator failure at {blk.insts[i]} in kernel {self.name}: {e!r}") from e
            target = blk.target if blk.kind == _BRA else exit_index
            fall = cur + 1
            if blk.kind == _FALL:
                target = fall
            if blk.kind == _FALL or pred is None:  # everyone goes the same way
                if m is True:
                    cur = target
                    continue
                blend(nxt, np.int32(target), m)
            else:
                p = pred()
                taken = ~p if blk.guard[1] else p
                if m is True:
                    if taken.all():
                        cur = target
                        continue
                    if not taken.any():
                        cur = fall
                        continue
                    nxt.fill(fall)
                    nxt[taken] = target
                else:
                    blend(nxt, np.where(taken, np.int32(target), np.int32(fall)), m)
            cur, m = self._schedule(frame, deadline, nxt, limit, exit_index)
            if m is None:
                return nxt

    def _schedule(self, frame: Frame, deadline: float | None, nxt: np.ndarray, limit: int,
                  exit_index: int) -> tuple[int, object]:
        """The lowest block any thread waits at, and the threads waiting there (True: all of
        them); (-1, None) once every thread is at `limit` or beyond. A loop that only a few
        threads enter runs in a compacted frame first, until they catch up with the rest."""
        n = frame.n
        while True:
            counts = np.bincount(nxt, minlength=exit_index + 1)  # one pass finds the lowest block
            waiting = np.flatnonzero(counts[:exit_index])
            if waiting.size == 0 or waiting[0] >= limit:
                return -1, None
            cur = int(waiting[0])
            if counts[cur] == n:
                return cur, True
            mask = nxt == cur
            if not (cur in self._loop_heads and n >= COMPACT_MIN_THREADS and counts[cur] * COMPACT_RATIO <= n):
                return cur, Active(mask, self._live_where(waiting[1:]), int(counts[cur]))
            positions = np.flatnonzero(mask)
            until = min(limit, int(waiting[1]) if waiting.size > 1 else exit_index)
            sub = frame.compact(positions)
            nxt[positions] = self._run(sub, self._bind(sub), deadline, cur, until)
            frame.expand(sub, positions)

    def _live_where(self, blocks: np.ndarray) -> frozenset[str]:
        """Registers live at the blocks where the inactive threads wait."""
        key = blocks.tobytes()
        live = self._live_cache.get(key)
        if live is None:
            live = self._live_cache[key] = frozenset().union(*(self._live_in[b] for b in blocks))
        return live


def _print(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


_NO_DESTINATION = ("st", "red", "bar", "barrier", "membar", "fence", "prefetch", "prefetchu", "cp", "trap",
                   "nanosleep", "qcuda")


def _registers(ops) -> list[str]:
    out: list[str] = []
    for op in ops:
        if isinstance(op, Reg):
            out.append(op.name)
        elif isinstance(op, (Vec, PredPair, Neg, Addr)):
            inner = {Vec: lambda o: o.items, PredPair: lambda o: (o.first, o.second),
                     Neg: lambda o: (o.reg,), Addr: lambda o: (o.base,)}[type(op)](op)
            out += _registers(inner)
    return out


def _liveness(blocks: list[_Block]) -> list[frozenset[str]]:
    """Registers live on entry to each basic block (backward dataflow). A thread waiting at a
    block never reads a register outside that block's set, so writing it in every lane is safe."""
    uses, defs = [], []
    for blk in blocks:
        use: set[str] = set()
        kill: set[str] = set()
        for inst in blk.insts:
            base = inst.opcode.split(".")[0]
            if inst.opcode.startswith("wmma.store"):
                base = "st"  # [address], fragment, stride: reads only
            dests = [] if base in _NO_DESTINATION else _registers(inst.operands[:1])
            sources = inst.operands if base in _NO_DESTINATION else inst.operands[1:]
            reads_cf, writes_cf = carry_use(inst)
            dests += [CARRY] if writes_cf else []
            read = _registers(sources) + ([inst.guard[0]] if inst.guard else []) + ([CARRY] if reads_cf else [])
            if inst.guard:  # a guarded write keeps the old value in some lanes: a read too
                read += dests
            use.update(r for r in read if r not in kill)
            if not inst.guard:
                kill.update(dests)
        if blk.guard and blk.guard[0] not in kill:
            use.add(blk.guard[0])
        uses.append(use)
        defs.append(kill)
    n = len(blocks)
    succs = []
    for k, blk in enumerate(blocks):
        nxt = {_FALL: [k + 1], _BRA: [blk.target] + ([k + 1] if blk.guard else []),
               _EXIT: [k + 1] if blk.guard else []}[blk.kind]
        succs.append([s for s in nxt if s < n])
    live_in: list[set[str]] = [set(u) for u in uses]
    changed = True
    while changed:
        changed = False
        for k in range(n - 1, -1, -1):
            out = set().union(*(live_in[s] for s in succs[k]))
            new = uses[k] | (out - defs[k])
            if new != live_in[k]:
                live_in[k] = new
                changed = True
    return [frozenset(x) for x in live_in]


def _cluster_span(grid: tuple[int, int, int], cluster: tuple[int, int, int]) -> int:
    """Consecutive blocks (in launch order, x fastest) that hold whole clusters."""
    cx, cy, cz = cluster
    if cy == cz == 1:
        return cx
    if cz == 1:
        return grid[0] * cy
    return grid[0] * grid[1] * cz


def _reads_reserved_smem(fn: Function) -> bool:
    """Whether the kernel reads %reserved_smem_offset_* (cooperative groups' barriers for tiles wider than a warp)."""
    return any(isinstance(op, Reg) and op.name.startswith(RESERVED_PREFIX)
               for inst in fn.body if not isinstance(inst, str) for op in inst.operands)


def _reads_cluster_registers(fn: Function) -> bool:
    """Whether the kernel reads %cluster_* / %clusterid / %nclusterid / %is_explicit_cluster."""
    return any(isinstance(op, Reg) and op.name.startswith(CLUSTER_REGISTERS)
               for inst in fn.body if not isinstance(inst, str) for op in inst.operands)


def _reads_envreg(fn: Function) -> bool:
    """Whether the kernel reads %envreg* (cooperative groups' grid workspace: grid sync, is_valid)."""
    return any(isinstance(op, Reg) and op.name.startswith("%envreg")
               for inst in fn.body if not isinstance(inst, str) for op in inst.operands)


def _referenced_symbols(fn: Function) -> set[str]:
    names: set[str] = set()
    for inst in fn.body:
        if isinstance(inst, str):
            continue
        for op in inst.operands:
            if isinstance(op, Sym):
                names.add(op.name)
            elif isinstance(op, Addr) and isinstance(op.base, Sym):
                names.add(op.base.name)
    return names


def _product(values) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out
