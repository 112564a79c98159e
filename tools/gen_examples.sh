#!/bin/sh
# Regenerate the PTX that ships with the package (the demo's kernel) from its CUDA C source.
set -e
cd "$(dirname "$0")/../qcuda/examples"
nvcc -ptx -arch=compute_90 -o vector_add.ptx vector_add.cu
