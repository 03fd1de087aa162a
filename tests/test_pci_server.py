"""The PCI server end to end on QEMU: enumeration, ACLs, reserve and its grants.

One pc machine for the module. Before the kernel takes the link, the test scans
the bus itself (``hwl.link.pci``) and asks QEMU (``query-pci``); then it boots the
system with DS and PCI (``hwl.servers.pci``, its stock system.conf entry) and starts
test drivers (tests/programs/pci_driver.py) through RS, each with a system.conf
entry of its own whose ``pci device`` / ``pci class`` lines are its ACL. The test
is the operator: it asks a driver, by sendrec, to make a PCI call, a port read,
or an IRQ hook, and looks at the answer.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from rs_fixtures import wait_for

from hwl import Machine
from hwl.ipc import codec
from hwl.kernel.errno import Errno
from hwl.link.pci import PciDevice
from hwl.pytest_plugin import MachineFactory
from hwl.system import proto
from hwl.system.boot import System
from hwl.system.pci import Pci, PciError
from hwl.system.rs import up_fields

pytestmark = pytest.mark.qemu

DRIVER = str(Path(__file__).parent / "programs" / "pci_driver.py")
CMD, RESULT = 1, 2
RTL8139 = (0x10EC, 0x8139)
NE2K = (0x10EC, 0x8029)
E1000 = (0x8086, 0x100E)
PIIX_IDE = (0x8086, 0x7010)
SYSTEM_LINE = "system DEVIO IRQCTL; ipc ALL_SYS;"


@dataclass
class Bus:
    machine: Machine
    system: System
    scan: list[PciDevice]  # the link's own scan, before the kernel took the link
    qmp: list[dict[str, Any]]  # QEMU's query-pci, every bus's devices in one list
    labels: Iterator[int] = field(default_factory=itertools.count)

    def scanned(self, ids: tuple[int, int]) -> PciDevice:
        return next(d for d in self.scan if (d.vendor, d.device) == ids)

    @contextlib.contextmanager
    def driver(self, acl: str, system_line: str = SYSTEM_LINE) -> Iterator[Driver]:
        """A test driver whose entry has ``acl`` (pci lines) and ``system_line``,
        taken down by RS on the way out."""
        label = f"pcitest{next(self.labels)}"
        conf = f"service {label} {{ {system_line} {acl} }};"
        endpoint = self.system.rs.up([sys.executable, DRIVER], label=label, conf=conf)
        try:
            yield Driver(self, label, endpoint)
        finally:
            self.system.rs.down(label)

    def row(self, label: str) -> Any:
        return next(r for r in self.system.rs.status() if r.label == label)


@dataclass
class Driver:
    bus: Bus
    label: str
    endpoint: int

    def cmd(self, op: str, **args: codec.Value) -> dict[str, Any]:
        conn = self.bus.system.rs.conn
        reply = conn.sendrec(self.endpoint, CMD, {"op": op, **args}, timeout=15)
        assert reply.m_type == RESULT, reply
        # the driver's own exception (tests/programs/helper_error.py) is no answer of PCI's
        assert "traceback" not in reply.fields, reply["traceback"]
        return dict(reply.fields)

    def call(self, method: str, *args: codec.Value) -> Any:
        r = self.cmd("pci", method=method, args=list(args))
        if r["status"]:
            raise PciError(Errno(r["status"]), method, r.get("error", ""))
        return r["result"]

    def refused(self, errno: Errno, method: str, *args: codec.Value) -> str:
        with pytest.raises(PciError) as err:
            self.call(method, *args)
        assert err.value.errno is errno, err.value
        return str(err.value)

    def devices(self) -> list[tuple[int, int, int]]:
        r = self.cmd("devices")
        assert r["status"] == 0, r
        return [(d[0], d[1], d[2]) for d in r["devices"]]

    def devind(self, ids: tuple[int, int]) -> int:
        return next(devind for devind, vid, did in self.devices() if (vid, did) == ids)

    def inb(self, port: int) -> tuple[int, int]:
        """(status, value) of a one-byte devio_in."""
        r = self.cmd("devio_in", port=port, width=1)
        return r["status"], r.get("value", -1)

    def raw(self, m_type: int, payload: bytes) -> tuple[int, dict[str, Any] | None]:
        r = self.cmd("raw", m_type=m_type, payload=payload)
        assert r["status"] == 0, r
        return r["m_type"], r["fields"]

    def pid(self) -> int:
        return int(self.cmd("whoami")["pid"])


def flatten(devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """query-pci's devices, with those behind each bridge, in one list."""
    found = []
    for d in devices:
        found.append(d)
        behind = d.get("pci_bridge", {}).get("devices", [])
        found += flatten(behind)
    return found


