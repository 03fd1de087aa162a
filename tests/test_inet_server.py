"""INET as a server on each real NIC (profiles ``inet`` (e1000), ``inet-ne2k`` and
``inet-rtl8139``), Linux's stack in the machine's namespace as the peer: ping both
ways, UDP echo through ``hwl.net`` both ways, the driver SIGKILLed during a UDP
exchange (INET re-opens the next incarnation, nothing is lost, no client sees an
error), bad client input answered with clear errors while INET keeps serving, and
TCP with Linux both ways, refused, and through 5 driver kills. One machine per NIC,
each running the whole module."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_inet_linux import bad_frames

import hwl.net
from hwl.machine.machine import Machine
from hwl.net.status import format_interfaces
from hwl.proto import inet as ip
from hwl.proto.errno import Errno
from hwl.system.boot import System
from hwl.system.nicrig import GUEST_IP, LINUX_IP, LinuxUdp
from hwl.system.proto import LuState

pytestmark = pytest.mark.qemu

#: profile -> the NIC driver's label in it
PROFILES = {"inet": "e1000", "inet-ne2k": "dp8390", "inet-rtl8139": "rtl8139"}


@dataclass
class Rig:
    machine: Machine
    system: System
    net: hwl.net.Inet
    label: str

    def inet_log(self) -> str:
        return (self.machine.run_dir / "inet.log").read_text(errors="replace")

    def driver_pid(self) -> int:
        rows = [s for s in self.system.rs.status() if s.label == self.label and s.state == "up"]
        assert rows and rows[0].pid > 0, f"{self.label} is not up"
        return rows[0].pid

    def driver_pid_when_up(self, timeout: float = 20.0) -> int:
        """The driver's pid once it is up again (after a kill), and INET has it open."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = [s for s in self.system.rs.status() if s.label == self.label]
            if rows and rows[0].state == "up" and rows[0].pid > 0:
                return rows[0].pid
            time.sleep(0.01)
        raise AssertionError(f"{self.label} not up again within {timeout} s")

    def iface(self) -> dict[str, Any]:
        rows = hwl.net.ifstatus(inet=self.net)["interfaces"]
        assert isinstance(rows, list)
        return next(r for r in rows if isinstance(r, dict) and r["name"] == self.label)


@pytest.fixture(scope="module", params=sorted(PROFILES))
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    """One machine per NIC (pytest runs the module's tests on each in turn)."""
    profile = request.param
    with Machine(profile) as machine, System.start(machine, backoff_unit=0.0) as system:
        net = hwl.net.Inet.attach(machine.run_dir)
        try:
            rig = Rig(machine, system, net, PROFILES[profile])
            reach(rig)
            yield rig
        finally:
            net.close()


def reach(rig: Rig, timeout: float = 15.0) -> None:
    """Ping Linux until it answers: an e1000 holds reception for 1 s after its
    receiver is enabled."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            hwl.net.ping(LINUX_IP, timeout=0.5, inet=rig.net)
            return
    raise AssertionError(f"Linux not reachable through INET; {rig.iface()}")


def test_linux_pings_inet_100_of_100(rig: Rig) -> None:
    out = rig.machine.peer.run(["ping", "-c", "100", "-i", "0.01", "-W", "2", "-q", GUEST_IP],
                               timeout=120)  # fmt: skip
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out.stdout)
    assert m is not None, out.stdout + out.stderr
    assert (int(m[1]), int(m[2])) == (100, 100), (out.stdout, hwl.net.ifstatus(inet=rig.net),
                                                  rig.inet_log()[-3000:])  # fmt: skip


def test_inet_pings_linux_100_of_100(rig: Rig) -> None:
    rtts = [hwl.net.ping(LINUX_IP, timeout=2.0, inet=rig.net) for _ in range(100)]
    assert len(rtts) == 100 and all(0 < r < 2.0 for r in rtts)
    rtts.sort()
    print(f"{rig.label}: ping 10.0.2.2 through INET: min {rtts[0] * 1e6:.0f} us, "
          f"p50 {rtts[50] * 1e6:.0f} us, max {rtts[-1] * 1e6:.0f} us")  # fmt: skip
    with pytest.raises(TimeoutError):
        hwl.net.ping("10.0.2.99", timeout=0.3, inet=rig.net)  # nobody there: ARP fails


ECHO_PORT = 7007


def linux_echo(rig: Rig) -> LinuxUdp:
    """Linux's UDP socket at ECHO_PORT, sending back what it gets for at most 120 s."""
    return LinuxUdp(rig.machine, echo=True, count=10**9, seconds=120.0, port=ECHO_PORT)


