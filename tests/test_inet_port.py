"""INET's view of a NIC driver (servers/inet/port.py) on a real e1000, with Linux's
stack as the peer: frames out and in through posted requests, and the frames
posted while the driver is dead sent again to its next incarnation."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hwl.hw import ether
from hwl.ipc.client import Connection, IpcError
from hwl.servers.inet.port import Port
from hwl.system.ds import Ds, DsError
from hwl.system.nicrig import GUEST_IP, LINUX_IP, Nic, nic_up

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def nic() -> Iterator[Nic]:
    with nic_up("e1000") as up:
        up.arp(timeout=10)  # the receiver is on
        yield up


@pytest.fixture
def port(nic: Nic) -> Iterator[tuple[Port, list[bytes]]]:
    """A port on a connection of its own (the rig's client is another session)."""
    got: list[bytes] = []
    with Connection.attach(Path(nic.machine.run_dir) / "kernel.sock") as conn:
        p = Port(conn, nic.label, got.extend)
        p.open(driver_endpoint(conn, nic.label))
        yield p, got
    nic.dev.reopen(timeout=10)  # the rig's session, for the next test


def driver_endpoint(conn: Connection, label: str, not_ep: int = 0, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    ds = Ds.find(conn)
    while time.monotonic() < deadline:
        try:
            ep = ds.retrieve_label(label)
            if ep != not_ep:
                return ep
        except DsError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"{label} not back within {timeout} s")


def pump(port: Port, until: object, timeout: float = 5.0) -> None:
    """Run the server loop's part: hand the port the driver's messages."""
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:  # type: ignore[operator]
        try:
            m = port.conn.receive(port.endpoint, timeout=0.1)
        except IpcError:
            continue
        port.handle(m)
    assert until(), f"not within {timeout} s; port {port.stats}"  # type: ignore[operator]


def arp_reply_in(frames: list[bytes]) -> bool:
    return any((a := ether.parse_arp(f)) and a.op == 2 for f in frames)


def test_frames_out_and_in_through_posted_requests(port: tuple[Port, list[bytes]]) -> None:
    p, got = port
    assert p.card is not None
    p.send([ether.arp_request(p.card.hwaddr, GUEST_IP, LINUX_IP)])
    pump(p, lambda: arp_reply_in(got))
    pump(p, lambda: p.unconfirmed == 0)
    assert p.stats.confirmed >= 1 and p.stats.received >= 1


def test_frames_posted_while_the_driver_is_dead_reach_the_next_one(
    nic: Nic, port: tuple[Port, list[bytes]]
) -> None:
    p, got = port
    assert p.card is not None
    mac, old = p.card.hwaddr, p.endpoint
    os.kill(nic.service_pid(), signal.SIGKILL)
    p.down()  # what the server does when a call finds it dead or DS says it is back
    linux = nic.linux_mac()
    me, them = ether.ip_bytes(GUEST_IP), ether.ip_bytes(LINUX_IP)
    p.send([ether.icmp_echo(mac, linux, me, them, 0x5150, 1, b"kept for the next one")])
    assert p.unconfirmed == 1
    p.open(driver_endpoint(p.conn, nic.label, not_ep=old))
    assert p.stats.resent == 1

    def echoed() -> bool:
        return any((e := ether.parse_echo(f)) and not e.request and e.ident == 0x5150 for f in got)

    pump(p, echoed, timeout=10)  # an e1000 restarted fresh holds reception 1 s
    pump(p, lambda: p.unconfirmed == 0)
