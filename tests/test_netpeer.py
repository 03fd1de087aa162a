"""The network peer on real QEMU: the namespace, its bridge and taps, frames leaving
Linux towards QEMU, teardown (also when the test body raises), the socket peer,
and the profile errors of [hwl-net]."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from hwl import HwlError, Machine, Profile, ProfileError
from hwl.link import pci
from hwl.machine import netpeer
from hwl.pytest_plugin import MachineFactory

pytestmark = pytest.mark.qemu

FRAME = bytes.fromhex("ffffffffffff 020000000001 0806") + bytes(range(46))


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True, check=True)
    return {ns["name"] for ns in json.loads(out.stdout or "[]")}


def mine() -> set[str]:
    """The namespaces this test process made (others may run tests in parallel)."""
    return {ns for ns in namespaces() if ns.startswith(f"hwl-{os.getpid()}-")}


def tx_packets(machine: Machine, ifname: str) -> int:
    packets: int = machine.peer.link(ifname)["stats64"]["tx"]["packets"]
    return packets


def qemu_taps(pid: int) -> set[str]:
    """The TAP names QEMU holds tun fds for (``iff:`` in the fd's fdinfo)."""
    found = set()
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = info.read_text()
        except FileNotFoundError:  # closed meanwhile (the listing's own fd, say)
            continue
        for line in text.splitlines():
            if line.startswith("iff:"):
                found.add(line.split()[1])
    return found


@pytest.fixture(scope="module", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """Torn down after the module: every namespace it made is gone."""
    yield
    assert not mine(), f"namespaces left behind: {mine()}"


@pytest.fixture(scope="module")
def e1000(hwl_machines: MachineFactory) -> Iterator[Machine]:
    machine = hwl_machines.boot("e1000")
    try:
        yield machine
    finally:
        machine.close()


def test_namespace_holds_br0_at_10_0_2_2(e1000: Machine) -> None:
    peer = e1000.peer
    assert peer.namespace in namespaces()
    assert peer.namespace.startswith(f"hwl-{os.getpid()}-")
    out = peer.run(["ip", "-j", "addr", "show", "dev", "br0"], check=True).stdout
    addrs = {(a["family"], a["local"], a["prefixlen"]) for a in json.loads(out)[0]["addr_info"]}
    assert addrs == {("inet", "10.0.2.2", 24)}  # and no inet6: IPv6 is off
    for name in ("all", "br0", peer.tap("e1000-net")):
        sysctl = f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6"
        assert peer.run(["cat", sysctl], check=True).stdout.strip() == "1"
    assert "UP" in peer.link("lo")["flags"]
    assert peer.link("br0")["address"] == peer.mac == "02:00:0a:00:02:02"
    assert (peer.address, peer.guest_address, peer.bridge) == ("10.0.2.2", "10.0.2.15", "br0")


def test_tap_is_on_br0_up_with_carrier_and_held_by_qemu(e1000: Machine) -> None:
    tap = e1000.peer.tap("e1000-net")
    link = e1000.peer.link(tap)
    assert link["master"] == "br0"
    assert {"UP", "LOWER_UP"} <= set(link["flags"])
    assert e1000.pid is not None
    assert qemu_taps(e1000.pid) == {tap}
    assert qemu_taps(os.getpid()) == set(), "hwl kept its copy of the tap fd"
    assert "-netdev tap,id=e1000-net,fd=" in (e1000.run_dir / "qemu.cmdline").read_text()
    with pytest.raises(HwlError, match="no netns"):
        e1000.peer.tap("nope")


def test_a_frame_from_br0_leaves_through_the_tap(e1000: Machine) -> None:
    """e1000 without a driver takes one frame from the tap and holds it (RCTL.EN is
    off, so QEMU stops reading); the rest wait in the tap's queue until a driver
    enables reception. One frame taken is enough to show it left."""
    tap = e1000.peer.tap("e1000-net")
    before = tx_packets(e1000, tap)
    with e1000.peer.frames() as frames:
        frames.send_frame(FRAME)
    deadline = time.monotonic() + 5
    while tx_packets(e1000, tap) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tx_packets(e1000, tap) == before + 1


def test_sockets_and_commands_live_in_the_namespace(e1000: Machine) -> None:
    peer = e1000.peer
    with (
        peer.socket(socket.AF_INET, socket.SOCK_DGRAM) as a,
        peer.socket(socket.AF_INET, socket.SOCK_DGRAM) as b,
    ):
        a.bind((peer.address, 0))  # 10.0.2.2 exists only inside the namespace
        b.settimeout(5)
        b.sendto(b"hello", a.getsockname())
        a.settimeout(5)
        assert a.recv(16) == b"hello"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as root, pytest.raises(OSError) as exc:
        root.bind((peer.address, 0))
    assert exc.value.errno == errno.EADDRNOTAVAIL
    assert peer.run(["ping", "-c", "1", "-W", "2", peer.address], timeout=10).returncode == 0


@pytest.mark.parametrize("profile", ["ne2k", "rtl8139"])
def test_nics_without_a_driver_take_every_frame(hwl_machines: MachineFactory, profile: str) -> None:
    """ne2k_pci and rtl8139 drop frames while reception is off, so QEMU reads them all."""
    with closing(hwl_machines.boot(profile)) as machine:
        tap = machine.peer.tap(f"{profile}-net")
        with machine.peer.packet_socket() as frames:
            for _ in range(5):
                frames.send_frame(FRAME)
        deadline = time.monotonic() + 5
        while tx_packets(machine, tap) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = machine.peer.link(tap)["stats64"]["tx"]
        assert (stats["packets"], stats["bytes"]) == (5, 5 * len(FRAME))


def test_three_nics_share_one_segment(hwl_machines: MachineFactory) -> None:
    with closing(hwl_machines.boot("nics")) as machine:
        peer = machine.peer
        taps = [peer.tap(f"{nic}-net") for nic in ("ne2k", "rtl8139", "e1000")]
        assert len(set(taps)) == 3
        for tap in taps:
            assert peer.link(tap)["master"] == "br0"
        assert machine.pid is not None
        assert qemu_taps(machine.pid) == set(taps)
        assert sorted(peer.guest_addresses.values()) == ["10.0.2.15", "10.0.2.16", "10.0.2.17"]


def test_the_namespace_goes_when_the_with_body_raises(hwl_machines: MachineFactory) -> None:
    seen: dict[str, Any] = {}
    with (
        pytest.raises(RuntimeError, match="test body"),
        Machine("e1000", accel=hwl_machines.accel) as machine,
    ):
        seen["ns"], seen["pid"] = machine.peer.namespace, machine.pid
        assert seen["ns"] in namespaces()
        raise RuntimeError("test body")
    assert seen["ns"] not in namespaces()
    assert not (netpeer.NETNS_DIR / seen["ns"]).exists()
    with contextlib.suppress(OSError):  # no such file: reaped, gone
        assert "zombie" in Path(f"/proc/{seen['pid']}/status").read_text()


def test_a_dead_parents_namespace_is_swept() -> None:
    """A parent killed with SIGKILL runs no atexit: the next peer removes its namespace."""
    child = subprocess.Popen(["true"])
    child.wait()
    stale = f"hwl-{child.pid}-dead00"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        assert stale in netpeer.sweep_stale_namespaces()
        assert stale not in namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)


SOCKET_PROFILE = """\
[machine]
  type = "pc"
[memory]
  size = "64M"
[hwl-net "n0"]
  peer = "socket"
[device "nic"]
  driver = "ne2k_pci"
  netdev = "n0"
  mac = "52:54:00:12:34:60"
  romfile = ""
"""


def test_socket_peer_boots_with_a_frame_socket(
    hwl_machines: MachineFactory, tmp_path: Path
) -> None:
    path = tmp_path / "sockpeer.cfg"
    path.write_text(SOCKET_PROFILE)
    with closing(hwl_machines.boot(path)) as machine:
        frames = machine.socket_peer.frames()
        assert frames is machine.socket_peer.frames("n0")
        ours = frames.getsockname()[1]
        qemus = frames.getpeername()[1]
        info = machine.qmp_execute("human-monitor-command", {"command-line": "info network"})
        assert f"n0: index=0,type=dgram,udp=127.0.0.1:{qemus}/127.0.0.1:{ours}" in info
        frames.send_frame(FRAME)
        assert frames.recv_frame(timeout=0.2) is None  # no Linux stack answers here
        assert machine.alive()
        with pytest.raises(HwlError, match='peer = "netns"'):
            machine.peer  # noqa: B018 - the property raises
    assert frames.fileno() == -1


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.cfg"
    path.write_text(text)
    return path


def test_hwl_net_groups_are_read_and_not_given_to_qemu(tmp_path: Path) -> None:
    p = Profile.load("nics")
    assert [(n.id, n.peer) for n in p.nets] == [
        ("ne2k-net", "netns"),
        ("rtl8139-net", "netns"),
        ("e1000-net", "netns"),
    ]
    text = p.render(tmp_path)
    assert "[hwl-net" not in text and 'netdev = "e1000-net"' in text
    path = write(tmp_path, '[hwl-net "n0"]\n')
    assert Profile.load(path).nets[0].peer == "netns"  # the default


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[hwl-net "n0"]\n  peer = "tap"\n',
            r"bad.cfg:2: key 'peer': 'tap' is not netns or socket",
        ),
        ('[hwl-net "n0"]\n  mode = "x"\n', r"bad.cfg:2: key 'mode': unknown; use peer"),
        ("[hwl-net]\n", r"bad.cfg:1: \[hwl-net\] needs an id"),
        ('[hwl-net "n0"]\n[hwl-net "n0"]\n', r'bad.cfg:2: \[hwl-net "n0"\] is listed twice'),
        (
            '[hwl-net "n0"]\n[device "d"]\n  driver = "e1000"\n  netdev = "n1"\n',
            r"bad.cfg:4: key 'netdev': 'n1' names no \[hwl-net \"n1\"\] \(known: n0\)",
        ),
    ],
)
def test_bad_hwl_net_names_file_line_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        Profile.load(write(tmp_path, text))


