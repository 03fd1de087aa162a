"""at_wini's command ring: small DMA commands that the stub runs without the kernel.

A read or write of up to :data:`MOST_SECTORS` sectors from or into at_wini's own
memory (a VFS read whose data comes back in the reply, a write whose data came in
the request, a partition table) is one frame of a frame template
(hwl.proto.vdevio.WATCH_FRAMES) that the kernel checked once when at_wini armed
it: at_wini stores the frame (count, LBA48 sector, device byte, the command and
the bus master's start and stop) in its ring buffer and counts it in the watched
word; the stub patches those bytes into the template's register writes, runs the
command with the drive's interrupt off (nIEN) and polls its status, and counts
the frame done, or refused if a wait ran out (an error, a busy drive). at_wini
copies a write's data into its mapped DMA buffer first, spins on that count, and
copies a read's data out. The kernel's process is not on the command's path at
all: no kernel call, no copy through it.

Anything else, and a refused frame, goes the kernel's way (dma.py), which
reports errors with their status and retries. See docs/drivers.md.
"""

from __future__ import annotations

import logging
import struct
import time
from typing import TYPE_CHECKING, Final

from hwl.frames import Bell
from hwl.hw import ata
from hwl.ipc.client import Connection, IpcError
from hwl.ipc.kcalls import DmaHandle, FrameTemplate
from hwl.link import abi
from hwl.link.batch import Batch

if TYPE_CHECKING:
    from .channel import Channel, Drive

log = logging.getLogger("at_wini")

MOST_SECTORS: Final = 8  # a ring command's largest: 4 KiB, what VFS moves inline
RING_BYTES: Final = 4096
WORD_AT, SLEEP_AT, COUNTS_AT, TABLE_AT = 0, 4, 8, 16  # in the ring buffer
SLOTS_AT, SLOTS, STRIDE = 64, 4, 16
# count, LBA bits 0..31, bits 32..47, device, command, bus master's start, stop
FRAME: Final = struct.Struct("<HIHBBBB")
COUNTS: Final = struct.Struct("<II")  # frames done, frames refused (the stub's)
WAIT_US: Final = 10_000  # each wait of the template (the kernel's most for a frame)
SPIN_S: Final = 0.05  # spin for the stub's count this long, then sleep between looks
GIVE_UP_S: Final = 2.5  # longer than any command the stub can run: the ring is off

# The frame's bytes patched into the register writes: count high, LBA bits
# 24..47 (the LBA48 "previous content"), then count low, LBA bits 0..23.
_BYTE = abi.PATCH_BYTE0
_REGISTER_PATCHES: Final = (
    (ata.REG_COUNT, _BYTE + 1), (ata.REG_LBA_LOW, _BYTE + 5), (ata.REG_LBA_MID, _BYTE + 6),
    (ata.REG_LBA_HIGH, _BYTE + 7), (ata.REG_COUNT, _BYTE + 0), (ata.REG_LBA_LOW, _BYTE + 2),
    (ata.REG_LBA_MID, _BYTE + 3), (ata.REG_LBA_HIGH, _BYTE + 4),
)  # fmt: skip


def template_ops(channel: Channel, prd_phys: int) -> tuple[Batch, tuple[int, ...]]:
    """One LBA48 DMA command (READ or WRITE DMA EXT, the frame says) as the stub
    runs it per frame, and its patches."""
    ch, bm = channel.ch, channel.bm
    b, patches = Batch(), []

    def op(patch: int = abi.PATCH_NONE) -> None:
        patches.append(patch)

    b.outl(bm + ata.BM_PRD, prd_phys)  # a native loop may have pointed it elsewhere
    op()
    b.outb(ch.ctl, ata.NIEN)  # no interrupt: the stub polls the status
    op()
    b.outb(ch.cmd + ata.REG_DEVICE, 0)
    op(_BYTE + 8)
    b.wait(ch.cmd + ata.REG_STATUS, ata.BSY, 0, WAIT_US)
    op()
    for reg, patch in _REGISTER_PATCHES:
        b.outb(ch.cmd + reg, 0)
        op(patch)
    b.outb(ch.cmd + ata.REG_COMMAND, 0)
    op(_BYTE + 9)
    b.outb(bm + ata.BM_COMMAND, 0)  # started, in the command's direction
    op(_BYTE + 10)
    # done: not busy, no data request, and no error (an error waits out: refused)
    b.wait(ch.cmd + ata.REG_STATUS, ata.BSY | ata.DRQ | ata.ERR | ata.DF, 0, WAIT_US)
    op()
    b.outb(bm + ata.BM_COMMAND, 0)  # the bus master stopped
    op(_BYTE + 11)
    return b, tuple(patches)


