"""at_wini's IDE channel: the controller reserved through PCI, the drives found by
IDENTIFY, a command's register block, its interrupt (with the command's timeout)
and the channel's reset. PIO (``pio.py``) and DMA (``dma.py``) issue their
commands through it.

See docs/drivers.md.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from hwl.driver import blockdriver as bd
from hwl.errors import HwlError
from hwl.hw import ata
from hwl.ipc import wire
from hwl.ipc.client import Connection, IpcError
from hwl.kernel.errno import Errno
from hwl.link.batch import Batch
from hwl.system import sef
from hwl.system.pci import Pci, PciError

from .args import CHANNELS, Args

log = logging.getLogger("at_wini")

MAX_MULTIPLE = 16  # PIO: sectors per DRQ block (and per interrupt), when the drive allows
SRST_SETTLE_US = 2000  # after SRST is cleared, before BSY is polled (ATA: 2 ms)


class CommandError(HwlError):
    """A command failed (ERR/DF, timeout, bus-master error); retried, then EIO.
    ``timeout``: no interrupt came in time, so the channel is reset before the retry."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


@dataclass
class Drive:
    number: int
    model: str
    sectors: int
    lba48: bool
    parts: list[tuple[int, int]] = field(default_factory=list)  # (first sector, sectors) 1..4
    dirty: bool = False  # written since its last FLUSH CACHE
    multiple: int = 1  # PIO: sectors per DRQ block (READ/WRITE MULTIPLE when > 1)


def batch_out(port: int, value: int) -> Batch:
    b = Batch()
    b.outb(port, value)
    return b


def check(status: int, what: str) -> None:
    if status & (ata.ERR | ata.DF):
        raise CommandError(f"{what}: status {status:#04x}")


def check_bus_master(bm_status: int) -> None:
    if not_the_end(bm_status):
        raise CommandError(f"interrupt with the bus master still active ({bm_status:#04x})")


def not_the_end(bm_status: int) -> bool:
    """The bus master still moves data and raised no interrupt of its own: the
    interrupt just taken is not this transfer's end (a stale one, from a command
    a reset cut short and QEMU then drained), so the wait goes on."""
    return bool(bm_status & ata.BM_ACTIVE and not bm_status & ata.BM_IRQ)


