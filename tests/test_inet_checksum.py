"""The Internet checksum against a plain RFC 1071 implementation, and its use."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from hwl.servers.inet.checksum import checksum, pseudo_sum, valid


def rfc1071(data: bytes, start: int = 0) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = start + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@given(st.binary(max_size=1600))
def test_checksum_is_rfc1071(data: bytes) -> None:
    assert checksum(data) == rfc1071(data)


@given(st.binary(min_size=2, max_size=1600).map(lambda b: b[: len(b) & ~1]))
def test_a_filled_in_checksum_validates(data: bytes) -> None:
    data = b"\0\0" + data
    filled = struct.pack("!H", checksum(data)) + data[2:]
    assert valid(filled)
    if any(filled[2:]):
        flipped = bytearray(filled)
        flipped[-1] ^= 0x01
        assert not valid(bytes(flipped))


def test_known_ipv4_header() -> None:
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert checksum(header) == 0xB861


def test_udp_with_pseudo_header() -> None:
    src, dst = bytes([10, 0, 2, 15]), bytes([10, 0, 2, 2])
    payload = b"hello"
    header = struct.pack("!HHHH", 40000, 7, 8 + len(payload), 0)
    start = pseudo_sum(src, dst, 17, 8 + len(payload))
    value = checksum(header + payload, start)
    pseudo = src + dst + struct.pack("!BBH", 0, 17, 8 + len(payload))
    assert value == rfc1071(pseudo + header + payload)
