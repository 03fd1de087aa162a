"""The Internet checksum (RFC 1071) and the IPv4 pseudo-header TCP and UDP sum over."""

from __future__ import annotations

import struct

_PSEUDO = struct.Struct("!4s4sBBH")


def ones_sum(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    """The 16-bit one's-complement sum of ``data`` (odd lengths padded with a zero
    byte) added to ``start``, folded to 16 bits."""
    view = memoryview(data).cast("B")
    total = start
    even = len(view) & ~1
    if even:
        total += sum(memoryview(view[:even]).cast("H"))
    if len(view) & 1:
        total += view[-1] if _LITTLE else view[-1] << 8
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def checksum(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    """The checksum field's value for ``data`` (whose checksum field is zero): the
    one's complement of the sum, in network byte order as an int."""
    folded = ones_sum(data, start)
    value = ~folded & 0xFFFF
    return _swap(value) if _LITTLE else value


def pseudo_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """The pseudo-header's sum (source, destination, protocol, length), to pass as
    ``start`` for a TCP or UDP checksum."""
    return ones_sum(_PSEUDO.pack(src, dst, 0, proto, length))


def valid(data: bytes | bytearray | memoryview, start: int = 0) -> bool:
    """Whether ``data`` with its checksum field in place sums to all ones."""
    return ones_sum(data, start) == 0xFFFF


def _swap(value: int) -> int:
    return ((value & 0xFF) << 8) | (value >> 8)


_LITTLE = struct.pack("=H", 1) == b"\x01\x00"
