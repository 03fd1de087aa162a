"""VFS's data path: a READ or WRITE in chunks of :data:`CHUNK` bytes. A chunk of
whole sectors goes straight between the driver and the client (an indirect grant
of the client's grant, narrowed to the chunk: one copy); other chunks go through
VFS's bounce buffer, partial sectors merged first for a write. An inline READ
(no grant, at most VFS_INLINE_MAX bytes) gathers the data in its reply: the
driver's inline replies, or the bounce buffer's bytes; an inline WRITE's bytes go
in the driver's inline requests, or through the bounce buffer (docs/vfs.md)."""

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
            if head == 0 and span == n and op.data is not None:  # inline: in the replies
                n = min(n, self.drv_inline(driver, file.minor, start, span, op.data))
                if n == 0:
                    break
            elif head == 0 and span == n and op.payload is not None:  # inline: in the requests
                part = op.payload[op.done : op.done + n]
                self.drv_inline_write(driver, file.minor, start, part)
                file.dirty = True
            elif head == 0 and span == n:  # whole sectors: the driver copies for the client
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
                if op.payload is not None:
                    bounce.view[head : head + n] = op.payload[op.done : op.done + n]
                else:
                    conn.safecopyfrom(op.m.source, op.grant, op.done, bounce.offset + head, n)
                self.drv_io(driver, file.minor, True, start, span)
                file.dirty = True
            else:
                got = self.drv_io(driver, file.minor, False, start, span)
                n = max(0, min(n, got - head))
                if n == 0:
                    break
                if op.data is not None:
                    op.data += bounce.view[head : head + n]
                else:
                    conn.safecopyto(op.m.source, op.grant, op.done, bounce.offset + head, n)
            op.done += n
            if op.at is None:
                file.position = pos + n
        if write and op.done == 0 and op.count > 0:
            pos = file.position if op.at is None else op.at
            raise Refused(Errno.ENOSPC, f"position {pos} is at the end of the device")
        return op.done, {} if op.data is None else {"data": bytes(op.data)}

    def drv_inline_write(self, driver: Driver, minor: int, position: int, data: bytes) -> None:
        """An inline write (hwl.proto.bdev.INLINE_MAX at most): the bytes in the
        driver's request; all of them written, or EIO."""
        status, _ = self.server.devices.call(
            driver, bp.BDEV_WRITE, minor=minor, position=position, inline=True, data=data,
            id=position,
        )  # fmt: skip
        _written(status, len(data))

    def drv_inline(self, driver: Driver, minor: int, position: int, count: int,
                   data: bytearray) -> int:  # fmt: skip
        """An inline read (hwl.proto.bdev.INLINE_MAX at most): the driver's reply
        carries the bytes, appended to ``data``; the count read."""
        status, fields = self.server.devices.call(
            driver, bp.BDEV_READ, minor=minor, position=position, count=count, inline=True,
            id=position,
        )  # fmt: skip
        got = fields.get("data")
        if not isinstance(got, bytes) or len(got) != status or status > count:
            size = len(got) if isinstance(got, bytes) else type(got).__name__
            raise Refused(Errno.EIO, f"{driver.label} answered an inline read of {count} "
                                     f"bytes with {status} and data of {size}")  # fmt: skip
        data += got
        return status

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
        if write:
            _written(status, count)
        return status


def _written(status: int, count: int) -> None:
    """A driver's write answered with fewer bytes than it was given is EIO."""
    if status != count:
        raise Refused(Errno.EIO, f"the driver wrote {status} of {count} bytes")
