"""Per-call latency of an unmodified CUDA program: natively and through `qcuda run`, in the same run.

Builds bench/call_latency.cu with `nvcc -cudart shared`, runs it natively (when this machine has a GPU
and a CUDA driver) and through qcuda (the daemon at QCUDA_DEVICE, or a local one), and prints each
call's median microseconds side by side.

    python bench/call_latency.py
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def measure(command: list[str], env: dict | None = None) -> dict[str, float] | None:
    """name -> microseconds the program printed; None (and why, on stderr) when it could not run."""
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    if result.returncode != 0:
        print(f"{command[-1]} failed ({result.returncode}): {result.stderr.strip()[-2000:]}", file=sys.stderr)
        return None
    rows = (line.split() for line in result.stdout.splitlines())
    return {row[0]: float(row[1]) for row in rows if len(row) == 2}


def main() -> None:
    sys.path.insert(0, str(HERE.parent))
    from qcuda.library.interposer import LIBRARY, LIBRARY_DIR

    if not LIBRARY.exists():  # a source checkout that was not installed: build qcuda's libcudart.so.13 here
        from qcuda.library.interposer.build import build

        build(LIBRARY_DIR)
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    with tempfile.TemporaryDirectory() as tmp:
        program = Path(tmp) / "call_latency"
        subprocess.run([nvcc, "-cudart", "shared", "-arch=sm_90", "-O2", "-o", str(program),
                        str(HERE / "call_latency.cu")], check=True)
        native = measure([str(program)]) if shutil.which("nvidia-smi") else None
        qcuda = measure([sys.executable, "-m", "qcuda", "run", "--", str(program)], dict(os.environ))
    if qcuda is None:
        sys.exit("the program failed through qcuda")
    print("per-call latency, median microseconds (an nvcc -cudart shared program)")
    print(f"{'call':<26} {'native':>8} {'qcuda':>8} {'ratio':>6}")
    for name, us in qcuda.items():
        n = native.get(name) if native else None
        print(f"{name:<26} {n if n is not None else float('nan'):>8.2f} {us:>8.2f} "
              f"{us / n if n else float('nan'):>6.1f}")


if __name__ == "__main__":
    main()
