"""at_wini: ATA disks on QEMU's PIIX IDE controller, a block driver (docs/drivers.md).

``service up hwl.drivers.at_wini -args "instance=0"`` (system.conf entry
``at_wini``); the arguments are ``args``'s. This module is the block driver's
callbacks, the minors (drive * 5 + n: n = 0 the whole disk, 1..4 the MBR's primary
partitions) and the retries: an ERR/DF status, a bus-master error or a timeout
(``CommandError.timeout``, which also resets the channel) is retried up to
``RETRIES`` times, then answered EIO, and the driver serves on. The other jobs are
``channel``, ``pio``, ``dma``, ``state`` and ``lie``.

Live update: no state is reached while a command is in flight; besides the
standard states, ``AT_LU_STATE_FLUSHED`` (7) is reached once nothing is queued and
every written drive is flushed. The new version's init touches no hardware and
refuses (EINVAL) another instance or another mode (PIO or DMA) than the old one's.
"""

from __future__ import annotations

import logging
import time

from hwl.driver import blockdriver as bd
from hwl.driver import proto as bproto
from hwl.driver.blockdriver import Geometry, Iov, RequestError
from hwl.hw import ata
from hwl.ipc import codec
from hwl.ipc.client import Connection, IpcError, Message
from hwl.kernel.errno import Errno
from hwl.system import proto, sef
from hwl.system.pci import PciError

from . import lie, state
from .args import Args, parse_args
from .channel import Channel, CommandError, Drive
from .dma import Dma
from .pio import Pio

log = logging.getLogger("at_wini")

SECTOR = ata.SECTOR
RETRIES = 3
MINORS_PER_DRIVE = 5
AT_DEBUG_IN = 0xBF0  # debug: {"port"} -> {"value"} (only with debug=1)
AT_LU_STATE_FLUSHED = proto.LU_STATE_CUSTOM_BASE
IDENTIFY_ATTEMPTS = 3  # resets + IDENTIFY before a channel counts as empty
IDENTIFY_PAUSE = 0.05  # seconds before the second attempt, doubled for each next one


class AtWini:
    def __init__(self, args: Args) -> None:
        self.args = args
        self.channel = Channel(args)
        self.pio = Pio(self.channel)
        self.dma = Dma(self.channel)
        self.drives: dict[int, Drive] = {}
        self.scratch: tuple[int, int] | None = None  # (arena offset, own grant)
        self.busy = False

    @property
    def conn(self) -> Connection | None:
        return self.channel.conn

    # ------------------------------------------------------------------ init
    def init(self, info: sef.InitInfo) -> int:
        conn = self.channel.conn = sef.connection()
        if info.type is proto.InitType.LU:
            return self._init_lu(info)
        bd.init(info)
        channel = self.channel
        try:
            channel.reserve(conn)
            channel.hook = conn.irq_setpolicy(channel.ch.irq, 0, notify_id=0)
            if not self.args.pio:
                self.dma.alloc(conn)
            self._make_scratch()
            for attempt in range(IDENTIFY_ATTEMPTS):
                # A defence only: the known cause of an empty-looking channel (a
                # drive select QEMU ignored, channel.Channel.reset) is gone.
                if attempt:
                    pause = IDENTIFY_PAUSE * 2 ** (attempt - 1)  # 150 ms in all
                    log.warning("no drive on channel %d yet: reset again in %.0f ms",
                                self.args.instance, pause * 1e3)  # fmt: skip
                    time.sleep(pause)
                channel.reset()
                self.drives.update(channel.identify_drives())
                if self.drives:
                    break
            channel.interrupts_on()
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
                 self.args.instance, self.channel.hook, len(self.drives))  # fmt: skip
        return 0

    def state_save(self) -> codec.Value:
        return state.save(self)

    def state_restore(self, value: codec.Value) -> None:
        state.restore(self, value)

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
        conn = self.channel.kernel
        buf = conn.arena.alloc(SECTOR)
        self.scratch = (
            buf.offset,
            conn.arena.grant(conn.endpoint, buf.offset, SECTOR, read=True, write=True),
        )

    def intr(self, mask: int) -> None:
        """An interrupt nobody waited for: acknowledge it."""
        self.channel.intr(mask)

    # -------------------------------------------------------------- commands
    def _io(
        self, drive: Drive, write: bool, lba: int, count: int, endpoint: int, grant: int, at: int
    ) -> None:
        """One command with bounded retries; after a timeout the channel is reset."""
        engine = self.pio if self.args.pio else self.dma
        self.dma.ring_ok = True
        for attempt in range(RETRIES + 1):
            self.busy = True
            try:
                engine.transfer(drive, write, lba, count, endpoint, grant, at)
                return
            except CommandError as exc:
                log.warning("attempt %d: %s", attempt + 1, exc)
                if exc.timeout:
                    self._reset()
            finally:
                self.busy = False
        raise RequestError(
            Errno.EIO,
            f"{'write' if write else 'read'} of {count} sectors at "
            f"{lba} failed {RETRIES + 1} times",
        )

    def reflip(self, offset: int, bit: int, endpoint: int, iov: Iov) -> bool:
        """The ``flip`` lie in DMA mode: flip bit ``bit`` of byte ``offset`` of a
        read that was one DMA command, in the DMA buffer, and copy the data to the
        client again, as a driver that corrupts its buffer would (through a sums
        grant the kernel refuses it: EBADMSG). False if the read was not one
        command into one grant (PIO, or several): the lie flips the client's
        bytes then."""
        dma = self.dma
        if self.args.pio or len(iov) != 1 or dma.buf is None or dma.last != iov[0][1]:
            return False
        if not 0 <= offset < dma.last:
            return False
        assert self.conn is not None
        old = self.conn.dma_read(dma.buf, offset, 1)[0]
        self.conn.dma_write(dma.buf, offset, bytes([old ^ 1 << bit]))
        log.warning("lie: flipped bit %d of byte %d in the DMA buffer (%#04x -> %#04x)",
                    bit, offset, old, old ^ 1 << bit)  # fmt: skip
        self.conn.dma_to_grant(dma.buf, 0, dma.last, endpoint, iov[0][0], 0)
        return True

    def _reset(self) -> None:
        """The channel reset after a timeout, the drives' settings it forgot set again."""
        self.channel.reset()
        for d in self.drives.values():
            if d.multiple > 1:
                self.channel.set_multiple(d)
        self.channel.interrupts_on()

    def _max_sectors(self, drive: Drive) -> int:
        """Sectors per command: PIO one LBA28 count, DMA as its buffer allows."""
        if self.args.pio:
            return ata.MAX_SECTORS_LBA28
        return self.dma.max_sectors(drive)

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
        # Into this driver's own arena, through its own grant
        self._io(drive, False, 0, 1, self.conn.endpoint, grant, 0)
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
            self._io(drive, False, lba, 1, self.conn.endpoint, self.scratch[1], 0)
            return None
        if request == "debug_stats" and self.args.debug:
            dma = self.dma
            ring = dma.ring
            return {"dma_commands": dma.dma_commands, "copy_calls": dma.copy_calls,
                    "ring_reads": ring.reads, "ring_writes": ring.writes,
                    "ring_refused": ring.refused}  # fmt: skip
        raise RequestError(Errno.ENOTTY, f"ioctl {request!r}")

    def _flush(self, drive: Drive) -> None:
        for attempt in range(RETRIES + 1):
            try:
                self.channel.flush_cache(drive)
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


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    wini = AtWini(args)
    liar = lie.Liar(lambda: wini.conn, wini.reflip)  # AT_LIE from operators (tests, campaigns)
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
