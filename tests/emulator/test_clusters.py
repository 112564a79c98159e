"""Thread block clusters on the emulator: the cluster barrier holds and distributed shared memory works
(another block's shared memory through mapa: loads, stores and atomics), in 1-D and 2-D clusters."""
from __future__ import annotations

import numpy as np
import pytest

from qcuda.protocol.errors import CudaError, Error


def launch(emu, mod, name, grid, block, *args, cluster):
    k = mod.functions[name]
    params, copies = emu.pack(k, args)
    try:
        k.launch(grid, block, 0, params, cluster=cluster)
    finally:
        for addr, arr in copies:
            arr[...] = np.frombuffer(emu.memory.read(addr, arr.nbytes), arr.dtype)
            emu.memory.free(addr)


@pytest.mark.parametrize("grid,cluster", [((8, 1, 1), (2, 1, 1)), ((8, 1, 1), (4, 1, 1)), ((4, 4, 1), (2, 2, 1))])
def test_neighbour_slots(built, emu, grid, cluster):
    mod = emu.load(built.ptx("clusters.cu"))
    gx, gy, _ = grid
    out = np.full(gx * gy, -1, np.int32)
    launch(emu, mod, "neighbour_slots", grid, (32, 1, 1), out, cluster=cluster)
    cx, cy, _ = cluster
    want = np.empty(gx * gy, np.int32)
    for y in range(gy):
        for x in range(gx):
            rank = (x % cx) + (y % cy) * cx
            nxt = (rank + 1) % (cx * cy)
            tx, ty = x - x % cx + nxt % cx, y - y % cy + nxt // cx
            want[y * gx + x] = ty * gx + tx
    np.testing.assert_array_equal(out, want)


def test_atomics_in_another_blocks_shared_memory(built, emu):
    mod = emu.load(built.ptx("clusters.cu"))
    out = np.full(8, -1, np.int32)
    launch(emu, mod, "count_in_rank0", (8, 1, 1), (64, 1, 1), out, cluster=(4, 1, 1))
    np.testing.assert_array_equal(out, [4 * 64, 0, 0, 0] * 2)


def test_stores_into_the_next_block(built, emu):
    mod = emu.load(built.ptx("clusters.cu"))
    data = np.arange(6 * 128, dtype=np.int32)
    out = np.zeros(6, np.int32)
    launch(emu, mod, "pass_along", (6, 1, 1), (128, 1, 1), data, out, cluster=(2, 1, 1))
    sums = data.reshape(6, 128).sum(axis=1)
    np.testing.assert_array_equal(out, sums.reshape(3, 2)[:, ::-1].reshape(6))


def test_a_rank_the_cluster_lacks_faults(built, emu):
    mod = emu.load(built.ptx("clusters.cu"))
    out = np.zeros(4, np.int32)
    launch(emu, mod, "read_rank", (4, 1, 1), (32, 1, 1), out, np.uint32(1), cluster=(2, 1, 1))
    np.testing.assert_array_equal(out, 1)
    with pytest.raises(CudaError) as info:
        launch(emu, mod, "read_rank", (4, 1, 1), (32, 1, 1), out, np.uint32(2), cluster=(2, 1, 1))
    assert info.value.code == Error.cudaErrorIllegalAddress


def test_shared_cluster_addresses(built, emu):
    mod = emu.load(built.ptx("clusters.cu"))
    out = np.zeros(6, np.int32)
    launch(emu, mod, "explicit_cluster_space", (6, 1, 1), (32, 1, 1), out, cluster=(3, 1, 1))
    np.testing.assert_array_equal(out, [10 + b - b % 3 + (b % 3 + 1) % 3 for b in range(6)])
