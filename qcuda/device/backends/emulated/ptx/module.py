"""A loaded image: its kernels and its module-scope `.global`/`.const` variables."""
from __future__ import annotations

import numpy as np

from .....protocol.errors import CudaError, Error
from .fatbin import ptx_texts
from .frame import DTYPES, imm_scalar
from .kernel import Kernel
from .parser import OPAQUE_TYPES, Addr, Variable, parse


class Module:
    """One image a guest loaded (`cuModuleLoadData`, `__cudaRegisterFatBinary`)."""

    def __init__(self, memory) -> None:
        self.memory = memory
        self.functions: dict[str, Kernel] = {}
        self._globals: dict[str, tuple[int, int]] = {}  # name -> (device address, size)

    @classmethod
    def load(cls, image: bytes, memory) -> "Module":
        """Parse PTX text or every fatbin in `image`; allocate and initialise its variables."""
        module = cls(memory)
        try:
            for text in ptx_texts(bytes(image)):
                module._add(text)
        except BaseException:
            module.unload()
            raise
        return module

    def _add(self, text: str) -> None:
        ast = parse(text)
        module_vars = {v.name: v for v in ast.variables}
        data = [v for v in ast.variables
                if v.space in ("global", "const") and not v.extern and v.elem_type not in OPAQUE_TYPES]
        for v in data:
            self._allocate(v)
        for v in data:  # after every allocation: initialisers may hold other variables' addresses
            self._initialise(v)
        addrs = {name: addr for name, (addr, _) in self._globals.items()}
        for fn in ast.functions.values():
            if fn.is_entry and fn.defined:
                self.functions[fn.name] = Kernel(fn, module_vars, addrs, self.memory, ast.functions)

    def _allocate(self, v: Variable) -> None:
        if v.count is None:
            raise CudaError(Error.cudaErrorInvalidPtx, f"variable {v.name} has no size")
        if v.name in self._globals:
            raise CudaError(Error.cudaErrorInvalidPtx, f"variable {v.name} is defined twice")
        if v.elem_type not in DTYPES or v.elem_type == "pred":
            raise CudaError(Error.cudaErrorNotSupported, f"variable {v.name} of type .{v.elem_type}")
        addr = self.memory.alloc(max(v.size, 1))
        self._globals[v.name] = (addr, v.size)

    def _initialise(self, v: Variable) -> None:
        addr, size = self._globals[v.name]
        data = bytearray(max(size, 1))
        if v.init:
            dt = DTYPES[v.elem_type]
            if len(v.init) > v.count:
                raise CudaError(Error.cudaErrorInvalidPtx, f"too many initialisers for {v.name}")
            data[:len(v.init) * dt.itemsize] = b"".join(self._init_bytes(x, dt, v.name) for x in v.init)
        self.memory.write(addr, bytes(data))

    def _init_bytes(self, value, dt: np.dtype, owner: str) -> bytes:
        if isinstance(value, Addr):
            target = self._globals.get(value.base.name)
            if target is None or dt.itemsize != 8:
                raise CudaError(Error.cudaErrorNotSupported,
                                f"initialiser of {owner} takes the address of {value.base.name}, which the "
                                "emulator can only resolve for .global/.const variables, as 64-bit values")
            return np.uint64((target[0] + value.offset) % (1 << 64)).tobytes()
        return np.asarray(imm_scalar(value, dt)).tobytes()

    def global_symbol(self, name: str) -> tuple[int, int]:
        """(device address, size) of a module-scope .global/.const variable."""
        try:
            return self._globals[name]
        except KeyError:
            raise CudaError(Error.cudaErrorInvalidSymbol,
                            f"no .global or .const variable {name!r} in this module") from None

    def unload(self) -> None:
        """Free the module's variables; its kernels must not be launched afterwards."""
        for addr, _ in self._globals.values():
            self.memory.free(addr)
        self._globals.clear()
        self.functions.clear()
