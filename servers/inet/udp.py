"""UDP (RFC 768): datagrams with the pseudo-header checksum, a port table with
ephemeral ports, and sockets with bounded receive queues.

A received checksum of 0 means the sender computed none; a computed 0 is sent as
0xFFFF. Ephemeral ports come from 49152-65535 (IANA's dynamic range), searched from
a cursor so a freed port is not reused at once. Errors for clients are OSError with
the errno Python's socket module would give."""

from __future__ import annotations

import errno
import struct
from collections import deque
from dataclasses import dataclass

from hwl.servers.inet.checksum import checksum, pseudo_sum, valid
from hwl.servers.inet.counters import Drop
from hwl.servers.inet.ipv4 import ANY, MAX_PAYLOAD, PROTO_UDP

HEADER = 8
MAX_DATA = MAX_PAYLOAD - HEADER
EPHEMERAL_LOW = 49152
EPHEMERAL_HIGH = 65535
QUEUE_LEN = 64
"""Datagrams a socket holds unread before further ones are dropped and counted."""

_HEADER = struct.Struct("!HHHH")


@dataclass(frozen=True, slots=True)
class Datagram:
    src_port: int
    dst_port: int
    payload: bytes


def parse(data: bytes, src: bytes, dst: bytes) -> Datagram | Drop:
    """Decode the UDP datagram in IP payload ``data`` sent from ``src`` to ``dst``."""
    if len(data) < HEADER:
        return Drop("truncated", f"{len(data)} bytes")
    sport, dport, length, check = _HEADER.unpack_from(data)
    if not HEADER <= length <= len(data):
        return Drop("bad_length", f"length {length}, {len(data)} bytes")
    body = bytes(data[:length])
    if check and not valid(body, pseudo_sum(src, dst, PROTO_UDP, length)):
        return Drop("bad_checksum")
    return Datagram(sport, dport, body[HEADER:])


def build(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    """A UDP datagram (the IP payload) with its checksum."""
    if len(payload) > MAX_DATA:
        raise OSError(errno.EMSGSIZE, f"{len(payload)} bytes is over {MAX_DATA}")
    length = HEADER + len(payload)
    body = _HEADER.pack(sport, dport, length, 0) + payload
    value = checksum(body, pseudo_sum(src, dst, PROTO_UDP, length)) or 0xFFFF
    return body[:6] + struct.pack("!H", value) + body[8:]


@dataclass(frozen=True, slots=True)
class Received:
    src: bytes
    src_port: int
    payload: bytes


class UdpSocket:
    """A bound UDP port: ``address`` is ANY or one local address."""

    def __init__(self, address: bytes, port: int, limit: int = QUEUE_LEN) -> None:
        self.address = address
        self.port = port
        self.limit = limit
        self.queue: deque[Received] = deque()
        self.drops = 0
        self.closed = False

    def deliver(self, received: Received) -> bool:
        """Queue a datagram; False (and counted) when the queue is full."""
        if len(self.queue) >= self.limit:
            self.drops += 1
            return False
        self.queue.append(received)
        return True

    def recv(self) -> Received | None:
        return self.queue.popleft() if self.queue else None


class PortTable:
    """The bound UDP ports; a port is bound to ANY or to specific local addresses."""

    def __init__(self, cursor: int = EPHEMERAL_LOW) -> None:
        self.sockets: dict[tuple[bytes, int], UdpSocket] = {}
        self.by_port: dict[int, set[bytes]] = {}
        self.cursor = cursor

    def bind(self, address: bytes = ANY, port: int = 0, limit: int = QUEUE_LEN) -> UdpSocket:
        """Bind ``port`` (0: an ephemeral one) on ``address``."""
        if not 0 <= port <= 0xFFFF:
            raise OSError(errno.EINVAL, f"port {port} out of range")
        if len(address) != 4:
            raise OSError(errno.EINVAL, "an IPv4 address is 4 bytes")
        if port == 0:
            port = self._ephemeral(address)
        elif self._in_use(address, port):
            raise OSError(errno.EADDRINUSE, f"port {port} is in use")
        sock = UdpSocket(address, port, limit)
        self.sockets[(address, port)] = sock
        self.by_port.setdefault(port, set()).add(address)
        return sock

    def _in_use(self, address: bytes, port: int) -> bool:
        bound = self.by_port.get(port)
        if not bound:
            return False
        return address == ANY or address in bound or ANY in bound

    def _ephemeral(self, address: bytes) -> int:
        span = EPHEMERAL_HIGH - EPHEMERAL_LOW + 1
        for step in range(span):
            port = EPHEMERAL_LOW + (self.cursor - EPHEMERAL_LOW + step) % span
            if not self._in_use(address, port):
                self.cursor = EPHEMERAL_LOW + (port - EPHEMERAL_LOW + 1) % span
                return port
        raise OSError(errno.EADDRINUSE, "no ephemeral UDP port is free")

    def close(self, sock: UdpSocket) -> None:
        if self.sockets.get((sock.address, sock.port)) is sock:
            del self.sockets[(sock.address, sock.port)]
            bound = self.by_port[sock.port]
            bound.discard(sock.address)
            if not bound:
                del self.by_port[sock.port]
        sock.closed = True

    def lookup(self, dst: bytes, port: int) -> UdpSocket | None:
        """The socket a datagram to ``dst``:``port`` goes to (a specific bind first)."""
        return self.sockets.get((dst, port)) or self.sockets.get((ANY, port))
