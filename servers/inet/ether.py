"""Ethernet II (DIX) frames: decode with a drop reason, build padded to 60 bytes.

A received frame shorter than the 14-byte header is a runt; frames of 14..59 bytes are
accepted because a TAP peer (Linux) does not pad them. 802.3 frames (a length where the
type belongs), IPv6 and other types are dropped with their own reasons: INET speaks
IPv4 and ARP only. The FCS is not part of a frame here (the drivers strip it)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hwl.servers.inet.counters import Drop

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
BROADCAST = b"\xff" * 6
HEADER = 14
MIN_FRAME = 60
"""The shortest frame on the wire without its FCS: builders pad to it."""
MTU = 1500
MAX_FRAME = HEADER + MTU

_HEADER = struct.Struct("!6s6sH")
_TYPES = frozenset((ETH_P_IP, ETH_P_ARP))


class EtherError(ValueError):
    """A frame cannot be built from what was given (bad address, payload too big)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """A decoded frame; ``payload`` may carry the sender's padding after the packet."""

    dst: bytes
    src: bytes
    ethertype: int
    payload: bytes


def parse(frame: bytes) -> Frame | Drop:
    """Decode ``frame`` (header, payload, no FCS) or say why it is dropped."""
    if len(frame) < HEADER:
        return Drop("runt", f"{len(frame)} bytes")
    dst, src, ethertype = _HEADER.unpack_from(frame)
    if ethertype < 0x0600:
        return Drop("ieee8023", f"length field {ethertype}")
    if ethertype == ETH_P_IPV6:
        return Drop("ipv6")
    if ethertype not in _TYPES:
        return Drop("unknown_type", f"0x{ethertype:04x}")
    return Frame(dst, src, ethertype, bytes(frame[HEADER:]))


def build(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    """A frame of ``payload``, zero-padded to 60 bytes."""
    if len(dst) != 6 or len(src) != 6:
        raise EtherError("MAC addresses are 6 bytes")
    if len(payload) > MTU:
        raise EtherError(f"payload of {len(payload)} bytes is over the MTU of {MTU}")
    frame = _HEADER.pack(dst, src, ethertype) + payload
    if len(frame) < MIN_FRAME:
        frame += bytes(MIN_FRAME - len(frame))
    return frame


def is_multicast(mac: bytes) -> bool:
    """Group addresses (broadcast included) have the low bit of the first byte set."""
    return bool(mac[0] & 1)
