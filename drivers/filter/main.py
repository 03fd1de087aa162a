"""filter: a block driver between VFS and one or two disk drivers that checksums
every sector and mirrors over two disks, as MINIX 3's filter driver (docs/filter.md).

``service up hwl.drivers.filter -args "driver=at_wini,driver2=at_wini1,checksum=crc,mirror"``
(the options: :mod:`hwl.drivers.filter.options`). Three layers, as MINIX's:

- **top** (this module): the block interface (libblockdriver) to VFS; one minor,
  0, the filtered disk; a transfer is cut into pieces of at most :data:`MAX_IO`.
- **middle**: the checksum layout (:mod:`.layout`, :mod:`.sums`): reads check the
  sum of every sector they return, writes compute them (reading the groups they
  cover only partly first) and, with ``readback``, read the result back.
- **bottom** (:mod:`.disks`): the disk drivers, their problems (dead, timeout,
  error, wrong data) and their recovery (RS refresh, wait for the next incarnation).

Policy. A request meets a problem, the driver is recovered, the request is
re-issued: up to ``retries`` times, then EIO with an error line that names the
driver and the problem; the filter serves on. With ``mirror``, writes go to both
drivers; a read whose main side fails is served from the backup side at once
and the main side refreshed and repaired (the good groups written back to it); a
side with ``restarts`` problems in a row is dropped from the mirror (an error
line says so) and the filter serves from the other one alone.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final, TypeVar

from hwl import sectors
from hwl.driver import blockdriver as bd
from hwl.driver.blockdriver import Geometry, Iov, RequestError
from hwl.errors import NativeBuildError
from hwl.ipc import codec
from hwl.ipc.arena import Buffer
from hwl.ipc.client import Connection, IpcError
from hwl.kernel.errno import Errno
from hwl.proto import bdev as bp
from hwl.system import proto, sef
from hwl.system.ds import Ds, DsError

from . import options
from .disks import Disk, DiskProblem, Disks, Kind
from .layout import SECTOR, Layout, Span

log = logging.getLogger("filter")
#: sumcopyto's refusals that mean "no such call here", not "a bad grant".
NO_SUMCOPY: Final = frozenset({Errno.ENOSYS, Errno.ECALLDENIED, Errno.EBADCALL})

MAX_IO: Final = 1 << 20  # logical bytes per piece of a transfer (VFS's chunk)
MEND_SECONDS: Final = 0.001  # the alarm after an answer that left a side to mend
T = TypeVar("T")
Parts = list[tuple[int, int, int]]  # (grant, size, offset in the grant)


@dataclass
class Mend:
    """A side to mend: its problem, and the good raw groups (first sector, bytes)
    to write back to it (None: nothing was read wrong, e.g. it died)."""

    problem: DiskProblem
    data: tuple[int, bytes] | None


class GiveUp(Exception):
    """A request's retries are spent; ``problem`` is the last one."""

    def __init__(self, problem: DiskProblem, tries: int) -> None:
        self.problem = problem
        self.tries = tries
        super().__init__(f"{problem} ({tries} tries)")


