"""The VFS client: block device files for user processes (docs/vfs.md).

>>> vfs = Vfs.attach(run_dir)                 # a user process, through kernel.sock
>>> with vfs.open("/dev/c0d0", "r+b") as f:   # io.BufferedRandom over a DeviceFile
...     f.seek(4096)
...     data = f.read(512)
...     f.write(b"x" * 512)                   # close() flushes: VFS asks the driver
...                                           # for FLUSH CACHE before it answers

The requests, their fields and replies are :mod:`hwl.proto.vfs`'s. One READ or
WRITE moves at most :data:`VFS_MAX_IO` bytes (a short count, as POSIX allows; the
client loops). Byte positions and counts need no alignment: VFS reads and merges
partial sectors itself.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from hwl.errors import CallError
from hwl.ipc.arena import Buffer
from hwl.ipc.client import Connection, Message
from hwl.proto import codec
from hwl.proto.errno import Errno
from hwl.proto.vfs import (
    O_ACCMODE as O_ACCMODE,
)
from hwl.proto.vfs import (
    O_RDONLY as O_RDONLY,
)
from hwl.proto.vfs import (
    O_RDWR as O_RDWR,
)
from hwl.proto.vfs import (
    O_WRONLY as O_WRONLY,
)
from hwl.proto.vfs import (
    VFS_BASE as VFS_BASE,
)
from hwl.proto.vfs import (
    VFS_CLOSE as VFS_CLOSE,
)
from hwl.proto.vfs import (
    VFS_INLINE_MAX as VFS_INLINE_MAX,
)
from hwl.proto.vfs import (
    VFS_IOCTL as VFS_IOCTL,
)
from hwl.proto.vfs import (
    VFS_LSEEK as VFS_LSEEK,
)
from hwl.proto.vfs import (
    VFS_MAX_IO as VFS_MAX_IO,
)
from hwl.proto.vfs import (
    VFS_OPEN as VFS_OPEN,
)
from hwl.proto.vfs import (
    VFS_READ as VFS_READ,
)
from hwl.proto.vfs import (
    VFS_REQUEST_NAMES as VFS_REQUEST_NAMES,
)
from hwl.proto.vfs import (
    VFS_WRITE as VFS_WRITE,
)
from hwl.system.call import Attachable, attach, request
from hwl.system.rs import Rs, RsError

__all__ = ["DeviceFile", "Vfs", "VfsError"]

#: The default buffer of :meth:`Vfs.open` (a whole DMA command of at_wini).
DEFAULT_BUFFER: Final = 128 * 1024


class VfsError(CallError, OSError):  # type: ignore[misc]  # errno: an Errno is an int
    """A VFS call failed: ``errno`` (also ``minix_errno``) is the MINIX errno, which
    is ``OSError.errno`` too; ``str()`` is OSError's ("[Errno 5] vfs read: ...")."""

    prefix = "vfs "

    def __init__(self, errno: Errno, call: str, detail: str = "") -> None:
        super().__init__(errno, call, detail)
        self.errno = errno  # OSError's __init__ (next after HwlError's) cleared it
        OSError.__init__(self, int(errno), CallError.__str__(self))  # args: (errno, text)
        self.errno = self.minix_errno = errno

    def __str__(self) -> str:
        return OSError.__str__(self)


def mode_flags(mode: str) -> int:
    """``open()``-style mode to O_* flags; only binary modes are devices."""
    chars = set(mode)
    if not chars <= set("rwab+x") or "b" not in chars:
        raise ValueError(f"mode {mode!r}: a device is opened in a binary mode ('rb', 'r+b', 'wb')")
    if "+" in chars:
        return O_RDWR
    if "w" in chars or "a" in chars or "x" in chars:
        return O_WRONLY
    return O_RDONLY


def _io_fields(
    fd: int, count: int, position: int | None, **more: codec.Value
) -> dict[str, codec.Value]:
    """A READ's or WRITE's fields: ``position`` only for a pread or pwrite."""
    fields: dict[str, codec.Value] = {"fd": fd, "count": count, **more}
    if position is not None:
        fields["position"] = position
    return fields


