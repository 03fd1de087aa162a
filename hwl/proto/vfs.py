"""The VFS protocol: block device files for user processes (docs/vfs.md).

Requests are ``sendrec`` to VFS's endpoint; the reply's m_type is the result
(fd, byte count, 0) or a negative MINIX errno with an ``error`` field:

| request | fields | reply |
|---|---|---|
| ``VFS_OPEN`` | path, flags (``O_RDONLY`` / ``O_WRONLY`` / ``O_RDWR``) | fd; field ``size`` |
| ``VFS_CLOSE`` | fd | 0 (after a flush if the fd wrote) |
| ``VFS_READ`` | fd, count, grant (VFS writes it); position (pread) | bytes read (0 at the end) |
| ``VFS_READ`` inline | fd, count (≤ VFS_INLINE_MAX), inline true; position | count; ``data`` |
| ``VFS_WRITE`` | fd, count, grant (VFS reads it); position (pwrite) | bytes written |
| ``VFS_WRITE`` inline | fd, count, inline true, data (count bytes); position | bytes written |
| ``VFS_LSEEK`` | fd, offset, whence (0 set, 1 cur, 2 end) | 0; field ``position`` |
| ``VFS_IOCTL`` | fd, request (``"geometry"``, ``"flush"``) | 0; the driver's fields |

One READ or WRITE moves at most :data:`VFS_MAX_IO` bytes (a short count, as POSIX
allows; the client loops).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from hwl.proto import bdev
from hwl.proto.fields import FieldError, get_int, get_optional_int, get_str

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
#: The most an inline READ asks for or an inline WRITE brings: the data travels in
#: the messages, to and from the block driver too (hwl.proto.bdev.INLINE_MAX).
VFS_INLINE_MAX: Final = bdev.INLINE_MAX

MAX_PATH: Final = 1024
_I64 = (-(1 << 63), (1 << 63) - 1)
Fields = Mapping[str, object]


# ------------------------------------------------------------ typed requests
# Built from a request's fields; a bad field raises FieldError, which VFS answers
# with EINVAL and the reason. Values a field may hold but VFS refuses (an unknown
# access mode, a negative position) are VFS's to check, with their own errno.


@dataclass(frozen=True)
class VfsOpen:
    path: str
    flags: int

    @classmethod
    def from_fields(cls, fields: Fields) -> VfsOpen:
        path = get_str(fields, "path")
        if len(path) > MAX_PATH:
            raise FieldError(f"field 'path' is {len(path)} characters; the limit is {MAX_PATH}")
        return cls(path, get_int(fields, "flags", *_I64))


@dataclass(frozen=True)
class VfsFd:
    """VFS_CLOSE, and the fd of every request but OPEN."""

    fd: int

    @classmethod
    def from_fields(cls, fields: Fields) -> VfsFd:
        return cls(get_int(fields, "fd", *_I64))


@dataclass(frozen=True)
class VfsLseek:
    fd: int
    offset: int
    whence: int

    @classmethod
    def from_fields(cls, fields: Fields) -> VfsLseek:
        return cls(
            get_int(fields, "fd", *_I64),
            get_int(fields, "offset", *_I64),
            get_int(fields, "whence", *_I64),
        )


@dataclass(frozen=True)
class VfsIo:
    """VFS_READ / VFS_WRITE; ``position`` None moves the fd's own position."""

    fd: int
    count: int
    grant: int  # -1 for an inline READ or WRITE
    position: int | None
    inline: bool = False  # the data in the message, no grant (VFS_INLINE_MAX at most)
    data: bytes | None = None  # an inline WRITE's bytes

    @classmethod
    def from_fields(cls, fields: Fields) -> VfsIo:
        inline = fields.get("inline", False)
        if not isinstance(inline, bool):
            raise FieldError(f"field 'inline' is not a boolean: {inline!r}")
        data = fields.get("data")
        if data is not None and not isinstance(data, bytes):
            raise FieldError(f"field 'data' is not bytes: {type(data).__name__}")
        return cls(
            get_int(fields, "fd", *_I64),
            get_int(fields, "count", *_I64),
            -1 if inline else get_int(fields, "grant", *_I64),
            get_optional_int(fields, "position", *_I64),
            inline,
            data,
        )


@dataclass(frozen=True)
class VfsIoctl:
    fd: int
    request: str

    @classmethod
    def from_fields(cls, fields: Fields) -> VfsIoctl:
        return cls(get_int(fields, "fd", *_I64), get_str(fields, "request"))


VfsRequest = VfsOpen | VfsFd | VfsLseek | VfsIo | VfsIoctl

_TYPES: Final[dict[int, type[VfsOpen | VfsFd | VfsLseek | VfsIo | VfsIoctl]]] = {
    VFS_OPEN: VfsOpen,
    VFS_CLOSE: VfsFd,
    VFS_READ: VfsIo,
    VFS_WRITE: VfsIo,
    VFS_LSEEK: VfsLseek,
    VFS_IOCTL: VfsIoctl,
}


def parse_request(m_type: int, fields: Fields) -> VfsRequest:
    """The typed request of a VFS message; FieldError for a bad field, KeyError for
    an unknown ``m_type``."""
    return _TYPES[m_type].from_fields(fields)
