"""CUDA error codes as values and exceptions, and whose fault a protocol error is.

One table (generated from the CUDA headers) gives every code its name and text; everything
that reports an error goes through `CudaError` so the text is written in one place.
"""
from __future__ import annotations

import enum

from ._cuda_tables import ERRORS

Error = enum.IntEnum("Error", [(name, code) for code, name, _ in ERRORS])  # type: ignore[misc]
Error.__doc__ = "cudaError_t: every code CUDA 13's runtime defines."
_TEXT = {code: text for code, _, text in ERRORS}


def error_name(code: int) -> str:
    """`cudaGetErrorName`: the enumerator's name, or the text CUDA gives unknown codes."""
    try:
        return Error(code).name
    except ValueError:
        return "cudaErrorUnknown"


def error_string(code: int) -> str:
    """`cudaGetErrorString`: the runtime's own text for a code."""
    return _TEXT.get(code, "unrecognized error code")


class CudaError(Exception):
    """A CUDA error code with its name: what every failed call raises in qcuda."""

    def __init__(self, code: int, detail: str = "") -> None:
        self.code = int(code)
        self.detail = detail
        message = f"{error_name(self.code)} ({self.code}): {error_string(self.code)}"
        super().__init__(f"{message}: {detail}" if detail else message)

    def __reduce__(self):  # keeps the exception picklable for multiprocessing tracebacks
        return (CudaError, (self.code, self.detail))


class ProtocolError(Exception):
    """Bytes that do not form a valid qcuda message."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something malformed: its fault, answered with an error, never a crash."""


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol cannot carry: a bug on this side."""


class VersionMismatch(RemoteProtocolError):
    """The peer speaks another protocol version; refused at hello."""

    def __init__(self, ours: int, theirs: int) -> None:
        self.ours, self.theirs = ours, theirs
        super().__init__(
            f"protocol version mismatch: this side speaks version {ours}, the peer speaks {theirs}; "
            "install the same qcuda release on the guest and the GPU host"
        )
