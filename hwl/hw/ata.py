"""ATA over the PIIX IDE controller: its facts, and raw port I/O through the link.

The facts (registers, commands, status and control bits, the IDENTIFY layout,
the bus master's registers and PRD table) are the only copy hwl has: the at_wini
driver speaks the same registers through the kernel. The helpers turn one ATA
command, its waits and its data transfer into one batch (one round trip); they
are what the link's tests and benchmark use.

See docs/drivers.md.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hwl.errors import HwlError
from hwl.link.batch import Batch
from hwl.link.link import Link
from hwl.link.memory import DmaBuffer

# Command block registers (offsets from the channel's command base).
REG_DATA, REG_ERROR, REG_FEATURES, REG_COUNT = 0, 1, 1, 2
REG_LBA_LOW, REG_LBA_MID, REG_LBA_HIGH, REG_DEVICE = 3, 4, 5, 6
REG_STATUS, REG_COMMAND = 7, 7
# Status bits.
BSY, DRDY, DF, DRQ, ERR = 0x80, 0x40, 0x20, 0x08, 0x01
# Device register: the always-one bits of old drives, LBA addressing, drive 1.
DEV_OBS, DEV_LBA, DEV_DRIVE1 = 0xA0, 0x40, 0x10
DEV_LBA28 = DEV_OBS | DEV_LBA  # LBA28: the LBA's bits 24..27 go in the low nibble
# Device control register (the channel's control port).
NIEN, SRST = 0x02, 0x04  # interrupts off; software reset
# Commands.
CMD_IDENTIFY = 0xEC
CMD_READ_SECTORS = 0x20
CMD_READ_EXT = 0x24
CMD_READ_DMA_EXT = 0x25
CMD_READ_MULTIPLE_EXT = 0x29
CMD_WRITE_SECTORS = 0x30
CMD_WRITE_EXT = 0x34
CMD_WRITE_DMA_EXT = 0x35
CMD_WRITE_MULTIPLE_EXT = 0x39
CMD_READ_MULTIPLE = 0xC4
CMD_WRITE_MULTIPLE = 0xC5
CMD_SET_MULTIPLE = 0xC6
CMD_READ_DMA = 0xC8
CMD_WRITE_DMA = 0xCA
CMD_FLUSH_CACHE = 0xE7
CMD_FLUSH_CACHE_EXT = 0xEA
# Sector counts: an LBA28 command moves 1..256 sectors (256 written as 0), an
# LBA48 one 1..65536 (65536 written as 0); LBA28 addresses stop at 2**28.
MAX_SECTORS_LBA28 = 256
MAX_SECTORS_LBA48 = 65536
LBA28_LIMIT = 1 << 28
# PIIX bus-master registers (offsets from the channel's bus-master base).
BM_COMMAND, BM_STATUS, BM_PRD = 0, 2, 4
BM_START, BM_TO_MEMORY = 0x01, 0x08
BM_ACTIVE, BM_ERROR, BM_IRQ = 0x01, 0x02, 0x04
# PRD table entries: physical address; byte count (0: 64 KiB) | end of table. An
# entry moves at most 64 KiB within one 64 KiB block; one 4 KiB table holds 512.
PRD_ENTRY = struct.Struct("<II")
PRD_ENTRY_MAX = 1 << 16
PRD_EOT = 0x80000000
PRD_MAX_ENTRIES = 512
SECTOR = 512
TIMEOUT_US = 2_000_000


COMMAND_BLOCK_PORTS = 8  # a channel's command block: REG_DATA..REG_COMMAND


@dataclass(frozen=True)
class Channel:
    """One IDE channel in compatibility mode."""

    cmd: int
    ctl: int
    irq: int
    bm: int = 0  # bus-master base: BAR4 of 00:01.1 (+8 for the secondary channel)


PRIMARY = Channel(0x1F0, 0x3F6, 14)
SECONDARY = Channel(0x170, 0x376, 15)


@dataclass(frozen=True)
class Identify:
    model: str
    serial: str
    sectors: int  # LBA28 capacity (words 60-61)
    sectors48: int  # LBA48 capacity (words 100-103)
    max_multiple: int  # word 47: most sectors per DRQ block for READ MULTIPLE
    lba48: bool = False  # word 83 bit 10: the LBA48 command set is supported

    @classmethod
    def parse(cls, data: bytes) -> Identify:
        words = [int.from_bytes(data[i : i + 2], "little") for i in range(0, 512, 2)]

        def text(first: int, last: int) -> str:
            raw = b"".join(w.to_bytes(2, "big") for w in words[first : last + 1])
            return raw.decode("ascii", errors="replace").strip()

        return cls(
            model=text(27, 46),
            serial=text(10, 19),
            sectors=words[60] | words[61] << 16,
            sectors48=sum(words[100 + i] << (16 * i) for i in range(4)),
            max_multiple=words[47] & 0xFF,
            lba48=bool(words[83] & 1 << 10),
        )


# The PIIX IDE function in PCI configuration space.
PCI_CLASS_IDE = 0x0101  # class 1 (mass storage), subclass 1 (IDE)
PCI_COMMAND = 0x04  # the command register
PCI_BAR_BM = 0x20  # BAR 4: the bus master's I/O ports, 8 per channel
PCI_COMMAND_BUS_MASTER = 0x4


def bus_master_base(link: Link, secondary: bool = False) -> int:
    """Enable bus mastering on the PIIX IDE function (00:01.1) and return this
    channel's bus-master base from BAR4. SeaBIOS leaves bus mastering off; with it
    off, QEMU's DMA sees no guest RAM and reads an all-zero PRD table."""
    bar4 = link.pci_read(0, 1, 1, PCI_BAR_BM)
    if not bar4 & 1:
        raise HwlError(f"PIIX IDE BAR4 {bar4:#x} is not an I/O BAR: is this a PIIX machine?")
    command = link.pci_read(0, 1, 1, 0x04, width=2)
    if not command & PCI_COMMAND_BUS_MASTER:
        link.pci_write(0, 1, 1, 0x04, command | PCI_COMMAND_BUS_MASTER, width=2)
    return (bar4 & 0xFFFC) + (8 if secondary else 0)