UDP_ECHOES = 1000  # the count: datagrams of 0..1472 bytes, contents checked


def sizes(n: int, seed: int) -> list[int]:
    """``n`` sizes over 0..1472 with both ends in."""
    rng = random.Random(seed)
    return [0, ip.MAX_DGRAM] + [rng.randint(0, ip.MAX_DGRAM) for _ in range(n - 2)]


def test_udp_echo_through_linux_1000_datagrams(rig: Rig) -> None:
    with linux_echo(rig) as echo, hwl.net.socket(hwl.net.AF_INET, hwl.net.SOCK_DGRAM,
                                                inet=rig.net) as s:  # fmt: skip
        s.settimeout(3.0)
        for i, size in enumerate(sizes(UDP_ECHOES, 18)):
            data = random.Random(i).randbytes(size)
            assert s.sendto(data, (LINUX_IP, ECHO_PORT)) == size
            got, peer = s.recvfrom(2048)
            assert got == data and peer == (LINUX_IP, ECHO_PORT), (i, size, len(got))
        assert echo.received == UDP_ECHOES
        addr, port = s.getsockname()
        assert addr == "0.0.0.0" and port >= 49152  # bound on the first sendto
        # connected: send/recv/recv_into to the default peer
        s.connect((LINUX_IP, ECHO_PORT))
        assert s.getpeername() == (LINUX_IP, ECHO_PORT)
        s.send(b"connected")
        assert s.recv(100) == b"connected"
        buf = bytearray(8)
        s.send(b"0123456789")  # longer than the buffer: the rest is dropped, as Linux does
        assert s.recv_into(buf) == 8 and bytes(buf) == b"01234567"
        s.setblocking(False)
        with pytest.raises(BlockingIOError):
            s.recv(10)
        s.settimeout(0.2)
        with pytest.raises(hwl.net.timeout):
            s.recv(10)


def test_linux_sends_to_a_bound_hwl_socket_200_datagrams(rig: Rig) -> None:
    linux = rig.machine.peer.socket(socket.AF_INET, socket.SOCK_DGRAM)
    linux.settimeout(3.0)
    try:
        linux.bind((LINUX_IP, 0))
        with hwl.net.socket(inet=rig.net) as s:
            s.setsockopt(hwl.net.SOL_SOCKET, hwl.net.SO_RCVBUF, 64 * 2048)
            s.bind((GUEST_IP, 9000))
            assert s.getsockname() == (GUEST_IP, 9000)
            s.settimeout(3.0)
            for i, size in enumerate(sizes(200, 81)):
                data = random.Random(-i).randbytes(size)
                linux.sendto(data, (GUEST_IP, 9000))
                got, peer = s.recvfrom(ip.MAX_DGRAM)
                assert got == data and peer == linux.getsockname(), (i, size, len(got))
                s.sendto(got[::-1], peer)  # and back: Linux checks it
                assert linux.recvfrom(2048) == (data[::-1], (GUEST_IP, 9000))
    finally:
        linux.close()


def exchange(s: hwl.net.socket, tag: str, n: int, stale: frozenset[bytes] = frozenset()) -> int:
    """``n`` round trips; echoes in ``stale`` (duplicates of earlier ones) are skipped
    and counted."""
    skipped = 0
    for i in range(n):
        data = f"{tag} {i}".encode() * (1 + i % 20)
        s.sendto(data, (LINUX_IP, ECHO_PORT))
        while (got := s.recvfrom(2048)[0]) in stale:
            skipped += 1
        assert got == data
    return skipped


