#!/usr/bin/env bash
# On a GPU host: build the corpus of tests/programs with `nvcc -cudart shared`, run each program
# natively (CUDA's own libcudart.so.13) and through `qcuda run` on a daemon with the GPU backend,
# and diff the two outputs. The programs print only check names and results, so the outputs of a
# correct qcuda match the native ones line for line. qcuda_only/ is left out (a GPU supports those calls).
# Environment: OUT (default ./programs-logs), QCUDA_BACKEND (default gpu), PYTHON (default python3).
# Python packages the host lacks (cffi, click, zstandard) may travel as wheels in the repository's .whl/.
# Exit status: non-zero if a program failed natively or through qcuda, or if any output differs.
set -u
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
OUT=${OUT:-$PWD/programs-logs}
PYTHON=${PYTHON:-python3}
backend=${QCUDA_BACKEND:-gpu}
mkdir -p "$OUT/bin"
export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH}
if ! "$PYTHON" -c "import cffi, click, zstandard" 2>/dev/null && ls "$repo"/.whl/*.whl >/dev/null 2>&1; then
    site=/tmp/qcuda-site
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$repo"/.whl/*.whl
    export PYTHONPATH=$PYTHONPATH:$site
fi
export QCUDA_RUNTIME_DIR=$(mktemp -d)
export QCUDA_DEVICE=shm://programs-$$

if [ ! -e "$repo/qcuda/library/interposer/lib/libcudart.so.13" ]; then
    "$PYTHON" "$repo/qcuda/library/interposer/build.py" >"$OUT/build-libcudart.log" 2>&1 ||
        { echo "building qcuda's libcudart.so.13 failed: $OUT/build-libcudart.log"; exit 1; }
fi

"$PYTHON" -m qcuda serve --listen "$QCUDA_DEVICE" --backend "$backend" >"$OUT/daemon.log" 2>&1 &
daemon=$!
trap 'kill $daemon 2>/dev/null; wait $daemon 2>/dev/null' EXIT
for _ in $(seq 600); do
    [ -S "$QCUDA_RUNTIME_DIR/programs-$$.sock" ] && break
    kill -0 $daemon 2>/dev/null || { echo "the daemon exited: $OUT/daemon.log"; exit 1; }
    sleep 0.1
done

status=0
programs=()
for src in "$here"/*.cu; do programs+=("$(basename "$src" .cu):$src"); done
for dir in "$here"/*/; do
    name=$(basename "$dir")
    [ "$name" = qcuda_only ] && continue
    ls "$dir"*.cu >/dev/null 2>&1 && programs+=("$name:$(ls "$dir"*.cu | tr '\n' ' ')")
done
for entry in "${programs[@]}"; do
    name=${entry%%:*}
    sources=${entry#*:}
    exe=$OUT/bin/$name
    flags=$(sed -n 's|^// nvcc flags: ||p' ${sources%% *} | head -1)  # extra flags a program asks for
    # shellcheck disable=SC2086
    if ! nvcc -arch=sm_90 -cudart shared $flags -o "$exe" $sources >"$OUT/$name.build.log" 2>&1; then
        echo "$name: BUILD FAILED ($OUT/$name.build.log)"; status=1; continue
    fi
    timeout 300 "$exe" >"$OUT/$name.native.out" 2>"$OUT/$name.native.err"
    native=$?
    timeout 300 "$PYTHON" -m qcuda run -- "$exe" >"$OUT/$name.qcuda.out" 2>"$OUT/$name.qcuda.err"
    qcuda=$?
    if diff -u "$OUT/$name.native.out" "$OUT/$name.qcuda.out" >"$OUT/$name.diff"; then same=same; else same=DIFFERENT; status=1; fi
    [ $native -eq 0 ] && [ $qcuda -eq 0 ] || status=1
    echo "$name: native exit $native, qcuda exit $qcuda, output $same"
    [ "$same" = same ] || cat "$OUT/$name.diff"
done
exit $status
