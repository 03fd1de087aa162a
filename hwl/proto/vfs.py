"""The VFS protocol: block device files for user processes (docs/vfs.md).

Requests are ``sendrec`` to VFS's endpoint; the reply's m_type is the result
(fd, byte count, 0) or a negative MINIX errno with an ``error`` field:

| request | fields | reply |
|---|---|---|
| ``VFS_OPEN`` | path, flags (``O_RDONLY`` / ``O_WRONLY`` / ``O_RDWR``) | fd; field ``size`` |
| ``VFS_CLOSE`` | fd | 0 (after a flush if the fd wrote) |
| ``VFS_READ`` | fd, count, grant (VFS writes it); position (pread) | bytes read (0 at the end) |
| ``VFS_WRITE`` | fd, count, grant (VFS reads it); position (pwrite) | bytes written |
| ``VFS_LSEEK`` | fd, offset, whence (0 set, 1 cur, 2 end) | 0; field ``position`` |
| ``VFS_IOCTL`` | fd, request (``"geometry"``, ``"flush"``) | 0; the driver's fields |

One READ or WRITE moves at most :data:`VFS_MAX_IO` bytes (a short count, as POSIX
allows; the client loops).
"""

from __future__ import annotations

from typing import Final

VFS_BASE: Final = 0xA00
VFS_OPEN: Final = VFS_BASE + 1
VFS_CLOSE: Final = VFS_BASE + 2
VFS_READ: Final = VFS_BASE + 3
VFS_WRITE: Final = VFS_BASE + 4
VFS_LSEEK: Final = VFS_BASE + 5
VFS_IOCTL: Final = VFS_BASE + 6

VFS_REQUEST_NAMES: Final = {
    VFS_OPEN: "open",
    VFS_CLOSE: "close",
    VFS_READ: "read",
    VFS_WRITE: "write",
    VFS_LSEEK: "lseek",
    VFS_IOCTL: "ioctl",
}

O_RDONLY: Final = 0
O_WRONLY: Final = 1
O_RDWR: Final = 2
O_ACCMODE: Final = 3

#: The most one READ or WRITE moves (a bigger count gets a short answer).
VFS_MAX_IO: Final = 1 << 20
