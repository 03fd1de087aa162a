"""ATA by raw port I/O through the link, compared byte for byte with the disk images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hwl import Machine
from hwl.hw import ata
from hwl.link import abi

pytestmark = pytest.mark.qemu


def image_bytes(path: Path, lba: int, count: int) -> bytes:
    with path.open("rb") as fh:
        fh.seek(lba * ata.SECTOR)
        return fh.read(count * ata.SECTOR)


@pytest.mark.parametrize(
    ("channel", "disk", "serial", "model"),
    [
        (ata.PRIMARY, "hd0", "HWLHD0", "HWL DISK 0"),
        (ata.SECONDARY, "hd1", "HWLHD1", "HWL DISK 1"),
    ],
)
def test_identify_matches_the_image(
    pc: Machine, channel: ata.Channel, disk: str, serial: str, model: str
) -> None:
    info = ata.identify(pc.link, channel)
    assert info.model == model
    assert info.serial == serial
    sectors = pc.disks[disk].stat().st_size // ata.SECTOR
    assert info.sectors == sectors
    assert info.sectors48 == sectors
    assert info.max_multiple >= 1


@pytest.mark.parametrize("multiple", [1, 16])
def test_pio_read_matches_the_image(pc: Machine, multiple: int) -> None:
    if multiple > 1:
        ata.set_multiple(pc.link, ata.PRIMARY, 0, multiple)
    for lba, count in [(0, 1), (12345, 7), (200_000, 256)]:
        got = ata.pio_read(pc.link, ata.PRIMARY, 0, lba, count, multiple)
        assert got == image_bytes(pc.disks["hd0"], lba, count), (lba, count)


@pytest.mark.parametrize(("lba", "count"), [(-1, 1), ((1 << 28) - 1, 2), (0, 257)])
def test_lba28_out_of_range_is_refused_before_the_drive_sees_it(
    pc: Machine, lba: int, count: int
) -> None:
    with pytest.raises(ValueError, match="out of range"):
        ata.pio_read(pc.link, ata.PRIMARY, 0, lba, count)
    with pytest.raises(ValueError, match="out of range"):
        ata.pio_write(pc.link, ata.PRIMARY, 0, lba, bytes(count * ata.SECTOR))
    assert ata.pio_read(pc.link, ata.PRIMARY, 0, 5, 1) == image_bytes(pc.disks["hd0"], 5, 1)


def test_pio_write_then_read_back_and_on_the_host(pc: Machine) -> None:
    for channel, disk, lba in [(ata.PRIMARY, "hd0", 4096), (ata.SECONDARY, "hd1", 777)]:
        data = os.urandom(9 * ata.SECTOR)
        ata.pio_write(pc.link, channel, 0, lba, data)
        assert ata.pio_read(pc.link, channel, 0, lba, 9) == data
        assert image_bytes(pc.disks[disk], lba, 9) == data  # QEMU wrote the file: flushed


def test_dma_read_matches_the_image(pc: Machine) -> None:
    link = pc.link
    primary = ata.Channel(0x1F0, 0x3F6, 14, ata.bus_master_base(link))
    secondary = ata.Channel(0x170, 0x376, 15, ata.bus_master_base(link, secondary=True))
    for channel, disk, lba, count in [
        (primary, "hd0", 0, 128),
        (primary, "hd0", 100_003, 2048),  # 1 MiB: sixteen PRD entries
        (secondary, "hd1", 5, 1),
    ]:
        got = ata.dma_read(link, channel, 0, lba, count)
        assert got == image_bytes(pc.disks[disk], lba, count), (disk, lba, count)


def test_native_dma_write_lands_on_the_image(pc: Machine) -> None:
    """The stub's native DMA write loop (the limit ``hwl bench disk`` divides by)
    writes what is in its buffer, where it was asked to, and nothing else."""
    link = pc.link
    ch = ata.Channel(0x1F0, 0x3F6, 14, ata.bus_master_base(link))
    image = pc.disks["hd0"]
    sectors, count, lba = 256, 3, 70_001  # three 128 KiB commands of two PRD entries each
    before = image_bytes(image, lba - 1, 1), image_bytes(image, lba + count * sectors, 1)
    pattern = os.urandom(sectors * ata.SECTOR)
    buf = link.alloc_dma(len(pattern), align=1 << 16)
    prd = link.alloc_dma(4096)
    try:
        buf.write(pattern)
        args = (ch.cmd, ch.ctl, ch.bm, 0, 0, lba, count, sectors, buf.phys, prd.phys, 0, 0)
        result = link.native(abi.OP_NATIVE_DMA_WRITE, args)
        assert (result.status, result.done) == (abi.ST_OK, count), result
        assert result.seconds > 0
    finally:
        link.free_dma(prd)
        link.free_dma(buf)
    for i in range(count):
        assert image_bytes(image, lba + i * sectors, sectors) == pattern, i
    after = image_bytes(image, lba - 1, 1), image_bytes(image, lba + count * sectors, 1)
    assert after == before
    assert ata.dma_read(link, ch, 0, lba + sectors, sectors) == pattern  # and reads back
