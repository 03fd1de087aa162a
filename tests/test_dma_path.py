"""The pieces of at_wini's shorter DMA path that need no machine: a batch patched
in place, the vdevio copy descriptor, the PRD table, and the shape the kernel
checks a batch by."""

from __future__ import annotations

import pytest

from hwl.hw.ata import PRD_ENTRY, PRD_EOT, prd_table
from hwl.kernel.calls import _shape
from hwl.link import abi
from hwl.link.batch import Batch, Patchable
from hwl.proto import vdevio
from hwl.proto.vdevio import Check, Copy

KIB64 = 1 << 16


def command(count: int, lba: int, timeout_us: int = 1000, port: int = 0x1F2) -> Batch:
    b = Batch()
    b.inb(0x1F7)
    b.outb(port, count)
    b.outl(0xC044, lba)
    b.wait(0x1F7, 0x80, 0, timeout_us)
    return b


def test_a_patched_batch_is_the_batch_built_with_the_new_values() -> None:
    patched = Patchable(command(1, 2))
    patched.set(1, 0x1FF)  # cut to the OUT's byte
    patched.set(2, 0x12345678)
    assert bytes(patched.ops) == command(0xFF, 0x12345678).packed()[0]
    assert len(patched) == 4


@pytest.mark.parametrize("index", [0, 3, 4])
def test_only_an_outs_value_is_patched(index: int) -> None:
    patched = Patchable(command(1, 2))
    with pytest.raises(ValueError, match=f"op {index} is not an OUT"):
        patched.set(index, 1)


def test_a_batch_with_string_ops_is_not_patchable() -> None:
    b = Batch()
    b.ins(0x1F0, 256)
    with pytest.raises(ValueError, match="without strings"):
        Patchable(b)


def test_new_values_keep_a_batchs_shape_and_ports_and_checked_operands_do_not() -> None:
    shape = _shape(command(1, 2).packed()[0], 14)
    assert _shape(command(8, 99999).packed()[0], 14) == shape
    assert _shape(command(1, 2, port=0x172).packed()[0], 14) != shape
    assert _shape(command(1, 2, timeout_us=2000).packed()[0], 14) != shape
    assert _shape(command(1, 2).packed()[0], -1) != shape  # no hook: IRQ waits refused


def test_a_copy_descriptor_travels_whole() -> None:
    copy = Copy(vdevio.TO_GRANT, 3, 512, 4096, -5, 7, 1000, (Check(20, 0x89, 0), Check(21, 6, 4)))
    packed = copy.pack()
    assert len(packed) == vdevio.SIZE == 4 * abi.OP_SIZE
    assert Copy.unpack(packed + b"ops") == copy
    with pytest.raises(ValueError, match="4 checks"):
        Copy(vdevio.TO_GRANT, 3, 0, 1, 0, 0, 0, (Check(0, 0, 0),) * 4).pack()


def test_the_peer_field_names_the_hook_or_none() -> None:
    assert vdevio.hook_of(vdevio.peer_field(None)) is None
    assert vdevio.hook_of(vdevio.peer_field(7)) == 7
    assert vdevio.peer_field(7) & vdevio.COPY
    with pytest.raises(ValueError):
        vdevio.peer_field(vdevio.NO_HOOK)


@pytest.mark.parametrize(
    ("phys", "size"),
    [(0x200000, 1 << 20), (0x20F000, 1 << 20), (0x200000, 4096), (0x2FFE00, 1024), (0x300000, 512)],
)
def test_prd_entries_stay_within_64k_blocks_and_cover_the_transfer(phys: int, size: int) -> None:
    table = prd_table(phys, size)
    entries = [PRD_ENTRY.unpack_from(table, i) for i in range(0, len(table), PRD_ENTRY.size)]
    at = phys
    for i, (address, word) in enumerate(entries):
        length = word & 0xFFFF or KIB64
        assert address == at and address // KIB64 == (address + length - 1) // KIB64
        assert bool(word & PRD_EOT) == (i == len(entries) - 1)
        at += length
    assert at == phys + size
    if phys % KIB64 == 0:
        assert len(entries) == -(-size // KIB64)  # aligned: whole 64 KiB entries
