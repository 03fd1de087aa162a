"""at_wini's bus-master DMA commands, up to 1 MiB (2048 sectors, LBA48) each.

``path=new``: a command's batch is built once per drive and direction and only its
sector and count are patched (the kernel checks a batch by its shape, so it is
checked once); the PRD table covers the whole buffer and is written once (a
shorter transfer ends early: PIIX's "larger than the transfer" completion); the
command, its interrupt, its status and the copy to or from the client's grant are
one kernel call (vdevio with a DMA copy, hwl.proto.vdevio). ``path=old``, kept for
``hwl bench disk``'s A/B: each batch built anew, a PRD table per new size, and a
kernel call of its own (``dmacopy``) for the data.

See docs/drivers.md.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from hwl.hw import ata
from hwl.ipc import wire
from hwl.ipc.client import Connection, IpcError
from hwl.ipc.kcalls import DmaHandle
from hwl.kernel.errno import Errno
from hwl.link import abi
from hwl.link.batch import Batch, Patchable
from hwl.proto import vdevio
from hwl.proto.vdevio import Check, Copy

from .channel import Channel, CommandError, Drive, batch_out, check, check_bus_master, not_the_end
from .ring import Ring

log = logging.getLogger("at_wini")

DMA_SIZE = 2 << 20  # the DMA buffer: one command moves up to 2 MiB (LBA48 drives)
IRQ_WAIT_US = 10_000  # a DMA command's interrupt, waited for by the stub in its call


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


class Dma:
    """The channel's DMA buffer and PRD table, and the commands that use them."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.buf: DmaHandle | None = None
        self.prd: DmaHandle | None = None
        self.prd_size = -1
        self.irq_wait = True  # DMA commands wait for their interrupt in their vdevio
        self.commands: dict[tuple[int, bool, bool, bool], DmaCommand] = {}  # path=new
        self.dma_commands = 0  # DMA commands issued, and copies of their data by a
        self.copy_calls = 0  # kernel call of their own (debug_stats, for tests)
        self.last = 0  # bytes the last command moved (the DMA buffer holds a read's)
        self.ring = Ring(channel)  # small commands to and from this driver's own memory
        self.ring_ok = True  # off after a refused frame: the request's retries go the kernel's way
        self._view: memoryview | None = None  # the DMA buffer, mapped for the ring

    def alloc(self, conn: Connection) -> None:
        self.buf = conn.dma_alloc(DMA_SIZE, align=1 << 16)
        self.prd = conn.dma_alloc(4096)

    def max_sectors(self, drive: Drive) -> int:
        """Sectors per command: the buffer's size on an LBA48 drive (LBA48 counts
        go to 65536), else one LBA28 count."""
        if self.buf is None or not drive.lba48:
            return ata.MAX_SECTORS_LBA28
        return min(self.buf.size // ata.SECTOR, ata.MAX_SECTORS_LBA48)

    def transfer(
        self, drive: Drive, write: bool, lba: int, count: int, endpoint: int, grant: int, at: int
    ) -> None:
        """One DMA command; ``path=new``: one kernel call for the data's copy, the
        command, its interrupt and its status, unless the interrupt is slow (or
        ``hold``, or a shared line), when the status and a read's copy follow."""
        channel = self.channel
        if channel.args.path == "old":
            self._transfer_old(drive, write, lba, count, endpoint, grant, at)
            return
        assert self.buf is not None and self.prd is not None
        conn = channel.kernel
        if self.prd_size != self.buf.size:  # once: the table for the whole buffer
            conn.dma_write(self.prd, 0, ata.prd_table(self.buf.phys, self.buf.size))
            self.prd_size = self.buf.size
        if (
            endpoint == conn.endpoint and self.ring_ok and self.ring.usable(drive, count)
            and self._ring_command(drive, write, lba, count, grant, at)
        ):  # fmt: skip
            return
        size = count * ata.SECTOR
        direction = 0 if write else ata.BM_TO_MEMORY
        what = f"DMA {'write' if write else 'read'} at {lba}"
        self.dma_commands += 1
        self.last = size
        try:
            status, bm_status, copied = self._run_command(drive, write, lba, count,
                                                          (endpoint, grant, at))  # fmt: skip
        except CommandError:
            conn.vdevio(batch_out(channel.bm + ata.BM_COMMAND, direction))
            raise
        if bm_status & ata.BM_ERROR:
            raise CommandError(f"bus-master error, status {bm_status:#04x}")
        check(status, what)
        if not write and copied != size:  # the interrupt came late: copy on its own
            conn.dma_to_grant(self.buf, 0, size, endpoint, grant, at)
            self.copy_calls += 1

    def _ring_command(
        self, drive: Drive, write: bool, lba: int, count: int, grant: int, at: int
    ) -> bool:
        """A read into or a write from this driver's own grant by the command ring
        (ring.py), the kernel's process not on its path; False: take the kernel's way.
        A frame the stub refused is a failed attempt (CommandError): the request's
        retries go the kernel's way, which names the status."""
        assert self.buf is not None and self.prd is not None
        conn, ring = self.channel.kernel, self.ring
        size = count * ata.SECTOR
        try:
            offset, length = conn.arena.own_range(grant)
        except ValueError:
            return False  # not a live direct grant of its own: the kernel's way says so
        if not 0 <= at <= length - size:
            return False  # the kernel's way names the bad range
        if not ring.armed and not ring.arm(conn, self.prd):
            return False
        if self._view is None:
            self._view = conn.dma_map(self.buf)
        mine = conn.arena.view[offset + at : offset + at + size]
        if write:
            self._view[:size] = mine
        if not ring.run(conn, drive, write, lba, count):
            if ring.off:
                return False
            self.ring_ok = False
            raise CommandError(f"DMA {'write' if write else 'read'} at {lba}: the command "
                               "ring's frame was refused (a wait ran out)")  # fmt: skip
        self.dma_commands += 1
        self.last = size
        if not write:
            mine[:] = self._view[:size]
        return True

    def _run_command(
        self, drive: Drive, write: bool, lba: int, count: int, client: tuple[int, int, int]
    ) -> tuple[int, int, int]:
        """Patch and run the drive's command with the copy between the DMA buffer
        and ``client`` (endpoint, grant, offset): (ATA status, bus-master status,
        bytes the kernel copied). A shared line (EBUSY: its interrupts are not
        ours to wait for) switches to the commands that wait for the notify."""
        assert self.buf is not None
        channel = self.channel
        direction = 0 if write else ata.BM_TO_MEMORY
        what = f"DMA {'write' if write else 'read'} at {lba}"
        waits = self.irq_wait and not channel.args.hold
        command = self._command(drive, write, lba, count, waits)
        command.patch(lba, count)
        copy = Copy(vdevio.FROM_GRANT if write else vdevio.TO_GRANT, self.buf.id, 0,
                    count * ata.SECTOR, *client, command.checks)  # fmt: skip
        try:
            values, copied = self._vdevio_copy(command.batch, copy, channel.hook if waits else None)
        except IpcError as exc:
            if exc.errno is not Errno.EBUSY or not waits:
                raise
            log.info("IRQ %d is shared (%s): commands wait for its notify", channel.ch.irq, exc)
            self.irq_wait = False
            return self._run_command(drive, write, lba, count, client)
        if not waits:
            channel.issued(what)
        elif (
            values[command.fired]
            and not values[command.st] & ata.BSY
            and not not_the_end(values[command.bm_st])  # else a stale one: wait below
        ):
            return values[command.st], values[command.bm_st], copied
        # no wait in the call, or the interrupt slower than IRQ_WAIT_US, or busy still
        status, bm_status = channel.status_after_intr(bm_stop=direction)
        return status, bm_status, copied if write else 0

    def _command(self, drive: Drive, write: bool, lba: int, count: int, waits: bool) -> DmaCommand:
        """The drive's DMA command for this direction and addressing, built the
        first time it is needed."""
        use48 = self.channel.use48(drive, lba, count)
        key = (drive.number, write, use48, waits)
        command = self.commands.get(key)
        if command is None:
            command = self.commands[key] = self._build_command(drive, write, use48, waits)
        return command

    def _build_command(self, drive: Drive, write: bool, use48: bool, waits: bool) -> DmaCommand:
        assert self.prd is not None
        ch, bm = self.channel.ch, self.channel.bm
        direction = 0 if write else ata.BM_TO_MEMORY
        b = Batch()
        b.outb(bm + ata.BM_COMMAND, direction)
        b.inb(ch.cmd + ata.REG_STATUS)  # acknowledge a stale INTRQ
        b.outb(bm + ata.BM_STATUS, ata.BM_ERROR | ata.BM_IRQ)
        b.outl(bm + ata.BM_PRD, self.prd.phys)
        device_bits = (ata.DEV_LBA if use48 else ata.DEV_LBA28) | drive.number << 4
        b.outb(ch.cmd + ata.REG_DEVICE, device_bits)
        device = len(b) - 1
        b.wait(ch.cmd + ata.REG_STATUS, ata.BSY, 0, ata.TIMEOUT_US)
        b.outb(ch.ctl, 0)
        first = len(b)
        regs = (ata.REG_COUNT, ata.REG_LBA_LOW, ata.REG_LBA_MID, ata.REG_LBA_HIGH)
        for reg in regs * 2 if use48 else regs:  # LBA48: the previous-content bytes first
            b.outb(ch.cmd + reg, 0)
        if use48:
            b.outb(
                ch.cmd + ata.REG_COMMAND, ata.CMD_WRITE_DMA_EXT if write else ata.CMD_READ_DMA_EXT
            )
        else:
            b.outb(ch.cmd + ata.REG_COMMAND, ata.CMD_WRITE_DMA if write else ata.CMD_READ_DMA)
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
        answer = self.channel.kernel.kcall_binary(
            wire.VDEVIO, vdevio.peer_field(hook), copy.pack() + ops.ops, "vdevio"
        )
        n = len(ops)
        end = wire.RESPONSE.size + n * abi.OP_SIZE
        if len(answer) != end + vdevio.COPIED.size:
            raise ValueError(f"vdevio: a {len(answer)}-byte answer to {n} ops and a copy")
        values = memoryview(answer)[wire.RESPONSE.size : end].cast("I")[3 :: abi.OP_SIZE // 4]
        return values.tolist(), vdevio.COPIED.unpack_from(answer, end)[0]

    # -------------------------------------------------------------- path=old
    def _transfer_old(
        self, drive: Drive, write: bool, lba: int, count: int, endpoint: int, grant: int, at: int
    ) -> None:
        """``path=old``: the batch built for each command, the data moved by a
        kernel call of its own (dmacopy) before a write and after a read."""
        assert self.buf is not None and self.prd is not None
        channel = self.channel
        conn, ch, bm = channel.kernel, channel.ch, channel.bm
        size = count * ata.SECTOR
        self.dma_commands += 1
        if write:
            conn.dma_from_grant(self.buf, 0, size, endpoint, grant, at)
            self.copy_calls += 1
        if self.prd_size != size:
            conn.dma_write(self.prd, 0, ata.prd_table(self.buf.phys, size))
            self.prd_size = size
        direction = 0 if write else ata.BM_TO_MEMORY
        b = Batch()
        b.outb(bm + ata.BM_COMMAND, direction)
        b.inb(ch.cmd + ata.REG_STATUS)
        b.outb(bm + ata.BM_STATUS, ata.BM_ERROR | ata.BM_IRQ)
        b.outl(bm + ata.BM_PRD, self.prd.phys)
        if write:
            channel.select(b, drive, lba, count, ata.CMD_WRITE_DMA, ata.CMD_WRITE_DMA_EXT)
        else:
            channel.select(b, drive, lba, count, ata.CMD_READ_DMA, ata.CMD_READ_DMA_EXT)
        b.outb(bm + ata.BM_COMMAND, direction | ata.BM_START)
        what = f"DMA {'write' if write else 'read'} at {lba}"
        try:
            status, bm_status = self._run_dma(b, direction, what)
        except CommandError:
            conn.vdevio(batch_out(bm + ata.BM_COMMAND, direction))
            raise
        if bm_status & ata.BM_ERROR:
            raise CommandError(f"bus-master error, status {bm_status:#04x}")
        check(status, what)
        if not write:
            conn.dma_to_grant(self.buf, 0, size, endpoint, grant, at)
            self.copy_calls += 1

    def _run_dma(self, command: Batch, direction: int, what: str) -> tuple[int, int]:
        """Issue a DMA command and take its interrupt: (ATA status, bus-master
        status). The command, the wait for its interrupt, the status reads and the
        bus master's stop are one kernel call (the stub waits for the line inside
        the batch), unless ``hold`` wants them apart or the line is shared; an
        interrupt slower than IRQ_WAIT_US comes as a notify."""
        channel = self.channel
        conn = channel.kernel
        if channel.args.hold or not self.irq_wait:
            conn.vdevio(command)
            channel.issued(what)
            return channel.status_after_intr(bm_stop=direction)
        b = Batch(ops=list(command.ops))
        fired = b.irq_wait(channel.ch.irq, IRQ_WAIT_US)
        bm_st = b.inb(channel.bm + ata.BM_STATUS)
        st = b.inb(channel.ch.cmd + ata.REG_STATUS)
        b.outb(channel.bm + ata.BM_COMMAND, direction)
        try:
            values = conn.vdevio(b, irq_enable=channel.hook)
        except IpcError as exc:
            if exc.errno is not Errno.EBUSY:
                raise
            log.info("IRQ %d is shared (%s): commands wait for its notify", channel.ch.irq, exc)
            self.irq_wait = False
            return self._run_dma(command, direction, what)
        if not values[fired] or values[st] & ata.BSY:  # slow, or busy still: as without
            return channel.status_after_intr(bm_stop=direction)
        check_bus_master(values[bm_st])
        return values[st], values[bm_st]
