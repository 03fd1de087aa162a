"""Calls that wait for the stub: submitted, spun on briefly, else finished from the loop.

A call that hands the stub a batch (``vdevio``, ``sdevio``) waits up to SPIN for
it, and on, up to SPIN_IDLE, while no other process wants the kernel (looked at
every SPIN); then the caller is left in KCALL and the kernel's loop, which polls
:attr:`Stub.pending` while it is not empty, answers it when the stub is done, so the
kernel keeps serving everyone else while a device works. A call that goes to the
loop waits for the stub's doorbell, a slower answer than the spin's
(docs/performance.md: a 4 KiB disk read's p90).

A posted batch (a posted vdevio) is answered once queued; the kernel collects
it when the stub has run it, at its next call to the stub or within the loop's
slice, without a doorbell: nobody waits for it.
"""

from __future__ import annotations

import logging
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, Protocol

from hwl.kernel.calls.base import Answer, AnswerT, CallError, fail, require_link
from hwl.kernel.errno import Errno
from hwl.kernel.proc import PostedCount, Proc, State
from hwl.kernel.stublink import HasLink
from hwl.link import abi
from hwl.link.link import Link, Ticket

log = logging.getLogger(__name__)

SPIN = 100e-6  # how long a call waits for the stub before the loop takes over,
SPIN_IDLE = 1e-3  # or this long while nothing else waits for the kernel
ROOM_WAIT = 10.0  # seconds a call waits for a free slot (the stub's longest batch: 2 s waits)


class Answerer(Protocol):
    """How a call that finishes later answers its caller (the dispatcher)."""

    def answer(self, proc: Proc, number: int, run: Callable[[], Answer | None]) -> None: ...


@dataclass
class Pending:
    """A call waiting for the stub."""

    proc: Proc
    ticket: Ticket
    nops: int
    finish: Callable[[int, int, bytes], None]  # answers the caller (if it is alive)


@dataclass
class Posted:
    """A posted batch not collected yet, and the count of the process that posted it."""

    count: PostedCount
    who: str  # for the log: label (endpoint)
    ticket: Ticket
    nops: int
    last: bool  # the batch's last slot: its end is the batch's


class Stub:
    """The stub's request slots as the calls use them; :attr:`pending` the calls
    the loop finishes, :attr:`posted` the posted batches it collects."""

    def __init__(self, machine: HasLink, answerer: Answerer) -> None:
        self.machine = machine
        self.answerer = answerer
        # Whether anything else waits for the kernel (its loop sets this: a
        # zero-timeout poll of its fds); until then no spin goes past SPIN.
        self.others_wait: Callable[[], bool] = lambda: True
        self.pending: list[Pending] = []
        self.posted: deque[Posted] = deque()

    def link(self) -> Link:
        return require_link(self.machine)

    def submit(
        self,
        proc: Proc,
        number: int,
        ticket_of: Callable[[Link], Ticket],
        nops: int,
        finish: Callable[[int, int, bytes], AnswerT],
    ) -> AnswerT | None:
        """Hand the stub a batch (``ticket_of``) and, if it is done within SPIN
        (or SPIN_IDLE while nobody else waits), return ``finish``'s answer; else
        None: the loop answers later."""
        link = self.link()
        self.make_room()
        ticket = ticket_of(link)
        start = time.perf_counter()
        end, last = start + SPIN, start + SPIN_IDLE
        while not link.done(ticket):
            now = time.perf_counter()
            if now > end:
                if now < last and not self.others_wait():
                    end = now + SPIN
                    continue
                proc.state = State.KCALL
                self.pending.append(Pending(proc, ticket, nops, self._wrap(proc, number, finish)))
                return None
        return finish(*link.collect_raw(ticket, nops))

    def post(self, proc: Proc, chunks: list[bytes]) -> None:
        """Queue a posted batch, one slot per chunk of packed ops (quiet: nobody
        waits for them), and collect what has finished."""
        self.make_room(len(chunks))
        link = self.link()
        who = f"{proc.label} ({proc.endpoint})"
        for i, packed in enumerate(chunks):
            nops = len(packed) // abi.OP_SIZE
            ticket = link.submit_packed(packed, nops, quiet=True)
            self.posted.append(Posted(proc.posted, who, ticket, nops, i == len(chunks) - 1))
        self.collect_posted()

    def make_room(self, slots: int = 1) -> None:
        """Wait until ``slots`` slots are free and one more, which the kernel's
        own one-op calls to the link take and give back at once (a slot is reused
        only once collected); EIO if the stub finishes none of the earlier ones
        within ROOM_WAIT."""
        deadline = None
        while len(self.pending) + len(self.posted) > abi.NSLOTS - 1 - slots:
            require_link(self.machine)  # QEMU gone: fail, do not spin on
            self.poll_pending()
            now = time.monotonic()
            deadline = deadline or now + ROOM_WAIT
            if now > deadline:
                fail(Errno.EIO, f"the stub finished none of {abi.NSLOTS} queued batches "
                                f"in {ROOM_WAIT:.0f} s")  # fmt: skip

    def collect_posted(self) -> None:
        """Collect the posted batches the stub has run, oldest first; log one it stopped."""
        link = self.machine.link
        posted = self.posted
        while posted and link is not None and link.done(posted[0].ticket):
            p = posted.popleft()
            status, failed, ops = link.collect_raw(p.ticket, p.nops)
            p.count.finished += p.last
            if status != abi.ST_OK:
                p.count.stopped += 1
                name = abi.STATUS_NAMES.get(status, f"status {status}")
                log.warning("%s: posted vdevio stopped at op %d (code %d): %s, last value %#x",
                            p.who, failed, op_code(ops, failed), name,
                            op_result(ops, failed))  # fmt: skip

    def _wrap(
        self, proc: Proc, number: int, finish: Callable[[int, int, bytes], Answer]
    ) -> Callable[[int, int, bytes], None]:
        def finish_later(status: int, failed: int, ops: bytes) -> None:
            proc.state = State.RUNNING
            self.answerer.answer(proc, number, lambda: finish(status, failed, ops))

        return finish_later

    def poll_pending(self) -> None:
        link = self.machine.link
        if link is None:
            return
        if self.posted:
            self.collect_posted()
        for p in list(self.pending):
            if link.done(p.ticket):
                self.pending.remove(p)
                p.finish(*link.collect_raw(p.ticket, p.nops))

    @staticmethod
    def failure(status: int, failed: int, ops: bytes) -> NoReturn:
        """Raise the error of a batch the stub stopped."""
        last = op_result(ops, failed)
        if status == abi.ST_TIMEOUT:
            raise CallError(Errno.ETIMEDOUT, f"op {failed}: wait timed out, last value {last:#x}")
        name = abi.STATUS_NAMES.get(status, f"status {status}")
        raise CallError(Errno.EIO, f"op {failed}: the stub refused it ({name})")


def op_code(ops: bytes, index: int) -> int:
    """The code of op ``index`` in a finished batch (0 if there is no such op)."""
    at = index * abi.OP_SIZE
    return ops[at] if 0 <= at < len(ops) else 0


def op_result(ops: bytes, index: int) -> int:
    """The result word of op ``index`` in a finished batch (0 if there is no such op)."""
    at = index * abi.OP_SIZE + abi.OP_C_OFFSET
    return int(struct.unpack_from("<I", ops, at)[0]) if 0 <= at <= len(ops) - 4 else 0
