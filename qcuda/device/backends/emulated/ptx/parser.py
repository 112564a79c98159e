"""PTX text to a small syntax tree: module variables, kernels, their parameters and instructions.

Only the syntax nvcc emits is accepted; anything else is an `InvalidPtx` with the line it
happened on, so a guest's bad image is reported as its fault and never crashes the device.
Debug sections (`.file`, `.loc`, `.section`) are skipped.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .....protocol.errors import CudaError, Error


class InvalidPtx(CudaError):
    """PTX text the emulator cannot parse."""

    def __init__(self, detail: str) -> None:
        super().__init__(Error.cudaErrorInvalidPtx, detail)


# -- the tree -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reg:
    name: str  # "%r1", "%tid.x", "_" (sink)


@dataclass(frozen=True)
class Imm:
    value: int | float
    is_float: bool  # written as a float literal (0f..., 0d..., 1.5)
    bits: int = 0  # 32 or 64 for hex float literals (0f / 0d): the exact bit pattern is `value`


@dataclass(frozen=True)
class Sym:
    name: str  # a label, variable, parameter or function name


@dataclass(frozen=True)
class Addr:
    base: Reg | Sym | None
    offset: int


@dataclass(frozen=True)
class Vec:
    items: tuple  # of Reg | Imm


@dataclass(frozen=True)
class PredPair:
    """`%p|%q`: setp's second destination, the complement."""

    first: Reg
    second: Reg


@dataclass(frozen=True)
class Neg:
    """`!%p` as a source operand."""

    reg: Reg


Operand = Reg | Imm | Sym | Addr | Vec | PredPair | Neg


@dataclass
class Instruction:
    opcode: str  # "ld.global.nc.v4.f32"
    operands: list
    guard: tuple[str, bool] | None  # (predicate register, negated)
    line: int

    def __str__(self) -> str:
        guard = f"@{'!' if self.guard[1] else ''}{self.guard[0]} " if self.guard else ""
        return f"{guard}{self.opcode} (line {self.line})"


@dataclass
class Variable:
    """A `.global/.const/.shared/.local` declaration (module or function scope)."""

    space: str  # "global", "const", "shared", "local"
    name: str
    elem_type: str  # "b8", "u32", "f32", ...
    align: int
    count: int | None  # array length; None for `name[]` (extern shared)
    init: list | None  # flattened initialiser values
    extern: bool = False

    @property
    def elem_size(self) -> int:
        return type_size(self.elem_type)

    @property
    def size(self) -> int:
        return self.elem_size * (self.count if self.count is not None else 0)


@dataclass
class Param:
    name: str
    elem_type: str
    align: int
    count: int  # 1 for scalars

    @property
    def size(self) -> int:
        return type_size(self.elem_type) * self.count


@dataclass
class Function:
    name: str
    is_entry: bool
    params: list[Param]
    regs: dict[str, str] = field(default_factory=dict)  # register name -> declared type
    variables: list[Variable] = field(default_factory=list)
    body: list = field(default_factory=list)  # Instruction | label name (str)
    directives: dict[str, tuple[int, ...]] = field(default_factory=dict)  # .maxntid etc.
    defined: bool = True
    returns: list[Param] = field(default_factory=list)  # a .func's return parameters


@dataclass
class ModuleAst:
    version: str = ""
    target: str = ""
    address_size: int = 64
    variables: list[Variable] = field(default_factory=list)
    functions: dict[str, Function] = field(default_factory=dict)


OPAQUE_TYPES = ("texref", "samplerref", "surfref")  # declared, never supported in use
_TYPE_SIZES = {"8": 1, "16": 2, "32": 4, "64": 8, "128": 16}


def type_size(t: str) -> int:
    """Bytes of a PTX fundamental type (`.pred` counts as 1)."""
    if t == "pred":
        return 1
    try:
        return _TYPE_SIZES[t[1:]] if t[:1] in ("b", "u", "s", "f") else _TYPE_SIZES[t]
    except KeyError:
        raise InvalidPtx(f"unknown type .{t}") from None