def wait_dead(pid: int, timeout: float = 5.0) -> None:
    """Until ``pid`` is gone or a zombie: what is sent next finds no driver."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):  # gone: reaped between the open and the read too
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.001)
    raise AssertionError(f"{pid} still alive after SIGKILL")


def test_driver_sigkilled_during_udp_exchange(rig: Rig) -> None:
    before = rig.iface()
    assert before["driver"] == "up"
    with linux_echo(rig) as echo, hwl.net.socket(inet=rig.net) as s:
        s.settimeout(15.0)  # the restarted e1000 holds reception for 1 s
        exchange(s, "before", 20)
        pid = rig.driver_pid()
        os.kill(pid, signal.SIGKILL)
        wait_dead(pid)
        sent_down = [f"while down {i}".encode() * 10 for i in range(20)]
        for data in sent_down:  # at once: the driver is dead or not yet back
            s.sendto(data, (LINUX_IP, ECHO_PORT))
        got: list[bytes] = []
        while not set(sent_down) <= set(got):
            got.append(s.recvfrom(2048)[0])
            assert len(got) <= 3 * len(sent_down), got
        assert set(got) == set(sent_down)  # each arrived; some maybe twice (the port re-sends)
        dups = len(got) - len(sent_down) + exchange(s, "after", 20, frozenset(sent_down))
        assert echo.received >= 60 + dups  # a duplicate's echo may still be on its way
    after = rig.iface()
    print(f"INET's {rig.label} before {before}\nafter {after}\nduplicates echoed {dups}")
    assert after["driver"] == "up" and after["restarts"] == before["restarts"] + 1, rig.inet_log()
    assert after["endpoint"] != before["endpoint"]
    assert after["resent"] > before["resent"]  # SENDs the dead driver never confirmed
    assert "re-opened at endpoint" in rig.inet_log()


def test_bad_client_input_gets_clear_errors_and_inet_keeps_serving(rig: Rig) -> None:
    net = rig.net

    def refused(m_type: int, fields: dict[str, Any], err: int, text: str = "") -> None:
        with pytest.raises(OSError) as info:
            net.call(m_type, fields)
        assert info.value.errno == err, info.value
        assert text in str(info.value)

    refused(ip.RECVFROM, {"sock": 999, "max": 10, "timeout": 0}, errno.EBADF, "not open")
    refused(ip.SENDTO, {"sock": 999, "data": b"x"}, errno.EBADF)
    refused(ip.BIND, {"sock": 3, "addr": "10.0.2", "port": 1}, errno.EINVAL, "'addr'")
    refused(ip.SENDTO, {"sock": 3, "data": bytes(8000), "addr": LINUX_IP, "port": 7},
            errno.EINVAL, "'data' holds 8000 bytes")  # fmt: skip
    refused(ip.SOCKET, {"type": "dgram"}, errno.EINVAL, "'type' must be an integer")
    refused(ip.INET_BASE + 99, {}, errno.ENOSYS, "unknown request")
    refused(ip.LISTEN, {"sock": 3}, errno.EBADF)
    # not even a message INET can decode
    reply = net.conn.sendrec(net.endpoint, ip.SOCKET, b"\xff\x00garbage", timeout=10)
    assert reply.m_type == -int(Errno.EINVAL) and "malformed" in str(reply.get("error"))

    s = hwl.net.socket(inet=net)
    with pytest.raises(OSError) as info:
        s.bind(("10.0.2.99", 0))
    assert info.value.errno == errno.EADDRNOTAVAIL
    with pytest.raises(PermissionError):  # broadcast without SO_BROADCAST, as Linux
        s.sendto(b"x", ("10.0.2.255", 9))
    with pytest.raises(OSError) as info:
        s.sendto(bytes(ip.MAX_DGRAM + 1), (LINUX_IP, 9))
    assert info.value.errno == errno.EMSGSIZE
    with hwl.net.socket(inet=net) as u:
        refused(ip.SENDTO, {"sock": u.fileno(), "data": bytes(5000), "addr": LINUX_IP, "port": 9},
                errno.EMSGSIZE)  # fmt: skip
        refused(ip.LISTEN, {"sock": u.fileno()}, errno.EOPNOTSUPP, "datagram")
    refused(ip.SENDTO, {"sock": s.fileno(), "data": b"x", "addr": LINUX_IP, "port": 0},
            errno.EINVAL, "port 0")  # fmt: skip
    with pytest.raises(OSError) as info:
        s.send(b"unconnected")
    assert info.value.errno == errno.EDESTADDRREQ
    with pytest.raises(OSError) as info:
        s.setsockopt(hwl.net.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    assert info.value.errno == errno.ENOPROTOOPT
    s.bind((GUEST_IP, 9100))
    t = hwl.net.socket(inet=net)
    with pytest.raises(OSError) as info:
        t.bind(("", 9100))
    assert info.value.errno == errno.EADDRINUSE
    # another client cannot use this client's socket
    with hwl.net.Inet.attach(rig.machine.run_dir) as other:
        with pytest.raises(OSError) as info:
            other.call(ip.CLOSE, {"sock": s.fileno()})
        assert info.value.errno == errno.EBADF
    closed = s.fileno()
    s.close()
    t.close()
    refused(ip.SENDTO, {"sock": closed, "data": b"x", "addr": LINUX_IP, "port": 9}, errno.EBADF)
    refused(ip.CLOSE, {"sock": closed}, errno.EBADF)
    # and INET still serves
    assert hwl.net.ping(LINUX_IP, timeout=2.0, inet=net) > 0
    status = hwl.net.ifstatus(inet=net)
    assert isinstance(status["refused"], int) and status["refused"] >= 10


def test_a_cancelled_receive_takes_no_datagram(rig: Rig) -> None:
    """A client whose blocking RECVFROM timed out on the IPC side cancels it: the
    next datagram stays queued for its next receive instead of going to nobody."""
    linux = rig.machine.peer.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with hwl.net.socket(inet=rig.net) as s:
            s.bind(("", 9300))
            with pytest.raises(TimeoutError):  # no timeout for INET: the IPC wait runs out
                rig.net.call(ip.RECVFROM, {"sock": s.fileno(), "max": 100}, wait=0.3)
            linux.sendto(b"kept for the next receive", (GUEST_IP, 9300))
            s.settimeout(5.0)
            assert s.recv(100) == b"kept for the next receive"
    finally:
        linux.close()


def test_the_sockets_of_a_client_that_dies_are_closed(rig: Rig) -> None:
    script = (
        "import hwl.net\n"
        f"hwl.net.attach({str(rig.machine.run_dir)!r})\n"
        "s = hwl.net.socket()\n"
        "s.bind(('', 9400))\n"
        "print('ready', flush=True)\n"
        "s.recv(100)\n"  # blocks: a late answer INET holds for a client about to die
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        with hwl.net.socket(inet=rig.net) as s:
            with pytest.raises(OSError) as info:
                s.bind(("", 9400))
            assert info.value.errno == errno.EADDRINUSE
            proc.kill()
            proc.wait(10)
            deadline = time.monotonic() + 10
            while not bound(s, 9400):
                assert time.monotonic() < deadline, "INET never closed the dead client's socket"
                time.sleep(0.1)
        assert "closed the sockets of 1 clients" in rig.inet_log()
    finally:
        proc.kill()
        proc.wait(10)


def bound(s: hwl.net.socket, port: int) -> bool:
    try:
        s.bind(("", port))
    except OSError as exc:
        assert exc.errno == errno.EADDRINUSE
        return False
    return True


# --------------------------------------------------------------------------- TCP


class LinuxTcp:
    """Linux's end of one TCP connection in the namespace, in a thread: it reads
    everything until the FIN (hashing it), then sends ``reply`` bytes and closes.
    ``listen``: Linux listens and accepts one connection; else it connects."""

    def __init__(self, rig: Rig, reply: bytes, *, connect_to: tuple[str, int] | None = None,
                 seconds: float = 300.0, pause: float = 0.0, rcvbuf: int = 0) -> None:  # fmt: skip
        self.rig, self.reply, self.connect_to = rig, reply, connect_to
        self.pause = pause  # s before the first read: the window closes meanwhile
        self.received = hashlib.sha256()
        self.count = 0
        self.error: BaseException | None = None
        self.listener: socket.socket | None = None
        if connect_to is None:
            self.listener = rig.machine.peer.socket(socket.AF_INET, socket.SOCK_STREAM)
            if rcvbuf:  # a small buffer (the accepted socket inherits it) closes the window
                self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.listener.bind((LINUX_IP, 0))
            self.listener.listen(1)
            self.listener.settimeout(seconds)
        self.seconds = seconds
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def port(self) -> int:
        assert self.listener is not None
        return int(self.listener.getsockname()[1])

    def _run(self) -> None:
        try:
            if self.listener is not None:
                conn, _ = self.listener.accept()
            else:
                conn = self.rig.machine.peer.socket(socket.AF_INET, socket.SOCK_STREAM)
                conn.settimeout(self.seconds)
                assert self.connect_to is not None
                conn.connect(self.connect_to)
            with conn:
                conn.settimeout(self.seconds)
                time.sleep(self.pause)
                while chunk := conn.recv(65536):
                    self.received.update(chunk)
                    self.count += len(chunk)
                conn.sendall(self.reply)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def __enter__(self) -> LinuxTcp:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(timeout=self.seconds)
        if self.listener is not None:
            self.listener.close()


def transfer(s: hwl.net.socket, out: bytes) -> bytes:
    """Send ``out``, half-close, read to the end; what came back."""
    s.sendall(out)
    s.shutdown(hwl.net.SHUT_WR)
    got = bytearray()
    while chunk := s.recv(65536):
        got += chunk
    return bytes(got)


TCP_BYTES = 1 << 20


def test_tcp_to_linux_both_ways_sha256_equal(rig: Rig) -> None:
    out, back = random.Random(1).randbytes(TCP_BYTES), random.Random(2).randbytes(TCP_BYTES)
    with LinuxTcp(rig, back) as linux, hwl.net.socket(hwl.net.AF_INET, hwl.net.SOCK_STREAM,
                                                      inet=rig.net) as s:  # fmt: skip
        s.settimeout(60.0)
        start = time.monotonic()
        s.connect((LINUX_IP, linux.port))
        assert s.getpeername() == (LINUX_IP, linux.port)
        got = transfer(s, out)
        took = time.monotonic() - start
    assert linux.error is None, linux.error
    assert linux.count == len(out) and linux.received.digest() == hashlib.sha256(out).digest()
    assert hashlib.sha256(got).digest() == hashlib.sha256(back).digest()
    rate = 2 * TCP_BYTES / took / 1e6
    print(f"{rig.label}: TCP to Linux, {TCP_BYTES >> 20} MiB each way: {rate:.2f} MB/s")


def test_tcp_from_linux_to_an_hwl_listener(rig: Rig) -> None:
    out, back = random.Random(3).randbytes(TCP_BYTES), random.Random(4).randbytes(TCP_BYTES)
    with hwl.net.socket(hwl.net.AF_INET, hwl.net.SOCK_STREAM, inet=rig.net) as listener:
        listener.bind(("", 9500))
        listener.listen(1)
        listener.settimeout(30.0)
        with LinuxTcp(rig, back, connect_to=(GUEST_IP, 9500)) as linux:
            s, peer = listener.accept()
            with s:
                assert peer[0] == LINUX_IP and s.getsockname() == (GUEST_IP, 9500)
                got = transfer(s, out)
    assert linux.error is None, linux.error
    assert linux.received.digest() == hashlib.sha256(out).digest()
    assert got == back


def test_tcp_connect_to_a_closed_port_is_refused(rig: Rig) -> None:
    with hwl.net.socket(hwl.net.AF_INET, hwl.net.SOCK_STREAM, inet=rig.net) as s:
        s.settimeout(10.0)
        with pytest.raises(ConnectionRefusedError):
            s.connect((LINUX_IP, 1))
    linux = rig.machine.peer.socket(socket.AF_INET, socket.SOCK_STREAM)
    linux.settimeout(10.0)
    try:
        with pytest.raises(ConnectionRefusedError):
            linux.connect((GUEST_IP, 1))
    finally:
        linux.close()


KILLS = 5
KILL_BYTES = 4 << 20


def test_tcp_transfer_survives_the_driver_sigkilled_5_times(rig: Rig) -> None:
    """The driver is killed each time Linux has another sixth of the stream: the
    connection stays up, no reset, every byte arrives in order both ways."""
    out, back = random.Random(5).randbytes(KILL_BYTES), random.Random(6).randbytes(1 << 20)
    before = rig.iface()
    kills: list[float] = []
    with LinuxTcp(rig, back) as linux, hwl.net.socket(hwl.net.AF_INET, hwl.net.SOCK_STREAM,
                                                      inet=rig.net) as s:  # fmt: skip
        s.settimeout(60.0)
        s.connect((LINUX_IP, linux.port))

        def kill() -> None:
            for k in range(1, KILLS + 1):
                while linux.count < KILL_BYTES * k // (KILLS + 1) and linux.error is None:
                    time.sleep(0.002)
                pid = rig.driver_pid_when_up()
                os.kill(pid, signal.SIGKILL)
                kills.append(time.monotonic())

        killer = threading.Thread(target=kill, daemon=True)
        start = time.monotonic()
        killer.start()
        got = transfer(s, out)
        took = time.monotonic() - start
        killer.join(timeout=60)
    assert len(kills) == KILLS
    assert linux.error is None, linux.error
    assert linux.received.digest() == hashlib.sha256(out).digest()
    assert got == back
    after = rig.iface()
    assert after["restarts"] == before["restarts"] + KILLS and after["driver"] == "up"
    print(
        f"{rig.label}: TCP {KILL_BYTES >> 20} MiB out + 1 MiB back with {KILLS} driver kills: "
        f"{(KILL_BYTES + len(back)) / took / 1e6:.2f} MB/s; resent {after['resent']}"
    )


STREAM_BYTES = 64 << 20  # the 64 MiB stream


def test_tcp_transfer_survives_service_refresh_and_live_update(rig: Rig) -> None:
    """``service refresh`` (a new incarnation) at a third of a 64 MiB stream and
    ``service update`` (the same incarnation to clients, a new program) at two thirds."""
    out, back = random.Random(7).randbytes(STREAM_BYTES), random.Random(8).randbytes(1 << 20)
    before = rig.iface()
    done: list[str] = []
    with LinuxTcp(rig, back) as linux, hwl.net.socket(hwl.net.AF_INET, hwl.net.SOCK_STREAM,
                                                      inet=rig.net) as s:  # fmt: skip
        s.settimeout(60.0)
        s.connect((LINUX_IP, linux.port))

        def disturb() -> None:
            for k, what in enumerate(("refresh", "update"), 1):
                while linux.count < STREAM_BYTES * k // 3 and linux.error is None:
                    time.sleep(0.002)
                old = rig.driver_pid_when_up()
                if what == "refresh":
                    rig.system.rs.refresh(rig.label)
                else:
                    rig.system.rs.update(rig.label, state=int(LuState.REQUEST_FREE), maxtime=120)
                deadline = time.monotonic() + 20
                while rig.driver_pid_when_up() == old:
                    assert time.monotonic() < deadline, f"{what}: the old {old} still serves"
                    time.sleep(0.01)
                done.append(what)

        thread = threading.Thread(target=disturb, daemon=True)
        thread.start()
        got = transfer(s, out)
        thread.join(timeout=60)
    assert done == ["refresh", "update"]
    assert linux.error is None, linux.error
    assert linux.received.digest() == hashlib.sha256(out).digest()
    assert got == back
    after = rig.iface()
    # the refresh is a new incarnation INET re-opens; the update keeps the session
    assert after["driver"] == "up" and after["restarts"] == before["restarts"] + 1
    print(f"{rig.label}: refresh + update mid-stream: {after['restarts'] - before['restarts']} "
          f"re-opens, history {after['history'][-2:]}")  # fmt: skip


def linux_counters(rig: Rig) -> dict[str, int]:
    """Linux's absolute counters in the namespace (``nstat -az``)."""
    out = rig.machine.peer.run(["nstat", "-az"]).stdout
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)", out, re.M)}