@contextlib.contextmanager
def pci_bus(hwl_machines: MachineFactory, profile: str) -> Iterator[Bus]:
    """``profile`` booted with DS and the PCI server, and what the link's scan and
    QEMU's query-pci saw of its bus first."""
    machine = hwl_machines.boot(profile)
    try:
        scan = machine.link.pci_scan()  # before System.start hands the link over
        qmp = flatten(machine.qmp_execute("query-pci")[0]["devices"])
        boot = [
            up_fields([sys.executable, "-m", "hwl.servers.ds"], label="ds"),
            up_fields([sys.executable, "-m", "hwl.servers.pci"], label="pci"),
        ]
        system = System.start(machine, boot)
        try:
            yield Bus(machine, system, scan, qmp)
        finally:
            system.stop()
    finally:
        machine.close()


@pytest.fixture(scope="module")
def bus(hwl_machines: MachineFactory) -> Iterator[Bus]:
    with pci_bus(hwl_machines, "pc") as booted:
        yield booted


# ----------------------------------------------------------------- enumeration


def test_enumeration_matches_the_link_scan_and_qmp(bus: Bus) -> None:
    with bus.driver("pci class 1; pci class 2; pci class 6;") as everything:
        devices = everything.devices()
        assert len(devices) == len(bus.scan) == len(bus.qmp)
        assert [d[0] for d in devices] == list(range(len(devices)))
        for (devind, vid, did), theirs in zip(devices, bus.scan, strict=True):
            info = everything.call("dev_info", devind)
            where = (info["bus"], info["dev"], info["func"])
            assert where == (theirs.bus, theirs.dev, theirs.fn)
            assert (vid, did) == (info["vid"], info["did"]) == (theirs.vendor, theirs.device)
            cls = info["base_class"] << 16 | info["sub_class"] << 8 | info["interface"]
            assert cls == theirs.class_code, theirs.bdf
            assert (info["irq_line"], info["irq_pin"]) == (theirs.irq_line, theirs.irq_pin)
            ours = [(b["index"], b["is_io"], b["base"], b["size"]) for b in info["bars"]]
            link = [(b.index, b.kind == "io", b.address, b.size) for b in theirs.bars]
            assert ours == link, theirs.bdf
            assert everything.call("find_dev", *where) == devind
            assert everything.call("ids", devind) == [vid, did]
            assert everything.call("attr_r16", devind, 0) == vid
            assert everything.call("attr_r32", devind, 0) == did << 16 | vid
            assert everything.call("attr_r8", devind, 0x0B) == theirs.class_code >> 16
            assert (
                everything.call("slot_name", devind) == f"0.{theirs.bus}.{theirs.dev}.{theirs.fn}"
            )
        by_slot = {(q["slot"], q["function"]): q for q in bus.qmp}
        for devind, vid, did in devices:
            info = everything.call("dev_info", devind)
            q = by_slot[(info["dev"], info["func"])]
            assert (vid, did) == (q["id"]["vendor"], q["id"]["device"])
            regions = {r["bar"]: r for r in q["regions"] if r["bar"] < 6}
            assert {b["index"] for b in info["bars"]} == set(regions)
            for b in info["bars"]:
                region = regions[b["index"]]
                assert (b["base"], b["size"]) == (region["address"], region["size"])
        assert everything.call("dev_name", *RTL8139) == "Realtek RTL8139 Fast Ethernet"
        everything.refused(Errno.ENOENT, "find_dev", 0, 31, 0)


# ------------------------------------------------------------------------ ACLs


def test_a_pci_device_line_shows_only_that_device(bus: Bus) -> None:
    with bus.driver("pci device 10ec:8139;") as rtl:
        devices = rtl.devices()
        assert [(vid, did) for _, vid, did in devices] == [RTL8139]
        ne2k = bus.scanned(NE2K)
        why = rtl.refused(Errno.EPERM, "find_dev", ne2k.bus, ne2k.dev, ne2k.fn)
        assert "not in the ACL" in why and "10ec:8029" in why
        other = devices[0][0] - 1  # the ne2k_pci comes right before it
        rtl.refused(Errno.EPERM, "dev_info", other)
        rtl.refused(Errno.EPERM, "attr_r32", other, 0)
        rtl.refused(Errno.EPERM, "reserve", other)


