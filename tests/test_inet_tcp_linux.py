"""TCP engine against Linux's own TCP, through a TAP device; no QEMU.

A network namespace (hwl.machine.netpeer.NetnsPeer: Linux at 10.0.2.2 on br0 and a
TAP enslaved to it) gives the test the TAP's fd; the frames on it are read and
written here, through inet's own Stack (Ethernet, ARP, IPv4) and the TCP engine at
10.0.2.15. Linux's sockets are made inside the namespace and driven from threads.
Every wait is bounded in real time, every thread joined with a timeout, and the
namespace is deleted whatever happens (checked with ``ip netns list``)."""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import random
import select
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from hwl.machine.netpeer import NetnsPeer
from hwl.machine.profile import NetSpec
from hwl.servers.inet.ipv4 import Config, address
from hwl.servers.inet.stack import Stack
from hwl.servers.inet.tcp.connection import Connection, State, TcpConfig
from hwl.servers.inet.tcp.segment import FIN, RST, SYN, Segment, parse
from hwl.servers.inet.tcp.tcp import ANY, Tcp

OURS = address("10.0.2.15")
LINUX = address("10.0.2.2")
MAC = bytes.fromhex("02000a00020f")
CFG = TcpConfig(rto_min=0.2, r2=3.0, r2_syn=3.0, msl=1.0)
BIG = 8 << 20
PORT = 5555


