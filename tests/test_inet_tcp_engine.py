"""TCP engine against TCP engine, in-process, over a simulated wire.

The wire is seeded and bounded: a bottleneck of fixed bandwidth with a queue of
fixed length (beyond it, tail drop), latency plus jitter (so segments reorder),
random loss and duplication, and a switch that drops everything. Time is
simulated: each step jumps to the next delivery or timer deadline, so minutes of
backoff take milliseconds, and every run is bounded in steps and in simulated
time."""

from __future__ import annotations

import errno
import hashlib
import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from hwl.servers.inet.tcp.connection import Connection, State, TcpConfig
from hwl.servers.inet.tcp.segment import ACK, FIN, RST, SYN, Segment, build, parse
from hwl.servers.inet.tcp.tcp import ANY, Tcp

A = bytes([10, 0, 0, 1])
B = bytes([10, 0, 0, 2])
PORT = 5000
CFG = TcpConfig(rto_min=0.2, r2=20.0, r2_syn=10.0, msl=5.0, fin_wait_2=30.0)
MAX_STEPS = 2_000_000


@dataclass
class Wire:
    """Both directions of a link between the stacks at A and B."""

    seed: int
    loss: float = 0.0
    dup: float = 0.0
    jitter: float = 0.0
    latency: float = 0.005
    bandwidth: float = 20e6
    queue_limit: int = 100
    cfg: TcpConfig = CFG
    now: float = 0.0
    drop_all: bool = False
    log: list[tuple[float, bytes, Segment]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.heap: list[tuple[float, int, bytes, bytes, bytes]] = []
        self.counter = itertools.count()
        self.busy_until = {A: 0.0, B: 0.0}
        self.queued = {A: 0, B: 0}
        self.stacks = {
            A: Tcp(self._ip_output(A), lambda _d: A, self.cfg, secret=b"a" * 16, seed=self.seed),
            B: Tcp(self._ip_output(B), lambda _d: B, self.cfg, secret=b"b" * 16, seed=~self.seed),
        }
        self.a, self.b = self.stacks[A], self.stacks[B]
        self.sent = 0

    def _ip_output(self, src: bytes) -> Callable[..., None]:
        def output(dst: bytes, proto: int, payload: bytes, now: float, *, df: bool = False) -> None:
            assert proto == 6 and df
            self.sent += 1
            self.log.append((now, src, parse(payload, src, dst)))
            if self.drop_all or self.rng.random() < self.loss:
                return
            copies = 2 if self.rng.random() < self.dup else 1
            for _ in range(copies):
                if self.queued[src] >= self.queue_limit:
                    return  # the bottleneck's tail drop
                start = max(now, self.busy_until[src])
                self.busy_until[src] = start + (len(payload) + 40) / self.bandwidth
                arrival = self.busy_until[src] + self.latency + self.rng.random() * self.jitter
                self.queued[src] += 1
                heapq.heappush(self.heap, (arrival, next(self.counter), src, dst, payload))

        return output

    def step(self) -> bool:
        """Deliver the next datagram or run the next timer; False when nothing is left."""
        times = [t for s in self.stacks.values() if (t := s.next_deadline()) is not None]
        timer = min(times) if times else None
        if self.heap and (timer is None or self.heap[0][0] <= timer):
            arrival, _, src, dst, payload = heapq.heappop(self.heap)
            self.queued[src] -= 1
            self.now = max(self.now, arrival)
            self.stacks[dst].input(src, dst, payload, self.now)
            return True
        if timer is None:
            return False
        self.now = max(self.now, timer)
        for stack in self.stacks.values():
            stack.tick(self.now)
        return True

    def run(
        self, until: Callable[[], bool], limit: float, app: Callable[[], None] = lambda: None
    ) -> None:
        """Step until ``until()`` holds; fail past ``limit`` simulated seconds."""
        deadline = self.now + limit
        for _ in range(MAX_STEPS):
            app()
            if until():
                return
            if not self.step() or self.now > deadline:
                app()
                if until():
                    return
                raise AssertionError(f"not done by t={self.now:.3f}")
        raise AssertionError("step limit")

    def connect(self) -> tuple[Connection, Connection]:
        listener = self.b.listen(ANY, PORT, 8)
        client = self.a.connect(B, PORT, self.now)
        accepted: list[Connection] = []

        def app() -> None:
            conn = self.b.accept(listener)
            if conn is not None:
                accepted.append(conn)

        self.run(lambda: bool(accepted) and client.state is State.ESTABLISHED, 30.0, app)
        return client, accepted[0]

    def sent_by(self, src: bytes) -> list[tuple[float, Segment]]:
        return [(t, s) for t, who, s in self.log if who == src]


@dataclass
class Pump:
    """One direction of a transfer: a writer feeding ``data`` and a reader keeping it."""

    tx: Connection
    rx: Connection
    data: bytes
    wire: Wire
    sent: int = 0
    got: bytearray = field(default_factory=bytearray)
    reading: bool = True
    close_when_done: bool = False

    def __call__(self) -> None:
        if self.sent < len(self.data) and self.tx.writable:
            self.sent += self.tx.send(self.data[self.sent : self.sent + 65536], self.wire.now)
            if self.sent == len(self.data) and self.close_when_done:
                self.tx.shutdown_write(self.wire.now)
        while self.reading and self.rx.readable:
            self.got += self.rx.recv(65536, self.wire.now)

    @property
    def done(self) -> bool:
        return len(self.got) == len(self.data)


def both(*pumps: Pump) -> Callable[[], None]:
    def app() -> None:
        for pump in pumps:
            pump()

    return app


def sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


# --- transfers ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_one_mib_each_way_over_a_lossy_reordering_duplicating_wire(seed: int) -> None:
    wire = Wire(seed, loss=0.02, dup=0.02, jitter=0.004)
    client, server = wire.connect()
    rng = random.Random(seed)
    up = Pump(client, server, rng.randbytes(1 << 20), wire, close_when_done=True)
    down = Pump(server, client, rng.randbytes(1 << 20), wire, close_when_done=True)
    wire.run(
        lambda: up.done and down.done and server.at_eof and client.at_eof, 600.0, both(up, down)
    )
    assert sha(up.got) == sha(up.data) and sha(down.got) == sha(down.data)
    for conn in (client, server):
        assert conn.counters["retransmits"] > 0
        assert conn.counters.get("ooo_segments", 0) > 0
    client.close(wire.now)
    server.close(wire.now)
    wire.run(
        lambda: (
            client.state in (State.TIME_WAIT, State.CLOSED)
            and server.state in (State.TIME_WAIT, State.CLOSED)
        ),
        120.0,
    )
    assert State.TIME_WAIT in (client.state, server.state)
    wire.run(lambda: not wire.a.conns and not wire.b.conns, 2 * CFG.msl + 5)
    assert client.error is None and server.error is None


def test_a_clean_wire_needs_no_retransmission_and_grows_the_window() -> None:
    wire = Wire(7)
    client, server = wire.connect()
    up = Pump(client, server, random.Random(7).randbytes(1 << 20), wire)
    wire.run(lambda: up.done, 60.0, up)
    assert sha(up.got) == sha(up.data)
    assert client.counters.get("retransmits", 0) == 0
    assert client.cc.cwnd > 20 * client.send_mss
    assert client.send_mss == 1460 and client.rto.srtt is not None
    # Delayed ACKs: about one ACK for two segments.
    acks = [s for _, s in wire.sent_by(B) if not s.payload]
    assert len(acks) < 0.7 * (len(up.data) / 1460)


def test_a_queue_overflow_triggers_fast_retransmit_and_newreno() -> None:
    wire = Wire(11, queue_limit=12, bandwidth=2e6)
    client, server = wire.connect()
    up = Pump(client, server, random.Random(11).randbytes(1 << 20), wire)
    wire.run(lambda: up.done, 300.0, up)
    assert sha(up.got) == sha(up.data)
    assert client.counters["fast_retransmits"] > 0
    assert client.cc.ssthresh < 0xFFFFFFFF


# --- closing ----------------------------------------------------------------------------------


def test_half_close_keeps_the_other_direction_open() -> None:
    wire = Wire(5)
    client, server = wire.connect()
    client.shutdown_write(wire.now)
    wire.run(lambda: server.at_eof and client.state is State.FIN_WAIT_2, 5.0)
    assert server.recv(10, wire.now) == b"" and server.state is State.CLOSE_WAIT
    with pytest.raises(BrokenPipeError):
        client.send(b"x", wire.now)
    down = Pump(server, client, random.Random(5).randbytes(300_000), wire, close_when_done=True)
    wire.run(lambda: down.done and client.at_eof, 60.0, down)
    assert sha(down.got) == sha(down.data)
    wire.run(lambda: server.state is State.CLOSED, 10.0)
    assert client.state is State.TIME_WAIT and server.error is None
    wire.run(lambda: client.state is State.CLOSED, 2 * CFG.msl + 1)
    assert wire.now >= 2 * CFG.msl


def test_simultaneous_close_ends_in_time_wait_on_both_sides() -> None:
    wire = Wire(6, latency=0.05)
    client, server = wire.connect()
    client.close(wire.now)
    server.close(wire.now)
    wire.run(lambda: client.state is State.TIME_WAIT and server.state is State.TIME_WAIT, 10.0)
    fins = [s for _, _, s in wire.log if s.has(FIN)]
    assert len(fins) == 2
    wire.run(lambda: not wire.a.conns and not wire.b.conns, 2 * CFG.msl + 1)


def test_simultaneous_open() -> None:
    wire = Wire(8, latency=0.05)
    a = wire.a.connect(B, 7001, 0.0, local_port=7000)
    b = wire.b.connect(A, 7000, 0.0, local_port=7001)
    wire.run(lambda: a.state is State.ESTABLISHED and b.state is State.ESTABLISHED, 10.0)
    a.send(b"ping", wire.now)
    wire.run(lambda: b.readable == 4, 5.0)
    assert b.recv(10, wire.now) == b"ping"


# --- resets -----------------------------------------------------------------------------------


def test_a_closed_port_refuses() -> None:
    wire = Wire(9)
    conn = wire.a.connect(B, 4444, 0.0)
    wire.run(lambda: conn.state is State.CLOSED, 5.0)
    assert conn.error == errno.ECONNREFUSED
    with pytest.raises(ConnectionRefusedError):
        conn.recv(1, wire.now)
    assert wire.b.counters["resets_out"] == 1


def test_abort_resets_the_peer_and_close_with_unread_data_aborts() -> None:
    wire = Wire(10)
    client, server = wire.connect()
    client.abort(wire.now)
    wire.run(lambda: server.state is State.CLOSED, 5.0)
    with pytest.raises(ConnectionResetError):
        server.recv(1, wire.now)
    client, server = _reconnect(wire)
    client.send(b"unread", wire.now)
    wire.run(lambda: server.readable == 6, 5.0)
    server.close(wire.now)
    wire.run(lambda: client.state is State.CLOSED, 5.0)
    assert client.error == errno.ECONNRESET


def _reconnect(wire: Wire) -> tuple[Connection, Connection]:
    listener = wire.b.listeners[(ANY, PORT)]
    client = wire.a.connect(B, PORT, wire.now)
    got: list[Connection] = []

    def app() -> None:
        conn = wire.b.accept(listener)
        if conn is not None:
            got.append(conn)

    wire.run(lambda: bool(got) and client.state is State.ESTABLISHED, 10.0, app)
    return client, got[0]


def test_rfc5961_in_window_rst_and_syn_get_a_challenge_ack() -> None:
    wire = Wire(12)
    client, server = wire.connect()
    forged = [
        Segment(client.local[1], PORT, (server.rcv_nxt + 100) & 0xFFFFFFFF, 0, RST, 0),
        Segment(client.local[1], PORT, (server.rcv_nxt + 5) & 0xFFFFFFFF, 0, SYN, 1000),
    ]
    for seg in forged:
        before = len(wire.sent_by(B))
        wire.b.input(A, B, build(seg, A, B), wire.now)
        answer = wire.sent_by(B)[before:]
        assert len(answer) == 1 and answer[0][1].flags == ACK
        assert server.state is State.ESTABLISHED
    assert server.counters["challenge_acks"] == 2
    # An exact RST resets.
    exact = Segment(client.local[1], PORT, server.rcv_nxt, 0, RST, 0)
    wire.b.input(A, B, build(exact, A, B), wire.now)
    assert server.state is State.CLOSED and server.error == errno.ECONNRESET


# --- timers -----------------------------------------------------------------------------------


def test_retransmissions_back_off_and_the_connection_aborts_at_r2() -> None:
    wire = Wire(13)
    client, _server = wire.connect()
    wire.drop_all = True
    start = wire.now
    client.send(b"lost" * 100, wire.now)
    wire.run(lambda: client.state is State.CLOSED, 60.0)
    assert client.error == errno.ETIMEDOUT
    assert CFG.r2 <= wire.now - start <= CFG.r2 * 2 + 1
    times = [t for t, s in wire.sent_by(A) if s.payload and t >= start]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) >= 4
    for prev, nxt in itertools.pairwise(gaps):
        assert nxt == pytest.approx(min(2 * prev, CFG.rto_max), rel=0.01)
    with pytest.raises(TimeoutError):
        client.send(b"x", wire.now)


