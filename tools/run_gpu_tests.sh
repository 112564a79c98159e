#!/usr/bin/env bash
# Every GPU check, on a GPU host, in steps named on the command line (default: tests bench):
#   tests     the spine tests (tests/test_*.py) and tests/gpu with the GPU backend, `--backend auto`
#             choosing the GPU, `qcuda demo`                     -> pytest.log, daemons.log, cli.log
#   agreement tests/emulator/test_gpu_agreement.py: the emulator and the GPU on the same PTX -> agreement.log
#   programs  tests/programs run natively and through `qcuda run`, outputs diffed -> programs/ (its logs)
#   bench     copy bandwidth and call latency vs native; large copies over loopback TCP vs a plain socket;
#             an nvcc-built program's per-call latency natively and through qcuda
#                                                                     -> bench.log, bench.json, tcp.log, latency.log
# Each step fits one 10-minute device call; `tests programs` together usually do too.
# Logs go to $OUT (default ./gpu-logs), with env.txt.
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
# qcuda's libcudart.so.13 (what `qcuda run` and `qcuda demo` load): pip install builds it; a bare checkout here
python3 -c "from qcuda.library.interposer import LIBRARY; raise SystemExit(not LIBRARY.exists())" ||
    python3 -m qcuda.library.interposer.build >"$OUT/build-libcudart.log" 2>&1 || echo "== building libcudart.so.13 FAILED"
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

steps=${*:-tests bench}
basetemp=/tmp/qcuda-pytest
for name in $steps; do
    case $name in
    tests)
        step pytest env QCUDA_TEST_BACKEND=gpu timeout 360 python3 -m pytest -v -rs --basetemp="$basetemp" \
            tests/gpu $(ls tests/test_*.py 2>/dev/null) >"$OUT/pytest.log" 2>&1
        cat "$basetemp"/*/*.log >"$OUT/daemons.log" 2>/dev/null
        {
            step probe python3 -c "from qcuda.device.daemon import choose_backend; c = choose_backend('auto'); print(c.name, '-', c.reason); assert c.name == 'gpu'"
            step demo timeout 90 python3 -m qcuda demo
        } >"$OUT/cli.log" 2>&1
        tail -n 3 "$OUT/pytest.log"
        cat "$OUT/cli.log"
        ;;
    agreement)
        step agreement env QCUDA_TEST_BACKEND=gpu timeout 300 python3 -m pytest -q -rs --confcutdir=tests/emulator \
            tests/emulator/test_gpu_agreement.py >"$OUT/agreement.log" 2>&1
        tail -n 3 "$OUT/agreement.log"
        ;;
    programs)
        step programs env OUT="$OUT/programs" timeout 400 bash tests/programs/run_native_and_qcuda.sh
        ;;
    bench)
        step bench timeout 120 python3 bench/copy_bandwidth.py --json "$OUT/bench.json" >"$OUT/bench.log" 2>&1
        step tcp timeout 120 python3 bench/tcp_bandwidth.py --backend gpu --sizes 1M,64M,256M >"$OUT/tcp.log" 2>&1
        step latency timeout 180 python3 bench/call_latency.py >"$OUT/latency.log" 2>&1
        cat "$OUT/bench.log" "$OUT/tcp.log" "$OUT/latency.log"
        ;;
    *)
        echo "unknown step $name (tests, agreement, programs, bench)"; status=1
        ;;
    esac
done
exit $status
