"""The TCP header (RFC 9293 3.1) and its checksum over the IPv4 pseudo-header.

Contract: ``parse`` takes the bytes of one IPv4 payload and its two addresses and
returns a Segment or raises SegmentError, nothing else. Work is bounded by the
header: at most 40 bytes of options, each option's length checked against what
remains before it is read. MSS is the only option understood; every other one
(SACK-permitted, timestamps, window scale...) is skipped, so a peer that offered
it sees no answer and turns it off, and the window stays a plain 16-bit number.
``build`` writes a header with an MSS option only when asked for one (SYNs).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from hwl.servers.inet.checksum import checksum, pseudo_sum, valid

__all__ = [
    "ACK",
    "FIN",
    "HEADER",
    "PROTO",
    "PSH",
    "RST",
    "SYN",
    "URG",
    "Segment",
    "SegmentError",
    "build",
    "parse",
]

PROTO = 6
"""The IPv4 protocol number of TCP."""

HEADER = 20
"""The header's length without options."""

FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20

_FLAG_BITS = (FIN, SYN, RST, PSH, ACK, URG)
_HDR = struct.Struct("!HHIIBBHHH")
_MSS = struct.Struct("!BBH")
_OPT_EOL, _OPT_NOP, _OPT_MSS = 0, 1, 2
_MAX_WINDOW = 0xFFFF


class SegmentError(ValueError):
    """A segment that cannot be a TCP segment: too short, a bad data offset or option,
    or a checksum that does not match."""


@dataclass(frozen=True, slots=True)
class Segment:
    """One TCP segment's fields. ``mss`` is the MSS option's value, None when absent;
    SYN and FIN each take one sequence number, the payload ``len(payload)``."""

    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes = field(default=b"", repr=False)
    mss: int | None = None
    urgent: int = 0

    @property
    def seg_len(self) -> int:
        """The sequence space it takes: its payload, plus one for SYN and for FIN."""
        return len(self.payload) + (self.flags & SYN != 0) + (self.flags & FIN != 0)

    def has(self, flag: int) -> bool:
        return self.flags & flag != 0

    def describe(self) -> str:
        """A tcpdump-like line for logs and test failures."""
        names = "".join(c for c, f in zip("FSRPAU", _FLAG_BITS, strict=True) if self.has(f))
        return (
            f"{self.sport}>{self.dport} [{names}] seq={self.seq} ack={self.ack} "
            f"win={self.window} len={len(self.payload)}" + (f" mss={self.mss}" if self.mss else "")
        )


def parse(data: bytes | bytearray | memoryview, src: bytes, dst: bytes) -> Segment:
    """The segment in ``data`` sent from ``src`` to ``dst`` (4-byte IPv4 addresses),
    its checksum verified."""
    view = memoryview(data).cast("B")
    if len(view) < HEADER:
        raise SegmentError(f"{len(view)} bytes is shorter than a TCP header")
    sport, dport, seq, ack, off_byte, flags, window, _csum, urgent = _HDR.unpack_from(view)
    offset = (off_byte >> 4) * 4
    if offset < HEADER or offset > len(view):
        raise SegmentError(f"data offset {offset} outside 20..{len(view)}")
    if not valid(view, pseudo_sum(src, dst, PROTO, len(view))):
        raise SegmentError("bad checksum")
    mss = _options(view[HEADER:offset])
    return Segment(sport, dport, seq, ack, flags & 0x3F, window, bytes(view[offset:]), mss, urgent)


def _options(opts: memoryview) -> int | None:
    """The MSS option's value among ``opts``; other options are skipped."""
    mss = None
    i = 0
    while i < len(opts):
        kind = opts[i]
        if kind == _OPT_EOL:
            break
        if kind == _OPT_NOP:
            i += 1
            continue
        if i + 1 >= len(opts):
            raise SegmentError(f"option {kind} at {i} has no length")
        length = opts[i + 1]
        if length < 2 or i + length > len(opts):
            raise SegmentError(f"option {kind} at {i} has length {length}")
        if kind == _OPT_MSS:
            if length != 4:
                raise SegmentError(f"MSS option of length {length}")
            mss = (opts[i + 2] << 8) | opts[i + 3]
        i += length
    return mss


def build(seg: Segment, src: bytes, dst: bytes) -> bytes:
    """The bytes of ``seg`` sent from ``src`` to ``dst``, checksum filled in."""
    if not 0 <= seg.window <= _MAX_WINDOW:
        raise SegmentError(f"window {seg.window} does not fit 16 bits")
    opts = _MSS.pack(_OPT_MSS, 4, seg.mss) if seg.mss is not None else b""
    offset = HEADER + len(opts)
    header = bytearray(
        _HDR.pack(
            seg.sport,
            seg.dport,
            seg.seq,
            seg.ack,
            (offset // 4) << 4,
            seg.flags,
            seg.window,
            0,
            seg.urgent,
        )
    )
    header += opts
    total = len(header) + len(seg.payload)
    csum = checksum(header + seg.payload, pseudo_sum(src, dst, PROTO, total))
    struct.pack_into("!H", header, 16, csum)
    return bytes(header) + seg.payload