# -- tokens ---------------------------------------------------------------------------------
_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<float>0[fF][0-9a-fA-F]{8}|0[dD][0-9a-fA-F]{16}|\d+\.\d*(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+)
  | (?P<int>0[xX][0-9a-fA-F]+[uU]?|0[bB][01]+[uU]?|\d+[uU]?)
  | (?P<directive>\.[A-Za-z_][\w$]*)
  | (?P<ident>[A-Za-z_$%][\w$]*(?:\.[\w$]+)*(?:::[\w$]+(?:\.[\w$]+)*)*)
  | (?P<punct>[{}()\[\],;:+\-@!<>=|])
    """,
    re.VERBOSE,
)
_COMMENTS = re.compile(r"//[^\n]*|/\*.*?\*/", re.DOTALL)
_DEBUG_LINES = re.compile(r"^[ \t]*\.(?:loc|file)\b[^\n]*$", re.MULTILINE)


def _blank(m: re.Match) -> str:
    return "\n" * m.group(0).count("\n")  # keep line numbers right


def tokenize(text: str) -> list[tuple[str, str, int]]:
    """(kind, text, line) triples; comments and debug line info removed."""
    text = _COMMENTS.sub(_blank, text)
    text = _DEBUG_LINES.sub("", text)
    out: list[tuple[str, str, int]] = []
    pos, line, n = 0, 1, len(text)
    while pos < n:
        m = _TOKEN.match(text, pos)
        if m is None:
            raise InvalidPtx(f"line {line}: unexpected character {text[pos]!r}")
        kind = m.lastgroup
        tok = m.group(0)
        if kind == "ws":
            line += tok.count("\n")
        else:
            out.append((kind, tok, line))
        pos = m.end()
    out.append(("eof", "", line))
    return out


def parse_int(tok: str) -> int:
    t = tok.rstrip("uU")
    if t[:2] in ("0x", "0X"):
        return int(t[2:], 16)
    if t[:2] in ("0b", "0B"):
        return int(t[2:], 2)
    if len(t) > 1 and t[0] == "0":
        return int(t, 8)
    return int(t)


def _parse_float(tok: str) -> Imm:
    if tok[:2] in ("0f", "0F"):
        return Imm(int(tok[2:], 16), True, 32)
    if tok[:2] in ("0d", "0D"):
        return Imm(int(tok[2:], 16), True, 64)
    return Imm(float(tok), True)


# -- parser ---------------------------------------------------------------------------------
class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = tokenize(text)
        self.i = 0
        self.ast = ModuleAst()
        self.scopes: list[dict[str, str]] = []  # registers declared in nested `{ }` blocks, renamed
        self.renamed = 0
        self.regs: dict[str, str] = {}  # the current function's registers (names need no %)

    # token helpers
    def peek(self, k: int = 0) -> tuple[str, str, int]:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def next(self) -> tuple[str, str, int]:
        tok = self.toks[self.i]
        if tok[0] != "eof":
            self.i += 1
        return tok

    def accept(self, text: str) -> bool:
        if self.peek()[1] == text:
            self.i += 1
            return True
        return False

    def expect(self, text: str) -> None:
        kind, tok, line = self.next()
        if tok != text:
            raise InvalidPtx(f"line {line}: expected {text!r}, found {tok or 'end of text'!r}")

    def error(self, what: str) -> InvalidPtx:
        _, tok, line = self.peek()
        return InvalidPtx(f"line {line}: {what} (at {tok or 'end of text'!r})")

    def ident(self) -> str:
        kind, tok, line = self.next()
        if kind != "ident":
            raise InvalidPtx(f"line {line}: expected a name, found {tok!r}")
        return tok

    def integer(self) -> int:
        neg = self.accept("-")
        kind, tok, line = self.next()
        if kind != "int":
            raise InvalidPtx(f"line {line}: expected an integer, found {tok!r}")
        return -parse_int(tok) if neg else parse_int(tok)

    def skip_braces(self) -> None:
        self.expect("{")
        depth = 1
        while depth:
            kind, tok, line = self.next()
            if kind == "eof":
                raise InvalidPtx(f"line {line}: unterminated block")
            depth += {"{": 1, "}": -1}.get(tok, 0)

    # module level
    def module(self) -> ModuleAst:
        while True:
            kind, tok, line = self.peek()
            if kind == "eof":
                return self.ast
            self.top_level()

    def top_level(self) -> None:
        kind, tok, line = self.next()
        if tok == ".version":
            self.ast.version = self.next()[1]
        elif tok == ".target":
            targets = [self.ident()]
            while self.accept(","):
                targets.append(self.ident())
            self.ast.target = ",".join(targets)
        elif tok == ".address_size":
            self.ast.address_size = self.integer()
        elif tok == ".section":
            self.next()
            self.skip_braces()
        elif tok in (".visible", ".extern", ".weak", ".common"):
            self.linkage_decl(extern=tok == ".extern")
        elif tok in (".entry", ".func"):
            self.i -= 1
            self.linkage_decl(extern=False)
        elif tok in (".global", ".const", ".shared"):
            self.i -= 1
            self.ast.variables.append(self.variable(extern=False))
        elif tok == ".pragma":
            self.next()
            self.expect(";")
        else:
            raise InvalidPtx(f"line {line}: unexpected {tok!r} at module level")

    def linkage_decl(self, extern: bool) -> None:
        while self.peek()[1] in (".visible", ".extern", ".weak", ".common"):
            extern = extern or self.next()[1] == ".extern"
        tok = self.peek()[1]
        if tok in (".entry", ".func"):
            self.function()
        elif tok in (".global", ".const", ".shared"):
            self.ast.variables.append(self.variable(extern=extern))
        else:
            raise self.error("expected .entry, .func or a variable")

    def variable(self, extern: bool) -> Variable:
        space = self.next()[1][1:]
        align, elem = 0, None
        while True:
            kind, tok, line = self.peek()
            if tok == ".align":
                self.next()
                align = self.integer()
            elif tok == ".attribute":  # .attribute(.managed): unified memory, an ordinary global here
                self.next()
                self.expect("(")
                while not self.accept(")"):
                    if self.next()[0] == "eof":
                        raise self.error("unterminated .attribute")
            elif tok in (".v2", ".v4", ".v8"):
                raise self.error("vector-typed variables are not supported")
            elif kind == "directive":
                self.next()
                elem = tok[1:]
            else:
                break
        if elem is None:
            raise self.error("variable without a type")
        name = self.ident()
        count: int | None = 1
        dims: list[int | None] = []
        while self.accept("["):
            dims.append(None if self.peek()[1] == "]" else self.integer())
            self.expect("]")
        if dims:
            count = None if None in dims else _product(dims)  # type: ignore[arg-type]
        init = None
        if self.accept("="):
            init = self.initializer()
        self.expect(";")
        if elem in OPAQUE_TYPES:
            return Variable(space, name, elem, align or 8, count, init, extern)
        return Variable(space, name, elem, align or type_size(elem), count, init, extern)

    def initializer(self) -> list:
        if self.accept("{"):
            values: list = []
            if not self.accept("}"):
                while True:
                    values.extend(self.initializer())
                    if self.accept("}"):
                        break
                    self.expect(",")
            return values
        kind, tok, line = self.peek()
        if kind == "ident":  # sym, generic(sym), either + offset: a variable's address
            self.next()
            name = tok
            if tok == "generic":
                self.expect("(")
                name = self.ident()
                self.expect(")")
            offset = 0
            if self.peek()[1] in ("+", "-"):
                neg = self.next()[1] == "-"
                offset = -self.integer() if neg else self.integer()
            return [Addr(Sym(name), offset)]
        return [self.immediate()]

    def immediate(self) -> Imm:
        neg = self.accept("-")
        kind, tok, line = self.next()
        if kind == "int":
            v = parse_int(tok)
            return Imm(-v if neg else v, False)
        if kind == "float":
            imm = _parse_float(tok)
            if neg:
                if imm.bits:
                    return Imm(imm.value ^ (1 << (imm.bits - 1)), True, imm.bits)
                return Imm(-imm.value, True)
            return imm
        raise InvalidPtx(f"line {line}: expected a constant, found {tok!r}")

    def function(self) -> None:
        is_entry = self.next()[1] == ".entry"
        rets: list[Param] = []
        if self.peek()[1] == "(":
            rets = self.param_list()
        name = self.ident()
        params = self.param_list() if self.peek()[1] == "(" else []
        fn = Function(name, is_entry, params, returns=rets)
        while self.peek()[0] == "directive":  # .maxntid 256, 1, 1; .noreturn; .explicitcluster
            d = self.next()[1]
            vals = []
            if self.peek()[0] == "int":
                vals.append(self.integer())
                while self.accept(","):
                    vals.append(self.integer())
            fn.directives[d] = tuple(vals)
        if self.accept(";"):
            fn.defined = False
        else:
            self.expect("{")
            self.body(fn)
        if fn.defined or name not in self.ast.functions:
            self.ast.functions[name] = fn

    def param_list(self) -> list[Param]:
        self.expect("(")
        params: list[Param] = []
        if self.accept(")"):
            return params
        while True:
            kind, tok, line = self.next()
            if tok not in (".param", ".reg"):
                raise InvalidPtx(f"line {line}: expected .param, found {tok!r}")
            align, elem = 0, None
            while self.peek()[0] == "directive":
                d = self.next()[1]
                if d == ".align":
                    align = self.integer()
                elif d == ".ptr":
                    continue
                elif d in (".global", ".shared", ".local", ".const"):
                    continue  # .ptr state space hints
                else:
                    elem = d[1:]
            if elem is None:
                raise self.error("parameter without a type")
            pname = self.ident()
            count = 1
            if self.accept("["):
                count = self.integer()
                self.expect("]")
            params.append(Param(pname, elem, align or type_size(elem), count))
            if self.accept(")"):
                return params
            self.expect(",")

    def body(self, fn: Function) -> None:
        self.scopes = [{}]
        self.regs = fn.regs
        while True:
            kind, tok, line = self.peek()
            if kind == "eof":
                raise self.error("unterminated function body")
            if tok == "}":
                self.next()
                self.scopes.pop()
                if not self.scopes:
                    return
            elif tok == "{":
                self.next()
                self.scopes.append({})
            elif tok == ".reg":
                self.next()
                self.reg_decl(fn)
            elif tok in (".local", ".shared", ".global", ".const"):
                fn.variables.append(self.variable(extern=False))
            elif tok == ".param":  # a call sequence's argument or return slot, scoped to its block
                v = self.variable(extern=False)
                self.renamed += 1
                self.scopes[-1][v.name] = v.name = f"{v.name}~{self.renamed}"
                fn.variables.append(v)
            elif tok == ".pragma":
                self.next()
                self.next()
                self.expect(";")
            elif kind == "ident" and self.peek(1)[1] == ":":
                self.next()
                self.next()
                fn.body.append(tok)
            else:
                fn.body.append(self.instruction())

    def reg_decl(self, fn: Function) -> None:
        kind, tok, line = self.next()
        if tok in (".v2", ".v4"):
            raise InvalidPtx(f"line {line}: vector registers are not supported")
        rtype = tok[1:]
        type_size(rtype)
        while True:
            name = self.ident()
            if len(self.scopes) > 1:  # a nested block's register: unique, so blocks may reuse names
                self.renamed += 1
                self.scopes[-1][name] = name = f"{name}~{self.renamed}"
            if self.accept("<"):
                n = self.integer()
                self.expect(">")
                for k in range(n):
                    fn.regs[f"{name}{k}"] = rtype
            else:
                fn.regs[name] = rtype
            if self.accept(";"):
                return
            self.expect(",")

    def scoped(self, name: str) -> str:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        return name

    def is_reg(self, name: str) -> bool:
        return name.startswith("%") or self.scoped(name) in self.regs

    def reg(self, name: str) -> Reg:
        return Reg(self.scoped(name))

    def instruction(self) -> Instruction:
        guard = None
        line = self.peek()[2]
        if self.accept("@"):
            neg = self.accept("!")
            guard = (self.reg(self.ident()).name, neg)
        opcode = self.ident()
        operands: list = []
        if not self.accept(";"):
            while True:
                operands.append(self.operand())
                if self.accept(";"):
                    break
                if not self.accept(","):
                    raise self.error(f"bad operand list for {opcode}")
        return Instruction(opcode, operands, guard, line)

    def operand(self):
        kind, tok, line = self.peek()
        if tok == "[":
            self.next()
            base: Reg | Sym | None = None
            offset = 0
            kind, tok, line = self.peek()
            if kind == "ident":
                self.next()
                base = self.reg(tok) if self.is_reg(tok) else Sym(self.scoped(tok))
                if self.peek()[1] in ("+", "-"):
                    neg = self.next()[1] == "-"
                    v = self.integer()
                    offset = -v if neg else v
            else:
                offset = self.integer()
            self.expect("]")
            return Addr(base, offset)
        if tok == "{":
            self.next()
            items = []
            while True:
                items.append(self.operand())
                if self.accept("}"):
                    return Vec(tuple(items))
                self.expect(",")
        if tok == "(":
            self.next()
            items = []
            if not self.accept(")"):
                while True:
                    items.append(self.operand())
                    if self.accept(")"):
                        break
                    self.expect(",")
            return Vec(tuple(items))
        if tok == "!":
            self.next()
            return Neg(self.reg(self.ident()))
        if kind == "ident":
            self.next()
            if self.is_reg(tok):
                reg = self.reg(tok)
                if self.accept("|"):
                    return PredPair(reg, self.reg(self.ident()))
                return reg
            return Sym(self.scoped(tok))
        return self.immediate()


def _product(dims: list[int]) -> int:
    out = 1
    for d in dims:
        out *= d
    return out


def parse(text: str) -> ModuleAst:
    """Parse a PTX module; raises `InvalidPtx` (cudaErrorInvalidPtx) on malformed text."""
    try:
        return _Parser(text).module()
    except (ValueError, IndexError, KeyError, RecursionError) as e:  # a gap in the checks above
        raise InvalidPtx(f"malformed PTX ({type(e).__name__}: {e})") from None
