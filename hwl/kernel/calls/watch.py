"""Watched doorbells (guest/abi.h, struct hwl_watch): a driver's one device
write that the stub makes itself whenever a u32 in the driver's DMA memory
changes, so a NIC's transmit doorbell costs the driver a store, not a kernel call.

vdevio with hwl.proto.vdevio.WATCH arms one (the op checked as any vdevio op);
this module keeps the table the stub reads. A watch is its process's and ends,
before anything it relies on goes: at the process's death or exit (before its
DMA buffers are freed or kept and its bus mastering stops), when the buffer
holding the word is freed, when the process's privileges are set anew, and when
the driver arms no op for the word. Ending one waits until the stub has
finished a write it may have begun (the stub runs watches and request slots in
one loop, so one round trip through a slot is enough); only then does the sleep
word show WATCH_ENDED, so a driver that goes on storing makes its writes
through the kernel, where the checks are made again, and none of them can run
before a write of the stub's. A store made while the watch ends waits for the
driver's next one.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

from hwl.kernel.calls.base import fail, require_link
from hwl.kernel.calls.stub import Stub
from hwl.kernel.errno import Errno
from hwl.kernel.proc import Proc
from hwl.kernel.stublink import HasLink
from hwl.link import abi
from hwl.link.memory import DmaBuffer

log = logging.getLogger("hwl.kernel.calls")

U32 = 0xFFFFFFFF
_WORD = struct.Struct("<I")


@dataclass
class Watch:
    owner: Proc
    buffer: int  # the owner's DMA buffer id
    buf: DmaBuffer
    word: int  # the watched u32's offset in it
    sleep: int  # the sleep word's offset in it

    @property
    def phys(self) -> int:
        return self.buf.phys + self.word

    def show(self, sleep: int) -> None:
        """What the driver reads in its sleep word (abi.WATCH_ASLEEP, WATCH_ENDED)."""
        _WORD.pack_into(self.buf.view, self.sleep, sleep)


class Watches:
    def __init__(self, machine: HasLink, stub: Stub) -> None:
        self.machine = machine
        self.stub = stub
        self.table: list[Watch | None] = [None] * abi.NWATCH
        self._gen = 0

    def arm(
        self, proc: Proc, buffer: int, buf: DmaBuffer, word: int, sleep: int, flags: int,
        op: bytes, frames: bytes | None = None,
    ) -> int:  # fmt: skip
        """Arm the watch of the word at ``word`` in ``buf`` (again, with another op
        or flags, if it is armed); the offsets, the op and a frame template
        (``frames``, struct hwl_frames) are checked by the caller. Returns the
        entry's index."""
        link = require_link(self.machine)
        phys = buf.phys + word
        index = self._index_of(phys)
        current = None if index is None else self.table[index]
        if current is not None and current.owner is not proc:
            fail(Errno.EBUSY, "vdevio watch: another process watches that word")
        if index is None:
            index = next((i for i, w in enumerate(self.table) if w is None), None)
        if index is None:
            fail(Errno.EBUSY, f"vdevio watch: all {abi.NWATCH} watched doorbells are in use")
        self._gen = self._gen % U32 + 1
        watch = Watch(proc, buffer, buf, word, sleep)
        watch.show(abi.WATCH_ASLEEP)  # until the stub takes the watch up
        (base,) = _WORD.unpack_from(buf.view, word)
        if frames is not None:
            link.frames_set(index, frames)
        link.watch_set(index, self._gen, phys, buf.phys + sleep, flags, base, op)
        self.table[index] = watch
        return index

    def disarm(self, proc: Proc, buf: DmaBuffer, word: int) -> None:
        """End the caller's watch of that word (none: nothing to do)."""
        index = self._index_of(buf.phys + word)
        current = None if index is None else self.table[index]
        if index is not None and current is not None and current.owner is proc:
            self._end([index], "turned off")

    def drop(self, proc: Proc, why: str, buffer: int | None = None) -> None:
        """End every watch of ``proc`` (of one DMA buffer, with ``buffer``)."""
        mine = [
            i
            for i, w in enumerate(self.table)
            if w is not None and w.owner is proc and (buffer is None or w.buffer == buffer)
        ]
        if mine:
            self._end(mine, why)

    def _index_of(self, phys: int) -> int | None:
        return next((i for i, w in enumerate(self.table) if w is not None and w.phys == phys), None)

    def _end(self, indexes: list[int], why: str) -> None:
        link = self.machine.link
        ended: list[Watch] = []
        for i in indexes:
            watch = self.table[i]
            self.table[i] = None
            assert watch is not None
            log.info("watched doorbell %d of %s (%s) ended: %s", i, watch.owner.label,
                     watch.owner.endpoint, why)  # fmt: skip
            if link is not None:
                link.watch_clear(i)
                ended.append(watch)
        if link is not None and self.machine.link_ok:
            try:
                self.stub.make_room(0)
                link.nop()  # after it, the stub makes no write and no sleep-word store
            except Exception as exc:
                log.warning("ending watched doorbells: the stub did not answer: %s", exc)
        for watch in ended:
            watch.show(abi.WATCH_ENDED)
