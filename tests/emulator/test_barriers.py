"""mbarrier on the emulator: cuda::barrier's arrive_and_wait (init, arrive, try_wait, phase after phase) and the
instructions by hand (test_wait on a token and on a parity, the pending count)."""
from __future__ import annotations

import numpy as np


def test_cuda_barrier_phases(built, emu):
    mod = emu.load(built.ptx("barriers.cu"))
    blocks, threads = 3, 64
    data = np.arange(blocks * threads, dtype=np.int32)
    out = np.zeros(blocks * threads, np.int32)
    emu.run(mod, "bar_sum", (blocks, 1, 1), (threads, 1, 1), data, out)
    np.testing.assert_array_equal(out, np.repeat(data.reshape(blocks, threads).sum(axis=1), threads))


def test_mbarrier_by_hand(built, emu):
    mod = emu.load(built.ptx("barriers.cu"))
    threads = 64
    out = np.zeros(2 * threads, np.int32)
    emu.run(mod, "by_hand", (1, 1, 1), (threads, 1, 1), out)
    t = np.arange(threads)
    # all arrived (one instruction for the whole block): the phase is complete, its parity (0) too
    np.testing.assert_array_equal(out[:threads], 1000 + 100 + ((t + 1) % threads * 3) % 97)
    assert ((0 <= out[threads:]) & (out[threads:] <= threads)).all()  # (which count CUDA leaves to the order)
