"""Where device memory lies in a guest's address space: one layout, shared by both ends.

A guest tells device pointers from its own host pointers by address (`cudaMemcpyDefault`,
`cudaPointerGetAttributes`), so the two must never collide: every backend hands out device
addresses only inside this layout, and every guest reserves `RESERVED` (PROT_NONE) in its own
address space before it sees a device pointer, so no host allocation of the guest can land there.

    0x7000_0000_0000  device k's memory     [HEAP_BASE + k * HEAP_STRIDE, +HEAP_STRIDE)    256 GiB each
    0x7400_0000_0000  device k's arena view [ARENA_BASE + k * ARENA_STRIDE, +ARENA_STRIDE)  64 GiB each
    0x7500_0000_0000  end                   (MAX_DEVICES = 16: 5 TiB in all)

Why there: x86-64 Linux user space ends at 0x7fff_ffff_ffff; mmap places mappings downward from
just below the stack, no lower than about 0x7eff_0000_0000 with full (28-bit) randomisation, and
PIE programs and their brk heap sit at 0x55../0x56..; so a process would need terabytes of
mappings before one reached this span. A 256 GiB heap range holds an H200's 141 GiB with room to
spare for fragmentation; an arena view holds any channel region (the daemon caps them far lower).
The arena view is per device because the emulated device maps it into each device's space and
the GPU maps it once per device at that device's address.
"""
from __future__ import annotations

MAX_DEVICES = 16
HEAP_BASE = 0x7000_0000_0000
HEAP_STRIDE = 1 << 38
ARENA_BASE = HEAP_BASE + MAX_DEVICES * HEAP_STRIDE
ARENA_STRIDE = 1 << 36
END = ARENA_BASE + MAX_DEVICES * ARENA_STRIDE
RESERVED = (HEAP_BASE, END - HEAP_BASE)  # (base, size): what a guest reserves, in one piece


def _check(ordinal: int) -> None:
    if not 0 <= ordinal < MAX_DEVICES:
        raise ValueError(f"device ordinal {ordinal}: the address layout has room for {MAX_DEVICES} devices")


def heap_range(ordinal: int) -> tuple[int, int]:
    """(base, size) of the addresses device `ordinal` allocates from."""
    _check(ordinal)
    return HEAP_BASE + ordinal * HEAP_STRIDE, HEAP_STRIDE


def arena_range(ordinal: int) -> tuple[int, int]:
    """(base, size) of the addresses where device `ordinal`'s kernels see the channel arena."""
    _check(ordinal)
    return ARENA_BASE + ordinal * ARENA_STRIDE, ARENA_STRIDE
