"""The stub's native NIC transmit loop: the frames it counts really leave the NIC.

The machine has the three NICs, each with a QEMU ``-netdev socket,udp=`` backend
on 127.0.0.1 whose far end is a UDP socket in this test: QEMU sends each frame
a NIC transmits as one datagram there, so the test counts what left and checks
every byte, independently of the loop's own count. The backends are groups of
a profile written in the test's tmp dir (QEMU's ``-readconfig`` takes
``[netdev "id"]`` groups with ``type = "socket"``; the ``dgram`` type's nested
``local.*`` keys are refused there in QEMU 7.2), so the test depends on nothing
but the machine profile format.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hwl import Machine
from hwl.errors import LinkError
from hwl.hw import nic_native
from hwl.link import abi
from hwl.link.batch import Batch
from hwl.pytest_plugin import MachineFactory

pytestmark = pytest.mark.qemu

NICS = ("ne2k_pci", "rtl8139", "e1000")
FRAMES = 200
RCVBUF = 4 << 20
RECV_TIMEOUT = 2.0


@dataclass
class Peer:
    """The test's end of one NIC's socket backend."""

    sock: socket.socket

    def drain(self, first: float = RECV_TIMEOUT) -> list[bytes]:
        """Every datagram that arrived, waiting until none came for a short while
        (TX is synchronous: they are all queued here when the loop returns)."""
        got = []
        self.sock.settimeout(first)
        try:
            while True:
                got.append(self.sock.recv(65536))
                self.sock.settimeout(0.3)
        except TimeoutError:
            pass
        return got


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _profile(path: Path, ports: dict[str, tuple[int, int]]) -> None:
    lines = ['[machine]\n  type = "pc"\n', '[memory]\n  size = "128M"\n']
    for i, nic in enumerate(NICS):
        peer, local = ports[nic]
        lines.append(
            f'[netdev "n{i}"]\n  type = "socket"\n'
            f'  udp = "127.0.0.1:{peer}"\n  localaddr = "127.0.0.1:{local}"\n'
        )
        lines.append(
            f'[device "{nic}"]\n  driver = "{nic}"\n  netdev = "n{i}"\n'
            f'  mac = "52:54:00:00:01:0{i}"\n  romfile = ""\n'
        )
    path.write_text("\n".join(lines))


@pytest.fixture(scope="module")
def net(
    hwl_machines: MachineFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Machine, dict[str, Peer]]]:
    peers: dict[str, Peer] = {}
    ports: dict[str, tuple[int, int]] = {}
    machine: Machine | None = None
    try:
        for nic in NICS:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            peers[nic] = Peer(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            s.bind(("127.0.0.1", 0))
            ports[nic] = (s.getsockname()[1], _free_udp_port())
        cfg = tmp_path_factory.mktemp("nic-native") / "nics.cfg"
        _profile(cfg, ports)
        machine = hwl_machines.boot(cfg)
        for nic, (_peer, local) in ports.items():
            peers[nic].sock.connect(("127.0.0.1", local))  # only QEMU's datagrams
        yield machine, peers
    finally:
        if machine is not None:
            machine.close()
        for p in peers.values():
            p.sock.close()


@pytest.mark.parametrize("nic", NICS)
def test_frames_leave_byte_exact(net: tuple[Machine, dict[str, Peer]], nic: str) -> None:
    machine, peers = net
    peer = peers[nic]
    for size in (64, 1514):
        frame = nic_native.tx_frame(size, seq=size)
        result = nic_native.native_tx(machine.link, nic, frame, FRAMES)
        assert result.done == FRAMES
        assert result.seconds > 0
        got = peer.drain()
        assert len(got) == FRAMES, f"{nic}: {len(got)} of {FRAMES} {size}-byte frames arrived"
        wrong = [i for i, g in enumerate(got) if g != frame]
        assert not wrong, f"{nic}: frames {wrong[:5]} differ, e.g. {got[wrong[0]][:32].hex()}"


@pytest.mark.parametrize("nic", ["rtl8139", "e1000"])
def test_batches_send_every_frame(net: tuple[Machine, dict[str, Peer]], nic: str) -> None:
    """Several descriptors per doorbell write, a count that is not a multiple of the
    batch, and more frames than the ring holds."""
    machine, peers = net
    frame = nic_native.tx_frame(128, seq=7)
    result = nic_native.native_tx(machine.link, nic, frame, 150, batch=nic_native.MAX_BATCH[nic])
    assert result.done == 150
    got = peers[nic].drain()
    assert len(got) == 150
    assert all(g == frame for g in got)


def test_pps_is_a_rate(net: tuple[Machine, dict[str, Peer]]) -> None:
    machine, peers = net
    pps = nic_native.native_tx_pps(machine.link, "e1000", 60, 100)
    assert len(peers["e1000"].drain()) == 100
    assert 1_000 < pps < 1e8


def _raw_tx(machine: Machine, kind: int, mmio: int, frame_len: int) -> int:
    """Run the op on a hand-made block; returns the status the loop wrote."""
    link = machine.link
    buf = link.alloc_dma(4096)
    try:
        args = (kind, 0, mmio, buf.phys + 2048, frame_len, buf.phys, 1, 1, 0xFFFFFFFF, 0, 0)
        buf.write(abi.NIC_NATIVE.pack(*args), 1024)
        b = Batch()
        b._add(abi.OP_NATIVE_NIC_TX, 0, 0, 0, buf.phys + 1024)
        with pytest.raises(LinkError, match="bad argument"):
            link.execute(b)
        status: int = abi.NIC_NATIVE.unpack(buf.read(1024, abi.NIC_NATIVE_SIZE))[8]
        return status
    finally:
        link.free_dma(buf)


def test_stub_refuses_bad_blocks(net: tuple[Machine, dict[str, Peer]]) -> None:
    """An e1000 "register base" in RAM (the loop would write the stub), an unknown
    kind and a runt frame are refused before any device access."""
    machine, peers = net
    ram = machine.link.alloc_dma(4096)
    try:
        assert _raw_tx(machine, abi.NIC_E1000, ram.phys, 60) == abi.ST_BADARG
    finally:
        machine.link.free_dma(ram)
    assert _raw_tx(machine, 9, 0, 60) == abi.ST_BADARG
    assert _raw_tx(machine, abi.NIC_E1000, 0xFEBC0000, 59) == abi.ST_BADARG
    assert peers["e1000"].drain(first=0.5) == []
    with pytest.raises(ValueError):
        nic_native.native_tx(machine.link, "e1000", bytes(59), 1)
    with pytest.raises(ValueError):
        nic_native.native_tx(machine.link, "rtl8139", bytes(60), 1, batch=65)


@pytest.mark.parametrize("nic", ["rtl8139", "e1000"])
def test_no_bus_master_is_a_device_error(
    net: tuple[Machine, dict[str, Peer]], nic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With bus mastering off the NIC cannot read its descriptors: the loop sees
    them untaken (OWN still set, DD never written) and says so, and no frame left."""
    machine, peers = net
    link = machine.link
    d = nic_native.find_nic(link, nic)
    command = link.pci_read(d.bus, d.dev, d.fn, nic_native.PCI_COMMAND, 2)
    off = command & ~nic_native.CMD_BUS_MASTER
    link.pci_write(d.bus, d.dev, d.fn, nic_native.PCI_COMMAND, off, 2)
    monkeypatch.setattr(nic_native, "enable_bus_master", lambda _link, _d: None)
    try:
        with pytest.raises(nic_native.NicNativeError, match="device error after 0 of 5"):
            nic_native.native_tx(link, nic, nic_native.tx_frame(60), 5)
    finally:
        link.pci_write(d.bus, d.dev, d.fn, nic_native.PCI_COMMAND, command, 2)
    assert peers[nic].drain(first=0.5) == []