class Channel:
    """One channel (``instance``): its ports, bus-master base, IRQ hook and alarm."""

    def __init__(self, args: Args) -> None:
        self.args = args
        self.ch = CHANNELS[args.instance]
        self.bm = 0
        self.hook = -1
        self.alarm_at = 0.0  # monotonic time the armed alarm fires (0: none armed)
        self.conn: Connection | None = None

    @property
    def kernel(self) -> Connection:
        assert self.conn is not None, "at_wini is not initialised"
        return self.conn

    # ------------------------------------------------------------ start-up
    def reserve(self, conn: Connection) -> None:
        """Find the IDE controller and reserve this channel of it; with DMA, find
        the bus master and turn bus mastering on."""
        pci = Pci.find(conn)
        for devind, vid, did in pci.devices():
            cls = pci.attr_r8(devind, 0x0B) << 8 | pci.attr_r8(devind, 0x0A)
            if cls != ata.PCI_CLASS_IDE:
                continue
            # Only this instance's channel: its legacy ports and IRQ, and its half
            # of the bus-master BAR 4 (the PCI server's per-channel reserve).
            pci.reserve(devind, channel=self.args.instance)
            if not self.args.pio:
                base, _size, is_io = pci.get_bar(devind, ata.PCI_BAR_BM)
                if not is_io:
                    raise CommandError(f"BAR4 of {vid:04x}:{did:04x} is not an I/O BAR")
                self.bm = base + 8 * self.args.instance
                command = pci.attr_r16(devind, ata.PCI_COMMAND)
                if not command & ata.PCI_COMMAND_BUS_MASTER:
                    pci.attr_w16(devind, ata.PCI_COMMAND, command | ata.PCI_COMMAND_BUS_MASTER)
            log.info(
                "IDE controller %04x:%04x (devind %d), channel %d, bus master %#x",
                vid,
                did,
                devind,
                self.args.instance,
                self.bm,
            )
            return
        raise PciError(Errno.ENODEV, "reserve", "no IDE controller visible")

    def reset(self) -> None:
        """Software reset of the channel (after a timeout, and at start).

        Drive 0 is selected first, so that the wait for BSY to clear reads a drive
        that is there. QEMU does the reset in a bottom half of its main loop, later
        than the write of SRST, and marks both drives busy until then; it keeps the
        selected drive across the reset, and ignores a device select while the
        selected drive is busy. With drive 1 selected and absent (as the firmware and
        every IDENTIFY of drive 1 leave the channel), the status read 0 at once, the
        wait ended before QEMU's reset, the next select of drive 0 was ignored, and
        the channel looked empty: the start-up flake of earlier sessions.
        """
        b = Batch()
        b.outb(self.ch.cmd + ata.REG_DEVICE, ata.DEV_OBS)
        b.outb(self.ch.ctl, ata.SRST | ata.NIEN)
        b.delay(10)
        b.outb(self.ch.ctl, ata.NIEN)
        b.delay(SRST_SETTLE_US)
        b.wait(self.ch.cmd + ata.REG_STATUS, ata.BSY, 0, 1_000_000)
        b.inb(self.ch.cmd + ata.REG_STATUS)
        self.kernel.vdevio(b)

    def interrupts_on(self) -> None:
        """The drives' interrupts on and the IRQ line enabled (at start, after a reset)."""
        self.kernel.vdevio(batch_out(self.ch.ctl, 0))
        self.kernel.irq_enable(self.hook)

    def identify_drives(self) -> dict[int, Drive]:
        drives: dict[int, Drive] = {}
        for number in (0, 1):
            drive = self.identify(number)
            if drive is not None:
                drives[number] = drive
                lba48 = ", LBA48" if drive.lba48 else ""
                log.info("drive %d: %r, %d sectors%s", number, drive.model, drive.sectors, lba48)
        return drives

    def identify(self, number: int) -> Drive | None:
        conn = self.kernel
        cmd = self.ch.cmd
        b = Batch()
        b.outb(self.ch.ctl, ata.NIEN)
        b.outb(cmd + ata.REG_DEVICE, ata.DEV_OBS | number << 4)
        b.delay(10)
        status = b.inb(cmd + ata.REG_STATUS)
        alt = b.inb(self.ch.ctl)  # the alternate status too, for the log line
        values = conn.vdevio(b)
        selected = values[status]
        if selected in (0, 0xFF):
            log.info("drive %d: status %#04x (alternate %#04x) when selected: none there",
                     number, selected, values[alt])  # fmt: skip
            return None
        b = Batch()
        b.wait(cmd + ata.REG_STATUS, ata.BSY, 0, 1_000_000)
        b.outb(cmd + ata.REG_COMMAND, ata.CMD_IDENTIFY)
        b.delay(10)
        st = b.wait(cmd + ata.REG_STATUS, ata.BSY, 0, 1_000_000)
        try:
            values = conn.vdevio(b)
        except IpcError as exc:
            log.info("drive %d: IDENTIFY failed: %s", number, exc)
            return None
        if values[st] & ata.ERR or not values[st] & ata.DRQ:
            log.info(
                "drive %d: IDENTIFY ended with status %#04x: none (or ATAPI)", number, values[st]
            )
            return None
        words: list[int] = []
        for _ in range(2):
            b = Batch()
            idx = [b.inw(cmd + ata.REG_DATA) for _ in range(128)]
            values = conn.vdevio(b)
            words += [values[i] for i in idx]
        ident = ata.Identify.parse(b"".join(w.to_bytes(2, "little") for w in words))
        sectors = ident.sectors48 if ident.lba48 and ident.sectors48 else ident.sectors
        drive = Drive(number, ident.model, sectors, ident.lba48)
        if self.args.pio and ident.max_multiple > 1:
            drive.multiple = min(MAX_MULTIPLE, ident.max_multiple)
            self.set_multiple(drive)
        return drive

    def set_multiple(self, drive: Drive) -> None:
        """SET MULTIPLE, polled (interrupts are off here: at start-up and after a
        reset, which also forgets the setting)."""
        cmd = self.ch.cmd
        b = Batch()
        b.outb(self.ch.ctl, ata.NIEN)
        b.outb(cmd + ata.REG_DEVICE, ata.DEV_LBA28 | drive.number << 4)
        b.wait(cmd + ata.REG_STATUS, ata.BSY, 0, ata.TIMEOUT_US)
        b.outb(cmd + ata.REG_COUNT, drive.multiple)
        b.outb(cmd + ata.REG_COMMAND, ata.CMD_SET_MULTIPLE)
        b.delay(10)
        st = b.wait(cmd + ata.REG_STATUS, ata.BSY, 0, ata.TIMEOUT_US)
        if self.kernel.vdevio(b)[st] & (ata.ERR | ata.DF):
            log.warning("drive %d refused SET MULTIPLE %d: one sector per block",
                        drive.number, drive.multiple)  # fmt: skip
            drive.multiple = 1

    # -------------------------------------------------------------- commands
    def use48(self, drive: Drive, lba: int, count: int) -> bool:
        """Whether a command takes LBA48: the drive has it and the command needs it
        (or ``lba48=1`` asks for it always)."""
        return drive.lba48 and (
            self.args.lba48 or lba + count > ata.LBA28_LIMIT or count > ata.MAX_SECTORS_LBA28
        )

    def select(self, b: Batch, drive: Drive, lba: int, count: int, cmd28: int, cmd48: int) -> None:
        """The command block of a command on ``drive``: device, count, LBA, command."""
        ch = self.ch
        use48 = self.use48(drive, lba, count)
        if use48:
            b.outb(ch.cmd + ata.REG_DEVICE, ata.DEV_LBA | drive.number << 4)
        else:
            b.outb(ch.cmd + ata.REG_DEVICE, ata.DEV_LBA28 | drive.number << 4 | (lba >> 24 & 0x0F))
        b.wait(ch.cmd + ata.REG_STATUS, ata.BSY, 0, ata.TIMEOUT_US)
        b.outb(ch.ctl, 0)
        n = count & 0xFF if not use48 else count & 0xFFFF
        if use48:
            for reg, value in (
                (ata.REG_COUNT, n >> 8),
                (ata.REG_LBA_LOW, lba >> 24),
                (ata.REG_LBA_MID, lba >> 32),
                (ata.REG_LBA_HIGH, lba >> 40),
            ):
                b.outb(ch.cmd + reg, value & 0xFF)
        for reg, value in (
            (ata.REG_COUNT, n),
            (ata.REG_LBA_LOW, lba),
            (ata.REG_LBA_MID, lba >> 8),
            (ata.REG_LBA_HIGH, lba >> 16),
        ):
            b.outb(ch.cmd + reg, value & 0xFF)
        b.outb(ch.cmd + ata.REG_COMMAND, cmd48 if use48 else cmd28)

    def flush_cache(self, drive: Drive) -> None:
        """FLUSH CACHE (EXT on an LBA48 drive), to its interrupt; CommandError if it failed."""
        ch = self.ch
        b = Batch()
        b.inb(ch.cmd + ata.REG_STATUS)
        b.outb(ch.cmd + ata.REG_DEVICE, ata.DEV_LBA28 | drive.number << 4)
        b.wait(ch.cmd + ata.REG_STATUS, ata.BSY, 0, ata.TIMEOUT_US)
        b.outb(ch.ctl, 0)
        b.outb(
            ch.cmd + ata.REG_COMMAND,
            ata.CMD_FLUSH_CACHE_EXT if drive.lba48 else ata.CMD_FLUSH_CACHE,
        )
        self.kernel.vdevio(b)
        status, _ = self.status_after_intr()
        check(status, "FLUSH CACHE")

    # ------------------------------------------------------------ interrupts
    def issued(self, what: str) -> None:
        """A command is out; with ``hold``, linger before taking its interrupt."""
        if self.args.hold:
            log.warning("holding %.3f s after %s, before its interrupt", self.args.hold, what)
            time.sleep(self.args.hold)

    def wait_intr(self) -> None:
        """Wait for this channel's interrupt (deferring other messages); the IRQ
        is re-enabled by the caller after it read the status.

        The timeout alarm is not set and cancelled per command (two kernel calls):
        an alarm still armed is kept, and when it fires early for this command it
        is armed again for the rest; one that fires while idle is ignored."""
        now = time.monotonic()
        deadline = now + self.args.timeout
        if self.alarm_at <= now:
            self.arm(self.args.timeout)
        while True:
            m = sef.receive(nested=True)  # no live update mid-command
            if m.is_notify and m.source == wire.HARDWARE:
                return
            if m.is_notify and m.source == wire.CLOCK:
                self.alarm_at = 0.0
                left = deadline - time.monotonic()
                if left <= 0.01:
                    raise CommandError(f"timeout after {self.args.timeout} s", timeout=True)
                self.arm(left)
                continue
            bd.mq_queue(m)

    def arm(self, seconds: float) -> None:
        self.kernel.setalarm(seconds=seconds)
        self.alarm_at = time.monotonic() + seconds

    def status_after_intr(self, bm_stop: int | None = None) -> tuple[int, int]:
        """Wait for the interrupt until the drive is not busy; returns the ATA
        status (the read acknowledges INTRQ) and the bus-master status read before
        it. With ``bm_stop`` (a DMA command: the BM_COMMAND value that stops the
        engine) the same call stops the bus master; the IRQ is re-enabled by it too."""
        while True:
            self.wait_intr()
            b = Batch()
            bm_st = b.inb(self.bm + ata.BM_STATUS) if bm_stop is not None else -1
            st = b.inb(self.ch.cmd + ata.REG_STATUS)
            values = self.kernel.vdevio(b, irq_enable=self.hook)
            status = values[st]
            bm_status = values[bm_st] if bm_stop is not None else 0
            if bm_stop is not None and not_the_end(bm_status):
                log.info("an interrupt before the transfer's end (%#04x): waiting on", bm_status)
                continue  # the engine keeps running: stopping it now would cut the transfer
            if bm_stop is not None:
                self.kernel.vdevio(batch_out(self.bm + ata.BM_COMMAND, bm_stop))
            if not status & ata.BSY:
                return status, bm_status

    def intr(self, mask: int) -> None:
        """An interrupt nobody waited for: acknowledge it."""
        b = Batch()
        b.inb(self.ch.cmd + ata.REG_STATUS)
        self.kernel.vdevio(b, irq_enable=self.hook)
