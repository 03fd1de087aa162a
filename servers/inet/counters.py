"""Counters per interface and per protocol, and the drop result every decoder returns.

A decoder in this package never raises on bad input: it returns the decoded value or
a ``Drop`` whose ``reason`` names a counter field of that layer, so the caller counts
the drop with ``counters.drop(result)`` and goes on. Counters are plain dataclasses of
ints; ``as_fields()`` gives them to reporting (``hwl up``, the protocol codec)."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class Drop:
    """Why a decoder refused its input: ``reason`` is a counter field of its layer."""

    reason: str
    detail: str = ""


@dataclass
class Counters:
    """Base of every counter set: all fields are ints starting at zero."""

    rx: int = 0
    tx: int = 0

    def drop(self, result: Drop) -> None:
        """Count ``result``'s reason (a field of this set; unknown reasons are a bug)."""
        setattr(self, result.reason, getattr(self, result.reason) + 1)

    def as_fields(self) -> dict[str, int]:
        """The counters by name, for reporting."""
        return {f.name: int(getattr(self, f.name)) for f in fields(self)}


@dataclass
class EtherCounters(Counters):
    """One interface's link layer: frames in and out and why frames were dropped."""

    rx_bytes: int = 0
    tx_bytes: int = 0
    runt: int = 0
    ieee8023: int = 0
    ipv6: int = 0
    unknown_type: int = 0
    not_ours: int = 0
    down: int = 0


@dataclass
class ArpCounters(Counters):
    """One interface's ARP: requests and replies, the cache and the pending queues."""

    bad: int = 0
    requests_in: int = 0
    replies_in: int = 0
    requests_out: int = 0
    replies_out: int = 0
    learned: int = 0
    expired: int = 0
    queued: int = 0
    queue_drops: int = 0
    failed: int = 0
    gratuitous: int = 0
    conflicts: int = 0


@dataclass
class IpCounters(Counters):
    """IPv4, all interfaces: header checks, fragments, routing."""

    truncated: int = 0
    bad_version: int = 0
    bad_ihl: int = 0
    bad_length: int = 0
    bad_checksum: int = 0
    fragments: int = 0
    not_ours: int = 0
    bad_source: int = 0
    no_protocol: int = 0
    no_route: int = 0
    too_big: int = 0
    unreachable: int = 0
    loopback: int = 0


@dataclass
class IcmpCounters(Counters):
    """ICMP: echo both ways, port unreachable sent and rate-limited, bad messages."""

    truncated: int = 0
    bad_checksum: int = 0
    echo_requests: int = 0
    echo_replies: int = 0
    unmatched_replies: int = 0
    unreach_in: int = 0
    unreach_out: int = 0
    rate_limited: int = 0
    other: int = 0


@dataclass
class UdpCounters(Counters):
    """UDP: datagrams in and out, bad ones, closed ports and full receive queues."""

    truncated: int = 0
    bad_length: int = 0
    bad_checksum: int = 0
    no_port: int = 0
    queue_full: int = 0