def test_an_unanswered_syn_times_out() -> None:
    wire = Wire(14)
    wire.drop_all = True
    conn = wire.a.connect(B, PORT, 0.0)
    wire.run(lambda: conn.state is State.CLOSED, 60.0)
    assert conn.error == errno.ETIMEDOUT
    syns = [t for t, s in wire.sent_by(A) if s.has(SYN)]
    assert syns[:4] == pytest.approx([0.0, 1.0, 3.0, 7.0])


def test_a_paused_reader_gets_zero_window_probes_and_no_reset() -> None:
    wire = Wire(15)
    client, server = wire.connect()
    up = Pump(client, server, random.Random(15).randbytes(600_000), wire, reading=False)
    wire.run(lambda: client.snd_wnd == 0 and client.persist_at is not None, 30.0, up)
    paused_at = wire.now
    wire.run(lambda: wire.now > paused_at + 60.0, 70.0, up)
    probes = [t for t, s in wire.sent_by(A) if t > paused_at and len(s.payload) == 1]
    assert len(probes) >= 4
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    assert gaps[-1] > gaps[0]  # backed off
    assert client.state is State.ESTABLISHED and server.state is State.ESTABLISHED
    assert not any(s.has(RST) for _, _, s in wire.log)
    up.reading = True
    wire.run(lambda: up.done, 120.0, up)
    assert sha(up.got) == sha(up.data)


