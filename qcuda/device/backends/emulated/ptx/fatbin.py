"""PTX out of what a guest registers: a fatbin (several may follow each other) or PTX text.

Fatbin layout (CUDA 13, checked against nvcc 13.0 output):
    header  {u32 magic 0xBA55ED50, u16 version, u16 header_size, u64 fat_size}
    entries {u16 kind, u16 version, u32 header_size, u64 padded_size,
             u32 compressed_size, u32 ?, u16 ?, u16 ptx_major, u32 arch,   # offsets 16..31
             u32, u32, u64 flags, u64, u64 uncompressed_size, ...}        # offsets 32..63
The payload follows each entry header. kind 1 is PTX, kind 2 an ELF cubin. flags & 0x8000 marks a
zstd-compressed payload (nvcc's default), 0x2000 the LZ4 compression of older toolkits.
"""
from __future__ import annotations

import struct

from .....protocol.errors import CudaError, Error

FATBIN_MAGIC = 0xBA55ED50
WRAPPER_MAGIC = 0x466243B1
KIND_PTX = 1
KIND_CUBIN = 2
FLAG_COMPRESSED_ZSTD = 0x8000
FLAG_COMPRESSED_LZ4 = 0x2000
MAX_PTX_BYTES = 1 << 30  # refuse decompression bombs

_HEADER = struct.Struct("<IHHQ")
_ENTRY = struct.Struct("<HHIQII")
NO_PTX_HINT = (
    "the image carries no PTX, only machine code for real GPUs; the emulated device runs PTX: "
    "build with PTX (plain `nvcc -arch=sm_XX`, or `-gencode arch=compute_XX,code=compute_XX`)"
)


def is_fatbin(image: bytes) -> bool:
    return len(image) >= 4 and struct.unpack_from("<I", image)[0] == FATBIN_MAGIC


def extract_ptx(image: bytes) -> list[str]:
    """One PTX text per fatbin of `image` (fatbins of several translation units may follow each
    other): the entry for the highest virtual architecture, which the emulator treats alike."""
    found: list[str] = []
    cubins = 0
    off = 0
    while off + _HEADER.size <= len(image):
        magic, _version, header_size, fat_size = _HEADER.unpack_from(image, off)
        if magic != FATBIN_MAGIC:
            if off == 0:
                raise CudaError(Error.cudaErrorInvalidKernelImage, f"not a fatbin (magic 0x{magic:08x})")
            break  # trailing bytes after the last fatbin
        start, end = off + header_size, off + header_size + fat_size
        if header_size < _HEADER.size or end > len(image):
            raise CudaError(Error.cudaErrorInvalidKernelImage, "fatbin header size fields exceed the image")
        pos = start
        best: tuple[int, str] | None = None
        while pos + _ENTRY.size <= end:
            kind, _ev, ehs, padded, csize, _ = _ENTRY.unpack_from(image, pos)
            if ehs < 64 or pos + ehs + padded > end:
                raise CudaError(Error.cudaErrorInvalidKernelImage, f"fatbin entry at {pos} overruns the fatbin")
            if kind == KIND_PTX:
                arch = struct.unpack_from("<I", image, pos + 28)[0]
                flags, _, usize = struct.unpack_from("<QQQ", image, pos + 40)
                payload = image[pos + ehs:pos + ehs + padded]
                if best is None or arch > best[0]:
                    best = (arch, _decode_payload(payload, flags, csize, usize))
            elif kind == KIND_CUBIN:
                cubins += 1
            pos += ehs + padded
        if best is not None:
            found.append(best[1])
        off = end
        off = (off + 7) & ~7
    if not found:
        raise CudaError(Error.cudaErrorNoKernelImageForDevice, NO_PTX_HINT if cubins else "the fatbin holds no PTX")
    return found


def _decode_payload(payload: bytes, flags: int, csize: int, usize: int) -> str:
    if flags & FLAG_COMPRESSED_ZSTD:
        import zstandard

        if not 0 < usize <= MAX_PTX_BYTES:
            raise CudaError(Error.cudaErrorInvalidKernelImage, f"compressed PTX claims {usize} bytes")
        try:
            data = zstandard.ZstdDecompressor().decompress(payload[:csize or len(payload)], max_output_size=usize)
        except zstandard.ZstdError as e:
            raise CudaError(Error.cudaErrorInvalidKernelImage, f"corrupt zstd PTX payload: {e}") from None
    elif flags & FLAG_COMPRESSED_LZ4:
        raise CudaError(
            Error.cudaErrorNotSupported,
            "LZ4-compressed PTX (an older toolkit's fatbin) is not supported; rebuild with nvcc 12.8 or later",
        )
    else:
        data = payload
    return data.split(b"\0", 1)[0].decode("utf-8", errors="replace")


def ptx_texts(image: bytes) -> list[str]:
    """The PTX modules in a guest's image: PTX text itself, or those of a fatbin."""
    if is_fatbin(image):
        return extract_ptx(image)
    if len(image) >= 4 and struct.unpack_from("<I", image)[0] == WRAPPER_MAGIC:
        raise CudaError(Error.cudaErrorInvalidKernelImage, "got the fatbin wrapper, not the fatbin it points at")
    if image[:4] == b"\x7fELF":
        raise CudaError(Error.cudaErrorNoKernelImageForDevice, NO_PTX_HINT)
    text = image.split(b"\0", 1)[0]
    try:
        return [text.decode("utf-8")]
    except UnicodeDecodeError:
        raise CudaError(Error.cudaErrorInvalidPtx, "the image is neither a fatbin nor PTX text") from None
