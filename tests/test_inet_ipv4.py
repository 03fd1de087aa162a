"""IPv4 header checks, building and routing (servers/inet/ipv4.py)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwl.hw import ether as hw
from hwl.servers.inet import ipv4
from hwl.servers.inet.checksum import checksum
from hwl.servers.inet.counters import Drop, IpCounters

A = ipv4.address("10.0.2.15")
B = ipv4.address("10.0.2.2")


def header(
    *, vihl: int = 0x45, total: int | None = None, frag: int = 0, payload: bytes = b"data",
    fix: bool = True, proto: int = 17,
) -> bytes:  # fmt: skip
    ihl = (vihl & 0xF) * 4
    options = bytes(max(0, ihl - 20))
    length = 20 + len(options) + len(payload) if total is None else total
    raw = struct.pack("!BBHHHBBH4s4s", vihl, 0, length, 7, frag, 64, proto, 0, B, A) + options
    if fix:
        raw = raw[:10] + struct.pack("!H", checksum(raw)) + raw[12:]
    return raw + payload


def test_parse_a_reference_datagram() -> None:
    raw = hw.ipv4(B, A, 17, b"hello", ident=9)
    packet = ipv4.parse(raw + bytes(10))  # link padding after the datagram
    assert isinstance(packet, ipv4.Packet)
    assert (packet.src, packet.dst, packet.proto, packet.ident, packet.df) == (B, A, 17, 9, True)
    assert packet.payload == b"hello" and packet.header == raw[:20]


def test_options_are_skipped_and_quoted() -> None:
    packet = ipv4.parse(header(vihl=0x46))
    assert isinstance(packet, ipv4.Packet)
    assert len(packet.header) == 24 and packet.payload == b"data"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (bytes(19), "truncated"),
        (header(vihl=0x65), "bad_version"),
        (header(vihl=0x44), "bad_ihl"),
        (header(vihl=0x40), "bad_ihl"),
        (header(total=200), "bad_length"),
        (header(total=10), "bad_length"),
        (header(vihl=0x4F, payload=b"")[:40], "bad_length"),
        (header(fix=False), "bad_checksum"),
        (header(frag=ipv4.MF), "fragments"),
        (header(frag=1), "fragments"),
        (header(frag=ipv4.DF | 185), "fragments"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_each_check_drops_with_its_reason(raw: bytes, reason: str) -> None:
    result = ipv4.parse(raw)
    assert isinstance(result, Drop) and result.reason == reason, result
    IpCounters().drop(result)


def test_build_sets_ttl_df_id_and_a_valid_checksum() -> None:
    raw = ipv4.build(A, B, 6, b"segment", 0x1234, df=True)
    packet = ipv4.parse(raw)
    assert isinstance(packet, ipv4.Packet)
    assert (packet.ttl, packet.df, packet.ident, packet.proto) == (64, True, 0x1234, 6)
    assert hw.checksum(raw[:20]) == 0
    plain = ipv4.parse(ipv4.build(A, B, 6, b"", 1))
    assert isinstance(plain, ipv4.Packet) and not plain.df


def test_build_refuses_what_needs_fragmenting() -> None:
    assert len(ipv4.build(A, B, 17, bytes(1480), 0)) == 1500
    with pytest.raises(ipv4.IpError):
        ipv4.build(A, B, 17, bytes(1481), 0)


def test_routes_connected_then_default() -> None:
    routes = ipv4.Routes()
    mask = ipv4.address("255.255.255.0")
    routes.set("eth0", ipv4.Config(A, mask, B))
    routes.set("eth1", ipv4.Config(ipv4.address("192.168.7.1"), mask))
    assert routes.lookup(B) == ipv4.Route("eth0", B, A)
    assert routes.lookup(ipv4.address("192.168.7.9")) == ipv4.Route(
        "eth1", ipv4.address("192.168.7.9"), ipv4.address("192.168.7.1")
    )
    assert routes.lookup(ipv4.address("8.8.8.8")) == ipv4.Route("eth0", B, A)
    assert routes.is_local(A) and routes.is_local(ipv4.address("10.0.2.255"))
    assert not routes.is_local(B)
    routes.remove("eth0")
    assert routes.lookup(ipv4.address("8.8.8.8")) is None


def test_a_gateway_off_its_network_is_no_default() -> None:
    routes = ipv4.Routes()
    routes.set("eth0", ipv4.Config(A, ipv4.address("255.255.255.0"), ipv4.address("10.9.9.9")))
    assert routes.lookup(ipv4.address("8.8.8.8")) is None


@given(st.binary(max_size=1600))
def test_parse_never_raises(raw: bytes) -> None:
    result = ipv4.parse(raw)
    assert isinstance(result, (ipv4.Packet, Drop))
    if isinstance(result, ipv4.Packet):
        assert len(result.header) + len(result.payload) <= len(raw)


@given(st.binary(min_size=20, max_size=200), st.integers(0, 199), st.integers(0, 7))
def test_any_flipped_header_bit_is_dropped(data: bytes, where: int, bit: int) -> None:
    raw = ipv4.build(A, B, 17, data, 5)
    spot = where % 20
    flipped = bytearray(raw)
    flipped[spot] ^= 1 << bit
    assert isinstance(ipv4.parse(bytes(flipped)), Drop)
