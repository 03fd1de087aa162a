"""ICMP (RFC 792) for INET: echo reply, an echo API for clients, and port unreachable
built from the offending datagram under a token-bucket rate limit.

Everything here is pure: messages in and out are bytes (the IP payload), time is
passed in."""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

from hwl.servers.inet.checksum import checksum, valid
from hwl.servers.inet.counters import Drop

ECHO_REPLY = 0
DEST_UNREACH = 3
ECHO_REQUEST = 8
CODE_PORT_UNREACH = 3
HEADER = 8
QUOTE = 8
"""Bytes of the offending datagram's payload quoted after its IP header (RFC 792)."""
MAX_OUTSTANDING = 256
MAX_REPLIES = 256

_HEADER = struct.Struct("!BBHHH")


@dataclass(frozen=True, slots=True)
class Message:
    """A decoded ICMP message; ``ident``/``seq`` are the second 32-bit word's halves."""

    type: int
    code: int
    ident: int
    seq: int
    payload: bytes


def parse(data: bytes) -> Message | Drop:
    """Decode an ICMP message (the whole IP payload) with its checksum checked."""
    if len(data) < HEADER:
        return Drop("truncated", f"{len(data)} bytes")
    if not valid(data):
        return Drop("bad_checksum")
    kind, code, _sum, ident, seq = _HEADER.unpack_from(data)
    return Message(kind, code, ident, seq, bytes(data[HEADER:]))


def build(kind: int, code: int, ident: int, seq: int, payload: bytes) -> bytes:
    """An ICMP message with its checksum filled in."""
    body = _HEADER.pack(kind, code, 0, ident & 0xFFFF, seq & 0xFFFF) + payload
    return body[:2] + struct.pack("!H", checksum(body)) + body[4:]


def echo_reply(request: Message) -> bytes:
    """The reply to an echo request: same identifier, sequence and data."""
    return build(ECHO_REPLY, 0, request.ident, request.seq, request.payload)


def echo_request(ident: int, seq: int, payload: bytes) -> bytes:
    return build(ECHO_REQUEST, 0, ident, seq, payload)


def port_unreachable(header: bytes, payload: bytes) -> bytes:
    """Port unreachable for the datagram with IP ``header`` (options included) and
    ``payload``: the header and the first 8 bytes of the payload are quoted."""
    return build(DEST_UNREACH, CODE_PORT_UNREACH, 0, 0, header + payload[:QUOTE])


class TokenBucket:
    """``rate`` tokens a second up to ``burst``; ``take(now)`` spends one if there is one."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last: float | None = None

    def take(self, now: float) -> bool:
        if self.last is not None and now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now if self.last is None else max(self.last, now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(frozen=True, slots=True)
class EchoReply:
    """A reply matched to a request this host sent; ``rtt`` in seconds."""

    src: bytes
    ident: int
    seq: int
    payload: bytes
    rtt: float


class Pinger:
    """The echo API: ``request`` makes an echo request and remembers it; ``match`` turns
    a received reply into an EchoReply when it answers one (each answers once)."""

    def __init__(self, ident: int) -> None:
        self.ident = ident & 0xFFFF
        self.seq = 0
        self.outstanding: dict[tuple[bytes, int, int], float] = {}
        self.replies: deque[EchoReply] = deque(maxlen=MAX_REPLIES)

    def request(self, dst: bytes, payload: bytes, now: float) -> tuple[int, bytes]:
        """The next sequence number and the ICMP message to send to ``dst``."""
        self.seq = (self.seq + 1) & 0xFFFF
        if len(self.outstanding) >= MAX_OUTSTANDING:
            del self.outstanding[next(iter(self.outstanding))]
        self.outstanding[(dst, self.ident, self.seq)] = now
        return self.seq, echo_request(self.ident, self.seq, payload)

    def match(self, src: bytes, message: Message, now: float) -> EchoReply | None:
        sent = self.outstanding.pop((src, message.ident, message.seq), None)
        if sent is None:
            return None
        reply = EchoReply(src, message.ident, message.seq, message.payload, now - sent)
        self.replies.append(reply)
        return reply

    def take(self) -> list[EchoReply]:
        """The replies matched since the last call."""
        replies = list(self.replies)
        self.replies.clear()
        return replies
