"""qcuda's libcudart.so.13: unmodified `nvcc -cudart shared` programs run through qcuda.

`build.py` builds the library (cffi embedding: `_cudart.py` implements the calls in Python,
`cudart.c` the few that must be C); `qcuda run` puts its directory first on LD_LIBRARY_PATH.
"""
from pathlib import Path

LIBRARY_DIR = Path(__file__).resolve().parent / "lib"
LIBRARY = LIBRARY_DIR / "libcudart.so.13"
