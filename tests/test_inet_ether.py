"""Ethernet II decoding and building (servers/inet/ether.py)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwl.hw import ether as hw
from hwl.servers.inet import ether
from hwl.servers.inet.counters import Drop, EtherCounters

MAC = bytes.fromhex("525400123456")
PEER = bytes.fromhex("020000000202")


def test_an_arp_frame_from_the_reference_builder_decodes() -> None:
    frame = hw.arp_request(PEER, "10.0.2.2", "10.0.2.15")
    decoded = ether.parse(frame)
    assert isinstance(decoded, ether.Frame)
    assert (decoded.dst, decoded.src, decoded.ethertype) == (hw.BROADCAST, PEER, ether.ETH_P_ARP)
    assert decoded.payload == frame[14:]


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"", "runt"),
        (bytes(13), "runt"),
        (MAC + PEER + struct.pack("!H", 46) + bytes(46), "ieee8023"),
        (MAC + PEER + struct.pack("!H", 0x05FF), "ieee8023"),
        (MAC + PEER + struct.pack("!H", 0x86DD) + bytes(40), "ipv6"),
        (MAC + PEER + struct.pack("!H", 0x88B5) + bytes(46), "unknown_type"),
    ],
)
def test_drops_name_their_counter(frame: bytes, reason: str) -> None:
    result = ether.parse(frame)
    assert isinstance(result, Drop) and result.reason == reason
    counters = EtherCounters()
    counters.drop(result)
    assert counters.as_fields()[reason] == 1


def test_a_bare_header_is_not_a_runt() -> None:
    """A TAP peer does not pad: 14..59 bytes are accepted, the upper layers judge."""
    decoded = ether.parse(MAC + PEER + struct.pack("!H", ether.ETH_P_IP))
    assert isinstance(decoded, ether.Frame) and decoded.payload == b""


def test_build_pads_to_60_and_keeps_long_frames() -> None:
    short = ether.build(PEER, MAC, ether.ETH_P_ARP, b"x")
    assert len(short) == 60 and short[:15] == PEER + MAC + b"\x08\x06x" and not any(short[15:])
    full = ether.build(PEER, MAC, ether.ETH_P_IP, bytes(1500))
    assert len(full) == 1514


def test_build_refuses_over_the_mtu_and_bad_macs() -> None:
    with pytest.raises(ether.EtherError):
        ether.build(PEER, MAC, ether.ETH_P_IP, bytes(1501))
    with pytest.raises(ether.EtherError):
        ether.build(PEER[:5], MAC, ether.ETH_P_IP, b"")


@given(st.binary(max_size=1600))
def test_parse_never_raises(frame: bytes) -> None:
    result = ether.parse(frame)
    assert isinstance(result, (ether.Frame, Drop))
    if isinstance(result, ether.Frame):
        assert result.ethertype in (ether.ETH_P_IP, ether.ETH_P_ARP)
        assert len(result.payload) == len(frame) - 14


@given(st.sampled_from([ether.ETH_P_IP, ether.ETH_P_ARP]), st.binary(max_size=1500))
def test_build_then_parse(ethertype: int, payload: bytes) -> None:
    decoded = ether.parse(ether.build(PEER, MAC, ethertype, payload))
    assert isinstance(decoded, ether.Frame)
    assert decoded.payload[: len(payload)] == payload and decoded.ethertype == ethertype
