"""The emulated device's PTX engine: load PTX or fatbins, run kernels vectorised with numpy."""
from .kernel import Kernel
from .module import Module

__all__ = ["Kernel", "Module"]
