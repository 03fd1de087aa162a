"""The filter's lowest layer: the disk drivers beneath it (MINIX's driver.c).

A :class:`Disk` is one disk driver's minor, reached through the same BDEV
protocol VFS speaks (:mod:`hwl.proto.bdev`): opened read-write, its size asked
with the geometry ioctl, every later request carrying the incarnation (``gen``)
the open reply named. Each call has a deadline (``timeout``): a driver that does
not answer in time has a problem as surely as one that dies.

A call's failure is a :class:`DiskProblem` of one of four kinds (MINIX's BD_*):

- ``dead``: the driver died (EDEADSRCDST, EDEADEPT, ESRCH, RS lists no such
  service) or a new incarnation answers ERESTART. RS restarts it by itself: the
  filter waits for the next incarnation and opens it again (:meth:`Disks.wait_new`).
- ``timeout``, ``error`` (an errno answered), ``data`` (a wrong checksum, a
  read-back that differs, found by the layers above): the driver keeps running
  but cannot be trusted. The filter asks RS to refresh it (``RS_REFRESH``,
  allowed by the ``control`` line of its system.conf entry); RS answers once
  the new incarnation is up, which the filter then opens.

While it waits the filter defers the requests that arrive (libblockdriver's
queue) and wakes on DS's notify of a ``drv.blk.*`` change (it subscribes at
init) or on its own alarm.

See docs/filter.md.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from hwl.driver import blockdriver as bd
from hwl.ipc import wire
from hwl.ipc.client import Connection, IpcError, IpcTimeout, Message
from hwl.proto import bdev as bp
from hwl.proto import codec
from hwl.proto.errno import Errno, errno_of
from hwl.system import sef
from hwl.system.rs import Rs, RsError

log = logging.getLogger("filter")

#: IPC failures that mean the driver's incarnation is gone.
DEAD_ERRNOS: Final = frozenset({Errno.EDEADSRCDST, Errno.EDEADEPT, Errno.ESRCH})
#: A receive between a refresh and the re-issue, for RS's pings.
BREATHE_SECONDS: Final = 0.001
#: Waits between attempts to open a driver's next incarnation (then the last one).
WAITS: Final = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)


class Kind(Enum):
    DEAD = "dead"
    TIMEOUT = "timeout"
    ERROR = "error"
    DATA = "data"


#: A driver's answers that say more than "error" (EBADMSG: the kernel found a bad
#: sum in the driver's copy through a sums grant).
KINDS: Final = {Errno.ERESTART: Kind.DEAD, Errno.EBADMSG: Kind.DATA}


class DiskProblem(Exception):
    """A disk driver failed a call: ``kind`` says how (see the module's docstring);
    ``errno`` the driver's answer, if it answered one."""

    def __init__(self, disk: Disk, kind: Kind, detail: str, errno: Errno | None = None) -> None:
        self.disk = disk
        self.kind = kind
        self.detail = detail
        self.errno = errno
        super().__init__(f"driver {disk.label}: {kind.value}: {detail}")


@dataclass
class Disk:
    """One disk driver's minor as the filter uses it."""

    label: str
    minor: int
    role: str  # "main" or "backup"
    endpoint: int | None = None
    gen: int | None = None
    size: int = 0  # raw bytes, from the geometry ioctl
    enabled: bool = True  # False: a mirror side given up on
    strikes: int = 0  # problems in a row (reset by a call that works)
    problems: Counter[str] = field(default_factory=Counter)
    refreshes: int = 0


class Disks:
    """The drivers beneath the filter and the calls to them."""

    def __init__(self, conn: Connection, timeout: float, deadwait: float) -> None:
        self.conn = conn
        self.timeout = timeout
        self.deadwait = deadwait
        self.ds_endpoint: int | None = None  # DS's notify wakes a wait

    # ----------------------------------------------------------------- calls
    def _endpoint(self, disk: Disk) -> int:
        if disk.endpoint is None:
            try:
                disk.endpoint = Rs(self.conn, timeout=self.deadwait).lookup(disk.label)
            except RsError as exc:
                raise DiskProblem(disk, Kind.DEAD, f"RS lookup: {exc.detail}") from exc
        return disk.endpoint

    def call(self, disk: Disk, m_type: int, **fields: codec.Value) -> Message:
        """One BDEV request with the filter's deadline; a failure is a DiskProblem."""
        ep = self._endpoint(disk)
        if disk.gen is not None and m_type != bp.BDEV_OPEN:
            fields["gen"] = disk.gen
        name = bp.BDEV_REQUEST_NAMES.get(m_type, hex(m_type))
        try:
            reply = self.conn.sendrec(ep, m_type, fields, timeout=self.timeout)
        except IpcTimeout as exc:
            raise DiskProblem(
                disk, Kind.TIMEOUT, f"no answer to {name} in {self.timeout} s"
            ) from exc
        except IpcError as exc:
            kind = Kind.DEAD if exc.errno in DEAD_ERRNOS else Kind.ERROR
            raise DiskProblem(disk, kind, f"{name}: {exc}") from exc
        if reply.m_type < 0:
            errno = errno_of(reply.m_type)
            kind = KINDS.get(errno, Kind.ERROR)
            detail = f"{name}: {errno.name} {reply.get('error', '')!s}"
            raise DiskProblem(disk, kind, detail, errno)
        return reply

    def open(self, disk: Disk) -> None:
        """Open the minor read-write on the driver's current incarnation and learn
        its size (which must not change from one incarnation to the next)."""
        disk.gen = None
        reply = self.call(
            disk, bp.BDEV_OPEN, minor=disk.minor, access=bp.BDEV_R_BIT | bp.BDEV_W_BIT
        )
        gen = reply.get("gen")
        disk.gen = gen if isinstance(gen, int) else None
        geometry = self.call(disk, bp.BDEV_IOCTL, minor=disk.minor, request=bp.IOCTL_GEOMETRY)
        size = geometry.get("size")
        if not isinstance(size, int) or size <= 0:
            raise DiskProblem(disk, Kind.ERROR, f"geometry answered no size: {geometry.fields}")
        if disk.size and size != disk.size:
            raise DiskProblem(disk, Kind.ERROR, f"the size changed from {disk.size} to {size}")
        disk.size = size

    def close(self, disk: Disk) -> None:
        try:
            self.call(disk, bp.BDEV_CLOSE, minor=disk.minor)
        except DiskProblem as exc:
            log.info("close on %s: %s", disk.label, exc)

    def io(self, disk: Disk, write: bool, position: int, local: int, count: int) -> None:
        """``count`` bytes at raw byte ``position`` between the disk and this
        process's arena at ``local``; anything short is an error."""
        ep = self._endpoint(disk)
        gid = self.conn.arena.grant(ep, local, count, read=True, write=True)
        try:
            self._transfer(disk, write, position, count, gid)
        finally:
            self.conn.arena.revoke(gid)

    def io_client(
        self, disk: Disk, write: bool, position: int, client: int, grant: int, offset: int,
        count: int,
    ) -> None:  # fmt: skip
        """As :meth:`io`, straight to or from a client's grant (no copy here)."""
        ep = self._endpoint(disk)
        gid = self.conn.arena.grant_indirect(ep, client, grant, offset, count,
                                             read=write, write=not write)  # fmt: skip
        try:
            self._transfer(disk, write, position, count, gid)
        finally:
            self.conn.arena.revoke(gid)

    def read_sums(
        self, disk: Disk, position: int, count: int, client: int, grant: int, data: int,
        sum_sec: int, first: int,
    ) -> None:  # fmt: skip
        """Read ``count`` bytes of whole groups at raw ``position`` straight into the
        first ``data`` bytes of a client's grant, through a sums grant
        (hwl.ipc.arena; logical sector ``first`` first): the kernel checks every
        sector's sum as it copies the data out of the driver's DMA buffer, and a
        bad one is a DATA problem (EBADMSG)."""
        ep = self._endpoint(disk)
        gid = self.conn.arena.grant_sums(ep, client, grant, data, sum_sec, first)
        try:
            self._transfer(disk, False, position, count, gid)
        finally:
            self.conn.arena.revoke(gid)

    def _transfer(self, disk: Disk, write: bool, position: int, count: int, gid: int) -> None:
        reply = self.call(
            disk, bp.BDEV_WRITE if write else bp.BDEV_READ,
            minor=disk.minor, position=position, count=count, grant=gid, id=position,
        )  # fmt: skip
        if reply.m_type != count:
            what = "wrote" if write else "read"
            raise DiskProblem(
                disk, Kind.ERROR, f"{what} {reply.m_type} of {count} bytes at {position}"
            )

    # -------------------------------------------------------------- recovery
    def recover(self, problem: DiskProblem) -> None:
        """Bring the driver of ``problem`` back to a trusted incarnation and open
        it: a dead one is awaited, a misbehaving one refreshed through RS first.
        A failure is a DiskProblem again."""
        disk = problem.disk
        if problem.kind is Kind.DEAD:
            self.wait_new(disk)
            return
        log.warning("asking RS to refresh %s (%s)", disk.label, problem)
        t0 = time.monotonic()
        try:
            Rs(self.conn, timeout=self.deadwait).refresh(disk.label)
            disk.refreshes += 1
        except RsError as exc:
            if exc.errno is not Errno.EBUSY:  # EBUSY: RS is restarting it already
                log.error("RS refused to refresh %s: %s", disk.label, exc)
        disk.endpoint = None
        self.wait_new(disk)
        log.info("%s refreshed and re-opened in %.1f ms", disk.label, (time.monotonic() - t0) * 1e3)
        # Blocked in the call that failed and in RS's refresh: answer RS's pings
        # before the request is re-issued (two unanswered ones and RS kills us).
        self.pause(BREATHE_SECONDS)

    def wait_new(self, disk: Disk) -> None:
        """Open the driver's next incarnation, waiting up to ``deadwait`` for it."""
        deadline = time.monotonic() + self.deadwait
        last: DiskProblem | None = None
        for attempt in range(10_000):
            disk.endpoint = None
            try:
                self.open(disk)
                return
            except DiskProblem as exc:
                last = exc
                if exc.kind not in (Kind.DEAD, Kind.TIMEOUT):
                    raise
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.pause(min(left, WAITS[min(attempt, len(WAITS) - 1)]))
        assert last is not None
        raise DiskProblem(
            disk, Kind.DEAD, f"no new incarnation in {self.deadwait} s ({last.detail})"
        )

    def pause(self, seconds: float) -> None:
        """Wait for ``seconds`` or DS's notify; requests arriving meanwhile wait
        in libblockdriver's queue."""
        self.conn.setalarm(seconds=seconds)
        deadline = time.monotonic() + seconds + 1.0  # the alarm's notify comes by then
        while time.monotonic() < deadline:
            m = sef.receive(nested=True)
            if m.is_notify:
                if m.source == wire.CLOCK or m.source == self.ds_endpoint:
                    return
                continue
            bd.mq_queue(m)