def test_a_pci_class_line_shows_the_ide_controller(bus: Bus) -> None:
    with bus.driver("pci class 1/1;") as disk:
        assert [(vid, did) for _, vid, did in disk.devices()] == [PIIX_IDE]


def test_a_subsystem_id_narrows_a_device_line(bus: Bus) -> None:
    rtl = bus.scanned(RTL8139)
    with bus.driver("pci device 10ec:8139;") as probe:
        info = probe.call("dev_info", probe.devind(RTL8139))
        sub = f"{info['sub_vid']:04x}:{info['sub_did']:04x}"
    with (
        bus.driver(f"pci device 10ec:8139/{sub};") as right,
        bus.driver("pci device 10ec:8139/dead:beef;") as wrong,
    ):
        assert [(v, d) for _, v, d in right.devices()] == [RTL8139]
        assert wrong.devices() == []
        wrong.refused(Errno.EPERM, "find_dev", rtl.bus, rtl.dev, rtl.fn)


# --------------------------------------------------------------------- reserve


def test_reserve_grants_the_ports_memory_and_irq(bus: Bus) -> None:
    e1000 = bus.scanned(E1000)
    (io,) = [b for b in e1000.bars if b.kind == "io"]
    (mem,) = [b for b in e1000.bars if b.kind == "mem"]
    with bus.driver("pci device 8086:100e;") as nic:
        devind = nic.devind(E1000)
        assert nic.inb(io.address)[0] == Errno.EPERM
        assert nic.cmd("irq", irq=e1000.irq_line)["status"] == Errno.EPERM
        granted = nic.call("reserve", devind)
        assert granted == {
            "io": [[io.address, io.size]],
            "mem": [[mem.address, mem.size]],
            "irq": [e1000.irq_line],
        }
        status, _value = nic.inb(io.address)
        assert status == 0
        assert nic.inb(io.address + io.size)[0] == Errno.EPERM  # only the BAR
        assert nic.cmd("irq", irq=e1000.irq_line)["status"] == 0
        assert nic.call("get_bar", devind, 0x10) == [mem.address, mem.size, False]
        assert nic.call("get_bar", devind, 0x14) == [io.address, io.size, True]
        assert "not a BAR" in nic.refused(Errno.EINVAL, "get_bar", devind, 0x18)
        assert nic.call("dev_info", devind)["holder"] == nic.endpoint
        assert nic.call("reserve", devind) == granted  # again: granted again
        assert nic.call("release", devind) == [devind]
        assert nic.call("dev_info", devind)["holder"] is None


def test_attribute_writes_need_the_reservation(bus: Bus) -> None:
    with bus.driver("pci device 10ec:8029;") as a, bus.driver("pci device 10ec:8029;") as b:
        devind = a.devind(NE2K)
        old = a.call("attr_r8", devind, 0x3C)
        assert "reserve it" in a.refused(Errno.EPERM, "attr_w8", devind, 0x3C, 0x5A)
        a.call("reserve", devind)
        a.call("attr_w8", devind, 0x3C, 0x5A)
        assert a.call("attr_r8", devind, 0x3C) == 0x5A
        assert b.call("attr_r8", devind, 0x3C) == 0x5A  # reads need only the ACL
        b.refused(Errno.EPERM, "attr_w8", devind, 0x3C, old)
        a.call("attr_w8", devind, 0x3C, old)
        assert a.call("attr_r8", devind, 0x3C) == old
        command = a.call("attr_r16", devind, 0x04)
        a.call("attr_w16", devind, 0x04, command)
        assert "BAR register" in a.refused(Errno.EPERM, "attr_w32", devind, 0x10, 0xFFFFFFFF)
        a.refused(Errno.EINVAL, "attr_r16", devind, 0x3D)  # unaligned
        a.refused(Errno.EINVAL, "attr_r32", devind, 0x100)
        a.refused(Errno.EINVAL, "attr_w8", devind, 0x3C, 0x100)


