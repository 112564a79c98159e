"""CUresult -> cudaError_t as the GPU backend maps it (needs only cuda.bindings; runs with the GPU tests)."""
from __future__ import annotations

import pytest

from qcuda.protocol.errors import Error

cu = pytest.importorskip("cuda.bindings.driver")
gpu = pytest.importorskip("qcuda.device.backends.gpu")


def test_every_driver_error_has_a_runtime_code():
    for result in cu.CUresult:
        Error(gpu._runtime_code(int(result)))  # raises if the code is not a cudaError_t


@pytest.mark.parametrize("driver, runtime", [
    ("CUDA_ERROR_ILLEGAL_ADDRESS", "cudaErrorIllegalAddress"),
    ("CUDA_ERROR_OUT_OF_MEMORY", "cudaErrorMemoryAllocation"),
    ("CUDA_ERROR_INVALID_HANDLE", "cudaErrorInvalidResourceHandle"),
    ("CUDA_ERROR_NOT_FOUND", "cudaErrorSymbolNotFound"),
    ("CUDA_ERROR_NO_BINARY_FOR_GPU", "cudaErrorNoKernelImageForDevice"),
    ("CUDA_ERROR_LAUNCH_FAILED", "cudaErrorLaunchFailure"),
    ("CUDA_ERROR_INVALID_CONTEXT", "cudaErrorDeviceUninitialized"),
    ("CUDA_ERROR_CONTEXT_ALREADY_CURRENT", "cudaErrorUnknown"),  # no runtime counterpart
])
def test_codes_whose_names_differ(driver, runtime):
    assert gpu._runtime_code(int(getattr(cu.CUresult, driver))) == Error[runtime]


def test_sticky_codes_are_driver_codes():
    known = {int(r) for r in cu.CUresult}
    assert gpu._STICKY <= known and 700 in gpu._STICKY