def _select_lba28(b: Batch, ch: Channel, drive: int, lba: int, count: int) -> None:
    if not (lba >= 0 and lba + count <= 1 << 28 and 0 < count <= 256):
        raise ValueError(f"LBA28 command for {count} sectors at {lba} is out of range")
    b.outb(ch.ctl, 0)  # nIEN clear: the drive raises INTRQ (the PIC decides delivery)
    b.wait(ch.cmd + REG_STATUS, BSY, 0, TIMEOUT_US)
    b.outb(ch.cmd + REG_DEVICE, DEV_LBA28 | drive << 4 | (lba >> 24 & 0x0F))
    b.wait(ch.cmd + REG_STATUS, BSY, 0, TIMEOUT_US)
    b.outb(ch.cmd + REG_COUNT, count & 0xFF)
    b.outb(ch.cmd + REG_LBA_LOW, lba & 0xFF)
    b.outb(ch.cmd + REG_LBA_MID, lba >> 8 & 0xFF)
    b.outb(ch.cmd + REG_LBA_HIGH, lba >> 16 & 0xFF)


def _check_status(status: int, what: str) -> None:
    if status & (ERR | DF):
        raise HwlError(f"{what}: drive reports status {status:#04x}")


def identify(link: Link, ch: Channel = PRIMARY, drive: int = 0) -> Identify:
    b = Batch()
    b.outb(ch.ctl, 0)
    b.outb(ch.cmd + REG_DEVICE, DEV_OBS | drive << 4)
    b.wait(ch.cmd + REG_STATUS, BSY, 0, TIMEOUT_US)
    b.outb(ch.cmd + REG_COMMAND, CMD_IDENTIFY)
    b.wait(ch.cmd + REG_STATUS, BSY | DRQ, DRQ, TIMEOUT_US)
    data = b.ins(ch.cmd + REG_DATA, 256, 2)
    status = b.inb(ch.cmd + REG_STATUS)
    r = link.execute(b)
    _check_status(r[status], "IDENTIFY")
    return Identify.parse(r.data[data])


