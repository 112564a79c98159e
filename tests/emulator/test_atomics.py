"""Every atomic CUDA C offers (atom and red; add on integers, f32 and f64, min, max, inc, dec, exch,
cas, and, or, xor) on global and shared memory, 32- and 64-bit, from many blocks run in several
batches: final values are bit-exact against numpy, since CUDA promises each update lands whole
whatever the order (the float values are chosen so any order sums exactly)."""
from __future__ import annotations

import numpy as np
import pytest

from qcuda.device.backends.emulated.ptx import kernel

rng = np.random.default_rng(66)
U64 = np.uint64


def _wide(v: np.ndarray) -> np.ndarray:
    """The kernel's 64-bit value of each input: ((u64)v << 29) ^ (u64)(v * 2654435761u)."""
    v64 = v.astype(U64)
    return (v64 << U64(29)) ^ ((v64 * U64(2654435761)) & U64(0xFFFFFFFF))


def _and(x: np.ndarray, start: int) -> int:
    return int(np.bitwise_and.reduce(x, initial=x.dtype.type(start)))


def _or(x: np.ndarray) -> int:
    return int(np.bitwise_or.reduce(x, initial=x.dtype.type(0)))


def _xor(x: np.ndarray) -> int:
    return int(np.bitwise_xor.reduce(x, initial=x.dtype.type(0)))


def _shared_expect(v: np.ndarray) -> tuple[list[int], list[int], float, float]:
    """One block's shared-memory slots after its threads' atomics (threads past n do none)."""
    w = _wide(v)
    c = v.size
    s32 = [int((v & 0xFFFF).sum()) % 2**32, int(v.min(initial=0xFFFFFFFF)),
           max(0, int(v.view(np.int32).max(initial=0))),
           c % 51, -c % 34, _and(v | np.uint32(0x10000000), 0xFFFFFFFF), _or(v & np.uint32(0x00F000F0)), _xor(v),
           int((v & 7).sum()) % 2**32]
    s64 = [int(w.sum(dtype=U64)), int(w.min(initial=U64(2**64 - 1))),
           max(0, int((w.view(np.int64) - np.int64(2**62)).max(initial=0))),
           _and(w | U64(0x4000000000000000), 2**64 - 1), _or(w & U64(0x0000FFFF0000FFFF)), _xor(w), _xor(w),
           int(w.sum(dtype=U64))]
    return s32, s64, float(((v & 255) * 0.25).sum()), float(((v & 1023) * 0.125).sum())


@pytest.mark.parametrize("n", [600, 1])
def test_every_atomic_on_global_and_shared_memory(built, emu, monkeypatch, n):
    monkeypatch.setattr(kernel, "BATCH_THREADS", 128)  # two blocks a batch: atomics also cross batches
    mod = emu.load(built.ptx("atomics.cu"))
    block = 64
    blocks = (n + block - 1) // block
    v = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    v[:3] = np.array([0, 0xFFFFFFFF, 0x80000000], np.uint32)[:n]  # extremes of min, max, and
    g32 = np.array([0, 0x7FFFFFFF, 0x80000000, 0, 0, 0xFFFFFFFF, 0, 0, 0, 0], np.uint32)
    g64 = np.array([0, 2**63 - 1, 0, 2**64 - 1, 0, 0, 0], U64)
    gf, gd = np.zeros(1, np.float32), np.zeros(1)
    tickets = np.zeros(n, np.uint32)
    s32, s64 = np.zeros((blocks, 9), np.uint32), np.zeros((blocks, 8), U64)
    sf, sd = np.zeros(blocks, np.float32), np.zeros(blocks)
    emu.run(mod, "atomic_ops", blocks, block, v, g32, g64, gf, gd, tickets, s32, s64, sf, sd, np.int32(n))

    w, iv = _wide(v), v.view(np.int32)
    np.testing.assert_array_equal(np.sort(tickets), np.arange(n))
    assert list(map(int, g32)) == [
        n, int(iv.min()) % 2**32, int(iv.max()) % 2**32, n % 1001, -n % 78,
        _and(v | np.uint32(0x00010000), 0xFFFFFFFF), _or(v & np.uint32(0x11111111)), _xor(v),
        int((v & 15).sum()) % 2**32, int((v >> 16).sum()) % 2**32]
    assert list(map(int, g64)) == [
        int(w.sum(dtype=U64)), int((w.view(np.int64) - np.int64(2**62)).min()) % 2**64, int(w.max()),
        _and(w | U64(0x8000000000000001), 2**64 - 1), _or(w & U64(0x0101010101010101)), _xor(w),
        int(w.sum(dtype=U64))]
    assert gf[0] == ((v & 255) * 0.25).sum() and gd[0] == ((v & 1023) * 0.125).sum()
    for b in range(blocks):
        e32, e64, ef, ed = _shared_expect(v[b * block:(b + 1) * block])
        assert list(map(int, s32[b])) == e32, b
        assert list(map(int, s64[b])) == e64, b
        assert (sf[b], sd[b]) == (ef, ed), b


def test_exchange_hands_each_value_on_once(built, emu):
    mod = emu.load(built.ptx("atomics.cu"))
    n = 3000
    slot, olds = np.full(1, 0xABCD, np.uint32), np.zeros(n, np.uint32)
    emu.run(mod, "atomic_exch_chain", (n + 255) // 256, 256, slot, olds, np.int32(n))
    np.testing.assert_array_equal(np.sort(np.r_[olds, slot]), np.sort(np.r_[np.arange(1, n + 1), 0xABCD]))


def test_atomics_through_generic_pointers(built, emu):
    mod = emu.load(built.ptx("atomics.cu"))
    blocks, block = 5, 96
    g, slot = np.zeros(1, np.uint32), np.full(1, 7, U64)
    out, olds = np.zeros(blocks, np.uint32), np.zeros(blocks * block, U64)
    emu.run(mod, "generic_atomics", blocks, block, g, slot, out, olds)
    np.testing.assert_array_equal(out, np.full(blocks, block))
    assert g[0] == blocks * block * (block - 1) // 2
    new = (np.arange(blocks * block, dtype=U64) << U64(32)) | U64(1)
    np.testing.assert_array_equal(np.sort(np.r_[olds, slot]), np.sort(np.r_[new, U64(7)]))