def test_a_peer_that_vanishes_during_zero_window_probes_is_given_up() -> None:
    wire = Wire(18)
    client, server = wire.connect()
    up = Pump(client, server, bytes(300_000), wire, reading=False)
    wire.run(lambda: client.snd_wnd == 0 and client.persist_at is not None, 30.0, up)
    wire.run(lambda: wire.now > 40.0, 50.0, up)
    assert client.state is State.ESTABLISHED
    wire.drop_all = True
    wire.run(lambda: client.state is State.CLOSED, 200.0, up)
    assert client.error == errno.ETIMEDOUT


def test_nagle_coalesces_small_writes_and_nodelay_does_not() -> None:
    def segments(nodelay: bool) -> int:
        wire = Wire(16, latency=0.05)
        client, server = wire.connect()
        client.set_nodelay(nodelay, wire.now)
        for _ in range(20):
            client.send(b"x" * 10, wire.now)
        wire.run(lambda: server.readable == 200, 5.0)
        return sum(1 for _, s in wire.sent_by(A) if s.payload)

    assert segments(True) == 20
    assert segments(False) == 2


def test_backlog_bounds_the_listen_queue() -> None:
    wire = Wire(17)
    listener = wire.b.listen(ANY, PORT, 2)
    conns = [wire.a.connect(B, PORT, 0.0) for _ in range(3)]
    wire.run(lambda: sum(c.state is State.ESTABLISHED for c in conns) == 2, 0.5)
    wire.run(lambda: wire.now > 0.5, 1.0)
    assert wire.b.counters["listen_overflows"] >= 1
    assert len(listener.ready) == 2
    assert wire.b.accept(listener) is not None
    wire.run(lambda: all(c.state is State.ESTABLISHED for c in conns), 10.0)