def set_multiple(link: Link, ch: Channel, drive: int, multiple: int) -> None:
    b = Batch()
    b.outb(ch.cmd + REG_DEVICE, DEV_LBA28 | drive << 4)
    b.wait(ch.cmd + REG_STATUS, BSY, 0, TIMEOUT_US)
    b.outb(ch.cmd + REG_COUNT, multiple)
    b.outb(ch.cmd + REG_COMMAND, CMD_SET_MULTIPLE)
    status = b.wait(ch.cmd + REG_STATUS, BSY, 0, TIMEOUT_US)
    _check_status(link.execute(b)[status], f"SET MULTIPLE {multiple}")


def pio_read_batch(
    ch: Channel,
    drive: int,
    lba: int,
    count: int,
    buf: DmaBuffer,
    multiple: int = 1,
    offset: int = 0,
) -> tuple[Batch, int]:
    """One READ SECTORS / READ MULTIPLE command as a batch, 32-bit transfers into ``buf``.
    Returns the batch and the index of the final status read."""
    b = Batch()
    _select_lba28(b, ch, drive, lba, count)
    b.outb(ch.cmd + REG_COMMAND, CMD_READ_MULTIPLE if multiple > 1 else CMD_READ_SECTORS)
    done = 0
    while done < count:
        block = min(multiple, count - done)
        b.wait(ch.cmd + REG_STATUS, BSY | DRQ, DRQ, TIMEOUT_US)
        b.ins(ch.cmd + REG_DATA, block * SECTOR // 4, 4, into=buf, offset=offset + done * SECTOR)
        done += block
    return b, b.inb(ch.cmd + REG_STATUS)


def pio_read(link: Link, ch: Channel, drive: int, lba: int, count: int, multiple: int = 1) -> bytes:
    """Read ``count`` sectors (up to 256) by PIO; one round trip."""
    buf = link.alloc_dma(count * SECTOR)
    try:
        b, status = pio_read_batch(ch, drive, lba, count, buf, multiple)
        _check_status(link.execute(b)[status], f"PIO read of {count} sectors at {lba}")
        return buf.read()
    finally:
        link.free_dma(buf)


def pio_write(link: Link, ch: Channel, drive: int, lba: int, data: bytes) -> None:
    """Write whole sectors by PIO (WRITE SECTORS, 16-bit transfers), then flush the cache."""
    if not data or len(data) % SECTOR:
        raise ValueError(f"{len(data)} bytes is not a whole number of sectors")
    count = len(data) // SECTOR
    buf = link.alloc_dma(len(data))
    try:
        buf.write(data)
        b = Batch()
        _select_lba28(b, ch, drive, lba, count)
        b.outb(ch.cmd + REG_COMMAND, CMD_WRITE_SECTORS)
        for i in range(count):
            b.wait(ch.cmd + REG_STATUS, BSY | DRQ, DRQ, TIMEOUT_US)
            b.outs_from(ch.cmd + REG_DATA, buf, SECTOR // 2, 2, offset=i * SECTOR)
        b.wait(ch.cmd + REG_STATUS, BSY, 0, TIMEOUT_US)
        b.outb(ch.cmd + REG_COMMAND, CMD_FLUSH_CACHE)
        status = b.wait(ch.cmd + REG_STATUS, BSY, 0, TIMEOUT_US)
        _check_status(link.execute(b)[status], f"PIO write of {count} sectors at {lba}")
    finally:
        link.free_dma(buf)


def prd_table(phys: int, size: int) -> bytes:
    """PRD entries for ``size`` bytes at ``phys``: each at most 64 KiB and inside
    one 64 KiB block (PIIX's rules), the last marked end of table."""
    entries, at, end = [], phys, phys + size
    while at < end:
        piece = min(end, (at | (PRD_ENTRY_MAX - 1)) + 1) - at
        last = PRD_EOT if at + piece == end else 0
        entries.append(PRD_ENTRY.pack(at, piece & 0xFFFF | last))  # 0: 64 KiB
        at += piece
    if len(entries) > PRD_MAX_ENTRIES:
        raise ValueError(f"{len(entries)} PRD entries (at most {PRD_MAX_ENTRIES})")
    return b"".join(entries)


def build_prd(prd: DmaBuffer, buf: DmaBuffer, size: int) -> None:
    """Fill a PRD table describing the first ``size`` bytes of ``buf`` (64 KiB pieces)."""
    prd.write(prd_table(buf.phys, size))


def dma_read_batch(
    ch: Channel, drive: int, lba: int, count: int, prd: DmaBuffer
) -> tuple[Batch, int, int]:
    """READ DMA EXT of ``count`` sectors into the buffers the PRD table at ``prd`` names.
    Returns the batch and the indexes of the bus-master and ATA status reads."""
    if not ch.bm:
        raise ValueError("the channel has no bus-master base; use bus_master_base()")
    if not 0 < count <= 65536:
        raise ValueError(f"READ DMA EXT moves 1..65536 sectors, not {count}")
    b = Batch()
    b.outb(ch.bm + BM_COMMAND, BM_TO_MEMORY)
    b.inb(ch.cmd + REG_STATUS)  # acknowledge a stale INTRQ, or it shows up as BM_IRQ at once
    b.outb(ch.bm + BM_STATUS, BM_ERROR | BM_IRQ)
    b.outl(ch.bm + BM_PRD, prd.phys)
    b.outb(ch.ctl, 0)
    b.outb(ch.cmd + REG_DEVICE, DEV_LBA | drive << 4)
    b.wait(ch.cmd + REG_STATUS, BSY, 0, TIMEOUT_US)
    n = count & 0xFFFF  # 65536 sectors is written as 0
    high = [
        (REG_COUNT, n >> 8),
        (REG_LBA_LOW, lba >> 24),
        (REG_LBA_MID, lba >> 32),
        (REG_LBA_HIGH, lba >> 40),
    ]
    low = [(REG_COUNT, n), (REG_LBA_LOW, lba), (REG_LBA_MID, lba >> 8), (REG_LBA_HIGH, lba >> 16)]
    for reg, value in high + low:  # LBA48: the previous-content bytes go first
        b.outb(ch.cmd + reg, value & 0xFF)
    b.outb(ch.cmd + REG_COMMAND, CMD_READ_DMA_EXT)
    b.outb(ch.bm + BM_COMMAND, BM_TO_MEMORY | BM_START)
    bm_status = b.wait(ch.bm + BM_STATUS, BM_IRQ | BM_ACTIVE, BM_IRQ, TIMEOUT_US)
    b.outb(ch.bm + BM_COMMAND, BM_TO_MEMORY)
    status = b.inb(ch.cmd + REG_STATUS)
    return b, bm_status, status


def dma_read(link: Link, ch: Channel, drive: int, lba: int, count: int) -> bytes:
    """Read ``count`` sectors by bus-master DMA; one round trip."""
    size = count * SECTOR
    buf = link.alloc_dma(size, align=1 << 16)
    prd = link.alloc_dma(4096)
    try:
        build_prd(prd, buf, size)
        b, bm_status, status = dma_read_batch(ch, drive, lba, count, prd)
        r = link.execute(b)
        if r[bm_status] & BM_ERROR:
            raise HwlError(f"bus-master error, status {r[bm_status]:#04x}")
        _check_status(r[status], f"DMA read of {count} sectors at {lba}")
        return buf.read()
    finally:
        link.free_dma(prd)
        link.free_dma(buf)