def test_the_namespace_goes_when_qemu_fails_to_start(
    hwl_machines: MachineFactory, tmp_path: Path
) -> None:
    path = tmp_path / "badnic.cfg"
    path.write_text(
        SOCKET_PROFILE.replace('peer = "socket"', 'peer = "netns"').replace(
            'driver = "ne2k_pci"', 'driver = "ne2k_pci"\n  no-such-property = "1"'
        )
    )
    before = mine()
    with pytest.raises(HwlError, match="no-such-property"):
        hwl_machines.boot(path)
    assert mine() == before


def ne2k_transmit(machine: Machine, frame: bytes) -> None:
    """Send one frame from the guest's ne2k_pci by port I/O (DP8390 remote write,
    then TRANSMIT): just enough of a NIC to show that Linux answers on the segment."""
    link = machine.link
    (nic,) = [d for d in link.pci_scan() if d.ids == "10ec:8029"]
    io = next(b.address for b in nic.bars if b.kind == "io")
    b = link.batch()
    pci.write_into(b, nic.bus, nic.dev, nic.fn, 0x04, 0x0001, width=2)  # I/O space on
    b.outb(io + 0x1F, 0)  # reset
    b.outb(io + 0x00, 0x21)  # page 0, STOP, no remote DMA
    b.outb(io + 0x0E, 0x48)  # DCR: byte-wide transfers
    b.outb(io + 0x0A, len(frame) & 0xFF)
    b.outb(io + 0x0B, len(frame) >> 8)
    b.outb(io + 0x08, 0x00)  # remote start address 0x4000: the first page of RAM
    b.outb(io + 0x09, 0x40)
    b.outb(io + 0x00, 0x12)  # START, remote write
    for byte in frame:
        b.outb(io + 0x10, byte)
    b.outb(io + 0x04, 0x40)  # transmit from page 0x40
    b.outb(io + 0x05, len(frame) & 0xFF)
    b.outb(io + 0x06, len(frame) >> 8)
    b.outb(io + 0x00, 0x26)  # START, TRANSMIT: the frame has left when this returns
    link.execute(b)


