"""INET's layers below TCP against Linux's real stack, no QEMU: the Stack sits on a TAP
in a network namespace (hwl/machine/netpeer.py: Linux at 10.0.2.2/24 on br0, the
stack at 10.0.2.15) and this test moves the frames between the TAP fd and the stack.

Linux pings the stack and the stack pings Linux; Linux sends UDP datagrams of every
size from 0 to 1472 bytes and gets each back intact; a datagram to a closed port gives
a connected Linux socket ECONNREFUSED; bad frames sent with a packet socket are
dropped and counted and the next ping is answered. Every loop is bounded in count and
time, and the namespace goes even when a test fails."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import select
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from hwl.hw import ether as hw
from hwl.machine import netpeer
from hwl.machine.profile import NetSpec
from hwl.servers.inet import ether, icmp, ipv4, udp
from hwl.servers.inet.checksum import checksum
from hwl.servers.inet.stack import Stack

MAC = bytes.fromhex("525400123456")
IP = ipv4.address(netpeer.GUEST_ADDRESS)
PEER = ipv4.address(netpeer.ADDRESS)
PEER_MAC = bytes.fromhex(netpeer.MAC.replace(":", ""))
MASK = ipv4.address("255.255.255.0")
ECHO_PORT = 7


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True, check=True)
    return {ns["name"] for ns in json.loads(out.stdout or "[]")}


def mine() -> set[str]:
    return {ns for ns in namespaces() if ns.startswith(f"{netpeer.PREFIX}{os.getpid()}-")}


@pytest.fixture(scope="module", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    yield
    assert mine() == set()


class Wire:
    """The stack on the TAP: frames read from the fd go to ``stack.input`` and what
    it returns is written back; ``echo`` sockets send back what they receive."""

    def __init__(self, peer: netpeer.NetnsPeer, fd: int) -> None:
        self.peer = peer
        self.fd = fd
        os.set_blocking(fd, False)
        self.stack = Stack(ident=random.randrange(0x10000))
        self.stack.add_interface("eth0", MAC, ipv4.Config(IP, MASK, PEER), time.monotonic())
        self.echo: list[udp.UdpSocket] = []
        self.flush(self.stack.take_output())

    def flush(self, frames: list[tuple[str, bytes]]) -> None:
        for ifname, frame in frames:
            assert ifname == "eth0"
            os.write(self.fd, frame)

    def step(self, timeout: float) -> None:
        """Wait up to ``timeout`` for frames, handle all that came, run the timers."""
        now = time.monotonic()
        due = self.stack.deadline()
        if due is not None:
            timeout = max(0.0, min(timeout, due - now))
        ready, _, _ = select.select([self.fd], [], [], timeout)
        for _ in range(256 if ready else 0):
            try:
                frame = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            self.flush(self.stack.input("eth0", frame, time.monotonic()))
            self._echo()
        self.flush(self.stack.tick(time.monotonic()))

    def _echo(self) -> None:
        for sock in self.echo:
            while (got := sock.recv()) is not None:
                self.stack.udp_send(sock, got.src, got.src_port, got.payload, time.monotonic())
                self.flush(self.stack.take_output())

    def until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Pump until ``done()`` or ``timeout`` seconds passed; whether it was done."""
        end = time.monotonic() + timeout
        while not done():
            left = end - time.monotonic()
            if left <= 0:
                return False
            self.step(min(left, 0.05))
        return True

    def run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the namespace while pumping frames, killed at ``timeout``."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.peer.namespace, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            finished = self.until(lambda: proc.poll() is not None, timeout)
            if not finished:
                proc.kill()
            out, _ = proc.communicate(timeout=5)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        assert finished, f"{argv} did not finish in {timeout} s: {out}"
        return subprocess.CompletedProcess(argv, proc.returncode, out, "")

    def ping_from_linux(self, count: int, size: int = 56) -> int:
        """How many of ``count`` pings of ``size`` data bytes from the namespace were
        answered."""
        argv = ["ping", "-n", "-c", str(count), "-i", "0.01", "-W", "2", "-s", str(size)]
        done = self.run([*argv, netpeer.GUEST_ADDRESS], timeout=10 + count * 0.1)
        found = re.search(r"(\d+) received", done.stdout)
        assert found, done.stdout
        return int(found.group(1))

    def nstat(self, *names: str) -> dict[str, int]:
        out = self.peer.run(["nstat", "-asz", "--json", *names]).stdout
        counters: dict[str, int] = json.loads(out)["kernel"]
        return counters


