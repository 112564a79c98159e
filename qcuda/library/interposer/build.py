"""Build qcuda's libcudart.so.13 with cffi's embedding mode.

The library exports every function the real libcudart.so.13 exports (`_cudart_abi.EXPORTS`),
all in the version node `libcudart.so.13` (`libcudart.map`): the calls declared in `api.h` run
in Python (`_cudart.py`), the few in `cudart.c` stay in C, and the rest are generated stubs
that say once that qcuda does not support them and return cudaErrorNotSupported.
Run `python qcuda/library/interposer/build.py [OUT_DIR]` to build it in place (default: ./lib
beside this file); `setup.py` runs it at install.
"""
from __future__ import annotations

import json
import re
import runpy
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

import cffi

HERE = Path(__file__).resolve().parent
# Read by path, not imported: setup.py runs this file before qcuda (and its dependencies) is installed.
ERRORS = runpy.run_path(str(HERE.parent.parent / "protocol" / "_cuda_tables.py"))["ERRORS"]
_ABI = runpy.run_path(str(HERE / "_cudart_abi.py"))
EXPORTS, NON_ERROR_RETURNS, RUNTIME_VERSION = _ABI["EXPORTS"], _ABI["NON_ERROR_RETURNS"], _ABI["RUNTIME_VERSION"]
SONAME = "libcudart.so.13"
MODULE = "_qcuda_cudart"
VARIANTS = ("_ptsz", "_ptds")  # per-thread default stream variants: the same call here
# Every backend's device addresses (qcuda/protocol/addresses.py): reserved before main, away from host allocations
RESERVED_BASE, RESERVED_SIZE = runpy.run_path(str(HERE.parent.parent / "protocol" / "addresses.py"))["RESERVED"]

# Types shared by the C source and cffi's declarations.
TYPES = """
typedef int cudaError_t;
typedef struct { unsigned int x, y, z; } dim3;
typedef void *cudaStream_t;
typedef void *cudaEvent_t;
typedef struct { int type; int id; } qcuda_mem_location;  /* struct cudaMemLocation, passed by value */
typedef struct qcuda_fatbin { struct qcuda_fatbin *next; const uint8_t *image; uint64_t size; int id;
                              int unregistered; } qcuda_fatbin;
typedef struct qcuda_function { struct qcuda_function *next; qcuda_fatbin *fatbin; const void *host;
                                const char *name; } qcuda_function;
typedef struct qcuda_variable { struct qcuda_variable *next; qcuda_fatbin *fatbin; const void *host;
                                const char *name; size_t size; int constant; } qcuda_variable;
"""
# The C helpers Python calls.
HELPERS = """
qcuda_function *qcuda_find_function(const void *host);
qcuda_variable *qcuda_find_variable(const void *host);
void qcuda_set_error(cudaError_t code);
const char *qcuda_library_path(void);
void qcuda_write_stdout(const char *data, size_t size);
void *qcuda_alias(void *mapping, size_t size, void *address);
"""

INIT = """
import os, sys
from {module} import ffi, lib
_lib_dir = os.path.dirname(os.path.realpath(ffi.string(lib.qcuda_library_path()).decode()))
_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(_lib_dir))))
# The embedded interpreter starts with the base interpreter's sys.path: add where qcuda and its
# dependencies are (what `qcuda run` passes, the tree this library sits in, the build's site-packages).
sys.path[:0] = [p for p in os.environ.get("QCUDA_PYTHONPATH", "").split(os.pathsep) if p] + [_root] + {site!r}
try:
    from qcuda.library.interposer import _cudart
    _cudart.install(ffi, lib, {names!r})
except BaseException:
    import traceback
    traceback.print_exc()
    print("qcuda: the CUDA runtime could not start: every call returns cudaErrorUnknown", file=sys.stderr)
    for _name in {names!r}:
        ffi.def_extern(name=_name)(lambda *args: 999)
"""


