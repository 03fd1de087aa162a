"""IPv4 (RFC 791, RFC 1122): header decoding with every check, building, routing.

Decoding checks, in order: at least 20 bytes, version 4, IHL >= 5 and within the
data, total length between the header and the data (the rest is link padding), the
header checksum; a fragment (MF set or a non-zero offset) is then dropped and counted,
since INET does not reassemble. Building uses TTL 64, sets DF on request and never
fragments: a payload over the MTU is refused. Routing knows the connected network of
each interface and one default gateway."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hwl.servers.inet.checksum import checksum, valid
from hwl.servers.inet.counters import Drop

HEADER = 20
MTU = 1500
MAX_PAYLOAD = MTU - HEADER
TTL = 64
DF = 0x4000
MF = 0x2000
OFFSET_MASK = 0x1FFF
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
ANY = bytes(4)
LIMITED_BROADCAST = b"\xff" * 4

_HEADER = struct.Struct("!BBHHHBBH4s4s")


class IpError(ValueError):
    """A packet cannot be built from what was given."""


@dataclass(frozen=True, slots=True)
class Packet:
    """A decoded datagram; ``header`` is its header, options included (ICMP errors
    quote it), and ``payload`` is cut to the total length."""

    src: bytes
    dst: bytes
    proto: int
    ttl: int
    ident: int
    df: bool
    tos: int
    header: bytes
    payload: bytes


def parse(data: bytes) -> Packet | Drop:
    """Decode one IPv4 datagram or say why it is dropped."""
    if len(data) < HEADER:
        return Drop("truncated", f"{len(data)} bytes")
    vihl, tos, total, ident, frag, ttl, proto, _sum, src, dst = _HEADER.unpack_from(data)
    if vihl >> 4 != 4:
        return Drop("bad_version", str(vihl >> 4))
    ihl = (vihl & 0x0F) * 4
    if ihl < HEADER:
        return Drop("bad_ihl", str(ihl // 4))
    if ihl > len(data) or not ihl <= total <= len(data):
        return Drop("bad_length", f"IHL {ihl // 4}, total {total}, {len(data)} bytes")
    header = bytes(data[:ihl])
    if not valid(header):
        return Drop("bad_checksum")
    if frag & (MF | OFFSET_MASK):
        return Drop("fragments", f"id {ident} offset {(frag & OFFSET_MASK) * 8}")
    return Packet(src, dst, proto, ttl, ident, bool(frag & DF), tos, header, bytes(data[ihl:total]))


def build(
    src: bytes, dst: bytes, proto: int, payload: bytes, ident: int, *, df: bool = False,
    ttl: int = TTL, tos: int = 0,
) -> bytes:  # fmt: skip
    """A datagram with a 20-byte header; never fragmented, so at most the MTU."""
    if len(payload) > MAX_PAYLOAD:
        raise IpError(f"payload of {len(payload)} bytes is over {MAX_PAYLOAD} (no fragmentation)")
    if len(src) != 4 or len(dst) != 4:
        raise IpError("IPv4 addresses are 4 bytes")
    header = _HEADER.pack(
        0x45, tos, HEADER + len(payload), ident & 0xFFFF, DF if df else 0, ttl, proto, 0, src, dst
    )
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload


def address(dotted: str) -> bytes:
    """``"10.0.2.15"`` as 4 bytes (a ValueError for anything else)."""
    parts = dotted.split(".")
    if len(parts) != 4:
        raise ValueError(f"not an IPv4 address: {dotted!r}")
    return bytes(int(part) for part in parts)


def dotted(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)


def _int(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


@dataclass(frozen=True, slots=True)
class Config:
    """One interface's IPv4 configuration (from the machine profile)."""

    address: bytes
    netmask: bytes
    gateway: bytes | None = None

    def on_link(self, dst: bytes) -> bool:
        mask = _int(self.netmask)
        return _int(dst) & mask == _int(self.address) & mask

    @property
    def broadcast(self) -> bytes:
        mask = _int(self.netmask)
        return ((_int(self.address) & mask) | (~mask & 0xFFFFFFFF)).to_bytes(4, "big")


@dataclass(frozen=True, slots=True)
class Route:
    """Where a datagram for some address goes: out of ``ifname`` to ``next_hop``
    (the address itself when on-link, else the gateway), sent from ``src``."""

    ifname: str
    next_hop: bytes
    src: bytes


class Routes:
    """The connected network of each interface, then the default gateway: the first
    interface (in order added) whose config has a gateway on its own network."""

    def __init__(self) -> None:
        self.configs: dict[str, Config] = {}

    def set(self, ifname: str, config: Config) -> None:
        self.configs[ifname] = config

    def remove(self, ifname: str) -> None:
        self.configs.pop(ifname, None)

    def lookup(self, dst: bytes) -> Route | None:
        """The route to ``dst``, or None when there is none."""
        if dst == LIMITED_BROADCAST:
            for ifname, config in self.configs.items():
                return Route(ifname, dst, config.address)
            return None
        for ifname, config in self.configs.items():
            if config.on_link(dst):
                return Route(ifname, dst, config.address)
        for ifname, config in self.configs.items():
            if config.gateway is not None and config.on_link(config.gateway):
                return Route(ifname, config.gateway, config.address)
        return None

    def is_local(self, dst: bytes) -> bool:
        """Whether a datagram to ``dst`` is for this host (an address of ours or a
        broadcast)."""
        if dst == LIMITED_BROADCAST:
            return True
        return any(dst in (c.address, c.broadcast) for c in self.configs.values())

    def is_own(self, dst: bytes) -> bool:
        """Whether ``dst`` is the address of one of our interfaces."""
        return any(dst == c.address for c in self.configs.values())

    def is_martian_source(self, src: bytes) -> bool:
        """Whether ``src`` cannot be a sender's address (RFC 1122 3.2.1.3): a broadcast,
        multicast or class E address, or the zero network with a host part."""
        return src[0] >= 224 or self.is_broadcast(src) or (src[0] == 0 and src != ANY)

    def is_broadcast(self, dst: bytes) -> bool:
        if dst == LIMITED_BROADCAST:
            return True
        return any(dst == c.broadcast for c in self.configs.values())