@pytest.fixture
def wire() -> Iterator[Wire]:
    peer = netpeer.NetnsPeer([NetSpec("n0", "netns", 0)])
    try:
        yield Wire(peer, peer.tap_fds["n0"])
    finally:
        peer.close()
    assert peer.namespace not in namespaces()


def test_linux_pings_the_stack_100_of_100(wire: Wire) -> None:
    assert wire.ping_from_linux(100) == 100
    counters = wire.stack.counters()
    assert counters["icmp"]["echo_requests"] == 100 and counters["icmp"]["tx"] == 100
    assert counters["eth0.arp"]["requests_in"] >= 1 and counters["eth0.arp"]["replies_out"] >= 1
    assert wire.stack.interface("eth0").arp.lookup(PEER, time.monotonic()) == PEER_MAC


def test_the_largest_unfragmented_ping_is_answered_and_fragments_are_counted(
    wire: Wire,
) -> None:
    """1472 data bytes fill a 1500-byte datagram; 1473 make Linux fragment it in two,
    which the stack drops and counts, answering nothing."""
    assert wire.ping_from_linux(5, size=1472) == 5
    assert wire.ping_from_linux(3, size=1473) == 0
    assert wire.stack.ip.fragments == 6
    assert wire.stack.icmp.echo_requests == 5


def test_the_stack_pings_linux_100_of_100(wire: Wire) -> None:
    replies: list[icmp.EchoReply] = []

    def replied() -> bool:
        replies.extend(wire.stack.echo_replies())
        return bool(replies) and replies[-1].seq == wire.stack.pinger.seq

    for n in range(100):
        payload = os.urandom(n * 14)
        seq = wire.stack.ping(PEER, time.monotonic(), payload)
        wire.flush(wire.stack.take_output())
        assert wire.until(replied, 3.0), f"no reply to ping {n}"
        assert (replies[-1].src, replies[-1].seq, replies[-1].payload) == (PEER, seq, payload)
        assert replies[-1].rtt < 2.0
    assert len(replies) == 100 and wire.stack.icmp.unmatched_replies == 0
    assert wire.stack.interface("eth0").arp.counters.requests_out == 1


def test_udp_echo_of_every_size_0_to_1472(wire: Wire) -> None:
    wire.echo.append(wire.stack.udp_bind(port=ECHO_PORT))
    before = wire.nstat("UdpInCsumErrors", "IpInHdrErrors", "UdpInErrors")
    sock = wire.peer.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        rng = random.Random(18)
        got: list[tuple[bytes, tuple[str, int]]] = []

        def answered() -> bool:
            try:
                got.append(sock.recvfrom(2048))
            except BlockingIOError:
                return False
            return True

        for size in range(udp.MAX_DATA + 1):
            payload = rng.randbytes(size)
            got.clear()
            sock.sendto(payload, (netpeer.GUEST_ADDRESS, ECHO_PORT))
            assert wire.until(answered, 3.0), f"no echo of {size} bytes"
            data, source = got[0]
            assert source == (netpeer.GUEST_ADDRESS, ECHO_PORT)
            assert data == payload, f"{size}-byte echo differs"
    assert wire.stack.udp.rx == udp.MAX_DATA + 1 and wire.stack.udp.tx == udp.MAX_DATA + 1
    assert wire.stack.udp.bad_checksum == 0 and wire.stack.ip.bad_checksum == 0
    assert wire.nstat("UdpInCsumErrors", "IpInHdrErrors", "UdpInErrors") == before


