"""Per-sector checksums, as MINIX's filter computes them (sum.c's calc_sum).

Each sum covers the sector's data and its logical sector number, so a sector
read from the wrong place fails as surely as a flipped bit. The number goes in
as 4 little-endian bytes (MINIX's ``unsigned long`` on i386):

- ``nil``: the sector number alone (4 bytes): the layout, no checksum.
- ``xor``: the XOR of the sector's 32 16-byte words, its first 4 bytes XORed
  with the sector number (16 bytes).
- ``crc``: CRC32 (zlib's, the IEEE polynomial) of the data, XORed with the
  sector number (4 bytes).
- ``md5``: MD5 of the data followed by the sector number (16 bytes).
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable
from typing import Final

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
    return _U32.pack(zlib.crc32(data) ^ (sector & 0xFFFFFFFF))


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
    if kind == "crc":  # the hot path: one pack for the run
        crc32 = zlib.crc32
        values = [
            crc32(data[at + i * SECTOR : at + (i + 1) * SECTOR]) ^ ((first + i) & 0xFFFFFFFF)
            for i in range(count)
        ]
        return struct.pack(f"<{count}I", *values)
    f = FUNCS[kind]
    view = memoryview(data)
    return b"".join(
        f(first + i, view[at + i * SECTOR : at + (i + 1) * SECTOR]) for i in range(count)
    )