class Filter:
    def __init__(self, opts: options.Options) -> None:
        self.opts = opts
        self.layout = Layout(opts.sum_sec, opts.checksum) if opts.layout else None
        self.sides = [Disk(opts.driver, opts.minor, "main")]
        if opts.mirror:
            self.sides.append(Disk(opts.driver2, opts.minor2, "backup"))
        self.conn: Connection | None = None
        self.disks: Disks | None = None
        self.user: Buffer | None = None  # the client's data, contiguous
        self.ext: Buffer | None = None  # the same in the layout, whole groups
        self.back: Buffer | None = None  # read-back of a write
        self.mends: list[Mend] = []  # sides to mend once the answer is out
        self.sumcopy = True  # crc reads: the kernel checks the sums as it copies (sumcopyto)
        # crc reads: the driver copies the groups to the client through a sums grant,
        # checked by the kernel (read_direct); a mirror's other side, read after a
        # failure, reads into ``ext``, which then holds the groups to mend with.
        self.direct = self.layout is not None and self.layout.kind == "crc"
        self.stats: dict[str, int] = {"reads": 0, "writes": 0, "bad_sums": 0, "recovered": 0,
                                      "repairs": 0, "eio": 0, "resyncs": 0,
                                      "sumcopies": 0, "direct": 0}  # fmt: skip

    # ------------------------------------------------------------------ init
    def init(self, info: sef.InitInfo) -> int:
        conn = self.conn = sef.connection()
        try:
            bd.init(info)  # a live update's state_restore runs here
        except (ValueError, TypeError, KeyError, codec.CodecError) as exc:
            log.error("live update: the old version's state is unusable: %s", exc)
            return int(Errno.EINVAL)
        disks = self.disks = Disks(conn, self.opts.timeout, self.opts.deadwait)
        ext = self.layout.ext_bytes(MAX_IO // SECTOR) if self.layout else 0
        self.user = conn.arena.alloc(MAX_IO, align=4096)
        if self.layout is not None:
            try:  # the C loops, built now rather than on the first request
                hw = sectors.ready()
            except (NativeBuildError, OSError) as exc:
                log.error("the filter's C loops (sectors.c) did not load: %s", exc)
                return int(Errno.ENOSYS)
            if self.layout.kind == "crc" and not hw:
                log.warning("this CPU has no crc32 instruction: CRC32C sums in software")
            self.ext = conn.arena.alloc(ext, align=4096)
            if self.opts.readback or self.opts.mirror:  # a write's or a repair's read-back
                self.back = conn.arena.alloc(ext, align=4096)
        try:
            ds = Ds.find(conn, timeout=10)
            ds.subscribe(r"drv\.blk\..*", overwrite=True)
            disks.ds_endpoint = ds.endpoint
        except DsError as exc:
            log.warning("no driver-up events (%s): waits poll", exc)
        for disk in self.sides:
            if not disk.enabled:
                continue
            try:
                disks.wait_new(disk)
            except DiskProblem as exc:
                log.error("cannot open %s minor %d: %s", disk.label, disk.minor, exc)
                return int(Errno.ENXIO)
        log.info("filter up (%s): %s, %s sectors of %d bytes", info.type.name,
                 self.describe(), self.size // SECTOR, SECTOR)  # fmt: skip
        if self.opts.format and info.type is proto.InitType.FRESH:
            try:
                self.format()
            except (DiskProblem, GiveUp) as exc:
                log.error("format failed: %s", exc)
                return int(Errno.EIO)
        if info.type is not proto.InitType.LU:
            bd.driver_announce(conn)
        return 0

    def describe(self) -> str:
        o = self.opts
        drivers = " + ".join(f"{d.label}/{d.minor}" for d in self.sides if d.enabled)
        mode = "mirror" if o.mirror else "single"
        return f"{drivers} ({mode}, checksum {o.checksum}, sum_sec {o.sum_sec})"

    @property
    def size(self) -> int:
        """The filtered disk's bytes: the smallest side, less its checksum sectors."""
        raw = min(d.size for d in self.sides if d.enabled)
        if self.layout is None:
            return raw - raw % SECTOR
        return self.layout.filtered_sectors(raw // SECTOR) * SECTOR

    def state_save(self) -> codec.Value:
        return {"disabled": [d.label for d in self.sides if not d.enabled]}

    def state_restore(self, value: codec.Value) -> None:
        if not isinstance(value, dict) or not isinstance(value.get("disabled"), list):
            raise ValueError(f"filter state {value!r}")
        disabled = value["disabled"]
        assert isinstance(disabled, list)
        for disk in self.sides:
            disk.enabled = disk.label not in disabled

    # --------------------------------------------------------- block driver
    def open(self, minor: int, access: int) -> None:
        if minor != 0:
            raise RequestError(Errno.ENXIO, f"no minor {minor}: the filter has minor 0")

    def geometry(self, minor: int) -> Geometry | None:
        return Geometry(0, self.size, SECTOR) if minor == 0 else None

    def ioctl(
        self, minor: int, request: str, endpoint: int, fields: dict[str, codec.Value]
    ) -> dict[str, codec.Value] | None:
        self.run_mends()
        if request == bp.IOCTL_FLUSH:
            for disk in self.live():
                self.on_side(f"flush of {disk.label}", disk, lambda d: self._flush(d))
            return None
        if request == "filter_resync":
            return self.resync()
        if request == "filter_stats":
            out: dict[str, codec.Value] = dict(self.stats)
            for disk in self.sides:
                out[disk.role] = {"label": disk.label, "enabled": int(disk.enabled),
                                  "refreshes": disk.refreshes, **disk.problems}  # fmt: skip
            return out
        raise RequestError(Errno.ENOTTY, f"ioctl {request!r}")

    def _flush(self, disk: Disk) -> None:
        assert self.disks is not None
        self.disks.call(disk, bp.BDEV_IOCTL, minor=disk.minor, request=bp.IOCTL_FLUSH)

    def transfer(self, minor: int, write: bool, position: int, endpoint: int, iov: Iov) -> int:
        if minor != 0:
            raise RequestError(Errno.ENXIO, f"no minor {minor}")
        self.run_mends()
        total = sum(size for _, size in iov)
        if position % SECTOR or total % SECTOR:
            raise RequestError(Errno.EINVAL, "the filter moves whole, aligned sectors")
        total = max(0, min(total, self.size - position))
        done = 0
        while done < total:
            n = min(MAX_IO, total - done)
            piece = slice_iov(iov, done, n)
            if write:
                self.write(position + done, endpoint, piece, n)
            else:
                self.read(position + done, endpoint, piece, n)
            done += n
        self.stats["writes" if write else "reads"] += 1
        return done

    # ------------------------------------------------------------ policy
    def live(self) -> list[Disk]:
        return [d for d in self.sides if d.enabled]

    def attempt(self, disk: Disk, op: Callable[[Disk], T]) -> T:
        """``op`` on ``disk``, recovering the driver and re-issuing after a
        problem, ``retries`` times; then GiveUp."""
        assert self.disks is not None
        tries = 0
        while True:
            tries += 1
            try:
                result = op(disk)
                disk.strikes = 0
                if tries > 1:
                    self.stats["recovered"] += 1
                return result
            except DiskProblem as problem:
                self.note(problem)
                if tries > self.opts.retries:
                    raise GiveUp(problem, tries) from problem
                try:
                    self.disks.recover(problem)
                except DiskProblem as again:
                    self.note(again)

    def note(self, problem: DiskProblem) -> None:
        disk = problem.disk
        disk.problems[problem.kind.value] += 1
        disk.strikes += 1
        if problem.kind is Kind.DATA:
            self.stats["bad_sums"] += 1
        log.warning("%s (%s side, %d in a row)", problem, disk.role, disk.strikes)

    def on_side(self, what: str, disk: Disk, op: Callable[[Disk], T]) -> T | None:
        """``op`` with retries on one side of several: a side that gives up is
        dropped when another is left (None), else EIO."""
        try:
            return self.attempt(disk, op)
        except GiveUp as exc:
            if len(self.live()) > 1:
                self.disable(disk, exc.problem)
                return None
            raise self.eio(what, exc) from exc

    def disable(self, disk: Disk, problem: DiskProblem) -> None:
        disk.enabled = False
        rest = ", ".join(d.label for d in self.live())
        log.error("mirror side %s (%s) dropped after %d problems in a row (last: %s); "
                  "serving from %s alone", disk.label, disk.role, disk.strikes, problem.detail,
                  rest)  # fmt: skip

    def eio(self, what: str, exc: GiveUp) -> RequestError:
        self.stats["eio"] += 1
        p = exc.problem
        log.error("EIO: %s failed %d times: driver %s: %s: %s", what, exc.tries, p.disk.label,
                  p.kind.value, p.detail)  # fmt: skip
        return RequestError(Errno.EIO, f"{what}: driver {p.disk.label}: {p.kind.value}: {p.detail}")

    # ------------------------------------------------------------ reads
    def read(self, position: int, client: int, parts: Parts, count: int) -> None:
        what = f"read of {count} bytes at {position}"
        if self.layout is None:

            def raw(disk: Disk) -> None:
                self._to_client_direct(disk, False, position, client, parts)

            self.read_sides(what, raw, None)
            return
        first, n = position // SECTOR, count // SECTOR
        span = self.layout.span(first, n)

        def good_groups() -> tuple[int, bytes]:
            assert self.ext is not None
            return span.phys, bytes(self.ext.view[: span.count * SECTOR])

        def checked(disk: Disk) -> None:
            self.read_checked(disk, span, first, n)
            self._copy_client(False, client, parts, count)

        to_client: Callable[[Disk], None] = checked
        if self.layout.kind == "crc" and self.sumcopy and len(parts) == 1:
            grant, _size, offset = parts[0]
            to_client = functools.partial(self.read_to_client, span=span, first=first, n=n,
                                          client=client, grant=grant, offset=offset)  # fmt: skip
        if self.direct and len(parts) == 1 and parts[0][2] == 0 and not first % self.layout.sum_sec:
            direct = functools.partial(self.read_direct, span=span, first=first, n=n,
                                       client=client, grant=parts[0][0])  # fmt: skip
            self.read_sides(what, direct, good_groups, after=to_client)
            return
        self.read_sides(what, to_client, good_groups)

    def read_sides(
        self,
        what: str,
        op: Callable[[Disk], None],
        good: Callable[[], tuple[int, bytes]] | None,
        after: Callable[[Disk], None] | None = None,
    ) -> None:
        """Read from the first live side; on a problem, from the next one at once
        (with ``after`` if given: an ``op`` that leaves ``good`` nothing, a direct
        read, is followed by one that does), and mend the first after the answer
        (``good``: the raw groups to write back to it); the last side left retries."""
        live = self.live()
        for i, disk in enumerate(live):
            if i == len(live) - 1:  # the only one, or the last resort
                try:
                    self.attempt(disk, op)
                except GiveUp as exc:
                    raise self.eio(what, exc) from exc
                return
            try:
                op(disk)
                disk.strikes = 0
                return
            except DiskProblem as problem:
                self.note(problem)
                bad = problem
            other = live[i + 1]
            try:
                self.attempt(other, after or op)
            except GiveUp:
                continue  # the first side, with its retries, is the last resort now
            log.warning("%s served from %s (%s failed)", what, other.label, disk.label)
            data = good() if good is not None and bad.kind is not Kind.DEAD else None
            self.mends.append(Mend(bad, data))
            self.arm_mends()
            return

    def arm_mends(self) -> None:
        """Mend after the answer: on the alarm right after it, or before the next
        request, whichever comes first (so no write comes between)."""
        assert self.conn is not None
        try:
            self.conn.setalarm(seconds=MEND_SECONDS)
        except IpcError as exc:
            log.warning("setalarm: %s (mending before the next request)", exc)

    def run_mends(self) -> None:
        while self.mends:
            self.mend(self.mends.pop(0))

    def mend(self, m: Mend) -> None:
        """A side failed a read the other served: recover it (a dead one is only
        awaited) and write the good groups back to it, then read them back. A
        read-back that matches makes it healthy again; ``restarts`` problems in a
        row drop it from the mirror (a driver that keeps corrupting never reads
        back right), as does a dead one that does not come back in ``deadwait``."""
        assert self.disks is not None
        problem, disk = m.problem, m.problem.disk
        if not disk.enabled:
            return
        if disk.strikes >= self.opts.restarts:
            self.disable(disk, problem)
            return
        t0 = time.monotonic()
        try:
            self.disks.recover(problem)
            if m.data is not None:
                self.repair(disk, *m.data)
                self.stats["repairs"] += 1
            disk.strikes = 0
            log.info("%s mended in %.1f ms", disk.label, (time.monotonic() - t0) * 1e3)
        except DiskProblem as again:
            self.note(again)
            if again.kind is Kind.DEAD or disk.strikes >= self.opts.restarts:
                self.disable(disk, again)

    def read_checked(self, disk: Disk, span: Span, first: int, n: int) -> None:
        """Read the span into ``ext``, check it and collapse it into ``user``."""
        assert self.disks is not None and self.ext is not None and self.layout is not None
        assert self.user is not None
        self.disks.io(disk, False, span.phys * SECTOR, self.ext.offset, span.count * SECTOR)
        self._check_bad(disk, self.layout.check(self.ext.view, first, n, out=self.user.view))

    @staticmethod
    def _check_bad(disk: Disk, bad: int | None) -> None:
        """A read's check found sector ``bad`` wrong (None: all right)."""
        if bad is not None:
            raise DiskProblem(disk, Kind.DATA, f"bad checksum at sector {bad}")

    def read_direct(self, disk: Disk, *, span: Span, first: int, n: int, client: int,
                    grant: int) -> None:  # fmt: skip
        """Read the span's groups straight into the client's grant through a sums
        grant: the kernel checks each sector's sum as it copies the data out of the
        driver's DMA buffer, the data's only copy. A bad sum comes back as a DATA
        problem. A driver whose copies cannot take a sums grant (PIO: its data goes
        by port I/O) is refused, and the filter reads as before from then on."""
        assert self.disks is not None and self.layout is not None
        try:
            self.disks.read_sums(disk, span.phys * SECTOR, span.count * SECTOR, client, grant,
                                 n * SECTOR, self.layout.sum_sec, first)  # fmt: skip
        except DiskProblem as problem:
            if problem.errno is not Errno.EPERM:
                raise
            log.warning("%s took no sums grant (%s): the filter copies the data itself",
                        disk.label, problem.detail)  # fmt: skip
            self.direct = False
            self.read_to_client(disk, span=span, first=first, n=n, client=client,
                                grant=grant, offset=0)  # fmt: skip
            return
        self.stats["direct"] += 1

    def read_to_client(self, disk: Disk, *, span: Span, first: int, n: int, client: int,
                       grant: int, offset: int) -> None:  # fmt: skip
        """Read the span into ``ext``; the kernel checks its sums as it copies the
        data to the client's grant (sumcopyto): one pass where :meth:`read_checked`
        and the copy to the client take three. A kernel without the call (or a
        filter without it on its system line): the three passes, from then on."""
        assert self.disks is not None and self.ext is not None and self.layout is not None
        assert self.conn is not None
        self.disks.io(disk, False, span.phys * SECTOR, self.ext.offset, span.count * SECTOR)
        try:
            bad = self.conn.sumcopyto(client, grant, offset, self.ext.offset, first, n,
                                      self.layout.sum_sec)  # fmt: skip
        except IpcError as exc:
            if exc.errno not in NO_SUMCOPY:
                raise RequestError(exc.errno, f"the client's grant: {exc}") from exc
            log.warning("sumcopyto refused (%s): the filter checks and copies itself", exc)
            self.sumcopy = False
            assert self.user is not None
            self._check_bad(disk, self.layout.check(self.ext.view, first, n, out=self.user.view))
            self._copy_client(False, client, [(grant, n * SECTOR, offset)], n * SECTOR)
            return
        self._check_bad(disk, bad)
        self.stats["sumcopies"] += 1

    def repair(self, disk: Disk, phys: int, data: bytes) -> None:
        """Write the groups read (and checked) from the other side to ``disk``, and
        read them back: a difference is a data problem of ``disk``."""
        assert self.disks is not None and self.ext is not None and self.back is not None
        size = len(data)
        self.ext.view[:size] = data
        self.disks.io(disk, True, phys * SECTOR, self.ext.offset, size)
        self.disks.io(disk, False, phys * SECTOR, self.back.offset, size)
        if self.back.view[:size] != data:
            raise DiskProblem(disk, Kind.DATA, f"the repair at raw sector {phys} reads back wrong")
        log.info("repaired %d sectors at raw sector %d on %s", size // SECTOR, phys, disk.label)

    # ------------------------------------------------------------ writes
    def write(self, position: int, client: int, parts: Parts, count: int) -> None:
        what = f"write of {count} bytes at {position}"
        if self.layout is None:
            for disk in self.live():

                def raw(d: Disk) -> None:
                    self._to_client_direct(d, True, position, client, parts)

                self.on_side(what, disk, raw)
            return
        self._copy_client(True, client, parts, count)
        first, n = position // SECTOR, count // SECTOR
        span = self.layout.span(first, n)
        for disk in self.live():
            self.on_side(what, disk, lambda d: self.write_checked(d, span, first, n))

    def write_checked(self, disk: Disk, span: Span, first: int, n: int) -> None:
        assert self.disks is not None and self.ext is not None and self.layout is not None
        assert self.user is not None
        ext, stride = self.ext, self.layout.stride
        if span.partial:  # the sums (and data) the write does not cover come from the disk
            last = span.phys + span.count - stride
            for phys in {span.phys, last}:
                at = (phys - span.phys) * SECTOR
                self.disks.io(disk, False, phys * SECTOR, ext.offset + at, stride * SECTOR)
        self.layout.expand(ext.view, first, self.user.view, n)
        self.layout.fill(ext.view, first, n)
        size = span.count * SECTOR
        self.disks.io(disk, True, span.phys * SECTOR, ext.offset, size)
        if self.opts.readback:
            assert self.back is not None
            self.disks.io(disk, False, span.phys * SECTOR, self.back.offset, size)
            if self.back.view[:size] != ext.view[:size]:
                raise DiskProblem(disk, Kind.DATA, f"read-back of raw sector {span.phys} differs")

    # ------------------------------------------------------------ copies
    def _copy_client(self, write: bool, client: int, parts: Parts, count: int) -> None:
        """Between the client's grants and the contiguous buffer."""
        assert self.conn is not None and self.user is not None
        at = 0
        try:
            for grant, size, offset in parts:
                n = min(size, count - at)
                if n <= 0:
                    break
                if write:
                    self.conn.safecopyfrom(client, grant, offset, self.user.offset + at, n)
                else:
                    self.conn.safecopyto(client, grant, offset, self.user.offset + at, n)
                at += n
        except IpcError as exc:
            raise RequestError(exc.errno, f"the client's grant: {exc}") from exc

    def _to_client_direct(self, disk: Disk, write: bool, position: int, client: int,
                          parts: Parts) -> None:  # fmt: skip
        """No layout: the driver moves the client's bytes itself (indirect grants)."""
        assert self.disks is not None
        at = position
        for grant, size, offset in parts:
            self.disks.io_client(disk, write, at, client, grant, offset, size)
            at += size

    # ------------------------------------------------------------ format
    def format(self) -> None:
        """Write every sector's sum (the data stays) on the main side, and copy the
        result to the backup side."""
        assert self.layout is not None and self.ext is not None and self.disks is not None
        t0 = time.monotonic()
        main, *rest = self.live()
        for first, n, span in self.whole_disk():
            size = span.count * SECTOR

            def fmt(d: Disk, span: Span = span, first: int = first, n: int = n) -> None:
                assert self.disks is not None and self.ext is not None and self.layout is not None
                self.disks.io(d, False, span.phys * SECTOR, self.ext.offset, span.count * SECTOR)
                self.layout.fill(self.ext.view, first, n)
                self.disks.io(d, True, span.phys * SECTOR, self.ext.offset, span.count * SECTOR)

            self.attempt(main, fmt)
            for disk in rest:
                self.attempt(disk, functools.partial(self._put, phys=span.phys, size=size))
        log.info("formatted %d sectors (checksum %s) in %.1f s", self.size // SECTOR,
                 self.opts.checksum, time.monotonic() - t0)  # fmt: skip

    def whole_disk(self) -> Iterator[tuple[int, int, Span]]:
        """The filtered disk in pieces of MAX_IO: (first logical sector, sectors,
        the groups that hold them)."""
        assert self.layout is not None
        sectors, step = self.size // SECTOR, MAX_IO // SECTOR
        for first in range(0, sectors, step):
            n = min(step, sectors - first)
            yield first, n, self.layout.span(first, n)

    # ------------------------------------------------------------ resync
    def resync(self) -> dict[str, codec.Value]:
        """Bring every dropped mirror side back (the ``filter_resync`` ioctl): its
        driver refreshed by RS, then every group copied to it from a live side,
        checked there, written and read back, before the side serves again. Runs
        inside the ioctl, so no write comes between (32 MiB: about 0.3 s)."""
        assert self.disks is not None and self.layout is not None
        dropped = [d for d in self.sides if not d.enabled]
        live = self.live()
        if not dropped or not live:
            return {"resynced": 0}
        for disk in dropped:
            t0 = time.monotonic()
            try:
                self.disks.recover(DiskProblem(disk, Kind.DATA, "resync after it was dropped"))
                self.copy_groups(live[0], disk)
            except (DiskProblem, GiveUp) as exc:
                log.error("resync of %s from %s failed: %s", disk.label, live[0].label, exc)
                raise RequestError(Errno.EIO, f"resync of {disk.label}: {exc}") from exc
            disk.enabled, disk.strikes = True, 0
            self.stats["resyncs"] += 1
            log.info("mirror side %s (%s) resynced from %s in %.2f s: serving from both",
                     disk.label, disk.role, live[0].label, time.monotonic() - t0)  # fmt: skip
        return {"resynced": len(dropped)}

    def copy_groups(self, source: Disk, target: Disk) -> None:
        """Every group of the filtered disk from ``source`` (sums checked, with its
        retries) to ``target`` (read back: a difference is a problem of it)."""
        assert self.layout is not None and self.ext is not None and self.back is not None
        assert self.disks is not None
        for first, n, span in self.whole_disk():
            size = span.count * SECTOR
            self.attempt(source, functools.partial(self.read_checked, span=span, first=first, n=n))
            self.disks.io(target, True, span.phys * SECTOR, self.ext.offset, size)
            self.disks.io(target, False, span.phys * SECTOR, self.back.offset, size)
            if self.back.view[:size] != self.ext.view[:size]:
                raise DiskProblem(target, Kind.DATA, f"raw sector {span.phys} reads back wrong")

    def _put(self, disk: Disk, phys: int, size: int) -> None:
        assert self.disks is not None and self.ext is not None
        self.disks.io(disk, True, phys * SECTOR, self.ext.offset, size)

    def cleanup(self) -> None:
        if self.disks is not None:
            for disk in self.live():
                if disk.gen is not None:
                    self.disks.close(disk)
        log.info("cleanup: %s", self.stats)


def slice_iov(iov: Iov, start: int, count: int) -> Parts:
    """The bytes ``[start, start + count)`` of ``iov`` as (grant, size, offset) parts."""
    out: Parts = []
    at = 0
    for grant, size in iov:
        lo, hi = max(start, at), min(start + count, at + size)
        if lo < hi:
            out.append((grant, hi - lo, lo - at))
        at += size
    return out


def main(argv: list[str]) -> int:
    try:
        opts = options.parse(argv)
    except options.OptionError as exc:
        raise SystemExit(f"filter: {exc}") from None
    flt = Filter(opts)
    table = bd.BlockDriver(
        open=flt.open,
        transfer=flt.transfer,
        ioctl=flt.ioctl,
        geometry=flt.geometry,
        cleanup=flt.cleanup,
        state_save=flt.state_save,
        state_restore=flt.state_restore,
        alarm=flt.run_mends,
    )
    bd.setup(table)
    sef.setcb_init_fresh(flt.init)
    sef.startup()
    bd.task(table)
    return 0