def test_linux_answers_arp_from_the_guest(hwl_machines: MachineFactory) -> None:
    with closing(hwl_machines.boot("ne2k")) as machine:
        peer = machine.peer
        guest_mac = bytes.fromhex("525400123456")
        guest_ip = socket.inet_aton(peer.guest_address)
        arp = (
            b"\xff" * 6 + guest_mac + b"\x08\x06"
            + bytes.fromhex("0001 0800 06 04 0001") + guest_mac + guest_ip
            + bytes(6) + socket.inet_aton(peer.address)
        ).ljust(60, b"\0")  # fmt: skip
        with peer.packet_socket(peer.tap("ne2k-net"), promisc=False) as tap:
            tap.settimeout(5)
            ne2k_transmit(machine, arp)
            seen = []
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                data, addr = tap.recvfrom(2048)
                seen.append((addr[2], data))
                if data[12:14] == b"\x08\x06" and data[20:22] == b"\x00\x02":
                    break
        assert seen[0] == (socket.PACKET_BROADCAST, arp)  # the guest's request, byte-exact
        kind, reply = seen[-1]
        assert kind == socket.PACKET_OUTGOING  # Linux's answer, on its way to the NIC
        assert reply[:6] == guest_mac and reply[6:12] == bytes.fromhex(peer.mac.replace(":", ""))
        assert reply[28:32] == socket.inet_aton(peer.address)
        assert reply[32:38] == guest_mac and reply[38:42] == guest_ip
        neigh = peer.run(["ip", "neigh", "show", peer.guest_address], check=True).stdout
        assert "52:54:00:12:34:56" in neigh
