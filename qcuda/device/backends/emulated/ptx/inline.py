"""Calls to `.func` device functions, inlined into the kernel before it is decoded.

Every thread of a batch runs the same call sites, so a call is the callee's body pasted in place
with its registers, labels and local variables renamed for that site, its parameters bound to
the caller's call-sequence slots, and `ret` turned into a branch to the code after the call.
Call-sequence slots (`.param` declared inside a body) become per-thread local memory. Recursion
and calls through pointers cannot be inlined and are reported as unsupported. A call of an
external function the emulator implements (printf, assert, device malloc/free) becomes its own
`qcuda.<name>` instruction.
"""
from __future__ import annotations

import dataclasses
import itertools

from .frame import Unsupported
from .parser import Addr, Function, Instruction, Neg, PredPair, Reg, Sym, Vec

MAX_DEPTH = 32
BUILTINS = ("vprintf", "__assertfail", "malloc", "free")  # implemented in ops.py
_instances = itertools.count(1)


def expand_calls(fn: Function, functions: dict[str, Function], depth: int = 0) -> Function:
    """`fn` with every call replaced by the callee's body (returns `fn` itself if it makes none)."""
    slots = {v.name for v in fn.variables if v.space == "param"}
    has_call = any(isinstance(i, Instruction) and i.opcode.split(".")[0] == "call" for i in fn.body)
    if not has_call and not slots:
        return fn
    if depth > MAX_DEPTH:
        raise Unsupported(f"recursive calls (through {fn.name})")
    out = dataclasses.replace(
        fn, regs=dict(fn.regs), body=[],
        variables=[dataclasses.replace(v, space="local") if v.name in slots else v for v in fn.variables],
    )
    for item in fn.body:
        if isinstance(item, Instruction) and item.opcode.split(".")[0] == "call":
            _inline(out, item, functions, depth)
        elif isinstance(item, Instruction):
            out.body.append(_to_local(item, slots))
        else:
            out.body.append(item)
    return out


def _call_parts(inst: Instruction) -> tuple[list[str], str, list[str]]:
    """(return slots, callee, argument slots) of `call (r), f, (a, b)` and its shorter forms."""
    ops = list(inst.operands)
    rets: list = []
    if ops and isinstance(ops[0], Vec):
        rets = list(ops.pop(0).items)
    if not ops or not isinstance(ops[0], Sym):
        raise Unsupported(f"{inst.opcode} through a function pointer (line {inst.line})")
    callee = ops.pop(0).name
    args = list(ops.pop(0).items) if ops and isinstance(ops[0], Vec) else []
    if ops or not all(isinstance(x, Sym) for x in rets + args):
        raise Unsupported(f"this form of {inst.opcode} (line {inst.line})")
    return [r.name for r in rets], callee, [a.name for a in args]


def _inline(out: Function, call: Instruction, functions: dict[str, Function], depth: int) -> None:
    rets, name, args = _call_parts(call)
    k = next(_instances)
    skip = f"$qcuda_skip~{k}"
    if call.guard is not None:  # @p call f  ->  @!p bra skip; <body>; skip:
        out.body.append(Instruction("bra.uni", [Sym(skip)], (call.guard[0], not call.guard[1]), call.line))
    if name in BUILTINS:
        out.body.append(Instruction(f"qcuda.{name}", [Vec(tuple(Sym(r) for r in rets)),
                                                      Vec(tuple(Sym(a) for a in args))], None, call.line))
    else:
        callee = functions.get(name)
        if callee is None or not callee.defined:
            raise Unsupported(f"calls to the external function {name} (line {call.line})")
        if len(args) != len(callee.params) or len(rets) != len(callee.returns):
            raise Unsupported(f"call of {name} with a mismatched parameter list (line {call.line})")
        body = expand_calls(callee, functions, depth + 1)
        suffix = f"~c{k}"
        names = {r: r + suffix for r in body.regs}
        names.update({label: label + suffix for label in body.body if isinstance(label, str)})
        for v in body.variables:
            if v.space not in ("local", "param"):
                raise Unsupported(f".{v.space} variables inside the device function {name}")
            names[v.name] = v.name + suffix
        names.update({p.name: a for p, a in zip(callee.params, args)})
        names.update({p.name: r for p, r in zip(callee.returns, rets)})
        done = f"$qcuda_ret{suffix}"
        out.regs.update({names[r]: t for r, t in body.regs.items()})
        out.variables.extend(dataclasses.replace(v, name=names[v.name], space="local") for v in body.variables)
        slots = set(args) | set(rets) | {names[v.name] for v in body.variables}
        for item in body.body:
            if isinstance(item, str):
                out.body.append(names[item])
                continue
            inst = _rename(item, names)
            if inst.opcode.split(".")[0] == "ret":
                inst = Instruction("bra.uni", [Sym(done)], inst.guard, inst.line)
            out.body.append(_to_local(inst, slots))
        out.body.append(done)
    if call.guard is not None:
        out.body.append(skip)


def _rename(inst: Instruction, names: dict[str, str]) -> Instruction:
    def op(x):
        if isinstance(x, Reg):
            return Reg(names.get(x.name, x.name))
        if isinstance(x, Sym):
            return Sym(names.get(x.name, x.name))
        if isinstance(x, Addr):
            return Addr(op(x.base) if x.base is not None else None, x.offset)
        if isinstance(x, Vec):
            return Vec(tuple(op(i) for i in x.items))
        if isinstance(x, PredPair):
            return PredPair(op(x.first), op(x.second))
        if isinstance(x, Neg):
            return Neg(op(x.reg))
        return x
    guard = (names.get(inst.guard[0], inst.guard[0]), inst.guard[1]) if inst.guard else None
    return Instruction(inst.opcode, [op(x) for x in inst.operands], guard, inst.line)


def _to_local(inst: Instruction, slots: set[str]) -> Instruction:
    """ld.param/st.param on a call-sequence slot are per-thread local memory accesses."""
    parts = inst.opcode.split(".")
    if parts[0] in ("ld", "st") and "param" in parts and any(
            isinstance(x, Addr) and isinstance(x.base, Sym) and x.base.name in slots for x in inst.operands):
        parts[parts.index("param")] = "local"
        return Instruction(".".join(parts), inst.operands, inst.guard, inst.line)
    return inst
