"""at_wini's PIO commands (``pio=1``): READ/WRITE (MULTIPLE), their data moved by
``sdevio`` between the data port and the client's grant, one DRQ block per
interrupt.

See docs/drivers.md.
"""

from __future__ import annotations

from typing import Literal

from hwl.hw import ata
from hwl.link.batch import Batch

from .channel import Channel, CommandError, Drive, check

PIO_READY_MASK = ata.BSY | ata.DRQ | ata.ERR | ata.DF  # DRQ alone: a block to move


class Pio:
    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    @property
    def width(self) -> int:
        """The data port's unit: 32 bits (the PIIX takes them), or 16 with ``pio32=0``."""
        return 4 if self.channel.args.pio32 else 2

    def transfer(
        self, drive: Drive, write: bool, lba: int, count: int, endpoint: int, grant: int, at: int
    ) -> None:
        """READ/WRITE (MULTIPLE): the drive asks for one DRQ block (drive.multiple
        sectors) per interrupt; sdevio moves them, pacing the blocks by the IRQ."""
        channel = self.channel
        conn, ch = channel.kernel, channel.ch
        multi = drive.multiple > 1
        b = Batch()
        b.inb(ch.cmd + ata.REG_STATUS)  # acknowledge a stale INTRQ
        if write:
            channel.select(b, drive, lba, count,
                           ata.CMD_WRITE_MULTIPLE if multi else ata.CMD_WRITE_SECTORS,
                           ata.CMD_WRITE_MULTIPLE_EXT if multi else ata.CMD_WRITE_EXT)  # fmt: skip
            st = b.wait(ch.cmd + ata.REG_STATUS, ata.BSY | ata.DRQ, ata.DRQ, ata.TIMEOUT_US)
            check(conn.vdevio(b)[st], "PIO write")
            channel.issued(f"PIO write at {lba}")
            # The first block goes when the command asks for it (DRQ), each next one
            # when an interrupt does; the last interrupt says it is written.
            self.blocks(drive, True, lba, count, endpoint, grant, at)
            status, _ = channel.status_after_intr()
            check(status, f"PIO write at {lba + count - 1}")
        else:
            channel.select(b, drive, lba, count,
                           ata.CMD_READ_MULTIPLE if multi else ata.CMD_READ_SECTORS,
                           ata.CMD_READ_MULTIPLE_EXT if multi else ata.CMD_READ_EXT)  # fmt: skip
            conn.vdevio(b)
            channel.issued(f"PIO read at {lba}")
            self.blocks(drive, False, lba, count, endpoint, grant, at)

    def blocks(
        self, drive: Drive, write: bool, lba: int, count: int, endpoint: int, grant: int, at: int
    ) -> None:
        """Move ``count`` sectors of a PIO command, as many blocks per sdevio as the
        kernel takes: each block after its interrupt and a status read (which
        acknowledges it) that shows DRQ and no error. A call that stops short (a
        block not ready, an interrupt slow to come) goes on after the next interrupt;
        an interrupt while still busy is waited past."""
        channel = self.channel
        conn, ch = channel.kernel, channel.ch
        direction: Literal["in", "out"] = "out" if write else "in"
        ready = (ch.cmd + ata.REG_STATUS, PIO_READY_MASK, ata.DRQ)
        width = self.width
        units, block = ata.SECTOR // width, drive.multiple * ata.SECTOR // width
        done, interrupt_first = 0, not write
        while done < count:
            if interrupt_first:
                channel.wait_intr()
            interrupt_first = True
            moved = conn.sdevio(direction, ch.cmd + ata.REG_DATA, (count - done) * units,
                                width, endpoint, grant, at + done * ata.SECTOR, ready=ready,
                                irq_enable=channel.hook, block=block)  # fmt: skip
            done += moved.bytes // ata.SECTOR
            status = moved.ready
            assert status is not None
            if status & ata.BSY:
                continue
            what = f"PIO {'write' if write else 'read'} at {lba + done}"
            check(status, what)
            if status & PIO_READY_MASK != ata.DRQ:
                raise CommandError(f"{what}: the drive asks for no data (status {status:#04x})")