class Vfs(Attachable):
    """VFS at ``endpoint`` (looked up at RS as ``vfs`` if None), called over ``conn``.
    A read or write of up to VFS_INLINE_MAX bytes carries its data in the messages
    (no grant: at_wini runs it on its command ring, the kernel's process off the
    path) unless ``inline`` is False (the benchmark's path before issue 17)."""

    def __init__(
        self, conn: Connection, endpoint: int | None = None, timeout: float | None = None
    ) -> None:
        self.conn = conn
        self.timeout = timeout
        self.inline = True
        if endpoint is None:
            try:
                endpoint = Rs(conn, timeout=timeout).lookup("vfs")
            except RsError as exc:
                raise VfsError(exc.errno, "lookup", exc.detail) from exc
        self.endpoint = endpoint

    @classmethod
    def attach(cls, run_dir: str | Path, *, timeout: float | None = None) -> Vfs:
        """A user process's VFS: attach to the kernel of the machine in ``run_dir``."""
        return attach(run_dir, lambda conn: cls(conn, timeout=timeout))

    # ------------------------------------------------------------- raw calls
    def call(self, m_type: int, fields: dict[str, codec.Value]) -> Message:
        """One request; a negative answer raises :class:`VfsError`."""
        # A timeout is ETIMEDOUT, not EINTR: io's buffered objects would silently
        # retry an EINTR OSError.
        return request(
            self.conn, self.endpoint, m_type, fields,
            call=VFS_REQUEST_NAMES.get(m_type, hex(m_type)), server="VFS", error=VfsError,
            timeout=self.timeout, counts=True, timed_out=Errno.ETIMEDOUT,
        )  # fmt: skip

    def open_fd(self, path: str, flags: int = O_RDONLY) -> int:
        return self.call(VFS_OPEN, {"path": path, "flags": flags}).m_type

    def close_fd(self, fd: int) -> None:
        self.call(VFS_CLOSE, {"fd": fd})

    def lseek(self, fd: int, offset: int, whence: int = os.SEEK_SET) -> int:
        position = self.call(VFS_LSEEK, {"fd": fd, "offset": offset, "whence": whence}).get(
            "position"
        )
        assert isinstance(position, int)
        return position

    def ioctl(self, fd: int, request: str) -> dict[str, codec.Value]:
        return dict(self.call(VFS_IOCTL, {"fd": fd, "request": request}).fields)

    def buffer(self, size: int) -> Buffer:
        """``size`` bytes of this process's arena. Reads into it and writes from it
        (:meth:`read_into`, :meth:`write_from`) move the data with one copy, the
        kernel's between the driver's DMA buffer and this memory, where a
        ``memoryview`` costs a second one here. Give it back with :meth:`free_buffer`."""
        return self.conn.arena.alloc(size)

    def free_buffer(self, buf: Buffer) -> None:
        self.conn.arena.free(buf)

    def read_into(self, fd: int, buf: memoryview | Buffer, position: int | None = None) -> int:
        """One READ into ``buf`` (at most VFS_MAX_IO bytes); the count read.
        With ``position``, a pread: read there and leave the fd's position alone."""
        count = min(buf.size if isinstance(buf, Buffer) else len(buf), VFS_MAX_IO)
        if count == 0:
            return 0
        if count <= VFS_INLINE_MAX and self.inline:  # the data in the reply: no grant
            reply = self.call(VFS_READ, _io_fields(fd, count, position, inline=True))
            data, n = reply.get("data"), reply.m_type
            if not isinstance(data, bytes) or len(data) != n or n > count:
                raise VfsError(Errno.EIO, "read", f"an inline reply of {n} bytes with {data!r:.40}")
            (buf.view if isinstance(buf, Buffer) else buf)[:n] = data
            return n
        with self._granted(buf, count, vfs_writes=True) as (local, gid):
            n = self._io(VFS_READ, fd, count, gid, position)
            if not isinstance(buf, Buffer):
                buf[:n] = local.view[:n]
            return n

    def write_from(self, fd: int, data: memoryview | Buffer, position: int | None = None) -> int:
        """One WRITE of ``data`` (at most VFS_MAX_IO bytes); the count written.
        With ``position``, a pwrite: write there and leave the fd's position alone."""
        count = min(data.size if isinstance(data, Buffer) else len(data), VFS_MAX_IO)
        if count == 0:
            return 0
        if count <= VFS_INLINE_MAX and self.inline:  # the data in the request: no grant
            payload = bytes((data.view if isinstance(data, Buffer) else data)[:count])
            fields = _io_fields(fd, count, position, inline=True, data=payload)
            return self.call(VFS_WRITE, fields).m_type
        with self._granted(data, count, vfs_writes=False) as (local, gid):
            if not isinstance(data, Buffer):
                local.view[:count] = data[:count]
            return self._io(VFS_WRITE, fd, count, gid, position)

    @contextlib.contextmanager
    def _granted(
        self, mine: memoryview | Buffer, count: int, *, vfs_writes: bool
    ) -> Iterator[tuple[Buffer, int]]:
        """A grant to VFS of ``count`` bytes: of ``mine`` if it is an arena buffer,
        else of a bounce buffer in the arena (freed after the request); revoked
        after the request."""
        arena = self.conn.arena
        local = mine if isinstance(mine, Buffer) else arena.alloc(count)
        try:
            gid = arena.grant(self.endpoint, local.offset, count,
                              read=not vfs_writes, write=vfs_writes)  # fmt: skip
            try:
                yield local, gid
            finally:
                arena.revoke(gid)
        finally:
            if local is not mine:
                arena.free(local)

    def _io(self, m_type: int, fd: int, count: int, gid: int, position: int | None) -> int:
        return self.call(m_type, _io_fields(fd, count, position, grant=gid)).m_type

    def pread(self, fd: int, count: int, position: int) -> bytes:
        """Up to ``count`` bytes (one READ) at ``position``; the fd's position stays."""
        buf = bytearray(min(count, VFS_MAX_IO))
        return bytes(buf[: self.read_into(fd, memoryview(buf), position)])

    def pwrite(self, fd: int, data: bytes, position: int) -> int:
        """Write ``data`` (one WRITE) at ``position``; the fd's position stays."""
        return self.write_from(fd, memoryview(data), position)

    # ------------------------------------------------------------- file objects
    def open(self, path: str, mode: str = "rb", buffering: int = -1) -> io.IOBase:
        """A file object on a device: ``buffering=0`` gives the :class:`DeviceFile`,
        else an ``io.BufferedRandom`` ('+'), ``BufferedReader`` or ``BufferedWriter``."""
        flags = mode_flags(mode)
        raw = DeviceFile(self, path, self.open_fd(path, flags), flags, mode)
        if buffering == 0:
            return raw
        size = DEFAULT_BUFFER if buffering < 0 else buffering
        if flags == O_RDWR:
            return io.BufferedRandom(raw, size)
        if flags == O_WRONLY:
            return io.BufferedWriter(raw, size)  # type: ignore[type-var,unused-ignore]
        return io.BufferedReader(raw, size)


