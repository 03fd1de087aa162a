"""at_wini: ATA disks on QEMU's PIIX IDE controller, a block driver.

``service up drivers.at_wini -args "instance=0"`` (RS, system.conf entry
``at_wini``). Arguments, MINIX style ``key=value``: ``instance`` (0: primary
channel 0x1F0/0x3F6, IRQ 14; 1: secondary 0x170/0x376, IRQ 15), ``pio=1`` (PIO
instead of bus-master DMA; its data moves in 32-bit units, which the PIIX's data
port takes, or with ``pio32=0`` in 16-bit words), ``lba48=1`` (LBA48 commands
even where LBA28 would do), ``timeout`` (seconds per command), ``debug=1``
(tests: answer AT_DEBUG_IN, a port read, and the ioctls ``debug_read``, a raw
sector, and ``debug_stats``, the DMA commands issued and the separate calls
that copied their data), ``hold=S`` (tests: after issuing each command, log
"holding" and sleep S seconds before taking its interrupt, so a test can kill
the driver between an ATA command and its interrupt), ``path`` (DMA only:
``new``, the default, or ``old``; below).

DMA path. ``path=new``: a command's batch is built once per drive and direction
and only its sector and count are patched (the kernel checks a batch by its
shape, so it is checked once); the PRD table covers the whole 1 MiB buffer and
is written once (a transfer shorter than the table ends early: PIIX's "larger
than the transfer" completion); and the command, its interrupt, its status and
the copy of the data into the client's grant are one kernel call (vdevio with a
DMA copy, hwl.proto.vdevio; for a write the copy from the grant comes first in
the same call). ``path=old``: the path before that, kept for ``hwl bench disk``'s
A/B: each command's batch built anew, a PRD table written for each new size,
and a second kernel call (``dmacopy``) for the data. Both move up to 1 MiB (2048
sectors, LBA48) per command.

The controller is found and reserved through the PCI server (class 1/1); that
reserve grants the compatibility-mode ports and IRQs and the bus-master BAR 4.
Commands are interrupt driven: the command is issued with one ``vdevio``, the
driver waits for the HARDWARE notify (other requests are deferred) with a
``setalarm`` timeout, then checks the status. A timeout resets the channel; an
ERR/DF status or a timeout is retried up to ``RETRIES`` times, then EIO.
Minor devices: drive * 5 + n, n = 0 the whole disk, 1..4 the MBR's primary
partitions (read when a drive goes from no open minor to one).

Live update (``service update``): a command in flight never counts as a state
reached (the interrupt wait is a nested receive). Besides the standard states,
``AT_LU_STATE_FLUSHED`` (7) is reached once nothing is queued and every drive
written since its last FLUSH CACHE has been flushed. The new version takes over
what the old one held at the endpoint (the PCI reservation's grants, the IRQ
hook, the DMA buffers, all of which stay with the endpoint through the kernel's
``update``) from the saved state, with the drives found by IDENTIFY; it touches
no hardware in its init. It must use the same instance and the same mode (PIO or
DMA), or its init refuses with EINVAL and RS rolls back.
"""

from __future__ import annotations

import functools
import logging
import struct
import time
from dataclasses import dataclass, field

from hwl.driver import blockdriver as bd
from hwl.driver import proto as bproto
from hwl.driver.blockdriver import Geometry, Iov, RequestError
from hwl.hw import ata
from hwl.ipc import codec, wire
from hwl.ipc.client import Connection, IpcError, Message
from hwl.ipc.kcalls import DmaHandle
from hwl.kernel.errno import Errno
from hwl.link import abi
from hwl.link.batch import Batch, Patchable
from hwl.proto import vdevio
from hwl.proto.vdevio import Check, Copy
from hwl.system import proto, sef
from hwl.system.pci import Pci, PciError

from . import lie

log = logging.getLogger("at_wini")

SECTOR = 512
MAX_SECTORS_LBA28 = 256  # one LBA28 count; PIO commands never exceed it
DMA_SIZE = 1 << 20  # the DMA buffer: one command moves up to 1 MiB (LBA48 drives)
RETRIES = 3
MINORS_PER_DRIVE = 5
CMD_WRITE_DMA = 0xCA
CMD_WRITE_DMA_EXT = 0x35
CMD_READ_EXT = 0x24
CMD_WRITE_EXT = 0x34
CMD_FLUSH_EXT = 0xEA
CMD_READ_MULTIPLE_EXT = 0x29
CMD_WRITE_MULTIPLE = 0xC5
CMD_WRITE_MULTIPLE_EXT = 0x39
IRQ_WAIT_US = 10_000  # a DMA command's interrupt, waited for by the stub in its call
MAX_MULTIPLE = 16  # PIO: sectors per DRQ block (and per interrupt), when the drive allows
NIEN = 0x02
SRST = 0x04
PCI_COMMAND = 0x04
AT_DEBUG_IN = 0xBF0  # debug: {"port"} -> {"value"} (only with debug=1)
PATHS = ("new", "old")
PRD_ENTRY_MAX = 1 << 16  # PIIX: a PRD entry moves at most 64 KiB, within one 64 KiB block
PRD_EOT = 0x80000000
PRD_MAX_ENTRIES = 512  # one 4 KiB table

PRD_ENTRY = struct.Struct("<II")  # physical address; byte count (0: 64 KiB) | EOT
CHANNELS = {0: ata.PRIMARY, 1: ata.SECONDARY}
PIO_READY_MASK = ata.BSY | ata.DRQ | ata.ERR | ata.DF  # DRQ alone: a block to move
AT_LU_STATE_FLUSHED = proto.LU_STATE_CUSTOM_BASE
IDENTIFY_ATTEMPTS = 3  # resets + IDENTIFY before a channel counts as empty