class Ring:
    """The ring buffer, its template and the counts at_wini last saw."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.handle: DmaHandle | None = None  # a live update's new version takes it over
        self.armed = False
        self.off = False  # refused by the kernel, ended, or the stub never answered
        self.staged = 0
        self.refused = 0  # frames the stub refused (one frame runs at a time: each is 1)
        self.reads = 0  # ring reads and writes done (debug_stats, for tests)
        self.writes = 0
        self._view: memoryview | None = None
        self._bell: Bell | None = None

    def usable(self, drive: Drive, count: int) -> bool:
        args = self.channel.args
        return (
            not self.off and drive.lba48 and 0 < count <= MOST_SECTORS
            and args.ring and not args.hold and args.path == "new"
        )  # fmt: skip

    def arm(self, conn: Connection, prd: DmaHandle) -> bool:
        """Arm the template on the ring buffer (made now, or a live update's old
        version's); False, and the ring off, if the kernel refuses it."""
        try:
            if self.handle is None:
                self.handle = conn.dma_alloc(RING_BYTES)
            view = self._view = conn.dma_map(self.handle)
            self.staged = int.from_bytes(view[WORD_AT : WORD_AT + 4], "little")
            COUNTS.pack_into(view, COUNTS_AT, self.staged, 0)
            self.refused = 0
            for k in range(SLOTS):  # every frame is as long: its length once per slot
                struct.pack_into("<H", view, TABLE_AT + 2 * k, FRAME.size)
            ops, patches = template_ops(self.channel, prd.phys)
            template = FrameTemplate(TABLE_AT, SLOTS, STRIDE, SLOTS_AT, COUNTS_AT, FRAME.size,
                                     patches)  # fmt: skip
            conn.vdevio_frames(self.handle.id, WORD_AT, template, ops)
        except IpcError as exc:
            log.warning("no command ring (%s): small commands go through the kernel", exc)
            self.off = True
            return False
        self._bell = Bell(view, WORD_AT, SLEEP_AT)
        self.armed = True
        log.info("command ring armed on DMA buffer %d (%d frames staged before)",
                 self.handle.id, self.staged)  # fmt: skip
        return True

    def run(self, conn: Connection, drive: Drive, write: bool, lba: int, count: int) -> bool:
        """Run one command of ``count`` sectors at ``lba``, between the drive and
        the DMA buffer's start; False if the stub refused it (the kernel's way then
        says why) or the ring is off now."""
        view, bell = self._view, self._bell
        assert view is not None and bell is not None
        n = self.staged
        slot = SLOTS_AT + n % SLOTS * STRIDE
        device = ata.DEV_LBA | drive.number << 4
        command = ata.CMD_WRITE_DMA_EXT if write else ata.CMD_READ_DMA_EXT
        direction = 0 if write else ata.BM_TO_MEMORY
        FRAME.pack_into(view, slot, count & 0xFFFF, lba & 0xFFFFFFFF, lba >> 32, device,
                        command, direction | ata.BM_START, direction)  # fmt: skip
        self.staged = n = (n + 1) & 0xFFFFFFFF
        sleep = bell.ring(n)
        if sleep == abi.WATCH_ENDED:
            return self._turn_off("the kernel ended the ring's watch")
        if sleep:
            wake = Batch()
            wake.inb(self.channel.ch.ctl)  # the alternate status: no side effect
            conn.vdevio_posted(wake)
        done, refused = self._wait(view, n)
        if done != n:
            return self._turn_off(f"the stub did not run a ring command in {GIVE_UP_S} s")
        if refused != self.refused:
            self.refused = refused
            return False
        if write:
            self.writes += 1
        else:
            self.reads += 1
        return True

    def _wait(self, view: memoryview, n: int) -> tuple[int, int]:
        unpack = COUNTS.unpack_from
        done, refused = unpack(view, COUNTS_AT)
        if done == n:
            return done, refused
        start = time.monotonic()
        while done != n:
            elapsed = time.monotonic() - start
            if elapsed > GIVE_UP_S:
                break
            if elapsed > SPIN_S:
                time.sleep(0.001)
            done, refused = unpack(view, COUNTS_AT)
        return done, refused

    def _turn_off(self, why: str) -> bool:
        log.warning("command ring off: %s; small commands go through the kernel", why)
        self.off = True
        return False