def test_a_paused_linux_reader_gets_window_probes_and_no_reset(rig: Rig) -> None:
    out = random.Random(7).randbytes(1 << 20)
    resets = ("TcpEstabResets", "TcpOutRsts", "TcpExtTCPAbortOnData", "TcpExtTCPAbortOnTimeout")
    before, linux_before = inet_tcp(rig), linux_counters(rig)
    with (
        LinuxTcp(rig, b"", pause=4.0, rcvbuf=4096) as linux,
        hwl.net.socket(hwl.net.AF_INET, hwl.net.SOCK_STREAM, inet=rig.net) as s,
    ):
        s.settimeout(60.0)
        s.connect((LINUX_IP, linux.port))
        assert transfer(s, out) == b""
    after, linux_after = inet_tcp(rig), linux_counters(rig)
    assert linux.error is None, linux.error
    assert linux.received.digest() == hashlib.sha256(out).digest()
    assert after.get("window_probes", 0) > before.get("window_probes", 0), after
    for name in resets:  # nobody reset the connection while the window was shut
        assert linux_after.get(name, 0) == linux_before.get(name, 0), name
    assert after.get("resets_out", 0) == before.get("resets_out", 0)
    assert after.get("resets_in", 0) == before.get("resets_in", 0)


def inet_tcp(rig: Rig) -> dict[str, int]:
    """INET's TCP counters (IFSTATUS)."""
    got = hwl.net.ifstatus(inet=rig.net)["tcp"]
    assert isinstance(got, dict)
    return {k: v for k, v in got.items() if isinstance(v, int)}


