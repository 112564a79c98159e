"""Stream and event ordering on a real daemon: work on one stream runs in order, events order streams."""
from __future__ import annotations

import time

import numpy as np
import pytest


def test_stream_order_copy_then_memset_then_copy(guest):
    dev = guest.Device(0)
    stream = dev.create_stream()
    src = dev.allocate_host(8 << 20)
    src.numpy()[:] = 7
    out = dev.allocate_host(8 << 20)
    buf = dev.allocate(8 << 20)
    for _ in range(3):  # copy, overwrite, read back: only in-order execution gives 9s
        buf.copy_from(src, stream)
        buf.memset(9, stream)
        buf.copy_to(out, stream)
    stream.synchronize()
    assert np.all(out.numpy() == 9)


def test_event_orders_two_streams(guest):
    dev = guest.Device(0)
    producer, consumer = dev.create_stream(non_blocking=True), dev.create_stream(non_blocking=True)
    n = 32 << 20
    a, b = dev.allocate(n), dev.allocate(n)
    src = dev.allocate_host(n)
    src.numpy()[:] = 3
    out = dev.allocate_host(n)
    ready = dev.create_event()
    for i in range(4):
        a.copy_from(src, producer)
        a.memset(i + 10, producer)
        producer.record(ready)
        consumer.wait(ready)
        b.copy_from_device(a, stream=consumer)
        b.copy_to(out, consumer)
        consumer.synchronize()
        assert np.all(out.numpy() == i + 10)


def test_events_time_and_query(guest):
    dev = guest.Device(0)
    stream = dev.create_stream()
    start, end = dev.create_event(), dev.create_event()
    buf = dev.allocate(64 << 20)
    start.record(stream)
    for _ in range(4):
        buf.memset(1, stream)
    end.record(stream)
    end.synchronize()
    assert end.query() and stream.query()
    assert start.elapsed_ms(end) > 0
    untimed = dev.create_event(timing=False)
    untimed.record(stream)
    untimed.synchronize()
    with pytest.raises(guest.CudaError) as err:
        start.elapsed_ms(untimed)
    assert err.value.code == guest.Error.cudaErrorInvalidResourceHandle


def test_query_reports_not_ready_while_work_runs(guest):
    dev = guest.Device(0)
    stream = dev.create_stream()
    buf = dev.allocate(256 << 20)
    done = dev.create_event()
    for _ in range(8):
        buf.memset(5, stream)
    done.record(stream)
    busy = not done.query()
    stream.synchronize()
    assert done.query()
    if not busy:
        pytest.skip("the device finished 2 GiB of memsets before the query arrived")


def test_streams_run_concurrently(guest):
    """Work on one stream completes while a long queue on another is still running."""
    dev = guest.Device(0)
    long_stream, short_stream = dev.create_stream(non_blocking=True), dev.create_stream(non_blocking=True)
    big_size = 4 << 30 if dev.backend == "gpu" else 256 << 20  # a GPU clears 256 MiB faster than a memset is queued
    big, small = dev.allocate(big_size), dev.allocate(4096)
    for _ in range(32):
        big.memset(1, long_stream)
    long_done = long_stream.record()
    small.memset(2, short_stream)
    short_stream.synchronize()
    assert not long_done.query()  # run one after the other, the short stream would have waited
    long_stream.synchronize()
    assert long_done.query()


def test_default_stream_waits_for_blocking_streams(guest):
    dev = guest.Device(0)
    blocking = dev.create_stream()
    n = 64 << 20
    buf = dev.allocate(n)
    for _ in range(4):
        buf.memset(1, blocking)
    buf.memset(2, blocking)
    assert np.all(buf.to_numpy()[:: 1 << 16] == 2)  # the legacy stream's copy waits for `blocking`


def test_destroyed_handles_are_refused(guest):
    dev = guest.Device(0)
    stream = dev.create_stream()
    event = dev.create_event()
    stream.destroy()
    event.destroy()
    with pytest.raises(guest.CudaError) as err:
        stream.synchronize()
    assert err.value.code == guest.Error.cudaErrorInvalidResourceHandle
    with pytest.raises(guest.CudaError):
        event.query()


def test_callbacks_run_in_stream_order_and_hold_the_stream(guest):
    """Callbacks (which may not call CUDA) see the results of the work before them, and later work waits."""
    dev = guest.Device(0)
    stream = dev.create_stream()
    buf = dev.allocate(4096)
    pinned = dev.allocate_host(4096)
    seen = []

    def snapshot(s, status):
        first = bytes(pinned.view[:1])
        time.sleep(0.05)  # the memset queued after this callback must not run meanwhile
        seen.append((s.handle, status, first, bytes(pinned.view[:1])))

    for value in (1, 2, 3):
        buf.memset(value, stream)
        buf.copy_to(pinned, stream)
        stream.add_callback(snapshot)
    buf.memset(9, stream)
    buf.copy_to(pinned, stream)
    stream.synchronize()
    assert seen == [(stream.handle, 0, v, v) for v in (b"\x01", b"\x02", b"\x03")]
    assert bytes(pinned.view[:1]) == b"\x09"


def test_legacy_stream_of_each_device(runtime_dir, monkeypatch):
    """Handle 0 names the legacy stream of the device it is used with, not always device 0's."""
    import qcuda
    from daemons import DaemonProcess

    d = DaemonProcess(runtime_dir, backend="emulated", extra=("--emulated-devices", "2"))
    try:
        monkeypatch.setenv("QCUDA_RUNTIME_DIR", str(runtime_dir))
        monkeypatch.setenv("QCUDA_DEVICE", d.url)
        qcuda.reset_runtime()
        dev1 = qcuda.Device(1)
        big = dev1.allocate(256 << 20)
        legacy = dev1.default_stream
        for _ in range(16):
            big.memset(3, legacy)
        done = legacy.record()
        legacy.synchronize()
        assert done.query() and legacy.query()
        called = []
        legacy.add_callback(lambda s, status: called.append((s.device.ordinal, status)))
        legacy.synchronize()
        assert called == [(1, 0)]
    finally:
        qcuda.reset_runtime()
        d.stop()