def test_a_closed_port_gives_a_connected_linux_socket_econnrefused(wire: Wire) -> None:
    sock = wire.peer.socket(socket.AF_INET, socket.SOCK_DGRAM)
    outcome: list[int] = []
    with sock:
        sock.setblocking(False)
        sock.connect((netpeer.GUEST_ADDRESS, 9))
        sock.send(b"anyone there?")

        def refused() -> bool:
            try:
                sock.recv(100)
            except BlockingIOError:
                return False
            except OSError as exc:
                outcome.append(exc.errno or 0)
            return True

        assert wire.until(refused, 5.0)
    assert outcome == [errno.ECONNREFUSED]
    assert wire.stack.udp.no_port == 1 and wire.stack.icmp.unreach_out == 1


def _patched(raw: bytes, **fields: int) -> bytes:
    """``raw`` (an IPv4 datagram) with header fields changed and the checksum redone."""
    names = ("vihl", "tos", "total", "ident", "frag", "ttl", "proto", "sum", "src", "dst")
    values = dict(zip(names, struct.unpack_from("!BBHHHBBH4s4s", raw), strict=True))
    values.update(fields, sum=0)
    header = struct.pack("!BBHHHBBH4s4s", *(values[name] for name in names))
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + raw[20:]


def bad_frames(mac: bytes = MAC, ifname: str = "eth0") -> list[tuple[str, bytes, str, str]]:
    """(name, frame, counter group, field) for each bad frame Linux's side sends to
    the interface ``ifname`` at ``mac`` (tests/test_inet_server.py sends them
    through each NIC too)."""
    good = hw.ipv4(PEER, IP, 1, icmp.echo_request(0x99, 1, b"x" * 16))
    bad_udp = bytearray(udp.build(PEER, IP, 40000, ECHO_PORT, b"payload"))
    bad_udp[-1] ^= 0x5A

    def frame(payload: bytes, ethertype: int = ether.ETH_P_IP) -> bytes:
        return hw.ethernet(mac, PEER_MAC, ethertype, payload)

    return [
        ("short ip", frame(good[:10]), "ip", "truncated"),
        ("short arp", frame(bytes(20), ether.ETH_P_ARP), f"{ifname}.arp", "bad"),
        ("unknown type", frame(bytes(46), 0x88B5), f"{ifname}.ether", "unknown_type"),
        ("802.3", frame(bytes(46), 46), f"{ifname}.ether", "ieee8023"),
        ("bad ip checksum", frame(good[:10] + b"\x12\x34" + good[12:]), "ip", "bad_checksum"),
        ("ihl < 5", frame(_patched(good, vihl=0x44)), "ip", "bad_ihl"),
        ("length beyond frame", frame(_patched(good, total=1000)), "ip", "bad_length"),
        ("fragment (MF)", frame(_patched(good, frag=ipv4.MF)), "ip", "fragments"),
        ("fragment (offset)", frame(_patched(good, frag=100)), "ip", "fragments"),
        ("bad version", frame(_patched(good, vihl=0x65)), "ip", "bad_version"),
        ("bad udp checksum", frame(hw.ipv4(PEER, IP, 17, bytes(bad_udp))), "udp", "bad_checksum"),
    ]


def rose(stack: Stack, group: str, field: str, before: int) -> Callable[[], bool]:
    """Whether counter ``group``.``field`` went above ``before``."""
    return lambda: stack.counters()[group][field] > before


def test_bad_frames_from_linux_are_dropped_counted_and_the_next_ping_answered(
    wire: Wire,
) -> None:
    wire.echo.append(wire.stack.udp_bind(port=ECHO_PORT))
    assert wire.ping_from_linux(1) == 1  # ARP done both ways, the bridge knows our MAC
    frames = wire.peer.packet_socket(promisc=False)
    with frames:
        for name, frame, group, field in bad_frames():
            before = wire.stack.counters()
            frames.send_frame(frame)
            counted = wire.until(rose(wire.stack, group, field, before[group][field]), 3.0)
            assert counted, f"{name}: {group}.{field} not counted"
            after = wire.stack.counters()
            assert after["icmp"]["tx"] == before["icmp"]["tx"], f"{name} was answered"
            assert wire.ping_from_linux(1) == 1, f"no ping answered after {name}"
    assert wire.stack.icmp.echo_requests == 1 + len(bad_frames())