class DeviceFile(io.RawIOBase):
    """An open device file: unbuffered reads, writes and seeks through VFS."""

    def __init__(self, vfs: Vfs, path: str, fd: int, flags: int, mode: str) -> None:
        super().__init__()
        self.vfs = vfs
        self.name = path
        self.fd = fd
        self.flags = flags
        self.mode = mode

    def readable(self) -> bool:
        return self.flags in (O_RDONLY, O_RDWR)

    def writable(self) -> bool:
        return self.flags in (O_WRONLY, O_RDWR)

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.fd

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        self._checkClosed()  # type: ignore[attr-defined,unused-ignore]
        if not self.readable():
            raise io.UnsupportedOperation("not open for reading")
        return self.vfs.read_into(self.fd, memoryview(buffer).cast("B"))

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self._checkClosed()  # type: ignore[attr-defined,unused-ignore]
        if not self.writable():
            raise io.UnsupportedOperation("not open for writing")
        return self.vfs.write_from(self.fd, memoryview(b).cast("B"))

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._checkClosed()  # type: ignore[attr-defined,unused-ignore]
        return self.vfs.lseek(self.fd, offset, whence)

    def tell(self) -> int:
        return self.seek(0, os.SEEK_CUR)

    def ioctl(self, request: str) -> dict[str, codec.Value]:
        return self.vfs.ioctl(self.fd, request)

    def size(self) -> int:
        size = self.ioctl("geometry")["size"]
        assert isinstance(size, int)
        return size

    def close(self) -> None:
        if not self.closed:
            try:
                self.vfs.close_fd(self.fd)
            finally:
                super().close()
