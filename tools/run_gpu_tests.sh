#!/usr/bin/env bash
# Every GPU check in one go, on a GPU host: the spine tests (tests/test_*.py) and tests/gpu with the
# GPU backend, `--backend auto` choosing the GPU, `qcuda demo`, and the copy-bandwidth bench.
# Logs go to $OUT (default ./gpu-logs): env.txt, pytest.log, daemons.log, cli.log, bench.log, bench.json.
# Python packages the host lacks travel as wheels in .whl/ (click, zstandard; pytest and its needs in
# .whl/pytest/, installed only when the host has no pytest). Exit status: non-zero if any step failed.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
site=/tmp/qcuda-site
pip_install() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$@"; }
if ls .whl/*.whl >/dev/null 2>&1; then pip_install .whl/*.whl; fi
if ! python3 -c "import pytest" 2>/dev/null && ls .whl/pytest/*.whl >/dev/null 2>&1; then pip_install .whl/pytest/*.whl; fi
export PYTHONPATH=$PWD:$site${PYTHONPATH:+:$PYTHONPATH}
# NVRTC comes from the CUDA toolkit next to nvcc when no wheel provides it.
if [ -z "${CUDA_HOME:-}${CUDA_PATH:-}" ] && command -v nvcc >/dev/null; then
    export CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
fi
status=0
step() { local name=$1; shift; echo "== $name: $*"; "$@" || { echo "== $name FAILED (exit $?)"; status=1; }; }

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,pci.bus_id --format=csv
    python3 --version
    python3 -c "import numpy, pytest; from cuda.bindings import driver, nvrtc; from importlib.metadata import version
print('numpy', numpy.__version__, 'pytest', pytest.__version__, 'cuda-bindings', version('cuda-bindings'))
print('nvrtc', nvrtc.nvrtcVersion()[1:], 'driver', driver.cuDriverGetVersion()[1])"
    echo "CUDA_HOME=${CUDA_HOME:-}"
} >"$OUT/env.txt" 2>&1

basetemp=/tmp/qcuda-pytest
step pytest env QCUDA_TEST_BACKEND=gpu timeout 360 python3 -m pytest -v -rs --basetemp="$basetemp" \
    tests/gpu $(ls tests/test_*.py 2>/dev/null) >"$OUT/pytest.log" 2>&1
cat "$basetemp"/*/*.log >"$OUT/daemons.log" 2>/dev/null

{
    step probe python3 -c "from qcuda.device.daemon import choose_backend; c = choose_backend('auto'); print(c.name, '-', c.reason); assert c.name == 'gpu'"
    step demo timeout 90 python3 -m qcuda demo
} >"$OUT/cli.log" 2>&1

step bench timeout 120 python3 bench/copy_bandwidth.py --json "$OUT/bench.json" >"$OUT/bench.log" 2>&1

tail -n 3 "$OUT/pytest.log"
cat "$OUT/cli.log" "$OUT/bench.log"
exit $status
