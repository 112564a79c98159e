"""Generate what qcuda's libcudart.so.13 must match of the real one, from CUDA 13 itself.

Writes, next to the interposer's sources:
- `libcudart.map`: the linker version script: every function the real library exports
  (`nm -D --defined-only`), all in the version node `libcudart.so.13`;
- `_cudart_abi.py`: that export list, the byte layout of the structs the runtime fills in
  (offsets measured by compiling a small C program with offsetof() against the headers, never
  written by hand), and the enums the implementation reads.
A guest that builds qcuda needs neither CUDA nor these tools: the outputs are committed.
Run: python tools/gen_cudart_exports.py [CUDA_HOME]
"""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "qcuda" / "library" / "interposer"
LIBRARY = "lib64/libcudart.so.13"
VERSION_NODE = "libcudart.so.13"
STRUCTS = ("cudaDeviceProp", "cudaPointerAttributes", "cudaFuncAttributes", "cudaMemPoolProps", "cudaMemAccessDesc",
           "cudaKernelNodeParams", "cudaMemsetParams", "cudaHostNodeParams")
ENUMS = ("cudaMemcpyKind", "cudaMemoryType", "cudaLimit", "cudaFuncAttribute", "cudaStreamCaptureStatus", "cudaFuncCache",
         "cudaStreamCaptureMode", "cudaGraphNodeType", "cudaLaunchAttributeID", "cudaMemoryAdvise", "cudaMemPoolAttr",
         "cudaMemAllocationType", "cudaMemLocationType", "cudaMemAccessFlags")
DEFINES = r"(?:cudaHostAlloc|cudaMemAttach)\w+"  # flag macros the implementation answers with
# C scalar types of struct fields -> struct module codes
SCALARS = {"char": "b", "int": "i", "unsigned int": "I", "size_t": "Q", "long": "q", "void *": "Q",
           "enum cudaMemoryType": "i", "cudaUUID_t": "16s", "unsigned short": "H", "unsigned char": "B",
           "enum cudaMemAllocationType": "i", "enum cudaMemAllocationHandleType": "i", "enum cudaMemAccessFlags": "i",
           "struct cudaMemLocation": "ii", "dim3": "3I", "void * *": "Q", "cudaHostFn_t": "Q"}


def exports(cuda_home: Path) -> list[str]:
    out = subprocess.run(["nm", "-D", "--defined-only", str(cuda_home / LIBRARY)], check=True,
                         capture_output=True, text=True).stdout
    names = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "T":
            names.add(parts[2].split("@")[0])
    return sorted(names)


PROTOTYPE_HEADERS = ("cuda_runtime_api.h", "crt/host_runtime.h", "crt/device_functions.h", "cuda_egl_interop.h",
                     "cuda_gl_interop.h", "cuda_vdpau_interop.h", "cuda_profiler_api.h")


def non_error_returns(cuda_home: Path, names: list[str]) -> dict[str, str]:
    """Exports whose C return type is not cudaError_t (None: undocumented): a stub must not answer 801 for them."""
    text = "".join((cuda_home / "include" / h).read_text() for h in PROTOTYPE_HEADERS)
    returns: dict[str, str] = {}
    for m in re.finditer(r"extern\s+(?:\"C\"\s+)?([\w\s\*]+?)\s*CUDARTAPI\s+(\w+)\s*\(", text):
        returns.setdefault(m[2], " ".join(m[1].split()))
    out = {}
    for name in names:
        ret = returns.get(name) or returns.get(re.sub(r"_pt[sd][sz]$", "", name))
        if ret is None or not ret.endswith("cudaError_t"):
            out[name] = ret
    return out


def struct_fields(header: str, name: str) -> list[tuple[str, str, int]]:
    """(C type, field, element count) of `struct name`, in order."""
    body = header[re.search(rf"struct __device_builtin__\s+{name}\s*\{{?\s*\n", header).start():]
    body = body[body.index("{") + 1: body.index("};")]
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    fields = []
    for decl in body.split(";"):
        decl = " ".join(decl.split())
        if not decl:
            continue
        m = re.fullmatch(r"(.+?)\s*(\*?)\s*(\w+)(?:\[(\d+)\])?", decl)
        if m is None:
            raise SystemExit(f"cannot read {name} field {decl!r}")
        ctype = m[1] + (" *" if m[2] else "")
        fields.append((ctype, m[3], int(m[4] or 1)))
    return fields


