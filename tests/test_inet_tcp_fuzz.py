"""Hostile segments against a live connection and a listener: whatever arrives,
the engine raises nothing, its buffers and queues stay within their bounds, and
each segment makes a bounded amount of output (hypothesis drives the segments)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from test_inet_tcp_engine import CFG, PORT, A, B, Wire

from hwl.servers.inet.tcp import seq
from hwl.servers.inet.tcp.connection import MAX_WINDOW, State
from hwl.servers.inet.tcp.segment import ACK, RST, SYN, Segment, build

SEGMENT = st.tuples(
    st.integers(0, 0x3F),  # flags
    st.one_of(st.integers(-70_000, 70_000), st.integers(0, seq.MASK).map(lambda v: -v - 1)),
    st.one_of(st.integers(-70_000, 70_000), st.integers(0, seq.MASK).map(lambda v: -v - 1)),
    st.integers(0, 0xFFFF),  # window
    st.binary(max_size=1500),
    st.one_of(st.none(), st.integers(0, 0xFFFF)),  # MSS option
    st.booleans(),  # to the connection's port (else to the listener's)
)


def _value(offset: int, base: int) -> int:
    """A small offset from ``base``, or (negative encoding) an arbitrary number."""
    return seq.add(base, offset) if offset > -70_001 else (-offset - 1) & seq.MASK


@settings(max_examples=150, deadline=None)
@given(st.lists(SEGMENT, max_size=25), st.integers(0, 3))
def test_forged_segments_break_nothing(
    segments: list[tuple[int, int, int, int, bytes, int | None, bool]], seed: int
) -> None:
    wire = Wire(seed)
    client, server = wire.connect()
    client.send(b"c" * 5000, wire.now)
    server.send(b"s" * 5000, wire.now)
    wire.run(lambda: server.readable == 5000 and client.readable == 5000, 5.0)
    before = wire.sent
    for i, (flags, seq_off, ack_off, window, payload, mss, to_conn) in enumerate(segments):
        sport = client.local[1] if to_conn else 40000 + i
        seg = Segment(
            sport,
            PORT,
            _value(seq_off, server.rcv_nxt),
            _value(ack_off, server.snd_una),
            flags,
            window,
            payload,
            mss if flags & SYN else None,
        )
        sent = wire.sent
        wire.b.input(A, B, build(seg, A, B), wire.now + i * 0.01)
        assert wire.sent - sent <= 64
        wire.b.tick(wire.now + i * 0.01)
        for conn in list(wire.b.conns.values()):
            assert len(conn.rcvbuf) <= conn.rcv_cap
            assert len(conn.ooo) <= CFG.ooo_segments
            assert sum(len(d) for _, d in conn.ooo) <= MAX_WINDOW
            assert len(conn.sndbuf) <= CFG.snd_buf
    # What is left runs its course: every connection ends within its timers.
    wire.drop_all = True
    wire.run(lambda: not wire.b.conns, 400.0)
    assert wire.sent - before < 64 * (len(segments) + 1) + 400
    assert server.state is State.CLOSED


def test_challenge_acks_are_rate_limited() -> None:
    wire = Wire(30)
    client, server = wire.connect()
    before = len(wire.sent_by(B))
    for i in range(50):
        forged = Segment(client.local[1], PORT, seq.add(server.rcv_nxt, 10 + i), 0, RST, 0)
        wire.b.input(A, B, build(forged, A, B), wire.now)
    assert len(wire.sent_by(B)) - before == CFG.challenge_acks
    assert server.counters["challenge_acks_limited"] == 50 - CFG.challenge_acks
    forged = Segment(client.local[1], PORT, server.rcv_nxt, 0, SYN | ACK, 0)
    wire.b.input(A, B, build(forged, A, B), wire.now + 1.0)
    assert len(wire.sent_by(B)) - before == CFG.challenge_acks + 1
    assert server.state is State.ESTABLISHED