# --- details ----------------------------------------------------------------------------------


def test_isns_differ_per_four_tuple_and_advance_with_the_clock() -> None:
    tcp = Tcp(lambda *a, **k: None, lambda _d: A, CFG, secret=bytes(16))
    key = (A, 40000, B, 80)
    first = tcp._isn(key, 0.0)
    assert tcp._isn(key, 0.0) == first
    assert tcp._isn((A, 40001, B, 80), 0.0) != first
    assert (tcp._isn(key, 1.0) - first) % 2**32 == 250_000  # RFC 6528's 4 us timer
    other = Tcp(lambda *a, **k: None, lambda _d: A, CFG, secret=bytes(range(16)))
    assert other._isn(key, 0.0) != first


def test_a_segment_for_no_socket_gets_the_rfc9293_reset() -> None:
    wire = Wire(19)
    syn = Segment(1234, 80, 1000, 0, SYN, 100, b"", 1460)
    wire.b.input(A, B, build(syn, A, B), 0.0)
    data = Segment(1234, 80, 1000, 777, ACK, 100, b"abc")
    wire.b.input(A, B, build(data, A, B), 0.0)
    wire.b.input(A, B, build(Segment(1234, 80, 1, 2, RST, 0), A, B), 0.0)
    resets = [s for _, s in wire.sent_by(B)]
    assert resets[0].flags == RST | ACK and resets[0].seq == 0 and resets[0].ack == 1001
    assert resets[1].flags == RST and resets[1].seq == 777
    assert len(resets) == 2  # never a RST for a RST
    wire.b.input(A, B, b"\0" * 19, 0.0)
    assert wire.b.counters["bad_segments"] == 1


