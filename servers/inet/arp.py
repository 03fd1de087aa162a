"""ARP (RFC 826) for IPv4 over Ethernet: the packet, and a table that answers, learns,
caches and resolves with bounded queues.

The table is pure: it never reads a clock (``now`` is passed in, monotonic seconds)
and sends through callbacks. Choices (notes/network-facts.md section 5): an entry
lives ``CACHE_TTL`` (60 s) from the last time its owner was heard; an address being
resolved holds at most ``QUEUE_LEN`` (3) frames, the oldest dropped first; a request
is sent at once and again every ``RETRY_INTERVAL`` (1 s), ``RETRIES`` (3) in all, and
a second after the last the queued packets fail with EHOSTUNREACH. A gratuitous ARP
(a request for our own address) goes out when the interface is (re)enabled."""

from __future__ import annotations

import errno
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from hwl.servers.inet import ether
from hwl.servers.inet.counters import ArpCounters, Drop

REQUEST = 1
REPLY = 2
SIZE = 28
CACHE_TTL = 60.0
QUEUE_LEN = 3
RETRY_INTERVAL = 1.0
RETRIES = 3
MAX_ENTRIES = 256
"""Cache bound: learning only from packets aimed at us, but their senders can be forged."""
MAX_PENDING = 64

ZERO_IP = bytes(4)
_PACKET = struct.Struct("!HHBBH6s4s6s4s")

Emit = Callable[[bytes], None]
"""Sends one Ethernet frame."""
Fail = Callable[[bytes, int, bytes, int], None]
"""Called with (address, ethertype, payload, errno) for a queued packet that is given up."""


@dataclass(frozen=True, slots=True)
class Packet:
    op: int
    sender_mac: bytes
    sender_ip: bytes
    target_mac: bytes
    target_ip: bytes


def parse(data: bytes) -> Packet | Drop:
    """Decode an Ethernet/IPv4 ARP packet (trailing padding ignored)."""
    if len(data) < SIZE:
        return Drop("bad", f"{len(data)} bytes")
    htype, ptype, hlen, plen, op, smac, sip, tmac, tip = _PACKET.unpack_from(data)
    if (htype, ptype, hlen, plen) != (1, ether.ETH_P_IP, 6, 4):
        return Drop("bad", f"hardware {htype}/{hlen}, protocol 0x{ptype:04x}/{plen}")
    if op not in (REQUEST, REPLY):
        return Drop("bad", f"op {op}")
    return Packet(op, smac, sip, tmac, tip)


def build(
    op: int, sender_mac: bytes, sender_ip: bytes, target_mac: bytes, target_ip: bytes
) -> bytes:
    """The 28-byte ARP packet (the Ethernet payload)."""
    return _PACKET.pack(1, ether.ETH_P_IP, 6, 4, op, sender_mac, sender_ip, target_mac, target_ip)


@dataclass
class _Pending:
    queue: deque[tuple[int, bytes]] = field(default_factory=deque)
    tries: int = 0
    next_try: float = 0.0


