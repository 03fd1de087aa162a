"""TCP's ends through each real NIC (profiles ``inet``, ``inet-ne2k``,
``inet-rtl8139``), with INET restarted with a short R2 and MSL so the test can
wait them out: with Linux's frames dropped (the TAP set down in the namespace)
the retransmission timer backs off and the connection aborts with ETIMEDOUT at
R2; the side that closes first keeps TIME_WAIT for 2*MSL (INET's connection
table, Linux's ``ss``), and so do both after a simultaneous close."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import hwl.config
import hwl.net
from hwl.machine.machine import Machine
from hwl.system.boot import System
from hwl.system.nicrig import GUEST_IP, LINUX_IP
from hwl.system.proto import Policy

pytestmark = pytest.mark.qemu

#: profile -> (the NIC driver's label, its netdev id)
PROFILES = {
    "inet": ("e1000", "e1000-net"),
    "inet-ne2k": ("dp8390", "ne2k-net"),
    "inet-rtl8139": ("rtl8139", "rtl8139-net"),
}
R2, MSL = 4.0, 3.0  # TIME_WAIT (6 s) outlasts the FIN retransmits of a simultaneous close


@dataclass
class Rig:
    machine: Machine
    net: hwl.net.Inet
    tap: str

    def connections(self) -> int:
        count = hwl.net.ifstatus(inet=self.net)["tcp_connections"]
        assert isinstance(count, int)
        return count

    def link(self, up: bool) -> None:
        done = self.machine.peer.run(["ip", "link", "set", self.tap, "up" if up else "down"])
        assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module", params=sorted(PROFILES))
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    profile = request.param
    label, netdev = PROFILES[profile]
    with Machine(profile) as machine, System.start(machine, backoff_unit=0.0) as system:
        stock = hwl.config.load().get("inet")
        assert stock is not None
        system.rs.down("inet")
        interface = f"if={label}:{GUEST_IP}/24,gw={LINUX_IP}"
        argv = [sys.executable, "-m", "hwl.servers.inet", interface, f"--tcp-r2={R2}",
                f"--tcp-msl={MSL}"]  # fmt: skip
        system.rs.up(argv, label="inet", conf=stock.to_text(), policy=Policy.RESTART)
        net = hwl.net.Inet.attach(machine.run_dir)
        rig = Rig(machine, net, machine.peer.tap(netdev))
        deadline = time.monotonic() + 20
        while True:  # INET has the driver open and Linux answers
            try:
                hwl.net.ping(LINUX_IP, timeout=1.0, inet=net)
                break
            except OSError:
                pass
            assert time.monotonic() < deadline, "INET never reached Linux"
        yield rig


def linux_listener(rig: Rig) -> socket.socket:
    sock = rig.machine.peer.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LINUX_IP, 0))
    sock.listen(1)
    sock.settimeout(10)
    return sock


def test_dropped_frames_back_off_and_abort_at_r2(rig: Rig) -> None:
    with (
        linux_listener(rig) as listener,
        hwl.net.socket(hwl.net.AF_INET, hwl.net.SOCK_STREAM, inet=rig.net) as s,
    ):
        s.settimeout(10)
        s.connect(listener.getsockname())
        peer, _ = listener.accept()
        with peer:
            s.sendall(b"before")
            assert peer.recv(100) == b"before"
            rig.link(False)  # from now on every frame between them is lost
            try:
                start = time.monotonic()
                s.sendall(b"x" * 1000)
                s.settimeout(4 * R2 + 10)
                with pytest.raises(OSError) as err:
                    s.recv(100)  # what ends it is the abort, not data
                took = time.monotonic() - start
            finally:
                rig.link(True)
    assert isinstance(err.value, TimeoutError) or err.value.errno == 110, err.value  # ETIMEDOUT
    assert R2 <= took <= 2 * R2 + 5, took


def test_we_close_first_and_keep_time_wait(rig: Rig) -> None:
    with linux_listener(rig) as listener:
        s = hwl.net.socket(hwl.net.AF_INET, hwl.net.SOCK_STREAM, inet=rig.net)
        s.settimeout(10)
        s.connect(listener.getsockname())
        peer, _ = listener.accept()
        with peer:
            before = rig.connections()
            s.close()  # our FIN first
            assert peer.recv(100) == b""
            peer.close()  # Linux's FIN: we are in TIME_WAIT now
            time.sleep(0.3)
            assert rig.connections() == before  # still there, waiting out 2*MSL
            deadline = time.monotonic() + 2 * MSL + 5
            while rig.connections() >= before:
                assert time.monotonic() < deadline, "TIME_WAIT never ended"
                time.sleep(0.1)


def test_linux_closes_first_and_keeps_time_wait(rig: Rig) -> None:
    with (
        linux_listener(rig) as listener,
        hwl.net.socket(hwl.net.AF_INET, hwl.net.SOCK_STREAM, inet=rig.net) as s,
    ):
        s.settimeout(10)
        s.connect(listener.getsockname())
        peer, _ = listener.accept()
        port = peer.getsockname()[1]
        peer.close()  # Linux's FIN first
        assert s.recv(100) == b""
    time.sleep(0.3)
    out = rig.machine.peer.run(["ss", "-tan", "state", "time-wait"]).stdout
    assert f"{LINUX_IP}:{port}" in out, out


def test_simultaneous_close_leaves_both_sides_in_time_wait(rig: Rig) -> None:
    """Both ends close before either sees the other's FIN (their FINs are lost
    while the TAP is down, then retransmitted): both keep TIME_WAIT."""
    with linux_listener(rig) as listener:
        s = hwl.net.socket(hwl.net.AF_INET, hwl.net.SOCK_STREAM, inet=rig.net)
        s.settimeout(10)
        s.connect(listener.getsockname())
        peer, _ = listener.accept()
        port = peer.getsockname()[1]
        before = rig.connections()
        rig.link(False)
        try:
            s.close()
            peer.close()
            time.sleep(0.5)  # both FINs sent into the void
        finally:
            rig.link(True)
        deadline = time.monotonic() + 10
        out = ""
        while f"{LINUX_IP}:{port}" not in out:
            assert time.monotonic() < deadline, f"Linux never reached TIME_WAIT: {out}"
            time.sleep(0.1)
            out = rig.machine.peer.run(["ss", "-tan", "state", "time-wait"]).stdout
        assert rig.connections() == before  # ours is in TIME_WAIT too (or about to end)
        deadline = time.monotonic() + 2 * MSL + 5
        while rig.connections() >= before:
            assert time.monotonic() < deadline, "our TIME_WAIT never ended"
            time.sleep(0.1)