def test_linux_saw_no_checksum_or_header_errors(rig: Rig) -> None:
    """After everything above: Linux's own counters of bad segments are zero."""
    out = rig.machine.peer.run(["nstat", "-az"]).stdout
    counters = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)", out, re.M)}
    assert counters["TcpInSegs"] > 1000  # the TCP tests ran through this namespace
    for name in ("TcpInCsumErrors", "UdpInCsumErrors", "IpInHdrErrors", "TcpInErrs",
                 "IcmpInCsumErrors", "IpInAddrErrors"):  # fmt: skip
        assert counters.get(name, 0) == 0, (name, counters.get(name))


def test_interface_table_as_hwl_up_prints_it(rig: Rig) -> None:
    text = format_interfaces(hwl.net.ifstatus(inet=rig.net))
    header, row = text.splitlines()
    assert header.split()[:3] == ["IFACE", "ADDRESS", "GATEWAY"]
    assert row.split()[:3] == [rig.label, "10.0.2.15/24", LINUX_IP]
    assert f"up (ep {rig.iface()['endpoint']})" in row


def test_hwl_up_shows_interfaces_next_to_services() -> None:
    out = subprocess.run([sys.executable, "-m", "hwl.cli.main", "up", "inet", "--once"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    inet_row = next(i for i, line in enumerate(lines) if line.startswith("inet "))
    iface = next(i for i, line in enumerate(lines) if line.startswith("IFACE "))
    assert iface > inet_row
    assert lines[iface + 1].split()[:4] == ["e1000", "10.0.2.15/24", LINUX_IP, "52:54:00:12:34:58"]


def test_bad_frames_through_the_nic_are_dropped_counted_and_ping_answered(rig: Rig) -> None:
    """The bad frames of test_inet_linux, sent by Linux through the real NIC and its
    driver: each counted under its reason, none answered, the next ping answered."""
    mac = bytes.fromhex(str(rig.iface()["mac"]).replace(":", ""))
    assert linux_ping(rig) == 1  # ARP done both ways, the bridge knows INET's MAC

    def counters() -> dict[str, dict[str, int]]:
        got = hwl.net.ifstatus(inet=rig.net)["counters"]
        assert isinstance(got, dict)
        return got  # type: ignore[return-value]

    with rig.machine.peer.packet_socket(promisc=False) as frames:
        for name, frame, group, field in bad_frames(mac, rig.label):
            before = counters()
            frames.send_frame(frame)
            # A frame under 60 bytes reaches INET padded with zeros by the NIC, so
            # its reason may change (a short IP header becomes a bad checksum):
            # then any drop reason counts.
            rose = exact(group, field) if len(frame) >= ETH_ZLEN else any_drop
            deadline = time.monotonic() + 3
            while not rose(before, counters()):
                assert time.monotonic() < deadline, f"{name}: {group}.{field} not counted"
                time.sleep(0.02)
            assert counters()["icmp"]["tx"] == before["icmp"]["tx"], f"{name} was answered"
            assert linux_ping(rig) == 1, f"no ping answered after {name}"


ETH_ZLEN = 60  # the shortest frame a NIC hands on; shorter ones are padded
DROPS = {"truncated", "bad_version", "bad_ihl", "bad_length", "bad_checksum", "fragments",
         "bad", "runt", "ieee8023", "unknown_type"}  # fmt: skip
Counts = dict[str, dict[str, int]]


def exact(group: str, field: str) -> Callable[[Counts, Counts], bool]:
    return lambda before, now: now[group][field] > before[group][field]


def any_drop(before: Counts, now: Counts) -> bool:
    def total(c: Counts) -> int:
        return sum(v for fields in c.values() for k, v in fields.items() if k in DROPS)

    return total(now) > total(before)


def linux_ping(rig: Rig) -> int:
    out = rig.machine.peer.run(["ping", "-c", "1", "-W", "2", "-q", GUEST_IP]).stdout
    found = re.search(r"(\d+) received", out)
    assert found, out
    return int(found.group(1))
