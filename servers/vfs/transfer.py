"""VFS's data path: a READ or WRITE in chunks of :data:`CHUNK` bytes. A chunk of
whole sectors goes straight between the driver and the client (an indirect grant
of the client's grant, narrowed to the chunk: one copy); other chunks go through
VFS's bounce buffer, partial sectors merged first for a write (docs/vfs.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from hwl.ipc.arena import Buffer
from hwl.proto import bdev as bp
from hwl.proto.errno import Errno

from .devices import Driver, Fields
from .errors import Refused
from .files import File

if TYPE_CHECKING:
    from .main import VfsServer
    from .requests import Op

SECTOR: Final = 512
CHUNK: Final = 1 << 20  # one at_wini DMA command on an LBA48 drive


class Transfers:
    def __init__(self, server: VfsServer) -> None:
        self.server = server
        self.bounce: Buffer | None = None

    def transfer(self, driver: Driver, op: Op, file: File, write: bool) -> tuple[int, Fields]:
        assert self.bounce is not None
        conn, bounce = self.server.conn, self.bounce
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
        devices = self.server.devices
        ep = devices.endpoint(driver)
        arena = self.server.conn.arena
        if client is None:
            gid = arena.grant(ep, self.bounce.offset, count, read=write, write=not write)
        else:
            gid = arena.grant_indirect(ep, client.m.source, client.grant, client.done, count,
                                       read=write, write=not write)  # fmt: skip
        try:
            status, _ = devices.call(
                driver, bp.BDEV_WRITE if write else bp.BDEV_READ,
                minor=minor, position=position, count=count, grant=gid, id=position,
            )  # fmt: skip
        finally:
            arena.revoke(gid)
        if write and status != count:
            raise Refused(Errno.EIO, f"the driver wrote {status} of {count} bytes")
        return status
