"""Loading images (PTX, fatbins), parameter layouts, module variables, special registers, atomics,
local and generic memory, and the errors a guest gets for bad images and launches."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from qcuda.device.backends.emulated.memory import DeviceMemory
from qcuda.device.backends.emulated.ptx import Module
from qcuda.protocol.errors import CudaError, Error

rng = np.random.default_rng(99)
PARAMS_FMT = "<b7xd3ih2x"  # struct Params {char tag; double scale; int offsets[3]; short s;}


def test_struct_and_template_parameters(built, emu):
    mod = emu.load(built.ptx("params.cu"))
    f_name = "_Z9scale_addIfLi2EEv6ParamsPKT_PS1_i"
    i_name = "_Z9scale_addIiLi3EEv6ParamsPKT_PS1_i"
    assert mod.functions[f_name].param_layout == [(0, 32), (32, 8), (40, 8), (48, 4)]
    assert mod.functions[f_name].param_size == 52
    assert mod.functions["vec4_kernel"].param_layout == [(0, 1), (16, 16), (32, 8), (40, 4)]
    n = 100
    tag, scale, offs, s = -7, 1.75, (10, -20, 30), 1234
    p = struct.pack(PARAMS_FMT, tag, scale, *offs, s)
    x = rng.random(n, dtype=np.float32) * 100
    out = np.zeros(n, np.float32)
    emu.run(mod, f_name, 1, 128, p, x, out, np.int32(n))
    i = np.arange(n)
    f32 = np.float32
    expect = ((x * np.float64(scale)).astype(f32) + np.array(offs)[i % 3].astype(f32) * 2 + f32(tag)) + f32(s)
    np.testing.assert_array_equal(out, expect.astype(f32))
    xi = rng.integers(-1000, 1000, n, dtype=np.int32)
    outi = np.zeros(n, np.int32)
    emu.run(mod, i_name, 1, 128, p, xi, outi, np.int32(n))
    np.testing.assert_array_equal(outi, np.trunc(xi * scale).astype(np.int32) + np.array(offs)[i % 3] * 3 + tag + s)


def test_aligned_struct_parameter_and_vector_store(built, emu):
    mod = emu.load(built.ptx("params.cu"))
    n = 50
    v = np.array([1.5, -2.0, 3.25, 0.5], np.float32)
    out = np.zeros((n, 4), np.float32)
    emu.run(mod, "vec4_kernel", 1, 64, np.int8(3), v.tobytes(), out, np.int32(n))
    i = np.arange(n, dtype=np.float32)
    expect = np.stack([v[0] * i + 3, np.full(n, v[1]), v[2] - i, np.full(n, v[3] * v[0])], axis=1)
    np.testing.assert_array_equal(out, expect)


def test_special_registers_in_3d(built, emu):
    mod = emu.load(built.ptx("misc.cu"))
    grid, block = (3, 2, 2), (8, 4, 2)
    total = 12 * 64
    out = np.zeros(total * 8, np.uint32)
    emu.run(mod, "thread_ids", grid, block, out)
    got = out.reshape(total, 8)
    rows = []
    for bz in range(2):
        for by in range(2):
            for bx in range(3):
                for tz in range(2):
                    for ty in range(4):
                        for tx in range(8):
                            t = tx + 8 * (ty + 4 * tz)
                            rows.append([tx, ty, tz, bx, by, bz, (t % 32) | ((t // 32) << 16), 322])
    np.testing.assert_array_equal(got, rows)


def test_module_variables(built, emu):
    mod = emu.load(built.ptx("misc.cu"))
    n = 16
    out = np.zeros(n, np.float32)
    emu.run(mod, "use_globals", 1, 32, out, np.int32(n))
    coeffs = np.array([0.5, 1.5, -2.0, 4.0], np.float32)
    table = np.array([3, 1, 4, 1])
    i = np.arange(n)
    np.testing.assert_array_equal(out, coeffs[i & 3] * (table[i & 3] + 1000).astype(np.float32))
    addr, size = mod.global_symbol("counter_base")
    assert size == 4
    assert np.frombuffer(emu.memory.read(addr, 4), np.int32)[0] == 1000
    emu.memory.write(addr, np.int32(-5).tobytes())  # cudaMemcpyToSymbol
    emu.run(mod, "use_globals", 1, 32, out, np.int32(n))
    wrapped = (table[i & 3] - 5) % 2**32  # unsigned + int is unsigned in C
    np.testing.assert_array_equal(out, coeffs[i & 3] * wrapped.astype(np.float32))
    assert mod.global_symbol("coeffs")[1] == 16
    with pytest.raises(CudaError) as e:
        mod.global_symbol("nope")
    assert e.value.code == Error.cudaErrorInvalidSymbol
    used = emu.memory.used
    mod.unload()
    assert emu.memory.used < used


def test_managed_struct_and_constant_variables(built, emu):
    mod = emu.load(built.ptx("misc.cu"))
    addr, size = mod.global_symbol("c2")
    assert size == 8
    emu.memory.write(addr, np.array([0, 100], np.int32).tobytes())  # cudaMemcpyToSymbol
    out = np.zeros(4, np.int32)
    emu.run(mod, "more_globals", 1, 4, out)
    np.testing.assert_array_equal(out, [5 + x + 2 + 100 + 3 + 4 for x in (5, 6, 7, 8)])


def _crc_table() -> np.ndarray:
    table = []
    for b in range(256):
        c = b
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table.append(c)
    return np.array(table, np.uint32)


def test_constant_tables(built, emu):
    """A __constant__ table the host fills by name, as cudaMemcpyToSymbol does, and one with
    initial values; fma per step, so the polynomial is bit-exact against float64 rounded each step."""
    import zlib
    mod = emu.load(built.ptx("tables.cu"))
    addr, size = mod.global_symbol("crc_table")
    assert size == 1024
    emu.memory.write(addr, _crc_table().tobytes())
    n = 300
    rows = rng.integers(0, 256, (n, 64), dtype=np.uint8)
    x = rng.standard_normal(n).astype(np.float32)
    crcs, px = np.zeros(n, np.uint32), np.zeros(n, np.float32)
    emu.run(mod, "constant_tables", 3, 128, rows, crcs, x, px, np.int32(n))
    np.testing.assert_array_equal(crcs, [zlib.crc32(r.tobytes()) for r in rows])
    acc = np.zeros(n, np.float32)
    for c in (0.0625, -0.125, 0.25, -0.5, 1.0):  # float64 holds acc * x + c exactly: one rounding, as fma
        acc = (acc.astype(np.float64) * x + c).astype(np.float32)
    np.testing.assert_array_equal(px, acc)


@pytest.mark.parametrize("nbins", [256, 7])
def test_shared_memory_histogram(built, emu, nbins):
    mod = emu.load(built.ptx("tables.cu"))
    n = 50_000
    data = rng.integers(0, 256, n, dtype=np.uint8)
    bins, seen = np.zeros(nbins, np.uint32), np.zeros(1, np.uint32)
    emu.run(mod, "shared_histogram", 12, 256, data, bins, seen, np.int32(n), np.int32(nbins), shared=nbins * 4)
    np.testing.assert_array_equal(bins, np.bincount(data.astype(np.int64) % nbins, minlength=nbins))
    assert seen[0] == n


def test_variable_initialised_with_an_address(built, emu):
    mod = emu.load(built.ptx("misc.cu"))
    out = np.zeros(3, np.int32)
    emu.run(mod, "follow_pointer", 1, 3, out)
    np.testing.assert_array_equal(out, [7, 8, 9])
    gvals, _ = mod.global_symbol("gvals")
    gptr, size = mod.global_symbol("gptr")
    assert size == 8 and np.frombuffer(emu.memory.read(gptr, 8), np.uint64)[0] == gvals + 4


def test_atomics(built, emu):
    mod = emu.load(built.ptx("misc.cu"))
    n, nbins = 20_000, 37
    x = rng.integers(0, 1 << 30, n, dtype=np.uint32)
    bins = np.zeros(nbins, np.uint32)
    emu.run(mod, "histogram", 8, 128, x, bins, np.int32(n), np.int32(nbins))
    np.testing.assert_array_equal(bins, np.bincount(x % nbins, minlength=nbins))
    nxt, out = np.zeros(1, np.int32), np.zeros(1000, np.int32)
    emu.run(mod, "ticket", 4, 256, nxt, out, np.int32(1000))
    assert nxt[0] == 1000
    np.testing.assert_array_equal(np.sort(out), np.arange(1000))


def test_local_memory_array(built, emu):
    mod = emu.load(built.ptx("misc.cu"))
    n = 300
    x = rng.integers(-100, 100, n, dtype=np.int32)
    out = np.zeros(n, np.int32)
    emu.run(mod, "local_array", 3, 128, x, out, np.int32(n))
    expect = []
    for i, v in enumerate(map(int, x)):
        buf = [v * k + (k ^ i) for k in range(16)]
        expect.append(sum(buf[(k * 7 + v) & 15] * (k + 1) for k in range(16)))
    np.testing.assert_array_equal(out, expect)


@pytest.mark.parametrize("which", [0, 1])
def test_generic_pointers_to_shared_and_global(built, emu, which):
    mod = emu.load(built.ptx("misc.cu"))
    x = rng.integers(-100, 100, 256, dtype=np.int32)
    out = np.zeros(256, np.int32)
    emu.run(mod, "generic_pointers", 4, 64, x, out, np.int32(which))
    np.testing.assert_array_equal(out, x + which)


# -- images -----------------------------------------------------------------------------------
def test_fatbin_forms(built, emu):
    for flags in [("-arch=sm_90",), ("-arch=sm_90", "-Xfatbin", "-compress=false"),
                  ("-gencode", "arch=compute_80,code=compute_80", "-gencode", "arch=compute_90,code=sm_90")]:
        mod = emu.load(built.fatbin("vecadd.cu", *flags))
        assert set(mod.functions) == {"vec_add", "saxpy_grid_stride", "vec_add_f64"}


def test_several_fatbins_in_one_image(built, emu):
    image = built.fatbin("vecadd.cu") + built.fatbin("matmul.cu")
    mod = emu.load(image)
    assert {"vec_add", "matmul_tiled", "block_sum"} <= set(mod.functions)


def test_fatbin_without_ptx_names_the_fix(built, emu):
    image = built.fatbin("vecadd.cu", "-gencode", "arch=compute_90,code=sm_90")
    with pytest.raises(CudaError) as e:
        emu.load(image)
    assert e.value.code == Error.cudaErrorNoKernelImageForDevice
    assert "code=compute_XX" in str(e.value) and "-arch=sm_XX" in str(e.value)


def test_ptx_text_with_trailing_nul_and_garbage_images(emu):
    ptx = b".version 8.0\n.target sm_90\n.address_size 64\n.visible .entry k()\n{\n\tret;\n}\n\0"
    assert list(emu.load(ptx).functions) == ["k"]
    for image, code in [(b"\x7fELF" + bytes(60), Error.cudaErrorNoKernelImageForDevice),
                        (b".version 8.0\n.entry k( {", Error.cudaErrorInvalidPtx),
                        (struct.pack("<IIQ", 0x466243B1, 1, 0), Error.cudaErrorInvalidKernelImage),
                        (struct.pack("<IHHQ", 0xBA55ED50, 1, 16, 1 << 40), Error.cudaErrorInvalidKernelImage)]:
        with pytest.raises(CudaError) as e:
            emu.load(image)
        assert e.value.code == code, image


def _ptx_kernel(body: str, params: str = "") -> bytes:
    return (f".version 8.0\n.target sm_90\n.address_size 64\n.visible .entry k({params})\n{{\n"
            f"\t.reg .pred %p<4>;\n\t.reg .b32 %r<8>;\n\t.reg .b64 %rd<8>;\n{body}\n\tret;\n}}\n").encode()


def test_unsupported_instruction_fails_the_launch_by_name(emu):
    mod = emu.load(_ptx_kernel("\tmov.u32 %r1, %tid.x;\n\tcp.async.bulk.prefetch.L2.global [%rd1], 16;"))
    with pytest.raises(CudaError) as e:
        mod.functions["k"].launch((1, 1, 1), (32, 1, 1), 0, b"")
    assert e.value.code == Error.cudaErrorNotSupported
    assert "cp.async.bulk.prefetch.L2.global" in str(e.value)


def test_out_of_bounds_access_is_an_illegal_address(emu):
    memory = emu.memory
    buf = memory.alloc(64)
    mod = emu.load(_ptx_kernel(
        "\tld.param.u64 %rd1, [k_param_0];\n\tmov.u32 %r1, %tid.x;\n\tmul.wide.u32 %rd2, %r1, 4;\n"
        "\tadd.s64 %rd3, %rd1, %rd2;\n\tst.global.u32 [%rd3], %r1;", ".param .u64 k_param_0"))
    k = mod.functions["k"]
    k.launch((1, 1, 1), (16, 1, 1), 0, np.uint64(buf).tobytes())
    assert list(np.frombuffer(memory.read(buf, 64), np.uint32)) == list(range(16))
    with pytest.raises(CudaError) as e:
        k.launch((1, 1, 1), (17, 1, 1), 0, np.uint64(buf).tobytes())
    assert e.value.code == Error.cudaErrorIllegalAddress
    assert "st.global.u32" in str(e.value)


def test_shared_memory_out_of_bounds(built, emu):
    mod = emu.load(built.ptx("matmul.cu"))
    with pytest.raises(CudaError) as e:  # block_sum without the dynamic shared memory it indexes
        emu.run(mod, "block_sum", 1, 64, np.zeros(64, np.int32), np.zeros(1, np.int32), np.int32(64))
    assert e.value.code == Error.cudaErrorIllegalAddress


@pytest.mark.parametrize("grid,block", [((1, 1, 1), (1025, 1, 1)), ((1, 1, 1), (0, 1, 1)),
                                        ((1, 1, 70000), (32, 1, 1)), ((1, 1, 1), (32, 32, 2)),
                                        ((1, 1, 1), (1, 1, 65))])
def test_bad_launch_configuration(emu, grid, block):
    k = emu.load(_ptx_kernel("")).functions["k"]
    with pytest.raises(CudaError) as e:
        k.launch(grid, block, 0, b"")
    assert e.value.code == Error.cudaErrorInvalidConfiguration


def test_parameters_too_short(emu):
    k = emu.load(_ptx_kernel("", ".param .u64 k_param_0")).functions["k"]
    with pytest.raises(CudaError) as e:
        k.launch((1, 1, 1), (1, 1, 1), 0, b"1234")
    assert e.value.code == Error.cudaErrorInvalidValue


def test_load_does_not_leak_on_error():
    memory = DeviceMemory(1 << 24)
    ptx = (b".version 8.0\n.target sm_90\n.address_size 64\n.global .u32 g = 5;\n"
           b".visible .entry k()\n{\n\tbogus syntax here\n}\n")
    with pytest.raises(CudaError):
        Module.load(ptx, memory)
    assert memory.used == 0


class _Hang(Exception):
    pass


def test_mutated_ptx_only_ever_raises_cuda_errors(built, emu):
    """Hostile images: load and launch randomly damaged PTX; nothing but CudaError may escape
    (a mutation that makes a loop endless is cut off by an alarm)."""
    import random
    import signal

    def alarm(*_):
        raise _Hang()

    previous = signal.signal(signal.SIGALRM, alarm)
    texts = [built.ptx(name).decode() for name in ("control.cu", "matmul.cu", "intops.cu", "misc.cu", "calls.cu")]
    buf = emu.memory.alloc(1 << 16)
    rnd = random.Random(5)
    words = ["%r1,", "0", "-1", "[%rd1]", "{", "}", ";", ".u8", "99999999999", "%p1", "1.5", "bra", "%tid.x,"]
    try:
        for _ in range(150):
            lines = rnd.choice(texts).split("\n")
            for _ in range(rnd.randint(1, 3)):
                i = rnd.randrange(len(lines))
                op = rnd.randrange(4)
                if op == 0:
                    del lines[i]
                elif op == 1:
                    lines.insert(i, lines[rnd.randrange(len(lines))])
                elif op == 2 and lines[i].split():
                    w = lines[i].split()
                    w[rnd.randrange(len(w))] = rnd.choice(words)
                    lines[i] = " ".join(w)
                else:
                    lines[i] = lines[i][:rnd.randrange(len(lines[i]) + 1)]
            try:
                mod = Module.load("\n".join(lines).encode(), emu.memory)
            except CudaError:
                continue
            for k in mod.functions.values():
                k.output = lambda text: None
                params = np.full(k.param_size // 8 + 1, buf, np.uint64).tobytes()[:k.param_size]
                signal.alarm(2)
                try:
                    k.launch((2, 1, 1), (33, 1, 1), 64, params)
                except (CudaError, _Hang):
                    pass
                finally:
                    signal.alarm(0)
            mod.unload()
    finally:
        signal.signal(signal.SIGALRM, previous)


def test_contended_and_shared_atomics(built, emu):
    mod = emu.load(built.ptx("misc.cu"))
    n, block = 50_000, 256
    blocks = (n + block - 1) // block
    x = rng.integers(-10**6, 10**6, n, dtype=np.int32)
    fsum, imax = np.zeros(1, np.float32), np.full(1, -2**31, np.int32)
    last, cas_wins = np.full(1, -1, np.int32), np.zeros(1, np.int32)
    olds, hist = np.zeros(2 * n, np.int32), np.zeros(blocks * 8, np.uint32)
    emu.run(mod, "atomics_mix", blocks, block, x, fsum, imax, last, cas_wins, olds, hist, np.int32(n))
    assert fsum[0] == (x & 7).sum()  # small integers: exact in any order
    assert imax[0] == x.max()
    # the emulator applies one batch's lanes in thread order: atomicMax returns the running max
    np.testing.assert_array_equal(olds[:n], np.maximum.accumulate(np.r_[np.int32(-2**31), x[:-1]]))
    assert 0 <= last[0] < n
    assert olds[n:].sum() == 1 and cas_wins[0] == np.flatnonzero(olds[n:])[0] + 1
    expect = np.stack([np.bincount(x[b * block:(b + 1) * block] & 7, minlength=8) for b in range(blocks)])
    np.testing.assert_array_equal(hist.reshape(blocks, 8), expect)


def test_atomic_scans_match_a_serial_loop():
    from qcuda.device.backends.emulated.ptx.memops import _cas_update, _scan_update

    r = np.random.default_rng(3)
    counts = np.array([1, 5, 2, 40, 3])
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    rank = np.arange(counts.sum()) - np.repeat(starts, counts)
    current = r.integers(-5, 5, counts.size).astype(np.int32)
    for op, fn in [("add", lambda a, b: a + b), ("max", max), ("min", min), ("xor", lambda a, b: a ^ b),
                   ("exch", lambda a, b: b)]:
        values = r.integers(-9, 9, counts.sum()).astype(np.int32)
        old, final = _scan_update(op, current, values, starts, counts, rank)
        for g, (s, c) in enumerate(zip(starts, counts)):
            cur = int(current[g])
            for lane in range(s, s + c):
                assert old[lane] == cur, (op, g, lane)
                cur = fn(cur, int(values[lane]))
            assert final[g] == cur
    compare = np.array([0, 1, 5, 2, 7, 7, 7])
    swap = np.array([1, 2, 9, 3, 8, 6, 5])
    old, final = _cas_update(np.array([0, 7]), compare, swap, np.array([0, 4]), np.array([4, 3]))
    assert list(old) == [0, 1, 2, 2, 7, 8, 8] and list(final) == [3, 8]


def test_time_limit_stops_an_endless_kernel(emu):
    k = emu.load(_ptx_kernel("$spin:\n\tbra.uni $spin;")).functions["k"]
    k.time_limit = 0.2
    with pytest.raises(CudaError) as e:
        k.launch((1, 1, 1), (32, 1, 1), 0, b"")
    assert e.value.code == Error.cudaErrorLaunchTimeout
