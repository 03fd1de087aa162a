"""Ethernet, ARP and ICMP echo frames built and read by hand: what a driver
developer needs to check a NIC driver against Linux's stack without INET
(``hwl net frames``, the NIC tests and ``hwl bench nic``). Not a TCP/IP stack.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_TEST = 0x88B5  # IEEE's local experimental ethertype: test frames no stack answers
BROADCAST = b"\xff" * 6
_ETH = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_IP = struct.Struct("!BBHHHBBH4s4s")
_ICMP = struct.Struct("!BBHHH")


def ip_bytes(dotted: str) -> bytes:
    return bytes(int(part) for part in dotted.split("."))


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ethernet(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return _ETH.pack(dst, src, ethertype) + payload


def _arp(op: int, dst: bytes, mac: bytes, ip: str, target_mac: bytes, target_ip: bytes) -> bytes:
    body = _ARP.pack(1, ETH_P_IP, 6, 4, op, mac, ip_bytes(ip), target_mac, target_ip)
    return ethernet(dst, mac, ETH_P_ARP, body)


def arp_request(mac: bytes, ip: str, target_ip: str) -> bytes:
    return _arp(1, BROADCAST, mac, ip, bytes(6), ip_bytes(target_ip))


def arp_reply(mac: bytes, ip: str, to_mac: bytes, to_ip: bytes) -> bytes:
    return _arp(2, to_mac, mac, ip, to_mac, to_ip)


@dataclass(frozen=True)
class Arp:
    op: int
    sender_mac: bytes
    sender_ip: bytes
    target_mac: bytes
    target_ip: bytes


def parse_arp(frame: bytes) -> Arp | None:
    if len(frame) < 14 + _ARP.size or _ETH.unpack_from(frame)[2] != ETH_P_ARP:
        return None
    _hw, proto, _hl, _pl, op, smac, sip, tmac, tip = _ARP.unpack_from(frame, 14)
    return Arp(op, smac, sip, tmac, tip) if proto == ETH_P_IP else None


def ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, ident: int = 0) -> bytes:
    header = _IP.pack(0x45, 0, 20 + len(payload), ident, 0x4000, 64, proto, 0, src, dst)
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload


def icmp_echo(
    src_mac: bytes, dst_mac: bytes, src_ip: bytes, dst_ip: bytes, ident: int, seq: int,
    payload: bytes, reply: bool = False,
) -> bytes:  # fmt: skip
    """An ICMP echo request (or reply) in an Ethernet frame."""
    body = _ICMP.pack(0 if reply else 8, 0, 0, ident, seq) + payload
    body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    return ethernet(dst_mac, src_mac, ETH_P_IP, ipv4(src_ip, dst_ip, 1, body, ident=seq))


@dataclass(frozen=True)
class Echo:
    src_mac: bytes
    src_ip: bytes
    dst_ip: bytes
    request: bool
    ident: int
    seq: int
    payload: bytes


def parse_echo(frame: bytes) -> Echo | None:
    """An ICMP echo request or reply with valid checksums, else None."""
    if len(frame) < 34 + _ICMP.size or _ETH.unpack_from(frame)[2] != ETH_P_IP:
        return None
    vihl, _tos, total, _id, _frag, _ttl, proto, _sum, src, dst = _IP.unpack_from(frame, 14)
    ihl = (vihl & 0xF) * 4
    if vihl >> 4 != 4 or proto != 1 or checksum(frame[14 : 14 + ihl]) != 0:
        return None
    icmp = frame[14 + ihl : 14 + total]
    if len(icmp) < _ICMP.size or checksum(icmp) != 0:
        return None
    kind, _code, _sum, ident, seq = _ICMP.unpack_from(icmp)
    if kind not in (0, 8):
        return None
    return Echo(frame[6:12], src, dst, kind == 8, ident, seq, icmp[_ICMP.size :])