def python_api() -> tuple[str, list[str]]:
    """The embedding API (api.h plus the exported _ptsz/_ptds variants) and its function names."""
    text = re.sub(r"/\*.*?\*/", "", (HERE / "api.h").read_text(), flags=re.S)
    exports = set(EXPORTS)
    lines, names = [], []
    for line in filter(None, (ln.strip() for ln in text.splitlines())):
        name = re.search(r"(\w+)\(", line)[1]
        for variant in ("", *VARIANTS):
            if name + variant in exports:
                lines.append(line.replace(f" {name}(", f" {name}{variant}(", 1))
                names.append(name + variant)
    return "\n".join(lines) + "\n", names


def c_functions(source: str) -> list[str]:
    return re.findall(r"^QCUDA_EXPORT [^(]*?\b(\w+)\(", source, flags=re.M)


def error_tables() -> str:
    """cudaGetErrorName/String tables from qcuda's generated error table."""
    names = "".join(f"    case {code}: return {json.dumps(name)};\n" for code, name, _ in ERRORS)
    texts = "".join(f"    case {code}: return {json.dumps(text)};\n" for code, _, text in ERRORS)
    return ("static const char *qcuda_error_name(int code) {\n  switch (code) {\n" + names
            + "    default: return NULL;\n  }\n}\n"
            "static const char *qcuda_error_text(int code) {\n  switch (code) {\n" + texts
            + "    default: return NULL;\n  }\n}\n")


def stubs(implemented: set[str]) -> str:
    """One "not supported" function per export that neither Python nor C implements."""
    out = []
    for name in EXPORTS:
        if name in implemented:
            continue
        returns = NON_ERROR_RETURNS.get(name, "cudaError_t")
        if returns is not None and not returns.endswith(("cudaError_t", "void")):  # void callers ignore 801
            raise SystemExit(f"{name} returns {returns}: it needs a real implementation, not a stub")
        out.append(f"static int warned_{name};\nQCUDA_EXPORT cudaError_t {name}(void) "
                   f"{{ return qcuda_unsupported({json.dumps(name)}, &warned_{name}); }}\n")
    return "".join(out)


def source() -> tuple[str, str, list[str]]:
    """(C source, embedding API, names of the Python-implemented functions)."""
    c_part = (HERE / "cudart.c").read_text()
    api, names = python_api()
    implemented = set(names) | set(c_functions(c_part))
    unknown = implemented - set(EXPORTS)
    if unknown:
        raise SystemExit(f"not exported by the real libcudart.so.13: {sorted(unknown)}")
    prefix = (f"#include <stdint.h>\n#include <stddef.h>\n{TYPES}\n#define CUDART_VERSION {RUNTIME_VERSION}\n"
              f"#define QCUDA_RESERVED_BASE {RESERVED_BASE:#x}ull\n#define QCUDA_RESERVED_SIZE {RESERVED_SIZE:#x}ull\n")
    return prefix + error_tables() + c_part + stubs(implemented), api, names


def build(out_dir: Path) -> Path:
    """Compile the library into `out_dir`; returns its path."""
    c_source, api, names = source()
    ffi = cffi.FFI()
    ffi.cdef(TYPES + HELPERS)
    ffi.embedding_api(api)
    site = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    ffi.embedding_init_code(INIT.format(module=MODULE, site=site, names=names))
    libdir = sysconfig.get_config_var("LIBDIR")
    ffi.set_source(
        MODULE, c_source,
        extra_compile_args=["-O2", "-Wno-unused-parameter"],
        extra_link_args=[f"-Wl,--version-script={HERE / 'libcudart.map'}", f"-Wl,-soname,{SONAME}",
                         f"-Wl,-rpath,{libdir}", "-lpthread", "-ldl"],
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        built = ffi.compile(tmpdir=tmp, target=SONAME)
        target = out_dir / SONAME
        shutil.copyfile(built, target)
    return target


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "lib"
    print(build(out))


if __name__ == "__main__":
    main()
