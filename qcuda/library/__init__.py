"""The guest library (the seed's qcu-library): qcuda's Python API for CUDA work on a remote device."""
from ._device import Device, current_device, device_count, devices, set_device
from ._memory import DeviceBuffer, HostBuffer
from ._module import Kernel, Module
from ._runtime import reset_runtime
from ._stream import Event, Stream

__all__ = [
    "Device", "DeviceBuffer", "Event", "HostBuffer", "Kernel", "Module", "Stream", "current_device",
    "device_count", "devices", "reset_runtime", "set_device",
]