@dataclass
class Driver:
    """Our side of the TAP: frames to and from the Stack, timers, and a drop switch."""

    peer: NetnsPeer
    cfg: TcpConfig = CFG
    drop: bool = False
    loss: float = 0.0
    """Chance that a frame, in or out, is lost (seeded)."""
    sent: list[tuple[float, Segment]] = field(default_factory=list)
    received: list[tuple[float, Segment, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fd = self.peer.tap_fds["net0"]
        self.rng = random.Random(0)
        self.lost = 0
        os.set_blocking(self.fd, False)
        now = time.monotonic()
        self.stack = Stack()
        self.stack.add_interface("tap", MAC, Config(OURS, address("255.255.255.0")), now)
        self.tcp = Tcp(self._ip_output, self.stack.source_for, self.cfg)
        self.stack.tcp_input = self._tcp_input
        self.stack.tcp_unreachable = self.tcp.unreachable
        self.flush()

    def _ip_output(
        self, dst: bytes, proto: int, payload: bytes, now: float, *, df: bool = False
    ) -> None:
        self.sent.append((now, parse(payload, OURS, dst)))
        self.stack.ip_output(dst, proto, payload, now, df=df)

    def _tcp_input(self, src: bytes, dst: bytes, data: bytes, now: float) -> None:
        self.received.append((now, parse(data, src, dst), (data[12] >> 4) * 4))
        self.tcp.input(src, dst, data, now)

    def flush(self, frames: list[tuple[str, bytes]] | None = None) -> None:
        """Write ``frames`` (what Stack.input or tick returned) and whatever else it queued."""
        for _ifname, frame in [*(frames or []), *self.stack.take_output()]:
            if not self.drop and not self._lose():
                os.write(self.fd, frame)

    def _lose(self) -> bool:
        if self.loss and self.rng.random() < self.loss:
            self.lost += 1
            return True
        return False

    def poll(self, timeout: float) -> None:
        """Wait for frames or the next deadline (at most ``timeout``), then handle both."""
        now = time.monotonic()
        deadlines = [d for d in (self.tcp.next_deadline(), self.stack.deadline()) if d is not None]
        wait = min([timeout, *[max(0.0, d - now) for d in deadlines]])
        ready, _, _ = select.select([self.fd], [], [], wait)
        if ready:
            for _ in range(256):
                try:
                    frame = os.read(self.fd, 65536)
                except BlockingIOError:
                    break
                if not self.drop and not self._lose():
                    self.flush(self.stack.input("tap", frame, time.monotonic()))
        now = time.monotonic()
        self.flush(self.stack.tick(now))
        self.tcp.tick(now)
        self.flush()

    def run(
        self, until: Callable[[], bool], limit: float, app: Callable[[], None] = lambda: None
    ) -> None:
        """Poll until ``until()``; fail after ``limit`` seconds."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            app()
            self.flush()
            if until():
                return
            self.poll(0.05)
        app()
        if not until():
            raise AssertionError(f"not done in {limit} s")

    def connect(self, port: int = PORT) -> Connection:
        conn = self.tcp.connect(LINUX, port, time.monotonic())
        self.flush()
        self.run(lambda: conn.state is not State.SYN_SENT, 10.0)
        return conn


@pytest.fixture
def peer() -> Iterator[NetnsPeer]:
    peer = NetnsPeer([NetSpec("net0", "netns", 0)])
    try:
        yield peer
    finally:
        peer.close()
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert peer.namespace not in listed


@pytest.fixture
def driver(peer: NetnsPeer) -> Driver:
    return Driver(peer)


class Thread(threading.Thread):
    """A thread whose exception and result come back to the test at ``join``."""

    def __init__(self, fn: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: object = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:
            self.error = exc

    def outcome(self, timeout: float = 30.0) -> object:
        self.join(timeout)
        assert not self.is_alive(), "the Linux side did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def linux_listener(peer: NetnsPeer, rcvbuf: int | None = None) -> socket.socket:
    sock = peer.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind(("10.0.2.2", PORT))
    sock.listen(4)
    sock.settimeout(30.0)
    return sock


def recv_all(sock: socket.socket) -> str:
    digest = hashlib.sha256()
    while chunk := sock.recv(1 << 16):
        digest.update(chunk)
    return digest.hexdigest()


def send_all(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


@dataclass
class Pump:
    """Our application: write ``data`` then FIN, read to EOF."""

    conn: Connection
    data: bytes
    sent: int = 0
    got: hashlib._Hash = field(default_factory=hashlib.sha256)
    count: int = 0
    reading: bool = True

    def __call__(self) -> None:
        now = time.monotonic()
        while self.sent < len(self.data) and self.conn.writable:
            self.sent += self.conn.send(self.data[self.sent : self.sent + 65536], now)
            if self.sent == len(self.data):
                self.conn.shutdown_write(now)
        while self.reading and self.conn.readable:
            chunk = self.conn.recv(1 << 16, now)
            self.got.update(chunk)
            self.count += len(chunk)

    @property
    def done(self) -> bool:
        return self.sent == len(self.data) and self.conn.at_eof


def ss(peer: NetnsPeer, state: str) -> str:
    return peer.run(["ss", "-tanH", "state", state]).stdout


def assert_plain_tcp_from_linux(driver: Driver) -> None:
    """Linux turned SACK, timestamps and window scaling off: 20-byte headers after its SYN."""
    later = [(seg, hlen) for _, seg, hlen in driver.received if not seg.has(SYN)]
    assert later and all(hlen == 20 for _, hlen in later)
    syns = [seg for _, seg, _ in driver.received if seg.has(SYN)]
    assert all(seg.mss == 1460 for seg in syns)


def csum_errors(peer: NetnsPeer) -> int:
    out = peer.run(["nstat", "-az", "TcpInCsumErrors"]).stdout
    return sum(int(line.split()[1]) for line in out.splitlines() if "CsumErrors" in line)


# --- transfers ------------------------------------------------------------------------------


def test_we_connect_and_transfer_8_mib_each_way(peer: NetnsPeer, driver: Driver) -> None:
    rng = random.Random(1)
    ours, theirs = rng.randbytes(BIG), rng.randbytes(BIG)
    listener = linux_listener(peer)

    def linux() -> str:
        conn, _ = listener.accept()
        conn.settimeout(60.0)
        sender = Thread(lambda: send_all(conn, theirs))
        digest = recv_all(conn)
        sender.outcome(60.0)
        conn.close()
        return digest

    side = Thread(linux)
    conn = driver.connect()
    assert conn.state is State.ESTABLISHED and conn.send_mss == 1460
    pump = Pump(conn, ours)
    started = time.monotonic()
    driver.run(lambda: pump.done and not side.is_alive(), 120.0, pump)
    elapsed = time.monotonic() - started
    assert side.outcome(60.0) == hashlib.sha256(ours).hexdigest()
    assert pump.count == BIG and pump.got.hexdigest() == hashlib.sha256(theirs).hexdigest()
    print(f"8 MiB each way in {elapsed:.2f} s ({2 * BIG / elapsed / 1e6:.1f} MB/s total)")
    assert_plain_tcp_from_linux(driver)
    assert conn.error is None and not any(seg.has(RST) for _, seg, _ in driver.received)
    assert csum_errors(peer) == 0
    listener.close()


def test_linux_connects_to_us_and_transfers_8_mib_each_way(peer: NetnsPeer, driver: Driver) -> None:
    rng = random.Random(2)
    ours, theirs = rng.randbytes(BIG), rng.randbytes(BIG)
    listener = driver.tcp.listen(ANY, PORT, 4)

    def linux() -> str:
        sock = peer.socket()
        sock.settimeout(60.0)
        sock.connect(("10.0.2.15", PORT))
        sender = Thread(lambda: send_all(sock, theirs))
        digest = recv_all(sock)
        sender.outcome(60.0)
        sock.close()
        return digest

    side = Thread(linux)
    accepted: list[Connection] = []

    def accept() -> None:
        conn = driver.tcp.accept(listener)
        if conn is not None:
            accepted.append(conn)

    driver.run(lambda: bool(accepted), 10.0, accept)
    pump = Pump(accepted[0], ours)
    started = time.monotonic()
    driver.run(lambda: pump.done and not side.is_alive(), 120.0, pump)
    elapsed = time.monotonic() - started
    assert side.outcome(60.0) == hashlib.sha256(ours).hexdigest()
    assert pump.count == BIG and pump.got.hexdigest() == hashlib.sha256(theirs).hexdigest()
    print(f"8 MiB each way in {elapsed:.2f} s ({2 * BIG / elapsed / 1e6:.1f} MB/s total)")
    assert_plain_tcp_from_linux(driver)
    assert csum_errors(peer) == 0


def test_8_mib_each_way_with_two_percent_loss_both_ways(peer: NetnsPeer, driver: Driver) -> None:
    """Losses make Linux's segments arrive out of order (the queue keeps them) and ours
    need fast retransmits and NewReno; every byte still arrives."""
    rng = random.Random(4)
    ours, theirs = rng.randbytes(BIG), rng.randbytes(BIG)
    listener = linux_listener(peer)

    def linux() -> str:
        conn, _ = listener.accept()
        conn.settimeout(60.0)
        sender = Thread(lambda: send_all(conn, theirs))
        digest = recv_all(conn)
        sender.outcome(60.0)
        conn.close()
        return digest

    side = Thread(linux)
    conn = driver.connect()
    driver.loss = 0.02
    pump = Pump(conn, ours)
    started = time.monotonic()
    driver.run(lambda: pump.done and not side.is_alive(), 180.0, pump)
    elapsed = time.monotonic() - started
    assert side.outcome(60.0) == hashlib.sha256(ours).hexdigest()
    assert pump.got.hexdigest() == hashlib.sha256(theirs).hexdigest()
    print(f"lossy: {elapsed:.2f} s, {driver.lost} frames lost, {conn.counters}")
    assert driver.lost > 100
    assert conn.counters["ooo_segments"] > 0 and conn.counters["fast_retransmits"] > 0
    assert conn.error is None
    listener.close()


# --- refusals -------------------------------------------------------------------------------


def test_a_closed_port_refuses_both_ways(peer: NetnsPeer, driver: Driver) -> None:
    conn = driver.tcp.connect(LINUX, 9, time.monotonic())
    driver.run(lambda: conn.state is State.CLOSED, 10.0)
    assert conn.error == errno.ECONNREFUSED

    def linux() -> int:
        sock = peer.socket()
        sock.settimeout(10.0)
        try:
            return sock.connect_ex(("10.0.2.15", 9))
        finally:
            sock.close()

    side = Thread(linux)
    driver.run(lambda: not side.is_alive(), 15.0)
    assert side.outcome() == errno.ECONNREFUSED
    assert driver.tcp.counters["resets_out"] == 1


# --- flow control ---------------------------------------------------------------------------


def test_a_paused_linux_reader_gets_window_probes_and_no_reset(
    peer: NetnsPeer, driver: Driver
) -> None:
    listener = linux_listener(peer, rcvbuf=4096)
    accepted: list[socket.socket] = []
    side = Thread(lambda: accepted.append(listener.accept()[0]))
    conn = driver.connect()
    side.outcome(10.0)
    data = random.Random(3).randbytes(2 << 20)
    pump = Pump(conn, data)
    driver.run(lambda: conn.counters.get("window_probes", 0) >= 4, 30.0, pump)
    probes_at = [t for t, seg in driver.sent if len(seg.payload) == 1 and t > 0]
    assert conn.state is State.ESTABLISHED and conn.snd_wnd == 0
    assert not any(seg.has(RST) for _, seg, _ in driver.received)
    gaps = [b - a for a, b in itertools.pairwise(probes_at)]
    assert gaps and gaps[-1] > gaps[0]
    reader = Thread(lambda: recv_all(accepted[0]))
    driver.run(lambda: conn.state is State.FIN_WAIT_2 and not reader.is_alive(), 60.0, pump)
    assert reader.outcome() == hashlib.sha256(data).hexdigest()
    accepted[0].close()
    listener.close()


# --- closing --------------------------------------------------------------------------------


def test_we_close_first_and_keep_time_wait(peer: NetnsPeer, driver: Driver) -> None:
    listener = linux_listener(peer)

    def linux() -> bytes:
        sock, _ = listener.accept()
        sock.settimeout(10.0)
        got = sock.recv(100)
        assert sock.recv(100) == b""  # our FIN
        sock.close()
        return got

    side = Thread(linux)
    conn = driver.connect()
    conn.send(b"bye", time.monotonic())
    conn.close(time.monotonic())
    driver.run(lambda: conn.state is State.TIME_WAIT, 10.0)
    assert side.outcome() == b"bye"
    assert "TIME-WAIT" not in ss(peer, "time-wait").upper() and not ss(peer, "time-wait").strip()
    driver.run(lambda: conn.state is State.CLOSED, 2 * CFG.msl + 2)
    assert conn.error is None and not driver.tcp.conns
    listener.close()


def test_linux_closes_first_and_keeps_time_wait(peer: NetnsPeer, driver: Driver) -> None:
    listener = linux_listener(peer)

    def linux() -> None:
        sock, _ = listener.accept()
        sock.sendall(b"hello")
        sock.close()

    side = Thread(linux)
    conn = driver.connect()
    got = bytearray()

    def read() -> None:
        if conn.readable:
            got.extend(conn.recv(100, time.monotonic()))

    driver.run(lambda: conn.at_eof, 10.0, read)
    side.outcome()
    assert bytes(got) == b"hello" and conn.state is State.CLOSE_WAIT
    conn.close(time.monotonic())
    driver.run(lambda: conn.state is State.CLOSED, 10.0)
    assert conn.error is None
    assert f"10.0.2.15:{conn.local[1]}" in ss(peer, "time-wait")
    listener.close()


def test_simultaneous_close_with_linux_leaves_both_in_time_wait(
    peer: NetnsPeer, driver: Driver
) -> None:
    listener = linux_listener(peer)
    accepted: list[socket.socket] = []
    side = Thread(lambda: accepted.append(listener.accept()[0]))
    conn = driver.connect()
    side.outcome(10.0)
    # Both FINs leave while the wire drops everything, so they cross on the retries.
    driver.drop = True
    accepted[0].close()
    conn.close(time.monotonic())
    quiet_until = time.monotonic() + 0.1
    driver.run(lambda: time.monotonic() > quiet_until, 1.0)
    assert conn.state is State.FIN_WAIT_1
    driver.drop = False
    driver.run(lambda: conn.state is State.TIME_WAIT, 10.0)
    fins_in = [seg for _, seg, _ in driver.received if seg.has(FIN)]
    assert fins_in and conn.fin_received
    linux_tw = ss(peer, "time-wait")
    assert f"10.0.2.15:{conn.local[1]}" in linux_tw
    listener.close()


# --- loss -----------------------------------------------------------------------------------


def test_dropped_frames_back_off_the_rto_and_abort_at_r2(peer: NetnsPeer, driver: Driver) -> None:
    listener = linux_listener(peer)
    accepted: list[socket.socket] = []
    side = Thread(lambda: accepted.append(listener.accept()[0]))
    conn = driver.connect()
    side.outcome(10.0)
    conn.send(b"first", time.monotonic())
    driver.run(lambda: conn.snd_una == conn.snd_max, 5.0)
    driver.drop = True
    start = time.monotonic()
    conn.send(b"x" * 1000, start)
    armed: list[float] = []  # every retransmission deadline, in order

    def note_deadline() -> None:
        if conn.rexmit_at is not None and (not armed or conn.rexmit_at != armed[-1]):
            armed.append(conn.rexmit_at)

    driver.run(lambda: conn.state is State.CLOSED, 3 * CFG.r2 + 5, app=note_deadline)
    assert conn.error == errno.ETIMEDOUT
    assert CFG.r2 <= time.monotonic() - start <= 2 * CFG.r2 + 2
    times = [t for t, seg in driver.sent if t >= start and seg.payload == b"x" * 1000]
    assert len(times) >= 4
    # Each timer is armed when its segment leaves, so a late wake on a loaded host
    # lengthens one gap and not the next: the timeouts the stack armed double
    # exactly, and each retransmission leaves at its deadline, never before and
    # within a poll of it (0.5 s of slack; the timeouts grow past that).
    timeouts = [deadline - sent for sent, deadline in zip(times, armed, strict=False)]
    assert len(timeouts) >= 3, (times, armed)
    for prev, nxt in itertools.pairwise(timeouts):
        assert nxt == pytest.approx(2 * prev, rel=1e-6), timeouts
    for deadline, sent in zip(armed, times[1:], strict=False):
        assert deadline <= sent < deadline + 0.5, (deadline, sent)
    accepted[0].close()
    listener.close()


def test_linux_probes_our_zero_window_and_its_fin_waits_for_our_reader(
    peer: NetnsPeer, driver: Driver
) -> None:
    listener = linux_listener(peer)
    data = random.Random(5).randbytes(1 << 20)

    def linux() -> None:
        sock, _ = listener.accept()
        sock.settimeout(30.0)
        send_all(sock, data)
        sock.close()

    side = Thread(linux)
    conn = driver.connect()
    driver.run(lambda: conn.readable == conn.rcv_cap, 10.0)
    assert conn._window() == 0
    paused = time.monotonic()
    driver.run(lambda: time.monotonic() > paused + 3.0, 5.0)
    probes = [seg for t, seg, _ in driver.received if t > paused + 0.1]
    assert probes, "Linux sent no zero-window probe"
    assert conn.state.name == "ESTABLISHED"
    got = bytearray()

    def read() -> None:
        while conn.readable:
            got.extend(conn.recv(1 << 16, time.monotonic()))

    driver.run(lambda: conn.at_eof and not side.is_alive(), 30.0, read)
    side.outcome()
    assert bytes(got) == data and conn.state is State.CLOSE_WAIT
    listener.close()
