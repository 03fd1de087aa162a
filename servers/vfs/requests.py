"""VFS's requests: each checked (what needs no driver is answered at once), then
run to its answer as an :class:`Op` that survives a driver's restart."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hwl.ipc.client import KernelGone, Message
from hwl.proto import bdev as bp
from hwl.proto import vfs as vp
from hwl.proto.errno import Errno
from hwl.system.serve import Answering

from . import devmap
from .devices import Driver, Fields, Minor
from .errors import DriverDown, Refused
from .files import MAX_FDS, REAP_SECONDS, File

if TYPE_CHECKING:
    from .main import VfsServer

log = logging.getLogger(__name__)
#: A request's work: a failed kernel call is the client's grant (safecopy), not the
#: driver's (a driver's failure is Refused or DriverDown), answered with its errno.
_RUNNING = Answering(
    log, malformed=(), call_text=lambda name, exc: str(exc), passes=(KernelGone, DriverDown)
)


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
    data: bytearray | None = None  # an inline READ's data so far (its reply carries it)
    payload: bytes | None = None  # an inline WRITE's data (its request brought it)


class Requests:
    def __init__(self, server: VfsServer) -> None:
        self.server = server

    def make_op(self, m: Message) -> Op | None:
        """Check a request; answer what needs no driver, else the Op to run."""
        server, files = self.server, self.server.files
        req = vp.parse_request(m.m_type, m.fields)  # FieldError: EINVAL
        if isinstance(req, vp.VfsOpen):
            files.reap()
            path, flags = req.path, req.flags
            if flags & ~vp.O_ACCMODE or flags & vp.O_ACCMODE == vp.O_ACCMODE:
                raise Refused(Errno.EINVAL, f"flags {flags:#x}")
            found = devmap.lookup(path)
            if found is None:
                raise Refused(Errno.ENOENT, f"no device file {path!r}")
            fd = files.free_fd(m.source)
            if fd is None:
                raise Refused(Errno.EMFILE, f"{MAX_FDS} files open")
            label, minor = found
            assert server.tracker is not None
            driver = server.tracker.track(label)
            return Op(m, driver, None, count=minor, opening=(path, flags, m.source, fd))
        file = files.table.get((m.source, req.fd))
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
            server.reply(m, 0, {"position": file.position})
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
            if req.inline and (
                count > vp.VFS_INLINE_MAX
                or (write and (req.data is None or len(req.data) != count))
                or (not write and req.data is not None)
            ):
                raise Refused(Errno.EINVAL, f"an inline {'WRITE' if write else 'READ'} of "
                                            f"{count} bytes (at most {vp.VFS_INLINE_MAX}; a "
                                            "WRITE's data that long, a READ's none)")  # fmt: skip
            data = bytearray() if req.inline and not write else None
            payload = req.data if req.inline and write else None
            return Op(m, file.driver, file, count=count, grant=grant, at=at, req=req,
                      data=data, payload=payload)  # fmt: skip
        return Op(m, file.driver, file, req=req)  # CLOSE, IOCTL

    def run(self, driver: Driver, op: Op) -> bool:
        """Run ``op`` to its answer; False (op kept by the caller) if the driver is down."""
        name = vp.VFS_REQUEST_NAMES[op.m.m_type]
        try:
            status, fields = _RUNNING.answer(lambda: self.execute(driver, op), name, op.m.source)
        except DriverDown:
            return False
        self.server.reply(op.m, status, fields)
        return True

    def execute(self, driver: Driver, op: Op) -> tuple[int, Fields]:
        server = self.server
        t = op.m.m_type
        if t == vp.VFS_OPEN:
            return self.do_open(driver, op)
        file = op.file
        assert file is not None
        if t == vp.VFS_CLOSE:
            if file.dirty:  # before the fd goes: a driver down keeps the request
                server.devices.call(driver, bp.BDEV_IOCTL, minor=file.minor,
                                    request=bp.IOCTL_FLUSH)  # fmt: skip
                file.dirty = False
            assert isinstance(op.req, vp.VfsFd)
            server.files.close((op.m.source, op.req.fd))
            return 0, {}
        if t == vp.VFS_IOCTL:
            assert isinstance(op.req, vp.VfsIoctl)
            request = op.req.request
            if request not in (bp.IOCTL_GEOMETRY, bp.IOCTL_FLUSH):
                raise Refused(Errno.ENOTTY, f"ioctl {request!r}")
            _, fields = server.devices.call(driver, bp.BDEV_IOCTL, minor=file.minor,
                                            request=request)  # fmt: skip
            if request == bp.IOCTL_FLUSH:
                file.dirty = False
            return 0, {k: v for k, v in fields.items() if k in ("base", "size", "sector")}
        return server.transfers.transfer(driver, op, file, t == vp.VFS_WRITE)

    def do_open(self, driver: Driver, op: Op) -> tuple[int, Fields]:
        server, devices, table = self.server, self.server.devices, self.server.files.table
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
            devices.call(driver, bp.BDEV_OPEN, minor=minor_no, access=want)
            _, geometry = devices.call(driver, bp.BDEV_IOCTL, minor=minor_no, request="geometry")
            size = geometry.get("size")
            if not isinstance(size, int):
                raise Refused(Errno.EIO, f"the driver answered no size: {geometry}")
            if minor is None:
                minor = driver.minors[minor_no] = Minor()
            else:  # opened twice on the driver now: balance it
                devices.call(driver, bp.BDEV_CLOSE, minor=minor_no)
            minor.access, minor.size = want, size
        if (client, fd) in table:  # the client took that number meanwhile
            fd = next(n for n in range(MAX_FDS) if (client, n) not in table)
        minor.opens += 1
        table[(client, fd)] = File(driver, minor_no, flags)
        log.info("open %s -> fd %d of %d (%s minor %d)", path, fd, client, driver.label, minor_no)
        server.arm(REAP_SECONDS)
        return fd, {"size": minor.size}