def test_a_syn_without_mss_means_536_and_ours_is_announced() -> None:
    wire = Wire(20)
    wire.b.listen(ANY, PORT, 4)
    wire.b.input(A, B, build(Segment(1234, PORT, 1000, 0, SYN, 65535), A, B), 0.0)
    conn = next(iter(wire.b.conns.values()))
    assert conn.send_mss == 536 and conn.state is State.SYN_RECEIVED
    synack = wire.sent_by(B)[-1][1]
    assert synack.flags == SYN | ACK and synack.mss == 1460 and synack.ack == 1001


def test_one_segment_is_acked_after_the_delayed_ack_timer() -> None:
    wire = Wire(21, latency=0.01)
    client, _server = wire.connect()
    sent_at = wire.now
    client.send(b"a" * 100, wire.now)
    wire.run(lambda: client.snd_una == client.snd_max, 2.0)
    ack_time = next(t for t, s in wire.sent_by(B) if t > sent_at and not s.payload)
    assert ack_time - (sent_at + 0.01) == pytest.approx(CFG.delack, abs=0.005)
    two = wire.now
    client.send(b"b" * 2920, wire.now)  # two full segments: acked at once
    wire.run(lambda: client.snd_una == client.snd_max, 2.0)
    ack_time = next(t for t, s in wire.sent_by(B) if t > two and not s.payload)
    assert ack_time - two < 0.02 + 0.005
    assert client.counters.get("retransmits", 0) == 0


def test_fin_wait_2_gives_up_on_a_peer_that_never_closes() -> None:
    wire = Wire(22)
    client, server = wire.connect()
    client.close(wire.now)
    wire.run(lambda: client.state is State.FIN_WAIT_2, 5.0)
    closed_at = wire.now
    wire.run(lambda: client.state is State.CLOSED, CFG.fin_wait_2 + 5)
    assert wire.now - closed_at == pytest.approx(CFG.fin_wait_2, abs=0.5)
    assert client.error is None and server.state is State.CLOSE_WAIT


