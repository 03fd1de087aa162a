"""The block-device protocol (MINIX's BDEV_* requests), spoken by every block
driver built on ``hwl.driver.blockdriver`` (docs/drivers.md).

Requests are ``sendrec`` from the client. Fields:

- ``BDEV_OPEN``: minor, access (``BDEV_R_BIT | BDEV_W_BIT``)
- ``BDEV_CLOSE``: minor
- ``BDEV_READ`` / ``BDEV_WRITE``: minor, position (bytes, sector aligned),
  count (bytes), grant (made by the client in its arena for the driver), id
- ``BDEV_READ`` with ``inline`` true and no grant: up to :data:`INLINE_MAX` bytes,
  answered in the reply's ``data``; ``BDEV_WRITE`` with ``inline`` true, the
  bytes in ``data`` (at most INLINE_MAX) and no grant or count (no grant, no copy
  by the kernel: at_wini's command ring moves them without the kernel's process)
- ``BDEV_GATHER`` / ``BDEV_SCATTER``: minor, position, iov (``[[grant, size], ...]``), id
- ``BDEV_IOCTL``: minor, request (``"geometry"``, ``"flush"``), id

Every request may carry ``id`` (echoed in the reply) and ``gen`` (the driver
incarnation the client believes it talks to, as the open reply said); a request
whose ``gen`` names another incarnation is dropped and answered ERESTART.

The reply's ``m_type`` is 0 (or the byte count of a transfer) or a negative MINIX
errno; its fields are ``id``, ``gen`` and, for errors, ``error``.
"""

from __future__ import annotations

from hwl.proto.ds import DS_DRIVER_UP as DS_DRIVER_UP  # the value of drv.blk.<label>

BDEV_BASE = 0xB00
BDEV_OPEN = BDEV_BASE + 1
BDEV_CLOSE = BDEV_BASE + 2
BDEV_READ = BDEV_BASE + 3
BDEV_WRITE = BDEV_BASE + 4
BDEV_GATHER = BDEV_BASE + 5
BDEV_SCATTER = BDEV_BASE + 6
BDEV_IOCTL = BDEV_BASE + 7

INLINE_MAX = 4096  # an inline read's most: its reply stays within a message's payload

BDEV_R_BIT = 0x1
BDEV_W_BIT = 0x2

BDEV_REQUEST_NAMES = {
    BDEV_OPEN: "open",
    BDEV_CLOSE: "close",
    BDEV_READ: "read",
    BDEV_WRITE: "write",
    BDEV_GATHER: "gather",
    BDEV_SCATTER: "scatter",
    BDEV_IOCTL: "ioctl",
}

IOCTL_GEOMETRY = "geometry"
IOCTL_FLUSH = "flush"


def is_request(m_type: int) -> bool:
    return m_type in BDEV_REQUEST_NAMES
