"""The emulated device's PTX engine: load PTX or fatbins, run kernels on the CPU with numpy.

    module = Module.load(image, memory)          # PTX text or fatbin(s); raises CudaError
    kernel = module.functions["vec_add"]         # .entry kernels by (mangled) name
    kernel.param_layout, kernel.param_size       # [(offset, size)], as cuFuncGetParamInfo answers
    kernel.launch(grid, block, shared_bytes, params)
    module.global_symbol("counter")              # (device address, size) of a .global/.const
    module.unload()

A launch runs to completion; errors are CudaErrors (cudaErrorIllegalAddress, ...NotSupported
naming the instruction, ...InvalidConfiguration, ...Assert). Two hooks a backend may set on a
kernel: `output` (where device printf and assert messages go; stdout by default) and
`time_limit` (seconds before cudaErrorLaunchTimeout; None by default).

Modules: fatbin (extracting PTX), parser (PTX to a syntax tree), inline (device-function calls),
kernel (layouts, basic blocks, the SIMT scheduler), frame (a batch's registers and memories),
ops/memops/warp/matrix/floats/runtime (instruction semantics). docs/emulator.md says what it runs.
"""
from .kernel import Kernel
from .module import Module

__all__ = ["Kernel", "Module"]