def test_reserve_is_exclusive_until_the_holder_dies(bus: Bus) -> None:
    port = bus.scanned(RTL8139).bars[0].address
    with bus.driver("pci device 10ec:8139;") as a, bus.driver("pci device 10ec:8139;") as b:
        devind = a.devind(RTL8139)
        a.call("reserve", devind)
        why = b.refused(Errno.EBUSY, "reserve", devind)
        assert a.label in why
        assert b.inb(port)[0] == Errno.EPERM  # nothing was granted to b
        assert b.pid() > 0  # and b still runs
        assert bus.row(b.label).restarts == 0

        # The holder is killed; RS restarts it at a new endpoint. The next
        # reserve finds the dead holder and gives the device to b.
        old_pid = a.pid()
        os.kill(old_pid, signal.SIGKILL)
        row = wait_for(
            "a's restart",
            lambda: (r := bus.row(a.label)).state == "up" and r.pid not in (-1, old_pid) and r,
        )
        a.endpoint = row.endpoint
        b.call("reserve", devind)
        assert b.inb(port)[0] == 0
        assert a.call("dev_info", devind)["holder"] == b.endpoint
        a.refused(Errno.EBUSY, "reserve", devind)

        # Without anyone reserving, the periodic check releases a dead holder's device.
        os.kill(b.pid(), signal.SIGKILL)
        wait_for(
            "the periodic release",
            lambda: a.call("dev_info", devind)["holder"] is None,
            timeout=8,
        )
        a.call("reserve", devind)
        assert a.inb(port)[0] == 0


def test_compatibility_mode_ide_gets_the_legacy_ports_and_irqs(bus: Bus) -> None:
    piix = bus.scanned(PIIX_IDE)
    assert not piix.class_code & 0x05, "the PIIX3 IDE should run in compatibility mode"
    (bm,) = piix.bars
    with bus.driver("pci class 1/1;") as disk:
        devind = disk.devind(PIIX_IDE)
        assert disk.inb(0x1F7)[0] == Errno.EPERM
        assert disk.cmd("irq", irq=14)["status"] == Errno.EPERM
        granted = disk.call("reserve", devind)
        assert [0x1F0, 8] in granted["io"] and [0x3F6, 1] in granted["io"]
        assert [0x170, 8] in granted["io"] and [0x376, 1] in granted["io"]
        assert [bm.address, bm.size] in granted["io"]  # the bus-master BAR 4
        assert granted["irq"] == [14, 15]
        assert granted["mem"] == []
        assert disk.inb(0x1F7)[0] == 0
        assert disk.inb(0x376)[0] == 0
        assert disk.inb(bm.address + 2)[0] == 0  # bus-master status
        assert disk.cmd("irq", irq=14)["status"] == 0
        assert disk.cmd("irq", irq=15)["status"] == 0
        assert disk.call("get_bar", devind, 0x20) == [bm.address, bm.size, True]
        disk.refused(Errno.EINVAL, "get_bar", devind, 0x10)  # no BAR 0 in legacy mode
        info = disk.call("dev_info", devind)
        assert info["legacy_irqs"] == [14, 15]


def test_a_channel_reserve_grants_one_channel_and_excludes_the_whole(bus: Bus) -> None:
    (bm,) = bus.scanned(PIIX_IDE).bars
    acl = "pci class 1/1;"
    with bus.driver(acl) as first, bus.driver(acl) as second, bus.driver(acl) as whole:
        devind = first.devind(PIIX_IDE)
        granted = first.call("reserve", devind, 0)
        assert granted == {"io": [[0x1F0, 8], [0x3F6, 1], [bm.address, 8]], "mem": [], "irq": [14]}
        assert first.inb(0x1F7)[0] == 0
        assert first.inb(0x177)[0] == Errno.EPERM  # not the other channel
        assert first.inb(bm.address + 8 + 2)[0] == Errno.EPERM  # nor its bus-master half
        assert second.call("reserve", devind, 1)["irq"] == [15]
        assert second.inb(0x177)[0] == 0
        assert first.label in second.refused(Errno.EBUSY, "reserve", devind, 0)
        whole.refused(Errno.EBUSY, "reserve", devind)  # a channel is held
        assert "not 0 or 1" in whole.refused(Errno.EINVAL, "reserve", devind, 2)
        assert whole.inb(0x1F7)[0] == Errno.EPERM  # the refusals granted nothing


# ------------------------------------------------------------------ robustness