def measure(cuda_home: Path, structs: dict[str, list[tuple[str, str, int]]]) -> dict[str, list[int]]:
    """sizeof each struct, then offsetof each field, measured by the C compiler."""
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <cuda_runtime_api.h>", "int main(void) {"]
    for name, fields in structs.items():
        lines.append(f'  printf("%zu", sizeof(struct {name}));')
        lines += [f'  printf(" %zu", offsetof(struct {name}, {f}));' for _, f, _ in fields]
        lines.append('  printf("\\n");')
    lines += ["  return 0;", "}"]
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "layout.c", Path(tmp) / "layout"
        src.write_text("\n".join(lines) + "\n")
        subprocess.run(["cc", "-I", str(cuda_home / "include"), str(src), "-o", str(exe)], check=True)
        rows = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.splitlines()
    return {name: [int(x) for x in row.split()] for name, row in zip(structs, rows)}


def enum_values(header: str, name: str) -> list[tuple[str, int]]:
    body = header[re.search(rf"(?:typedef __device_builtin__ )?enum (?:__device_builtin__ )?{name}\s*\{{", header).start():]
    body = re.sub(r"/\*.*?\*/", "", body[: body.index("};")], flags=re.S)
    return [(m[1], int(m[2], 0)) for m in re.finditer(r"(\w+)\s*=\s*(0x[0-9a-fA-F]+|\d+)", body)]


def main() -> None:
    cuda_home = Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/local/cuda")
    header = (cuda_home / "include" / "driver_types.h").read_text()
    names = exports(cuda_home)
    structs = {s: struct_fields(header, s) for s in STRUCTS}
    sizes = measure(cuda_home, structs)
    (OUT / "libcudart.map").write_text(
        f"/* Generated by tools/gen_cudart_exports.py from {LIBRARY}: do not edit. */\n"
        f"{VERSION_NODE} {{\n  global:\n" + "".join(f"    {n};\n" for n in names) + "  local:\n    *;\n};\n"
    )
    text = ['"""The real libcudart.so.13\'s exports, struct layouts and enums. Generated by '
            'tools/gen_cudart_exports.py: do not edit."""\n',
            "EXPORTS: tuple[str, ...] = (\n" + "".join(f"    {n!r},\n" for n in names) + ")\n",
            "# exports that return something other than cudaError_t (None: no prototype in the headers)",
            f"NON_ERROR_RETURNS: dict[str, str | None] = {non_error_returns(cuda_home, names)!r}\n",
            "# struct name -> (sizeof, ((field, offset, struct code, count), ...))",
            "STRUCTS: dict[str, tuple[int, tuple[tuple[str, int, str, int], ...]]] = {"]
    for s, fields in structs.items():
        size, *offsets = sizes[s]
        rows = "".join(f"        ({f!r}, {off}, {SCALARS[t]!r}, {n}),\n" for (t, f, n), off in zip(fields, offsets))
        text.append(f"    {s!r}: ({size}, (\n{rows}    )),")
    text.append("}\n")
    version = re.search(r"#define CUDART_VERSION\s+(\d+)", (cuda_home / "include" / "cuda_runtime_api.h").read_text())[1]
    text.append(f"RUNTIME_VERSION = {version}\n")
    for e in ENUMS:
        text.append(f"{e}: dict[str, int] = {dict(enum_values(header, e))!r}\n")
    defines = {m[1]: int(m[2], 0) for m in re.finditer(rf"#define\s+({DEFINES})\s+(0x[0-9a-fA-F]+|\d+)", header)}
    text.append(f"DEFINES: dict[str, int] = {defines!r}\n")
    (OUT / "_cudart_abi.py").write_text("\n".join(text))
    print(f"{len(names)} exports, {len(structs)} structs, {len(ENUMS)} enums -> {OUT}")


if __name__ == "__main__":
    main()
