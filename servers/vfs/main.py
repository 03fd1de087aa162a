"""vfs: block device files for user processes, and recovery from driver crashes.

Run by RS (``service up servers.vfs``, entry ``service vfs`` in system.conf).
Protocol and client: :mod:`hwl.system.vfs`; the device map: :mod:`servers.vfs.devmap`.

- **Files**: an fd belongs to (client endpoint, number) and holds the device, the
  access mode and the byte position. The first open of a minor opens it on the
  driver (``BDEV_OPEN``) and asks its geometry; the last close closes it.
- **Data** moves in chunks of :data:`CHUNK` bytes. A chunk of whole sectors goes
  straight between the driver and the client: VFS hands the driver an indirect
  grant, narrowed to that chunk, of the client's grant (one copy). Other chunks go
  through VFS's bounce buffer: whole sectors from the driver, then ``safecopyto``
  the client's grant (the reverse for writes, merging partial sectors first). So
  clients need no alignment.
- **Recovery** (as MINIX's VFS ``bdev_up``): VFS subscribes to ``drv\\.blk\\..*``
  in DS. A driver call that fails with EDEADSRCDST / EDEADEPT (the process died;
  with policy reset its endpoint is gone) or ERESTART (a new incarnation that
  the minor was not re-opened on) marks the driver down and keeps the request
  pending, with what it has done so far; the client is not answered. VFS tries
  to recover at once (the driver may be up already), then on every DS change of
  ``drv.blk.<label>`` and on a 1 s alarm while a driver is down (the labels, endpoints
  and waiting requests are kept by :mod:`hwl.system.recovery`): look the label
  up again (a new endpoint with policy reset), re-open every minor VFS has open
  there, re-issue the pending requests in order. The client sees a delay.
- **Dead clients**: a client process that ends without closing its files (killed,
  crashed) would keep its minors open on the driver. Every :data:`REAP_SECONDS`
  while files are open, and before each open, VFS compares its clients with the
  kernel's process table and closes the files of those that are gone (flushing
  what they wrote), as MINIX's VFS does at a process's exit.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from hwl.ipc.arena import Buffer
from hwl.ipc.client import Connection, IpcError, Message
from hwl.proto import bdev as bp
from hwl.proto import codec, wire
from hwl.proto import vfs as vp
from hwl.proto.errno import Errno, ErrnoError, errno_of
from hwl.system import sef
from hwl.system.ds import Ds, DsError
from hwl.system.proctab import ProcTable
from hwl.system.recovery import (
    IMMEDIATE_TRIES,
    RETRY_SECONDS,
    DriverTracker,
    TrackedDriver,
)
from hwl.system.rs import RsError

from . import devmap

log = logging.getLogger(__name__)

Fields = dict[str, codec.Value]

SECTOR: Final = 512
CHUNK: Final = 1 << 20  # one at_wini DMA command on an LBA48 drive
#: Driver answers that mean "this incarnation is gone or new": keep the request.
RECOVERABLE: Final = frozenset({Errno.EDEADSRCDST, Errno.EDEADEPT, Errno.ERESTART, Errno.ESRCH})
MAX_FDS: Final = 64  # per client
REAP_SECONDS: Final = 2.0


class Refused(ErrnoError):
    """A request answered with ``-errno`` at once."""


class DriverDown(Exception):
    """The driver did not serve the call; the request waits for it."""


@dataclass
class Minor:
    opens: int = 0
    access: int = 0
    size: int = 0


@dataclass
class Driver(TrackedDriver["Op"]):
    """A block driver as the recovery tracker follows it, with what VFS has open
    on it (re-opened on a new incarnation) and the incarnation's ``gen``."""

    gen: int | None = None
    minors: dict[int, Minor] = field(default_factory=dict)

    def reset(self) -> None:
        super().reset()
        self.gen = None


@dataclass
class File:
    driver: Driver
    minor: int
    flags: int
    position: int = 0
    dirty: bool = False


@dataclass
class Op:
    """A client request that involves the driver; resumable after a driver restart."""

    m: Message
    driver: Driver
    file: File | None
    count: int = 0
    grant: int = 0
    done: int = 0
    opening: tuple[str, int, int, int] | None = None  # path, flags, client, fd (OPEN)
    req: vp.VfsRequest | None = None  # the typed request (hwl.proto.vfs)
    at: int | None = None  # READ/WRITE with a position (pread/pwrite): the fd's stays


