"""Host<->device copy bandwidth through qcuda next to native copies, measured in the same run (it prints).

    python bench/copy_bandwidth.py [--json results.json]

qcuda: a HostBuffer (pinned memory in the channel arena, registered by the daemon with
cuMemHostRegister) to and from a DeviceBuffer, with `copy_from`/`copy_to`. Native: cuda.bindings
copies between cuMemAllocHost memory and cuMemAlloc memory in this process. Two ways each:
`sync`, one synchronous copy at a time (what a cudaMemcpy costs, round trip included), and
`stream`, a batch of asynchronous copies on one stream and one synchronize (the link's rate).
Uses $QCUDA_DEVICE's daemon, or starts a local one (which takes the GPU when there is one).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = (1 << 20, 256 << 20)
BATCH_BYTES = 2 << 30  # what one measurement moves, at most


def _reps(size: int) -> int:
    return max(8, min(200, BATCH_BYTES // size))


def median_seconds(call: Callable[[], None], reps: int) -> float:
    """The median time of single timed calls, after three untimed ones."""
    for _ in range(3):
        call()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def one_at_a_time(copy: Callable[[], None], size: int) -> float:
    """GB/s of synchronous copies, one at a time."""
    return size / median_seconds(copy, _reps(size)) / 1e9


def batched(copy: Callable[[], None], finish: Callable[[], None], size: int) -> float:
    """GB/s of asynchronous copies queued together, then one `finish`: the best of three batches."""
    reps = _reps(size)
    copy()
    finish()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            copy()
        finish()
        best = min(best, (time.perf_counter() - t) / reps)
    return size / best / 1e9


def bench_qcuda(size: int) -> dict[str, dict[str, float]]:
    import qcuda

    dev = qcuda.Device(0)
    host, buf, stream = dev.allocate_host(size), dev.allocate(size), dev.create_stream()
    host.numpy()[:] = 7
    results = {
        "h2d": {"sync": one_at_a_time(lambda: buf.copy_from(host), size),
                "stream": batched(lambda: buf.copy_from(host, stream), stream.synchronize, size)},
        "d2h": {"sync": one_at_a_time(lambda: buf.copy_to(host), size),
                "stream": batched(lambda: buf.copy_to(host, stream), stream.synchronize, size)},
    }
    assert (host.numpy() == 7).all(), "the round trip changed the data"
    buf.free()
    host.free()
    stream.destroy()
    return results


def latency_qcuda() -> dict[str, float]:
    """Microseconds of a call with no device work (a pure round trip) and of a 4-byte synchronous copy."""
    import qcuda
    from qcuda.protocol import messages as m

    dev = qcuda.Device(0)
    host, buf = dev.allocate_host(4), dev.allocate(4)
    return {"round_trip_us": median_seconds(lambda: dev.client.call(m.DeviceCount()), 1000) * 1e6,
            "copy_4b_us": median_seconds(lambda: buf.copy_from(host), 1000) * 1e6}


def bench_native(sizes: tuple[int, ...]) -> dict:
    """The same copies straight through the driver, between cuMemAllocHost and cuMemAlloc memory."""
    from cuda.bindings import driver as cu

    from qcuda.device.backends.gpu import check

    check(cu.cuInit(0))
    device = check(cu.cuDeviceGet(0))
    check(cu.cuCtxSetCurrent(check(cu.cuDevicePrimaryCtxRetain(device))))
    stream = check(cu.cuStreamCreate(int(cu.CUstream_flags.CU_STREAM_NON_BLOCKING)))
    finish = lambda: check(cu.cuStreamSynchronize(stream))  # noqa: E731
    results: dict = {}
    host, buf = check(cu.cuMemAllocHost(4)), check(cu.cuMemAlloc(4))
    results["latency"] = {"copy_4b_us": median_seconds(lambda: check(cu.cuMemcpyHtoD(buf, host, 4)), 1000) * 1e6}
    check(cu.cuMemFree(buf))
    check(cu.cuMemFreeHost(host))
    for size in sizes:
        host, buf = check(cu.cuMemAllocHost(size)), check(cu.cuMemAlloc(size))
        results[size] = {
            "h2d": {"sync": one_at_a_time(lambda: check(cu.cuMemcpyHtoD(buf, host, size)), size),
                    "stream": batched(lambda: check(cu.cuMemcpyHtoDAsync(buf, host, size, stream)), finish, size)},
            "d2h": {"sync": one_at_a_time(lambda: check(cu.cuMemcpyDtoH(host, buf, size)), size),
                    "stream": batched(lambda: check(cu.cuMemcpyDtoHAsync(host, buf, size, stream)), finish, size)},
        }
        check(cu.cuMemFree(buf))
        check(cu.cuMemFreeHost(host))
    check(cu.cuStreamDestroy(stream))
    check(cu.cuDevicePrimaryCtxRelease(device))
    return results


def run() -> dict:
    import qcuda

    dev = qcuda.Device(0)
    if dev.backend != "gpu":
        raise SystemExit(f"copy_bandwidth: the daemon serves {dev.name} ({dev.backend}), not a GPU")
    report = {"device": dev.name, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "results": []}
    qcuda_runs = {size: bench_qcuda(size) for size in SIZES}
    report["qcuda_latency"] = latency_qcuda()
    qcuda.reset_runtime()
    native_runs = bench_native(SIZES)
    report["native_latency"] = native_runs["latency"]
    for size in SIZES:
        native = native_runs[size]
        for direction in ("h2d", "d2h"):
            for mode in ("sync", "stream"):
                q, n = qcuda_runs[size][direction][mode], native[direction][mode]
                report["results"].append({"size": size, "direction": direction, "mode": mode,
                                          "qcuda_gbps": q, "native_gbps": n, "ratio": q / n})
    return report


def print_report(report: dict) -> None:
    print("copy bandwidth, qcuda (arena HostBuffer <-> DeviceBuffer) vs native cuda.bindings (cuMemAllocHost)")
    print(f"device: {report['device']}; {report['date']}")
    print(f"{'size':>8} {'dir':>4} {'mode':>6} {'qcuda GB/s':>11} {'native GB/s':>12} {'ratio':>6}")
    for r in report["results"]:
        print(f"{r['size'] >> 20:>5} MiB {r['direction']:>4} {r['mode']:>6} {r['qcuda_gbps']:>11.2f} "
              f"{r['native_gbps']:>12.2f} {r['ratio']:>6.2f}")
    q, n = report["qcuda_latency"], report["native_latency"]
    print(f"4-byte synchronous H2D copy: qcuda {q['copy_4b_us']:.1f} us, native {n['copy_4b_us']:.1f} us; "
          f"a qcuda call with no device work: {q['round_trip_us']:.1f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    os.environ.setdefault("QCUDA_ARENA", f"{2 * max(SIZES) >> 20}M")  # the largest HostBuffer, with room to spare
    if os.environ.get("QCUDA_DEVICE"):
        report = run()
    else:
        from qcuda.cli import LocalDaemon

        with LocalDaemon() as local:
            os.environ["QCUDA_DEVICE"] = str(local.url)
            report = run()
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