class ArpTable:
    """One interface's ARP: ``mac`` and ``ip`` are ours; ``emit`` sends frames and
    ``fail`` takes the packets of an address that never answered."""

    def __init__(self, mac: bytes, ip: bytes, emit: Emit, fail: Fail) -> None:
        self.mac = mac
        self.ip = ip
        self.emit = emit
        self.fail = fail
        self.cache: dict[bytes, tuple[bytes, float]] = {}
        self.pending: dict[bytes, _Pending] = {}
        self.counters = ArpCounters()

    # --- input ------------------------------------------------------------------------

    def input(self, data: bytes, now: float) -> None:
        """Handle one received ARP payload: merge, learn, reply (RFC 826's algorithm)."""
        packet = parse(data)
        if isinstance(packet, Drop):
            self.counters.drop(packet)
            return
        self.counters.rx += 1
        if packet.op == REQUEST:
            self.counters.requests_in += 1
        else:
            self.counters.replies_in += 1
        if packet.sender_ip == self.ip and packet.sender_mac != self.mac and self.ip != ZERO_IP:
            self.counters.conflicts += 1  # another host claims our address: learn nothing
            return
        sender_ok = packet.sender_ip != ZERO_IP and not ether.is_multicast(packet.sender_mac)
        sender_ok = sender_ok and packet.sender_mac != self.mac
        merged = False
        if sender_ok and packet.sender_ip in self.cache:
            self._learn(packet.sender_ip, packet.sender_mac, now)
            merged = True
        if packet.target_ip != self.ip or self.ip == ZERO_IP:
            return
        if sender_ok and not merged:
            self._learn(packet.sender_ip, packet.sender_mac, now)
        if packet.op == REQUEST:
            reply = build(REPLY, self.mac, self.ip, packet.sender_mac, packet.sender_ip)
            self._send(packet.sender_mac, reply)
            self.counters.replies_out += 1

    def _learn(self, ip: bytes, mac: bytes, now: float) -> None:
        if ip not in self.cache:
            self.counters.learned += 1
            if len(self.cache) >= MAX_ENTRIES:
                oldest = min(self.cache, key=lambda key: self.cache[key][1])
                del self.cache[oldest]
        self.cache[ip] = (mac, now + CACHE_TTL)
        pending = self.pending.pop(ip, None)
        if pending is not None:
            for ethertype, payload in pending.queue:
                self.emit(ether.build(mac, self.mac, ethertype, payload))

    # --- output -----------------------------------------------------------------------

    def lookup(self, ip: bytes, now: float) -> bytes | None:
        """The MAC cached for ``ip`` if its entry is still live."""
        entry = self.cache.get(ip)
        if entry is None or entry[1] <= now:
            return None
        return entry[0]

    def output(self, ip: bytes, ethertype: int, payload: bytes, now: float) -> None:
        """Send ``payload`` to the on-link ``ip``: at once when its MAC is known, else
        queued behind a request (at most QUEUE_LEN packets, the oldest dropped)."""
        mac = self.lookup(ip, now)
        if mac is not None:
            self.emit(ether.build(mac, self.mac, ethertype, payload))
            return
        pending = self.pending.get(ip)
        if pending is None:
            if len(self.pending) >= MAX_PENDING:
                self.counters.queue_drops += 1
                self.fail(ip, ethertype, payload, errno.ENOBUFS)
                return
            pending = self.pending[ip] = _Pending()
            self._request(ip, pending, now)
        if len(pending.queue) >= QUEUE_LEN:
            pending.queue.popleft()
            self.counters.queue_drops += 1
        pending.queue.append((ethertype, payload))
        self.counters.queued += 1

    def _request(self, ip: bytes, pending: _Pending, now: float) -> None:
        self._send(ether.BROADCAST, build(REQUEST, self.mac, self.ip, bytes(6), ip))
        self.counters.requests_out += 1
        pending.tries += 1
        pending.next_try = now + RETRY_INTERVAL

    def _send(self, dst: bytes, packet: bytes) -> None:
        self.emit(ether.build(dst, self.mac, ether.ETH_P_ARP, packet))
        self.counters.tx += 1

    def announce(self) -> None:
        """A gratuitous ARP: a broadcast request for our own address, so neighbours
        update their caches (sent when the interface is (re)enabled)."""
        if self.ip == ZERO_IP:
            return
        self._send(ether.BROADCAST, build(REQUEST, self.mac, self.ip, bytes(6), self.ip))
        self.counters.gratuitous += 1

    # --- timers -----------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Expire cache entries, retry requests and fail the addresses out of retries."""
        for ip in [ip for ip, (_mac, expires) in self.cache.items() if expires <= now]:
            del self.cache[ip]
            self.counters.expired += 1
        for ip, pending in list(self.pending.items()):
            if pending.next_try > now:
                continue
            if pending.tries < RETRIES:
                self._request(ip, pending, now)
                continue
            del self.pending[ip]
            for ethertype, payload in pending.queue:
                self.counters.failed += 1
                self.fail(ip, ethertype, payload, errno.EHOSTUNREACH)

    def deadline(self) -> float | None:
        """When ``tick`` next has work, or None."""
        times = [p.next_try for p in self.pending.values()]
        times += [expires for _mac, expires in self.cache.values()]
        return min(times) if times else None