def test_bad_requests_get_error_replies_and_the_server_serves_on(bus: Bus) -> None:
    pci_before = bus.row("pci")
    with bus.driver("pci device 10ec:8139;") as d:
        devind = d.devind(RTL8139)
        cases: list[tuple[int, bytes, Errno]] = [
            (proto.PCI_DEV_INFO, codec.encode({"devind": 99}), Errno.EINVAL),
            (proto.PCI_DEV_INFO, codec.encode({"devind": -1}), Errno.EINVAL),
            (proto.PCI_IDS, codec.encode({"devind": "five"}), Errno.EINVAL),
            (proto.PCI_IDS, codec.encode({"devind": True}), Errno.EINVAL),
            (proto.PCI_IDS, codec.encode({}), Errno.EINVAL),
            (proto.PCI_ATTR_R32, codec.encode({"devind": devind, "port": 2}), Errno.EINVAL),
            (proto.PCI_ATTR_R8, codec.encode({"devind": devind, "port": [0]}), Errno.EINVAL),
            (proto.PCI_GET_BAR, codec.encode({"devind": devind, "port": 0x3C}), Errno.EINVAL),
            (
                proto.PCI_ATTR_W8,
                codec.encode({"devind": devind, "port": 0x3C, "value": 1}),
                Errno.EPERM,
            ),
            (proto.PCI_FIND_DEV, codec.encode({"bus": 0, "dev": 32, "func": 0}), Errno.EINVAL),
            (proto.PCI_RELEASE, codec.encode({"devind": devind}), Errno.EPERM),
            (proto.PCI_RESERVE, codec.encode({"devind": 1 << 40}), Errno.EINVAL),
            (proto.PCI_IDS, b"\xff\x00garbage", Errno.EINVAL),
            (proto.PCI_BASE + 0x7F, codec.encode({}), Errno.EBADREQUEST),
        ]
        for m_type, payload, errno in cases:
            status, fields = d.raw(m_type, payload)
            assert status == -errno, (m_type, payload, status, fields)
            assert fields and fields["error"], (m_type, payload)
        assert d.call("ids", devind) == list(RTL8139)
    pci_after = bus.row("pci")
    assert (pci_after.pid, pci_after.restarts) == (pci_before.pid, pci_before.restarts)


# ------------------------------------------------------- restart, live update


def test_a_restarted_pci_server_knows_who_holds_what(bus: Bus) -> None:
    with bus.driver("pci device 10ec:8139;") as a, bus.driver("pci device 10ec:8139;") as b:
        devind = a.devind(RTL8139)
        a.call("reserve", devind)
        before = bus.row("pci")
        os.kill(before.pid, signal.SIGKILL)
        row = wait_for(
            "PCI's restart",
            lambda: (r := bus.row("pci")).state == "up" and r.pid not in (-1, before.pid) and r,
        )
        for d in (a, b):
            assert d.cmd("refind")["endpoint"] == row.endpoint
        assert a.call("dev_info", devind)["holder"] == a.endpoint
        b.refused(Errno.EBUSY, "reserve", devind)
        a.call("reserve", devind)


def test_a_live_update_carries_the_reservations(bus: Bus) -> None:
    with bus.driver("pci device 10ec:8139;") as a, bus.driver("pci device 10ec:8139;") as b:
        devind = a.devind(RTL8139)
        a.call("reserve", devind)
        before = bus.row("pci")
        bus.system.rs.update("pci")
        after = bus.row("pci")
        assert after.endpoint == before.endpoint and after.pid != before.pid
        assert a.call("dev_info", devind)["holder"] == a.endpoint
        b.refused(Errno.EBUSY, "reserve", devind)
        log = (bus.system.run_dir / "pci.log").read_text()
        assert "1 reservations carried over" in log


def test_a_user_process_sees_no_device(bus: Bus) -> None:
    """The operator has no system.conf entry, so no ACL."""
    pci = Pci(bus.system.rs.conn, bus.system.rs.lookup("pci"), timeout=10)
    assert pci.first_dev() is None
    assert list(pci.devices()) == []
    with pytest.raises(PciError) as err:
        pci.reserve(0)
    assert err.value.errno is Errno.EPERM
    assert "user process" in err.value.detail
    assert pci.dev_name(*RTL8139) == "Realtek RTL8139 Fast Ethernet"