class VfsServer:
    def __init__(self) -> None:
        self.tracker: DriverTracker[Driver] | None = None
        self.files: dict[tuple[int, int], File] = {}
        self.ds: Ds | None = None
        self.bounce: Buffer | None = None
        self.alarm_at: float | None = None  # monotonic deadline of the armed alarm

    @property
    def conn(self) -> Connection:
        return sef.connection()

    @property
    def drivers(self) -> dict[str, Driver]:
        assert self.tracker is not None, "VFS is not initialised"
        return self.tracker.drivers

    # ------------------------------------------------------------------ init
    def init(self, info: sef.InitInfo) -> int:
        conn = self.conn
        self.bounce = conn.arena.alloc(CHUNK, align=4096)
        try:
            self.ds = Ds.find(conn, timeout=10)
            self.tracker = DriverTracker(conn, self.ds, "blk", Driver)
            self.tracker.subscribe()
        except DsError as exc:
            log.error("cannot subscribe to driver-up events: %s", exc)
            return int(exc.errno)
        log.info("vfs up (%s), devices %s", info.type.name, " ".join(devmap.names()))
        return 0

    # ------------------------------------------------------------------ loop
    def serve(self) -> None:
        while True:
            m = sef.receive()
            try:
                self.dispatch(m)
            except Exception:  # a bug must not take the file system down
                log.exception("request %#x from %d", m.m_type, m.source)
                if not m.is_notify and m.m_type > 0:
                    self.reply(m, -int(Errno.EGENERIC), {"error": "internal error"})

    def dispatch(self, m: Message) -> None:
        if m.is_notify:
            if m.source == wire.CLOCK:
                self.alarm_at = None
                self.retry_all()
                self.reap()
            elif self.ds is not None and m.source == self.ds.endpoint:
                self.ds_changes()
            return
        if m.m_type <= 0:
            return  # a stray status, never answered
        if m.m_type not in vp.VFS_REQUEST_NAMES:
            self.reply(m, -int(Errno.ENOSYS), {"error": f"unknown request {m.m_type:#x}"})
            return
        try:
            op = self.make_op(m)
        except Refused as exc:
            self.reply(m, -int(exc.errno), {"error": str(exc)})
            return
        except (KeyError, TypeError, ValueError, codec.CodecError) as exc:
            self.reply(m, -int(Errno.EINVAL), {"error": f"malformed request: {exc}"})
            return
        if op is None:
            return
        driver = op.driver
        if driver.pending or not driver.up:
            driver.pending.append(op)  # keep the order behind the waiting ones
            self.arm()
            return
        if not self.run(driver, op):
            driver.pending.append(op)
            self.retry(driver)

    def reply(self, m: Message, status: int, fields: Fields | None = None) -> None:
        """Answer ``m`` with the next receive (``sef.reply``)."""
        sef.reply(m.source, status, fields or {})

    # ------------------------------------------------------------ requests
    def make_op(self, m: Message) -> Op | None:
        """Check a request; answer what needs no driver, else the Op to run."""
        req = vp.parse_request(m.m_type, m.fields)  # FieldError: EINVAL
        if isinstance(req, vp.VfsOpen):
            self.reap()
            path, flags = req.path, req.flags
            if flags & ~vp.O_ACCMODE or flags & vp.O_ACCMODE == vp.O_ACCMODE:
                raise Refused(Errno.EINVAL, f"flags {flags:#x}")
            found = devmap.lookup(path)
            if found is None:
                raise Refused(Errno.ENOENT, f"no device file {path!r}")
            used = {fd for (client, fd) in self.files if client == m.source}
            fd = next((n for n in range(MAX_FDS) if n not in used), None)
            if fd is None:
                raise Refused(Errno.EMFILE, f"{MAX_FDS} files open")
            label, minor = found
            assert self.tracker is not None
            driver = self.tracker.track(label)
            return Op(m, driver, None, count=minor, opening=(path, flags, m.source, fd))
        file = self.files.get((m.source, req.fd))
        if file is None:
            raise Refused(Errno.EBADF, f"fd {req.fd!r} is not open")
        if isinstance(req, vp.VfsLseek):
            offset, whence = req.offset, req.whence
            size = file.driver.minors[file.minor].size
            base = {os.SEEK_SET: 0, os.SEEK_CUR: file.position, os.SEEK_END: size}.get(whence)
            if base is None:
                raise Refused(Errno.EINVAL, f"whence {whence}")
            if base + offset < 0:
                raise Refused(Errno.EINVAL, f"position {base + offset} is negative")
            file.position = base + offset
            self.reply(m, 0, {"position": file.position})
            return None
        if isinstance(req, vp.VfsIo):
            write = m.m_type == vp.VFS_WRITE
            mode = file.flags & vp.O_ACCMODE
            if (write and mode == vp.O_RDONLY) or (not write and mode == vp.O_WRONLY):
                raise Refused(Errno.EBADF, "not open for " + ("writing" if write else "reading"))
            count, grant, at = req.count, req.grant, req.position
            if count < 0:
                raise Refused(Errno.EINVAL, f"count {count}")
            if at is not None and at < 0:
                raise Refused(Errno.EINVAL, f"position {at} is negative")
            count = min(count, vp.VFS_MAX_IO)
            return Op(m, file.driver, file, count=count, grant=grant, at=at, req=req)
        return Op(m, file.driver, file, req=req)  # CLOSE, IOCTL

    def run(self, driver: Driver, op: Op) -> bool:
        """Run ``op`` to its answer; False (op kept by the caller) if the driver is down."""
        try:
            status, fields = self.execute(driver, op)
        except DriverDown:
            return False
        except Refused as exc:
            status, fields = -int(exc.errno), {"error": str(exc)}
        except IpcError as exc:  # the client's grant (safecopy), not the driver
            status, fields = -int(exc.errno), {"error": str(exc)}
        self.reply(op.m, status, fields)
        return True

    def execute(self, driver: Driver, op: Op) -> tuple[int, Fields]:
        t = op.m.m_type
        if t == vp.VFS_OPEN:
            return self.do_open(driver, op)
        file = op.file
        assert file is not None
        if t == vp.VFS_CLOSE:
            if file.dirty:  # before the fd goes: a driver down keeps the request
                self.call(driver, bp.BDEV_IOCTL, minor=file.minor, request=bp.IOCTL_FLUSH)
                file.dirty = False
            assert isinstance(op.req, vp.VfsFd)
            self.close_file((op.m.source, op.req.fd))
            return 0, {}
        if t == vp.VFS_IOCTL:
            assert isinstance(op.req, vp.VfsIoctl)
            request = op.req.request
            if request not in (bp.IOCTL_GEOMETRY, bp.IOCTL_FLUSH):
                raise Refused(Errno.ENOTTY, f"ioctl {request!r}")
            _, fields = self.call(driver, bp.BDEV_IOCTL, minor=file.minor, request=request)
            if request == bp.IOCTL_FLUSH:
                file.dirty = False
            return 0, {k: v for k, v in fields.items() if k in ("base", "size", "sector")}
        return self.transfer(driver, op, file, t == vp.VFS_WRITE)

    def do_open(self, driver: Driver, op: Op) -> tuple[int, Fields]:
        assert op.opening is not None
        path, flags, client, fd = op.opening
        minor_no = op.count
        mode = flags & vp.O_ACCMODE
        access = {vp.O_RDONLY: bp.BDEV_R_BIT, vp.O_WRONLY: bp.BDEV_W_BIT}.get(
            mode, bp.BDEV_R_BIT | bp.BDEV_W_BIT
        )
        minor = driver.minors.get(minor_no)
        if minor is None or access & ~minor.access:
            want = access | (minor.access if minor else 0)
            self.call(driver, bp.BDEV_OPEN, minor=minor_no, access=want)
            _, geometry = self.call(driver, bp.BDEV_IOCTL, minor=minor_no, request="geometry")
            size = geometry.get("size")
            if not isinstance(size, int):
                raise Refused(Errno.EIO, f"the driver answered no size: {geometry}")
            if minor is None:
                minor = driver.minors[minor_no] = Minor()
            else:  # opened twice on the driver now: balance it
                self.call(driver, bp.BDEV_CLOSE, minor=minor_no)
            minor.access, minor.size = want, size
        if (client, fd) in self.files:  # the client took that number meanwhile
            fd = next(n for n in range(MAX_FDS) if (client, n) not in self.files)
        minor.opens += 1
        self.files[(client, fd)] = File(driver, minor_no, flags)
        log.info("open %s -> fd %d of %d (%s minor %d)", path, fd, client, driver.label, minor_no)
        self.arm(REAP_SECONDS)
        return fd, {"size": minor.size}

    def transfer(self, driver: Driver, op: Op, file: File, write: bool) -> tuple[int, Fields]:
        assert self.bounce is not None
        conn, bounce = self.conn, self.bounce
        size = driver.minors[file.minor].size
        while op.done < op.count:
            pos = file.position if op.at is None else op.at + op.done
            if pos >= size:
                break
            want = min(op.count - op.done, size - pos)
            start = pos - pos % SECTOR
            end = min(pos + want, start + CHUNK)
            span_end = min(-(-end // SECTOR) * SECTOR, size)
            n = end - pos  # client bytes in this chunk
            head, span = pos - start, span_end - start
            if head == 0 and span == n:  # whole sectors: the driver copies for the client
                got = self.drv_io(driver, file.minor, write, start, span, client=op)
                if write:
                    file.dirty = True
                else:
                    n = min(n, got)
                    if n == 0:
                        break
            elif write:
                if head or (end % SECTOR and end < size):
                    self.drv_io(driver, file.minor, False, start, span)
                conn.safecopyfrom(op.m.source, op.grant, op.done, bounce.offset + head, n)
                self.drv_io(driver, file.minor, True, start, span)
                file.dirty = True
            else:
                got = self.drv_io(driver, file.minor, False, start, span)
                n = max(0, min(n, got - head))
                if n == 0:
                    break
                conn.safecopyto(op.m.source, op.grant, op.done, bounce.offset + head, n)
            op.done += n
            if op.at is None:
                file.position = pos + n
        if write and op.done == 0 and op.count > 0:
            pos = file.position if op.at is None else op.at
            raise Refused(Errno.ENOSPC, f"position {pos} is at the end of the device")
        return op.done, {}

    def drv_io(
        self,
        driver: Driver,
        minor: int,
        write: bool,
        position: int,
        count: int,
        client: Op | None = None,
    ) -> int:
        """``count`` bytes at ``position`` between the driver and the bounce buffer,
        or with ``client`` the client's own grant (an indirect grant narrowed to
        the part of it this chunk fills: one copy instead of two)."""
        assert self.bounce is not None
        ep = self.endpoint(driver)
        arena = self.conn.arena
        if client is None:
            gid = arena.grant(ep, self.bounce.offset, count, read=write, write=not write)
        else:
            gid = arena.grant_indirect(ep, client.m.source, client.grant, client.done, count,
                                       read=write, write=not write)  # fmt: skip
        try:
            status, _ = self.call(
                driver, bp.BDEV_WRITE if write else bp.BDEV_READ,
                minor=minor, position=position, count=count, grant=gid, id=position,
            )  # fmt: skip
        finally:
            arena.revoke(gid)
        if write and status != count:
            raise Refused(Errno.EIO, f"the driver wrote {status} of {count} bytes")
        return status

    # -------------------------------------------------------------- driver
    def endpoint(self, driver: Driver) -> int:
        """The driver's endpoint, cached by the tracker; a failed RS lookup is
        DriverDown while VFS holds something there or RS is restarting the driver
        (EAGAIN), else Refused."""
        assert self.tracker is not None
        try:
            return self.tracker.endpoint(driver.label)
        except RsError as exc:
            if isinstance(exc.__cause__, IpcError):  # RS did not answer
                raise Refused(exc.errno, f"RS lookup of {driver.label}: {exc}") from exc
            if driver.minors or driver.pending or exc.errno is Errno.EAGAIN:
                self.mark_down(driver, str(exc))  # it comes back: the request waits
                raise DriverDown from exc
            raise Refused(Errno.ENXIO, f"no driver {driver.label!r} is running") from exc

    def call(self, driver: Driver, m_type: int, **fields: codec.Value) -> tuple[int, Fields]:
        """One request to the driver; a dead or new incarnation raises DriverDown,
        another failure Refused."""
        ep = self.endpoint(driver)
        if driver.gen is not None and m_type != bp.BDEV_OPEN:
            fields["gen"] = driver.gen
        try:
            reply = self.conn.sendrec(ep, m_type, fields)
        except IpcError as exc:
            if exc.errno in RECOVERABLE:
                self.mark_down(driver, str(exc))
                raise DriverDown from exc
            raise Refused(exc.errno, f"{driver.label}: {exc}") from exc
        if reply.m_type < 0:
            errno = errno_of(reply.m_type)
            # Only ERESTART in a reply means the driver restarted: an EDEADSRCDST
            # it answers comes from a grant (the client's, gone with its owner).
            if errno is Errno.ERESTART:
                self.mark_down(driver, f"{errno.name} from {driver.label}")
                raise DriverDown
            raise Refused(errno, str(reply.get("error", "")))
        gen = reply.get("gen")
        if m_type == bp.BDEV_OPEN and isinstance(gen, int):
            driver.gen = gen
        return reply.m_type, dict(reply.fields)

    def mark_down(self, driver: Driver, why: str) -> None:
        assert self.tracker is not None
        self.tracker.mark_down(driver, why)

    def arm(self, seconds: float = RETRY_SECONDS) -> None:
        """The alarm (one per process) at the earliest deadline anyone asked for."""
        at = time.monotonic() + seconds
        if self.alarm_at is not None and self.alarm_at <= at:
            return
        try:
            self.conn.setalarm(seconds=seconds)
            self.alarm_at = at
        except IpcError as exc:
            log.warning("setalarm: %s", exc)

    # -------------------------------------------------------- dead clients
    def reap(self) -> None:
        """Close the files of clients that no longer exist; re-arm while any are open."""
        if not self.files:
            return
        alive = ProcTable(self.conn, log).refresh()  # afresh: a refusal is logged, None
        if alive is not None:
            dead = sorted({client for client, _fd in self.files if client not in alive})
            for client in dead:
                keys = sorted(k for k in self.files if k[0] == client)
                for key in keys:
                    self.close_file(key)
                log.info("closed %d files of client %d, which has ended", len(keys), client)
            for driver in self.drivers.values():  # nobody waits for these any more
                kept = [op for op in driver.pending if op.m.source in alive]
                if len(kept) != len(driver.pending):
                    driver.pending = deque(kept)
        if self.files:
            self.arm(REAP_SECONDS)

    def close_file(self, key: tuple[int, int]) -> None:
        """Forget one fd; flush if it wrote, and close the minor on its last file.
        A driver that is down is left alone (a new incarnation has nothing open)."""
        file = self.files.pop(key)
        driver = file.driver
        try:
            if file.dirty:
                self.call(driver, bp.BDEV_IOCTL, minor=file.minor, request=bp.IOCTL_FLUSH)
        except (DriverDown, Refused) as exc:
            log.warning("flush of %s minor %d at close: %s", driver.label, file.minor, exc)
        minor = driver.minors[file.minor]
        minor.opens -= 1
        if minor.opens <= 0:
            del driver.minors[file.minor]
            with contextlib.suppress(DriverDown):
                self.call(driver, bp.BDEV_CLOSE, minor=file.minor)

    # ------------------------------------------------------------ recovery
    def recover(self, driver: Driver) -> bool:
        """Re-open what VFS has open on the driver (a new incarnation), then
        re-issue the pending requests. False if the driver is still down."""
        old_gen = driver.gen
        driver.endpoint, driver.gen = None, None
        if not driver.minors and not driver.pending:
            driver.up = True  # nothing to recover; the next open looks the driver up
            return True
        if not driver.minors:  # nothing to re-open: is there a driver at all?
            try:
                self.endpoint(driver)
            except DriverDown:
                return False
        for minor_no, minor in list(driver.minors.items()):
            try:
                self.call(driver, bp.BDEV_OPEN, minor=minor_no, access=minor.access)
                if old_gen is not None and driver.gen == old_gen:
                    self.call(driver, bp.BDEV_CLOSE, minor=minor_no)  # not a new incarnation
            except DriverDown:
                return False
            except Refused as exc:
                log.warning("re-open of %s minor %d failed: %s", driver.label, minor_no, exc)
        if not driver.up:
            log.info("driver %s is up again (gen %s); %d requests re-issued",
                     driver.label, driver.gen, len(driver.pending))  # fmt: skip
        driver.up = True
        assert self.tracker is not None
        return self.tracker.resend(driver, lambda op: self.run(driver, op))

    def retry(self, driver: Driver) -> None:
        for _ in range(IMMEDIATE_TRIES):
            if self.recover(driver):
                return
        assert self.tracker is not None
        self.arm(self.tracker.retry_delay(driver))

    def retry_all(self) -> None:
        if self.tracker is not None:
            for driver in self.tracker.waiting():
                self.retry(driver)

    def ds_changes(self) -> None:
        assert self.tracker is not None
        for event in self.tracker.on_ds_notify():
            driver = self.drivers[event.label]
            if driver.minors or driver.pending or not driver.up:
                # A restart VFS may not have noticed yet: re-open before the next request.
                self.retry(driver)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="vfs")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--channel", action="append", default=[], metavar="C=LABEL",
                   help="the driver of channel C's device files (default at_wini[1])")  # fmt: skip
    args = p.parse_args(argv)
    for item in args.channel:
        channel, _, label = item.partition("=")
        try:
            devmap.set_label(int(channel), label)
        except ValueError as exc:
            p.error(f"--channel {item}: {exc}")
    if args.verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    server = VfsServer()
    sef.setcb_init_fresh(server.init)
    sef.startup()
    server.serve()
    return 0
