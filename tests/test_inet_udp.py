"""UDP: checksums with the pseudo-header, the port table and bounded queues
(servers/inet/udp.py)."""

from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwl.servers.inet import ipv4, udp
from hwl.servers.inet.checksum import checksum, pseudo_sum
from hwl.servers.inet.counters import Drop

A = ipv4.address("10.0.2.15")
B = ipv4.address("10.0.2.2")


def test_build_then_parse() -> None:
    raw = udp.build(A, B, 50000, 7, b"hello")
    assert len(raw) == 13 and struct.unpack_from("!HHH", raw) == (50000, 7, 13)
    assert udp.parse(raw, A, B) == udp.Datagram(50000, 7, b"hello")


def test_a_wrong_pseudo_header_fails_the_checksum() -> None:
    raw = udp.build(A, B, 50000, 7, b"hello")
    result = udp.parse(raw, A, ipv4.address("10.0.2.3"))
    assert isinstance(result, Drop) and result.reason == "bad_checksum"


def test_zero_checksum_means_none() -> None:
    raw = struct.pack("!HHHH", 1, 2, 12, 0) + b"abcd"
    assert udp.parse(raw, A, B) == udp.Datagram(1, 2, b"abcd")


def test_a_computed_zero_is_sent_as_ffff() -> None:
    """Find a payload whose sum makes the checksum 0: it must go out as 0xFFFF."""
    header = struct.pack("!HHHH", 1000, 2000, 10, 0)
    start = pseudo_sum(A, B, ipv4.PROTO_UDP, 10)
    # the 2-byte payload that makes the one's-complement sum 0xFFFF
    partial = checksum(header, start)
    payload = struct.pack("!H", partial)
    assert checksum(header + payload, start) == 0
    raw = udp.build(A, B, 1000, 2000, payload)
    assert raw[6:8] == b"\xff\xff"
    assert udp.parse(raw, A, B) == udp.Datagram(1000, 2000, payload)


def test_length_checks() -> None:
    assert udp.parse(b"\x00" * 7, A, B) == Drop("truncated", "7 bytes")
    raw = udp.build(A, B, 1, 2, b"abcd")
    too_long = raw[:4] + struct.pack("!H", 13) + raw[6:]
    short = raw[:4] + struct.pack("!H", 7) + raw[6:]
    for bad in (too_long, short):
        result = udp.parse(bad, A, B)
        assert isinstance(result, Drop) and result.reason == "bad_length"
    padded = udp.parse(raw + b"pad", A, B)  # bytes after the UDP length are not data
    assert padded == udp.Datagram(1, 2, b"abcd")


def test_build_refuses_over_1472_bytes() -> None:
    udp.build(A, B, 1, 2, bytes(1472))
    with pytest.raises(OSError) as caught:
        udp.build(A, B, 1, 2, bytes(1473))
    assert caught.value.errno == errno.EMSGSIZE


def test_bind_in_use_and_specific_addresses() -> None:
    table = udp.PortTable()
    any7 = table.bind(ipv4.ANY, 7)
    with pytest.raises(OSError) as caught:
        table.bind(A, 7)
    assert caught.value.errno == errno.EADDRINUSE
    a9 = table.bind(A, 9)
    with pytest.raises(OSError):
        table.bind(ipv4.ANY, 9)
    table.bind(B, 9)  # another address, same port
    assert table.lookup(A, 7) is any7 and table.lookup(A, 9) is a9
    assert table.lookup(A, 10) is None
    table.close(any7)
    assert table.bind(A, 7).port == 7
    with pytest.raises(OSError) as caught:
        table.bind(ipv4.ANY, 70000)
    assert caught.value.errno == errno.EINVAL


def test_ephemeral_ports_cycle_the_dynamic_range() -> None:
    table = udp.PortTable(cursor=65534)
    ports = [table.bind().port for _ in range(3)]
    assert ports == [65534, 65535, 49152]
    table.bind(ipv4.ANY, 49153)
    assert table.bind().port == 49154


def test_ephemeral_exhaustion_is_eaddrinuse() -> None:
    table = udp.PortTable()
    for _ in range(udp.EPHEMERAL_HIGH - udp.EPHEMERAL_LOW + 1):
        table.bind()
    with pytest.raises(OSError) as caught:
        table.bind()
    assert caught.value.errno == errno.EADDRINUSE


def test_the_receive_queue_is_bounded() -> None:
    sock = udp.PortTable().bind(limit=2)
    got = [sock.deliver(udp.Received(B, 1, bytes([n]))) for n in range(3)]
    assert got == [True, True, False] and sock.drops == 1
    assert sock.recv() == udp.Received(B, 1, b"\x00")
    assert sock.recv() == udp.Received(B, 1, b"\x01")
    assert sock.recv() is None


@given(st.binary(max_size=1600))
def test_parse_never_raises(data: bytes) -> None:
    assert isinstance(udp.parse(data, A, B), (udp.Datagram, Drop))


@given(st.integers(1, 0xFFFF), st.integers(1, 0xFFFF), st.binary(max_size=1472))
def test_round_trip_any_payload(sport: int, dport: int, payload: bytes) -> None:
    raw = udp.build(A, B, sport, dport, payload)
    assert raw[6:8] != b"\x00\x00"
    assert udp.parse(raw, A, B) == udp.Datagram(sport, dport, payload)
