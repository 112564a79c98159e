"""Cooperative launches on the emulator: a grid-wide barrier (cg::this_grid().sync()) works when the
grid runs as one batch with a grid workspace, and traps (it never hangs) without one. (The backend gives
ordinary launches of resident grids one too, as a GPU does: tests/programs/cooperative.cu.)"""
from __future__ import annotations

import numpy as np
import pytest

from qcuda.device.backends.emulated.ptx import kernel as kernel_module
from qcuda.protocol.errors import CudaError, Error


def launch(emu, mod, name, grid, block, *args, cooperative):
    k = mod.functions[name]
    params, copies = emu.pack(k, args)
    try:
        k.launch((grid, 1, 1), (block, 1, 1), 0, params, cooperative)
    finally:
        for addr, arr in copies:
            arr[...] = np.frombuffer(emu.memory.read(addr, arr.nbytes), arr.dtype)
            emu.memory.free(addr)


@pytest.mark.parametrize("small_batches", [False, True])
def test_grid_sync_in_a_cooperative_launch(built, emu, monkeypatch, small_batches):
    if small_batches:  # an ordinary launch of this grid would run in several batches
        monkeypatch.setattr(kernel_module, "BATCH_THREADS", 64)
    mod = emu.load(built.ptx("grid_sync.cu"))
    blocks, threads = 6, 64
    slots = np.zeros(blocks, np.int32)
    seen, again = np.zeros(blocks * threads, np.int32), np.ones(blocks * threads, np.int32)
    used = emu.memory.used
    launch(emu, mod, "neighbours", blocks, threads, slots, seen, again, cooperative=True)
    want = (np.arange(blocks) + 1) % blocks + 1
    np.testing.assert_array_equal(seen, np.repeat(want, threads))
    np.testing.assert_array_equal(again, 0)
    assert emu.memory.used == used  # the grid workspace is given back


def test_grid_group_validity(built, emu):
    mod = emu.load(built.ptx("grid_sync.cu"))
    out = np.full(64, 7, np.int32)
    launch(emu, mod, "valid", 2, 32, out, cooperative=False)
    np.testing.assert_array_equal(out, 0)
    launch(emu, mod, "valid", 2, 32, out, cooperative=True)
    np.testing.assert_array_equal(out, 1)


def test_grid_sync_in_an_ordinary_launch_traps(built, emu):
    mod = emu.load(built.ptx("grid_sync.cu"))
    slots, seen, again = np.zeros(4, np.int32), np.zeros(128, np.int32), np.zeros(128, np.int32)
    with pytest.raises(CudaError) as info:
        launch(emu, mod, "neighbours", 4, 32, slots, seen, again, cooperative=False)
    assert info.value.code == Error.cudaErrorLaunchFailure