def test_a_new_syn_reopens_a_time_wait_pair() -> None:
    wire = Wire(23)
    client, server = wire.connect()
    port = client.local[1]
    server.close(wire.now)
    wire.run(lambda: client.at_eof, 5.0)
    client.close(wire.now)
    wire.run(lambda: server.state is State.TIME_WAIT and client.state is State.CLOSED, 5.0)
    again = wire.a.connect(B, PORT, wire.now + 0.5, local_port=port)
    listener = wire.b.listeners[(ANY, PORT)]
    wire.run(lambda: again.state is State.ESTABLISHED and bool(listener.ready), 5.0)
    assert server.state is State.CLOSED
    assert wire.now < 2 * CFG.msl


def test_closing_a_listener_resets_what_was_not_accepted() -> None:
    wire = Wire(24)
    listener = wire.b.listen(ANY, PORT, 4)
    conn = wire.a.connect(B, PORT, 0.0)
    wire.run(lambda: bool(listener.ready), 5.0)
    wire.b.close_listener(listener, wire.now)
    wire.run(lambda: conn.state is State.CLOSED, 5.0)
    assert conn.error == errno.ECONNRESET
    wire.b.listen(ANY, 6000, 1)
    with pytest.raises(OSError, match="already listened"):
        wire.b.listen(B, 6000, 1)


def test_an_unreachable_peer_times_out_with_ehostunreach() -> None:
    wire = Wire(25)
    wire.drop_all = True
    conn = wire.a.connect(B, PORT, 0.0)
    wire.a.unreachable(B, errno.EHOSTUNREACH, build(wire.sent_by(A)[0][1], A, B))
    wire.run(lambda: conn.state is State.CLOSED, 30.0)
    assert conn.error == errno.EHOSTUNREACH


def test_a_fin_at_a_zero_window_is_taken() -> None:
    wire = Wire(26)
    client, server = wire.connect()
    data = bytes(range(256)) * 256  # 65536: the window and one byte more
    up = Pump(client, server, data[:65535], wire, reading=False, close_when_done=True)
    wire.run(lambda: up.sent == 65535 and server.state is State.CLOSE_WAIT, 10.0, up)
    assert server._window() == 0 and server.readable == 65535
    up.reading = True
    wire.run(lambda: up.done and server.at_eof, 5.0, up)
    assert up.got == data[:65535]


def test_segments_from_or_to_non_unicast_addresses_are_dropped_silently() -> None:
    wire = Wire(27)
    wire.b.listen(ANY, PORT, 4)
    group, everyone = bytes([224, 0, 0, 1]), b"\xff" * 4
    for src, dst in ((group, B), (A, everyone), (bytes(4), B)):
        wire.b.input(src, dst, build(Segment(1, PORT, 5, 0, SYN, 100), src, dst), 0.0)
    assert not wire.sent_by(B) and not wire.b.conns
    assert wire.b.counters["not_unicast"] == 3


def test_after_an_idle_rto_the_sender_restarts_from_the_initial_window() -> None:
    wire = Wire(28, latency=0.02)
    client, server = wire.connect()
    up = Pump(client, server, bytes(300_000), wire)
    wire.run(lambda: up.done, 30.0, up)
    assert client.cc.cwnd > 10 * client.send_mss
    wire.run(lambda: client.snd_una == client.snd_max and not wire.heap, 5.0)
    assert wire.a.next_deadline() is None and wire.b.next_deadline() is None
    wire.now += 2.0  # idle: nothing is armed, so time just passes
    restart = wire.now
    client.send(bytes(100_000), wire.now)
    burst = [s for t, s in wire.sent_by(A) if t >= restart and t < restart + 0.01 and s.payload]
    assert len(burst) == 3  # RFC 5681's IW for a 1460-byte MSS