class CommandError(Exception):
    """A command failed (ERR/DF, timeout, bus-master error); retried, then EIO."""


@dataclass
class Drive:
    number: int
    model: str
    sectors: int
    lba48: bool
    parts: list[tuple[int, int]] = field(default_factory=list)  # (first sector, sectors) 1..4
    dirty: bool = False  # written since its last FLUSH CACHE
    multiple: int = 1  # PIO: sectors per DRQ block (READ/WRITE MULTIPLE when > 1)


@dataclass
class Args:
    instance: int = 0
    pio: bool = False
    lba48: bool = False
    timeout: float = 2.0
    debug: bool = False
    hold: float = 0.0
    pio32: bool = True
    path: str = "new"  # DMA: "new" (patched batch, one call per command) or "old"


def parse_args(argv: list[str]) -> Args:
    args = Args()
    for item in argv:
        key, _, value = item.partition("=")
        if key == "instance":
            args.instance = int(value)
        elif key == "pio":
            args.pio = value not in ("0", "no")
        elif key == "lba48":
            args.lba48 = value not in ("0", "no")
        elif key == "pio32":
            args.pio32 = value not in ("0", "no")
        elif key == "timeout":
            args.timeout = float(value)
        elif key == "debug":
            args.debug = value not in ("0", "no")
        elif key == "hold":
            args.hold = float(value)
        elif key == "path":
            if value not in PATHS:
                raise SystemExit(f"at_wini: path={value!r} is not one of {', '.join(PATHS)}")
            args.path = value
        else:
            raise SystemExit(f"at_wini: unknown argument {item!r}")
    if args.instance not in CHANNELS:
        raise SystemExit(f"at_wini: instance {args.instance} is not 0 or 1")
    return args


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


@dataclass
class DmaCommand:
    """One drive's DMA command in one direction, packed once (``path=new``):
    only the sector and count ops are patched between commands, so the kernel
    finds its shape checked already."""

    batch: Patchable
    use48: bool
    device: int  # op index of the device register write (LBA28 patches its low nibble)
    device_bits: int  # its value without LBA bits
    first: int  # op index of the first count/LBA write
    fired: int = -1  # op indexes of the IRQ wait and the status reads (-1: no wait)
    bm_st: int = -1
    st: int = -1

    def patch(self, lba: int, count: int) -> None:
        b, at = self.batch, self.first
        values = [count, lba, lba >> 8, lba >> 16]  # an LBA48 count of 65536 is 0
        if self.use48:  # the previous-content bytes first
            values[:0] = [count >> 8, lba >> 24, lba >> 32, lba >> 40]
        else:
            b.set(self.device, self.device_bits | (lba >> 24 & 0x0F))
        for i, value in enumerate(values):
            b.set(at + i, value)

    @functools.cached_property
    def checks(self) -> tuple[Check, ...]:
        """What the kernel must see before it copies a read to the client: the
        interrupt came, the drive is done without error, the bus master too."""
        if self.fired < 0:
            return ()
        return (
            Check(self.fired, 1, 1),
            Check(self.st, ata.BSY | ata.ERR | ata.DF, 0),
            Check(self.bm_st, ata.BM_ERROR | ata.BM_IRQ, ata.BM_IRQ),
        )


