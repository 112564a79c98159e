"""qcuda: GPU virtualization by CUDA API remoting.

A guest process uses a CUDA device served by a qcuda daemon (`qcuda serve`) through a shared-memory
channel or TCP. This package's top level is the guest API; `qcuda.device` is the host side.
"""
from .library import (
    Device, DeviceBuffer, Event, HostBuffer, Kernel, Module, Stream, current_device, device_count, devices,
    reset_runtime, set_device,
)
from .protocol.errors import CudaError, Error

__version__ = "0.1.0"

__all__ = [
    "CudaError", "Device", "DeviceBuffer", "Error", "Event", "HostBuffer", "Kernel", "Module", "Stream",
    "current_device", "device_count", "devices", "reset_runtime", "set_device",
]
