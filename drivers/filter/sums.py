"""Per-sector checksums, as MINIX's filter computes them (sum.c's calc_sum).

Each sum covers the sector's data and its logical sector number, so a sector
read from the wrong place fails as surely as a flipped bit. The number goes in
as 4 little-endian bytes (MINIX's ``unsigned long`` on i386):

- ``nil``: the sector number alone (4 bytes): the layout, no checksum.
- ``xor``: the XOR of the sector's 32 16-byte words, its first 4 bytes XORed
  with the sector number (16 bytes).
- ``crc``: CRC32C (the Castagnoli polynomial, as ext4 and iSCSI use) of the
  data, XORed with the sector number (4 bytes). MINIX used the IEEE CRC32;
  CRC32C is the one the CPU computes (``crc32`` instruction), so a 1 MiB read
  checks its 2048 sums in tens of microseconds (sectors.c, sectors.py).
- ``md5``: MD5 of the data followed by the sector number (16 bytes).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from typing import Final

from hwl import sectors

SECTOR: Final = 512
SIZES: Final = {"nil": 4, "xor": 16, "crc": 4, "md5": 16}
_U32 = struct.Struct("<I")
_MASK128 = (1 << 128) - 1


def _nil(sector: int, data: memoryview) -> bytes:
    return _U32.pack(sector & 0xFFFFFFFF)


def _xor(sector: int, data: memoryview) -> bytes:
    x = int.from_bytes(data, "little")
    for half in (2048, 1024, 512, 256, 128):  # fold 4096 bits down to 128
        x = (x >> half) ^ (x & ((1 << half) - 1))
    x ^= sector & 0xFFFFFFFF
    return (x & _MASK128).to_bytes(16, "little")


def _crc(sector: int, data: memoryview) -> bytes:
    return _U32.pack(sectors.crc32c(data) ^ (sector & 0xFFFFFFFF))


def _md5(sector: int, data: memoryview) -> bytes:
    h = hashlib.md5(data, usedforsecurity=False)
    h.update(_U32.pack(sector & 0xFFFFFFFF))
    return h.digest()


FUNCS: Final[dict[str, Callable[[int, memoryview], bytes]]] = {
    "nil": _nil,
    "xor": _xor,
    "crc": _crc,
    "md5": _md5,
}


def calc(kind: str, sector: int, data: bytes | memoryview) -> bytes:
    """The sum of one sector's ``data`` (512 bytes) at logical ``sector``."""
    return FUNCS[kind](sector, memoryview(data))


def run(kind: str, first: int, data: bytes | memoryview, count: int, at: int = 0) -> bytes:
    """The sums of ``count`` consecutive sectors from logical ``first``, whose data
    starts at byte ``at`` of ``data``, concatenated."""
    f = FUNCS[kind]
    view = memoryview(data)
    return b"".join(
        f(first + i, view[at + i * SECTOR : at + (i + 1) * SECTOR]) for i in range(count)
    )