class AtWini:
    def __init__(self, args: Args) -> None:
        self.args = args
        self.ch = CHANNELS[args.instance]
        self.bm = 0
        self.hook = -1
        self.drives: dict[int, Drive] = {}
        self.dma: DmaHandle | None = None
        self.prd: DmaHandle | None = None
        self.prd_size = -1
        self.scratch: tuple[int, int] | None = None  # (arena offset, own grant)
        self.busy = False
        self.irq_wait = True  # DMA commands wait for their interrupt in their vdevio
        self.commands: dict[tuple[int, bool, bool, bool], DmaCommand] = {}  # path=new
        self.dma_commands = 0  # DMA commands issued, and copies of their data by a
        self.copy_calls = 0  # kernel call of their own (debug_stats, for tests)
        self.alarm_at = 0.0  # monotonic time the armed alarm fires (0: none armed)
        self.conn: Connection | None = None

    # ------------------------------------------------------------------ init
    def init(self, info: sef.InitInfo) -> int:
        conn = self.conn = sef.connection()
        if info.type is proto.InitType.LU:
            return self._init_lu(info)
        bd.init(info)
        try:
            self._reserve(conn)
            self.hook = conn.irq_setpolicy(self.ch.irq, 0, notify_id=0)
            if not self.args.pio:
                self.dma = conn.dma_alloc(DMA_SIZE, align=1 << 16)
                self.prd = conn.dma_alloc(4096)
            self._make_scratch()
            for attempt in range(IDENTIFY_ATTEMPTS):
                # Rarely, right after start-up, the channel answers nothing; a drive
                # that is there answers after another reset (cause not yet known).
                if attempt:
                    log.warning("no drive on channel %d yet: reset again", self.args.instance)
                self._reset()
                self._identify_drives()
                if self.drives:
                    break
            conn.vdevio(self._batch_out(self.ch.ctl, 0))  # interrupts on
            conn.irq_enable(self.hook)
        except (IpcError, PciError, CommandError) as exc:
            log.error("init failed: %s", exc)
            return int(getattr(exc, "errno", Errno.EIO))
        if not self.drives:
            log.error("no drive on channel %d", self.args.instance)
            return int(Errno.ENODEV)
        bd.driver_announce(conn)
        return 0

    def _init_lu(self, info: sef.InitInfo) -> int:
        """The new version of a live update: take the old one's state; no I/O."""
        try:
            bd.init(info)  # calls state_restore
        except (ValueError, TypeError, KeyError, codec.CodecError) as exc:
            log.error("live update: the old version's state is unusable: %s", exc)
            return int(Errno.EINVAL)
        if not self.drives:
            log.error("live update: the old version handed over no drive")
            return int(Errno.EINVAL)
        self._make_scratch()
        log.info("live update: took over channel %d, hook %d, %d drives",
                 self.args.instance, self.hook, len(self.drives))  # fmt: skip
        return 0

    def state_save(self) -> codec.Value:
        """What the new version needs to carry on at this endpoint."""
        handles = [h for h in (self.dma, self.prd) if h is not None]
        return {
            "ints": [self.args.instance, int(self.args.pio), self.bm, self.hook, self.prd_size],
            "dma": [x for h in handles for x in (h.id, h.phys, h.size)],
            "drives": [
                {
                    "ints": [d.number, d.sectors, int(d.lba48), int(d.dirty), d.multiple],
                    "model": d.model,
                    "parts": [x for part in d.parts for x in part],
                }
                for d in self.drives.values()
            ],
        }

    def state_restore(self, value: codec.Value) -> None:
        state = _map(value, "driver state")
        instance, pio, self.bm, self.hook, self.prd_size = _ints(state.get("ints"), "ints", 5)
        if instance != self.args.instance or bool(pio) != self.args.pio:
            raise ValueError(
                f"the running version drives instance {instance} "
                f"{'in PIO' if pio else 'with DMA'}; this one was started for "
                f"instance {self.args.instance} {'in PIO' if self.args.pio else 'with DMA'}"
            )
        dma = _ints(state.get("dma"), "dma", 0 if self.args.pio else 6)
        if dma:
            self.dma, self.prd = (
                DmaHandle(dma[0], dma[1], dma[2]),
                DmaHandle(dma[3], dma[4], dma[5]),
            )
        rows = state.get("drives")
        if not isinstance(rows, list):
            raise ValueError(f"drives {rows!r}")
        for row in rows:
            fields = _map(row, "drive")
            number, sectors, lba48, dirty, multiple = _ints(fields.get("ints"), "drive", 5)
            drive = Drive(number, str(fields.get("model")), sectors, bool(lba48), dirty=bool(dirty),
                          multiple=multiple)  # fmt: skip
            parts = _ints(fields.get("parts"), "parts", 8, or_none=True)
            drive.parts = list(zip(parts[::2], parts[1::2], strict=True))
            self.drives[number] = drive

    def lu_flushed(self) -> int:
        """Custom state AT_LU_STATE_FLUSHED: flush what was written, then ready."""
        try:
            for drive in self.drives.values():
                if drive.dirty:
                    self._flush(drive)
                    log.info("flushed drive %d for the live update", drive.number)
        except RequestError as exc:
            log.error("live update: %s", exc)
            return int(Errno.EIO)
        return 0

    def _make_scratch(self) -> None:
        assert self.conn is not None
        conn = self.conn
        buf = conn.arena.alloc(SECTOR)
        self.scratch = (
            buf.offset,
            conn.arena.grant(conn.endpoint, buf.offset, SECTOR, read=True, write=True),
        )

    def _reserve(self, conn: Connection) -> None:
        pci = Pci.find(conn)
        for devind, vid, did in pci.devices():
            cls = pci.attr_r8(devind, 0x0B) << 8 | pci.attr_r8(devind, 0x0A)
            if cls != 0x0101:
                continue
            # Only this instance's channel: its legacy ports and IRQ, and its half
            # of the bus-master BAR 4 (the PCI server's per-channel reserve).
            pci.reserve(devind, channel=self.args.instance)
            if not self.args.pio:
                base, _size, is_io = pci.get_bar(devind, 0x20)
                if not is_io:
                    raise CommandError(f"BAR4 of {vid:04x}:{did:04x} is not an I/O BAR")
                self.bm = base + 8 * self.args.instance
                command = pci.attr_r16(devind, PCI_COMMAND)
                if not command & ata.PCI_COMMAND_BUS_MASTER:
                    pci.attr_w16(devind, PCI_COMMAND, command | ata.PCI_COMMAND_BUS_MASTER)
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

    @staticmethod
    def _batch_out(port: int, value: int) -> Batch:
        b = Batch()
        b.outb(port, value)
        return b

    def _reset(self) -> None:
        """Software reset of the channel (after a timeout, and at start)."""
        b = Batch()
        b.outb(self.ch.ctl, SRST | NIEN)
        b.delay(10)
        b.outb(self.ch.ctl, NIEN)
        b.delay(2000)
        b.wait(self.ch.cmd + ata.REG_STATUS, ata.BSY, 0, 1_000_000)
        b.inb(self.ch.cmd + ata.REG_STATUS)
        assert self.conn is not None
        self.conn.vdevio(b)

    def _identify_drives(self) -> None:
        for number in (0, 1):
            drive = self._identify(number)
            if drive is not None:
                self.drives[number] = drive
                lba48 = ", LBA48" if drive.lba48 else ""
                log.info("drive %d: %r, %d sectors%s", number, drive.model, drive.sectors, lba48)

    def _identify(self, number: int) -> Drive | None:
        assert self.conn is not None
        cmd = self.ch.cmd
        b = Batch()
        b.outb(self.ch.ctl, NIEN)
        b.outb(cmd + ata.REG_DEVICE, 0xA0 | number << 4)
        b.delay(10)
        status = b.inb(cmd + ata.REG_STATUS)
        selected = self.conn.vdevio(b)[status]
        if selected in (0, 0xFF):
            log.info("drive %d: status %#04x when selected: none there", number, selected)
            return None
        b = Batch()
        b.wait(cmd + ata.REG_STATUS, ata.BSY, 0, 1_000_000)
        b.outb(cmd + ata.REG_COMMAND, ata.CMD_IDENTIFY)
        b.delay(10)
        st = b.wait(cmd + ata.REG_STATUS, ata.BSY, 0, 1_000_000)
        try:
            values = self.conn.vdevio(b)
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
            values = self.conn.vdevio(b)
            words += [values[i] for i in idx]
        data = b"".join(w.to_bytes(2, "little") for w in words)
        ident = ata.Identify.parse(data)
        lba48 = bool(words[83] & (1 << 10))
        sectors = ident.sectors48 if lba48 and ident.sectors48 else ident.sectors
        drive = Drive(number, ident.model, sectors, lba48)
        if self.args.pio and ident.max_multiple > 1:
            drive.multiple = min(MAX_MULTIPLE, ident.max_multiple)
            self._set_multiple(drive)
        return drive

    def _set_multiple(self, drive: Drive) -> None:
        """SET MULTIPLE, polled (interrupts are off here: at start-up and after a
        reset, which also forgets the setting)."""
        assert self.conn is not None
        cmd = self.ch.cmd
        b = Batch()
        b.outb(self.ch.ctl, NIEN)
        b.outb(cmd + ata.REG_DEVICE, 0xE0 | drive.number << 4)
        b.wait(cmd + ata.REG_STATUS, ata.BSY, 0, ata.TIMEOUT_US)
        b.outb(cmd + ata.REG_COUNT, drive.multiple)
        b.outb(cmd + ata.REG_COMMAND, ata.CMD_SET_MULTIPLE)
        b.delay(10)
        st = b.wait(cmd + ata.REG_STATUS, ata.BSY, 0, ata.TIMEOUT_US)
        if self.conn.vdevio(b)[st] & (ata.ERR | ata.DF):
            log.warning("drive %d refused SET MULTIPLE %d: one sector per block",
                        drive.number, drive.multiple)  # fmt: skip
            drive.multiple = 1

    # ------------------------------------------------------------ interrupts
    def _issued(self, what: str) -> None:
        """A command is out; with ``hold``, linger before taking its interrupt."""
        if self.args.hold:
            log.warning("holding %.3f s after %s, before its interrupt", self.args.hold, what)
            time.sleep(self.args.hold)

    def _wait_intr(self) -> None:
        """Wait for this channel's interrupt (deferring other messages); the IRQ
        is re-enabled by the caller after it read the status.

        The timeout alarm is not set and cancelled per command (two kernel calls):
        an alarm still armed is kept, and when it fires early for this command it
        is armed again for the rest; one that fires while idle is ignored."""
        assert self.conn is not None
        now = time.monotonic()
        deadline = now + self.args.timeout
        if self.alarm_at <= now:
            self._arm(self.args.timeout)
        while True:
            m = sef.receive(nested=True)  # no live update mid-command
            if m.is_notify and m.source == wire.HARDWARE:
                return
            if m.is_notify and m.source == wire.CLOCK:
                self.alarm_at = 0.0
                left = deadline - time.monotonic()
                if left <= 0.01:
                    raise CommandError(f"timeout after {self.args.timeout} s")
                self._arm(left)
                continue
            bd.mq_queue(m)

    def _arm(self, seconds: float) -> None:
        assert self.conn is not None
        self.conn.setalarm(seconds=seconds)
        self.alarm_at = time.monotonic() + seconds

    def _status_after_intr(self, bm_stop: int | None = None) -> tuple[int, int]:
        """Wait for the interrupt until the drive is not busy; returns the ATA
        status (the read acknowledges INTRQ) and the bus-master status read before
        it. With ``bm_stop`` (a DMA command: the BM_COMMAND value that stops the
        engine) the same call stops the bus master; the IRQ is re-enabled by it too."""
        assert self.conn is not None
        while True:
            self._wait_intr()
            b = Batch()
            bm_st = b.inb(self.bm + ata.BM_STATUS) if bm_stop is not None else -1
            st = b.inb(self.ch.cmd + ata.REG_STATUS)
            if bm_stop is not None:
                b.outb(self.bm + ata.BM_COMMAND, bm_stop)
            values = self.conn.vdevio(b, irq_enable=self.hook)
            status = values[st]
            bm_status = values[bm_st] if bm_stop is not None else 0
            if bm_stop is not None:
                self._check_bus_master(bm_status)
            if not status & ata.BSY:
                return status, bm_status

    def intr(self, mask: int) -> None:
        """An interrupt nobody waited for: acknowledge it."""
        assert self.conn is not None
        b = Batch()
        b.inb(self.ch.cmd + ata.REG_STATUS)
        self.conn.vdevio(b, irq_enable=self.hook)

    # -------------------------------------------------------------- commands
    def _select(self, b: Batch, drive: Drive, lba: int, count: int, cmd28: int, cmd48: int) -> None:
        ch = self.ch
        use48 = drive.lba48 and (
            self.args.lba48 or lba + count > 1 << 28 or count > MAX_SECTORS_LBA28
        )
        if use48:
            b.outb(ch.cmd + ata.REG_DEVICE, 0x40 | drive.number << 4)
        else:
            b.outb(ch.cmd + ata.REG_DEVICE, 0xE0 | drive.number << 4 | (lba >> 24 & 0x0F))
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

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status & (ata.ERR | ata.DF):
            raise CommandError(f"{what}: status {status:#04x}")

    def _pio(
        self, drive: Drive, write: bool, lba: int, count: int, endpoint: int, grant: int, at: int
    ) -> None:
        """READ/WRITE (MULTIPLE): the drive asks for one DRQ block (drive.multiple
        sectors) per interrupt; sdevio moves them, pacing the blocks by the IRQ."""
        assert self.conn is not None
        conn, ch = self.conn, self.ch
        multi = drive.multiple > 1
        b = Batch()
        b.inb(ch.cmd + ata.REG_STATUS)  # acknowledge a stale INTRQ
        if write:
            self._select(b, drive, lba, count,
                         CMD_WRITE_MULTIPLE if multi else ata.CMD_WRITE_SECTORS,
                         CMD_WRITE_MULTIPLE_EXT if multi else CMD_WRITE_EXT)  # fmt: skip
            st = b.wait(ch.cmd + ata.REG_STATUS, ata.BSY | ata.DRQ, ata.DRQ, ata.TIMEOUT_US)
            self._check(conn.vdevio(b)[st], "PIO write")
            self._issued(f"PIO write at {lba}")
            # The first block goes when the command asks for it (DRQ), each next one
            # when an interrupt does; the last interrupt says it is written.
            self._blocks(drive, True, lba, count, endpoint, grant, at)
            status, _ = self._status_after_intr()
            self._check(status, f"PIO write at {lba + count - 1}")
        else:
            self._select(b, drive, lba, count,
                         ata.CMD_READ_MULTIPLE if multi else ata.CMD_READ_SECTORS,
                         CMD_READ_MULTIPLE_EXT if multi else CMD_READ_EXT)  # fmt: skip
            conn.vdevio(b)
            self._issued(f"PIO read at {lba}")
            self._blocks(drive, False, lba, count, endpoint, grant, at)

    @property
    def _pio_width(self) -> int:
        return 4 if self.args.pio32 else 2

    def _blocks(
        self, drive: Drive, write: bool, lba: int, count: int, endpoint: int, grant: int, at: int
    ) -> None:
        """Move ``count`` sectors of a PIO command, as many blocks per sdevio as the
        kernel takes: each block after its interrupt and a status read (which
        acknowledges it) that shows DRQ and no error. A call that stops short (a
        block not ready, an interrupt slow to come) goes on after the next interrupt;
        an interrupt while still busy is waited past."""
        assert self.conn is not None
        sdevio = self.conn.sdevio_out if write else self.conn.sdevio_in
        ready = (self.ch.cmd + ata.REG_STATUS, PIO_READY_MASK, ata.DRQ)
        width = self._pio_width
        units, block = SECTOR // width, drive.multiple * SECTOR // width
        done, interrupt_first = 0, not write
        while done < count:
            if interrupt_first:
                self._wait_intr()
            interrupt_first = True
            moved = sdevio(self.ch.cmd + ata.REG_DATA, (count - done) * units, width, endpoint,
                           grant, at + done * SECTOR, ready=ready, irq_enable=self.hook,
                           block=block)  # fmt: skip
            done += moved.bytes // SECTOR
            status = moved.ready
            assert status is not None
            if status & ata.BSY:
                continue
            what = f"PIO {'write' if write else 'read'} at {lba + done}"
            self._check(status, what)
            if status & PIO_READY_MASK != ata.DRQ:
                raise CommandError(f"{what}: the drive asks for no data (status {status:#04x})")

    def _dma_old(
        self, drive: Drive, write: bool, lba: int, count: int, endpoint: int, grant: int, at: int
    ) -> None:
        """``path=old``: the batch built for each command, the data moved by a
        kernel call of its own (dmacopy) before a write and after a read."""
        assert self.conn is not None and self.dma is not None and self.prd is not None
        conn, ch = self.conn, self.ch
        size = count * SECTOR
        self.dma_commands += 1
        if write:
            conn.dma_from_grant(self.dma, 0, size, endpoint, grant, at)
            self.copy_calls += 1
        if self.prd_size != size:
            conn.dma_write(self.prd, 0, ata.prd_table(self.dma.phys, size))
            self.prd_size = size
        direction = 0 if write else ata.BM_TO_MEMORY
        b = Batch()
        b.outb(self.bm + ata.BM_COMMAND, direction)
        b.inb(ch.cmd + ata.REG_STATUS)
        b.outb(self.bm + ata.BM_STATUS, ata.BM_ERROR | ata.BM_IRQ)
        b.outl(self.bm + ata.BM_PRD, self.prd.phys)
        if write:
            self._select(b, drive, lba, count, CMD_WRITE_DMA, CMD_WRITE_DMA_EXT)
        else:
            self._select(b, drive, lba, count, ata.CMD_READ_DMA, ata.CMD_READ_DMA_EXT)
        b.outb(self.bm + ata.BM_COMMAND, direction | ata.BM_START)
        what = f"DMA {'write' if write else 'read'} at {lba}"
        try:
            status, bm_status = self._run_dma(b, direction, what)
        except CommandError:
            conn.vdevio(self._batch_out(self.bm + ata.BM_COMMAND, direction))
            raise
        if bm_status & ata.BM_ERROR:
            raise CommandError(f"bus-master error, status {bm_status:#04x}")
        self._check(status, what)
        if not write:
            conn.dma_to_grant(self.dma, 0, size, endpoint, grant, at)
            self.copy_calls += 1

    def _dma(
        self, drive: Drive, write: bool, lba: int, count: int, endpoint: int, grant: int, at: int
    ) -> None:
        """One DMA command; ``path=new``: one kernel call for the data's copy, the
        command, its interrupt and its status, unless the interrupt is slow (or
        ``hold``, or a shared line), when the status and a read's copy follow."""
        if self.args.path == "old":
            self._dma_old(drive, write, lba, count, endpoint, grant, at)
            return
        assert self.conn is not None and self.dma is not None and self.prd is not None
        if self.prd_size != self.dma.size:  # once: the table for the whole buffer
            self.conn.dma_write(self.prd, 0, prd_table(self.dma.phys, self.dma.size))
            self.prd_size = self.dma.size
        size = count * SECTOR
        direction = 0 if write else ata.BM_TO_MEMORY
        what = f"DMA {'write' if write else 'read'} at {lba}"
        self.dma_commands += 1
        try:
            status, bm_status, copied = self._run_command(drive, write, lba, count,
                                                          (endpoint, grant, at))  # fmt: skip
        except CommandError:
            self.conn.vdevio(self._batch_out(self.bm + ata.BM_COMMAND, direction))
            raise
        if bm_status & ata.BM_ERROR:
            raise CommandError(f"bus-master error, status {bm_status:#04x}")
        self._check(status, what)
        if not write and copied != size:  # the interrupt came late: copy on its own
            self.conn.dma_to_grant(self.dma, 0, size, endpoint, grant, at)
            self.copy_calls += 1

    def _run_command(
        self, drive: Drive, write: bool, lba: int, count: int, client: tuple[int, int, int]
    ) -> tuple[int, int, int]:
        """Patch and run the drive's command with the copy between the DMA buffer
        and ``client`` (endpoint, grant, offset): (ATA status, bus-master status,
        bytes the kernel copied). A shared line (EBUSY: its interrupts are not
        ours to wait for) switches to the commands that wait for the notify."""
        assert self.conn is not None and self.dma is not None
        direction = 0 if write else ata.BM_TO_MEMORY
        what = f"DMA {'write' if write else 'read'} at {lba}"
        waits = self.irq_wait and not self.args.hold
        command = self._command(drive, write, lba, count, waits)
        command.patch(lba, count)
        copy = Copy(vdevio.FROM_GRANT if write else vdevio.TO_GRANT, self.dma.id, 0,
                    count * SECTOR, *client, command.checks)  # fmt: skip
        try:
            values, copied = self._vdevio_copy(command.batch, copy, self.hook if waits else None)
        except IpcError as exc:
            if exc.errno is not Errno.EBUSY or not waits:
                raise
            log.info("IRQ %d is shared (%s): commands wait for its notify", self.ch.irq, exc)
            self.irq_wait = False
            return self._run_command(drive, write, lba, count, client)
        if not waits:
            self._issued(what)
        elif values[command.fired] and not values[command.st] & ata.BSY:
            self._check_bus_master(values[command.bm_st])
            return values[command.st], values[command.bm_st], copied
        # no wait in the call, or the interrupt slower than IRQ_WAIT_US, or busy still
        status, bm_status = self._status_after_intr(bm_stop=direction)
        return status, bm_status, copied if write else 0

    def _command(self, drive: Drive, write: bool, lba: int, count: int, waits: bool) -> DmaCommand:
        """The drive's DMA command for this direction and addressing, built the
        first time it is needed."""
        use48 = drive.lba48 and (
            self.args.lba48 or lba + count > 1 << 28 or count > MAX_SECTORS_LBA28
        )
        key = (drive.number, write, use48, waits)
        command = self.commands.get(key)
        if command is None:
            command = self.commands[key] = self._build_command(drive, write, use48, waits)
        return command

    def _build_command(self, drive: Drive, write: bool, use48: bool, waits: bool) -> DmaCommand:
        assert self.prd is not None
        ch, bm = self.ch, self.bm
        direction = 0 if write else ata.BM_TO_MEMORY
        b = Batch()
        b.outb(bm + ata.BM_COMMAND, direction)
        b.inb(ch.cmd + ata.REG_STATUS)  # acknowledge a stale INTRQ
        b.outb(bm + ata.BM_STATUS, ata.BM_ERROR | ata.BM_IRQ)
        b.outl(bm + ata.BM_PRD, self.prd.phys)
        device_bits = (0x40 if use48 else 0xE0) | drive.number << 4
        b.outb(ch.cmd + ata.REG_DEVICE, device_bits)
        device = len(b) - 1
        b.wait(ch.cmd + ata.REG_STATUS, ata.BSY, 0, ata.TIMEOUT_US)
        b.outb(ch.ctl, 0)
        first = len(b)
        regs = (ata.REG_COUNT, ata.REG_LBA_LOW, ata.REG_LBA_MID, ata.REG_LBA_HIGH)
        for reg in regs * 2 if use48 else regs:  # LBA48: the previous-content bytes first
            b.outb(ch.cmd + reg, 0)
        if use48:
            b.outb(ch.cmd + ata.REG_COMMAND, CMD_WRITE_DMA_EXT if write else ata.CMD_READ_DMA_EXT)
        else:
            b.outb(ch.cmd + ata.REG_COMMAND, CMD_WRITE_DMA if write else ata.CMD_READ_DMA)
        b.outb(bm + ata.BM_COMMAND, direction | ata.BM_START)
        if not waits:
            return DmaCommand(Patchable(b), use48, device, device_bits, first)
        fired = b.irq_wait(ch.irq, IRQ_WAIT_US)
        bm_st = b.inb(bm + ata.BM_STATUS)
        st = b.inb(ch.cmd + ata.REG_STATUS)
        b.outb(bm + ata.BM_COMMAND, direction)  # the bus master stopped
        return DmaCommand(Patchable(b), use48, device, device_bits, first, fired, bm_st, st)

    def _vdevio_copy(self, ops: Patchable, copy: Copy, hook: int | None) -> tuple[list[int], int]:
        """vdevio with a DMA copy (hwl.proto.vdevio): each op's result and the
        bytes the kernel copied."""
        assert self.conn is not None
        answer = self.conn.kcall_binary(
            wire.VDEVIO, vdevio.peer_field(hook), copy.pack() + ops.ops, "vdevio"
        )
        n = len(ops)
        end = wire.RESPONSE.size + n * abi.OP_SIZE
        if len(answer) != end + vdevio.COPIED.size:
            raise ValueError(f"vdevio: a {len(answer)}-byte answer to {n} ops and a copy")
        values = memoryview(answer)[wire.RESPONSE.size : end].cast("I")[3 :: abi.OP_SIZE // 4]
        return values.tolist(), vdevio.COPIED.unpack_from(answer, end)[0]

    def _run_dma(self, command: Batch, direction: int, what: str) -> tuple[int, int]:
        """Issue a DMA command and take its interrupt: (ATA status, bus-master
        status). The command, the wait for its interrupt, the status reads and the
        bus master's stop are one kernel call (the stub waits for the line inside
        the batch), unless ``hold`` wants them apart or the line is shared; an
        interrupt slower than IRQ_WAIT_US comes as a notify."""
        assert self.conn is not None
        if self.args.hold or not self.irq_wait:
            self.conn.vdevio(command)
            self._issued(what)
            return self._status_after_intr(bm_stop=direction)
        b = Batch(ops=list(command.ops))
        fired = b.irq_wait(self.ch.irq, IRQ_WAIT_US)
        bm_st = b.inb(self.bm + ata.BM_STATUS)
        st = b.inb(self.ch.cmd + ata.REG_STATUS)
        b.outb(self.bm + ata.BM_COMMAND, direction)
        try:
            values = self.conn.vdevio(b, irq_enable=self.hook)
        except IpcError as exc:
            if exc.errno is not Errno.EBUSY:
                raise
            log.info("IRQ %d is shared (%s): commands wait for its notify", self.ch.irq, exc)
            self.irq_wait = False
            return self._run_dma(command, direction, what)
        if not values[fired] or values[st] & ata.BSY:  # slow, or busy still: as without
            return self._status_after_intr(bm_stop=direction)
        self._check_bus_master(values[bm_st])
        return values[st], values[bm_st]

    @staticmethod
    def _check_bus_master(bm_status: int) -> None:
        if bm_status & ata.BM_ACTIVE and not bm_status & ata.BM_IRQ:
            raise CommandError(f"interrupt with the bus master still active ({bm_status:#04x})")

    def _io(
        self, drive: Drive, write: bool, lba: int, count: int, endpoint: int, grant: int, at: int
    ) -> None:
        """One command with bounded retries."""
        for attempt in range(RETRIES + 1):
            self.busy = True
            try:
                if self.args.pio:
                    self._pio(drive, write, lba, count, endpoint, grant, at)
                else:
                    self._dma(drive, write, lba, count, endpoint, grant, at)
                return
            except CommandError as exc:
                log.warning("attempt %d: %s", attempt + 1, exc)
                if "timeout" in str(exc):
                    self._reset()
                    for d in self.drives.values():
                        if d.multiple > 1:
                            self._set_multiple(d)
                    assert self.conn is not None
                    self.conn.vdevio(self._batch_out(self.ch.ctl, 0))
                    self.conn.irq_enable(self.hook)
            finally:
                self.busy = False
        raise RequestError(
            Errno.EIO,
            f"{'write' if write else 'read'} of {count} sectors at "
            f"{lba} failed {RETRIES + 1} times",
        )

    def _max_sectors(self, drive: Drive) -> int:
        """Sectors per command: the DMA buffer's size on an LBA48 drive (LBA48
        counts go to 65536), else one LBA28 count."""
        if self.args.pio or self.dma is None or not drive.lba48:
            return MAX_SECTORS_LBA28
        return min(self.dma.size // SECTOR, 65536)

    # ---------------------------------------------------------------- minors
    def _minor(self, minor: int) -> tuple[Drive, int, int]:
        """(drive, first sector, sectors) of a minor."""
        drive = self.drives.get(minor // MINORS_PER_DRIVE)
        part = minor % MINORS_PER_DRIVE
        if drive is None or minor < 0:
            raise RequestError(Errno.ENXIO, f"no minor {minor}")
        if part == 0:
            return drive, 0, drive.sectors
        if part > len(drive.parts) or drive.parts[part - 1][1] == 0:
            raise RequestError(Errno.ENXIO, f"minor {minor}: no such partition")
        first, sectors = drive.parts[part - 1]
        return drive, first, sectors

    def _read_partitions(self, drive: Drive) -> None:
        assert self.conn is not None and self.scratch is not None
        offset, grant = self.scratch
        # Into this driver's own arena: sdevio through its own grant; a DMA copy
        # to its own endpoint takes the arena offset itself.
        at = 0 if self.args.pio else offset
        self._io(drive, False, 0, 1, self.conn.endpoint, grant, at)
        mbr = self.conn.arena.view[offset : offset + SECTOR]
        drive.parts = []
        if bytes(mbr[510:512]) != b"\x55\xaa":
            return
        for i in range(4):
            entry = mbr[446 + 16 * i : 462 + 16 * i]
            first = int.from_bytes(entry[8:12], "little")
            sectors = int.from_bytes(entry[12:16], "little")
            if entry[4] == 0 or first >= drive.sectors:
                first, sectors = 0, 0
            sectors = min(sectors, drive.sectors - first)
            drive.parts.append((first, sectors))
        log.info("drive %d partitions: %s", drive.number, drive.parts)

    def open(self, minor: int, access: int) -> None:
        drive = self.drives.get(minor // MINORS_PER_DRIVE)
        if drive is None or minor < 0:
            raise RequestError(Errno.ENXIO, f"no minor {minor}")
        lo, hi = drive.number * MINORS_PER_DRIVE, (drive.number + 1) * MINORS_PER_DRIVE
        if not any(lo <= m < hi for m in bd.open_minors()):
            self._read_partitions(drive)
        self._minor(minor)

    def geometry(self, minor: int) -> Geometry | None:
        _drive, first, sectors = self._minor(minor)
        return Geometry(first * SECTOR, sectors * SECTOR, SECTOR)

    def transfer(self, minor: int, write: bool, position: int, endpoint: int, iov: Iov) -> int:
        drive, first, sectors = self._minor(minor)
        if position % SECTOR:
            raise RequestError(Errno.EINVAL, f"position {position} is not sector aligned")
        lba = position // SECTOR
        done = 0
        for grant, size in iov:
            if size % SECTOR:
                raise RequestError(Errno.EINVAL, f"size {size} is not a whole number of sectors")
            at = 0
            while at < size:
                if lba >= sectors:
                    return done  # end of the device
                count = min((size - at) // SECTOR, self._max_sectors(drive), sectors - lba)
                if write:
                    drive.dirty = True
                self._io(drive, write, first + lba, count, endpoint, grant, at)
                lba += count
                at += count * SECTOR
                done += count * SECTOR
        return done

    def ioctl(
        self, minor: int, request: str, endpoint: int, fields: dict[str, codec.Value]
    ) -> dict[str, codec.Value] | None:
        drive, _first, _sectors = self._minor(minor)
        if request == bproto.IOCTL_FLUSH:
            self._flush(drive)
            return None
        if request == "debug_read" and self.args.debug:
            # A raw one-sector read at any LBA (tests: past the end the drive
            # answers ERR/ABRT, which must become EIO after the retries).
            assert self.conn is not None and self.scratch is not None
            lba = fields.get("lba")
            if not isinstance(lba, int) or lba < 0:
                raise RequestError(Errno.EINVAL, "lba")
            offset, grant = self.scratch
            self._io(
                drive, False, lba, 1, self.conn.endpoint, grant, 0 if self.args.pio else offset
            )
            return None
        if request == "debug_stats" and self.args.debug:
            return {"dma_commands": self.dma_commands, "copy_calls": self.copy_calls}
        raise RequestError(Errno.ENOTTY, f"ioctl {request!r}")

    def _flush(self, drive: Drive) -> None:
        assert self.conn is not None
        for attempt in range(RETRIES + 1):
            b = Batch()
            b.inb(self.ch.cmd + ata.REG_STATUS)
            b.outb(self.ch.cmd + ata.REG_DEVICE, 0xE0 | drive.number << 4)
            b.wait(self.ch.cmd + ata.REG_STATUS, ata.BSY, 0, ata.TIMEOUT_US)
            b.outb(self.ch.ctl, 0)
            b.outb(
                self.ch.cmd + ata.REG_COMMAND, CMD_FLUSH_EXT if drive.lba48 else ata.CMD_FLUSH_CACHE
            )
            try:
                self.conn.vdevio(b)
                status, _ = self._status_after_intr()
                self._check(status, "FLUSH CACHE")
                drive.dirty = False
                return
            except CommandError as exc:
                log.warning("flush attempt %d: %s", attempt + 1, exc)
        raise RequestError(Errno.EIO, "FLUSH CACHE failed")

    def other(self, m: Message) -> tuple[int, dict[str, codec.Value]] | None:
        if m.m_type == AT_DEBUG_IN and self.args.debug:
            assert self.conn is not None
            port = m.get("port")
            if not isinstance(port, int):
                return -int(Errno.EINVAL), {"error": "port"}
            try:
                return 0, {"value": self.conn.devio_in(port)}
            except IpcError as exc:
                return -int(exc.errno), {"error": str(exc)}
        return None

    def cleanup(self) -> None:
        log.info("cleanup")


def _map(value: codec.Value, what: str) -> dict[str, codec.Value]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} {value!r} is not a map")
    return value


def _ints(value: codec.Value, what: str, count: int, or_none: bool = False) -> list[int]:
    """A list of ``count`` integers (or, with ``or_none``, an empty list)."""
    if not isinstance(value, list) or not all(
        isinstance(x, int) and not isinstance(x, bool) for x in value
    ):
        raise ValueError(f"{what} {value!r} is not a list of integers")
    if len(value) != count and not (or_none and not value):
        raise ValueError(f"{what} {value!r} does not hold {count} integers")
    return [int(x) for x in value]  # type: ignore[arg-type]


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    wini = AtWini(args)
    liar = lie.Liar(lambda: wini.conn)  # AT_LIE from operators (tests, campaigns)
    table = bd.BlockDriver(
        open=wini.open,
        transfer=liar.wrap(wini.transfer),
        ioctl=wini.ioctl,
        geometry=wini.geometry,
        cleanup=wini.cleanup,
        intr=wini.intr,
        other=lambda m: liar.other(m) or wini.other(m),
        state_save=wini.state_save,
        state_restore=wini.state_restore,
        lu_states={AT_LU_STATE_FLUSHED: wini.lu_flushed},
    )
    bd.setup(table)
    sef.setcb_init_fresh(wini.init)
    sef.startup()
    bd.task(table)
    return 0
