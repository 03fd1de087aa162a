"""A PCI-to-PCI bridge and 64-bit BARs on QEMU (qemu-configs/pci-bridge.cfg).

tests/test_pci.py checks bridges and 64-bit BARs on an in-memory bus only; here
QEMU provides them: a pci-bridge with an e1000 and a pci-testdev behind it (bus 1,
numbered by SeaBIOS), and pci-testdevs whose ``membar`` is a 64-bit prefetchable
memory BAR, on both buses. The link's own scan is checked against QEMU's
``query-pci`` (which nests the bus behind a bridge); then the PCI server, on the
same machine, must show, describe and reserve the same devices
(tests/programs/pci_driver.py as its clients, as in tests/test_pci_server.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_pci_server import E1000, Bus, pci_bus

from hwl.kernel.errno import Errno
from hwl.link.pci import PciDevice
from hwl.pytest_plugin import MachineFactory

pytestmark = pytest.mark.qemu

TESTDEV = (0x1B36, 0x0005)  # pci-testdev
BRIDGE = (0x1B36, 0x0001)  # pci-bridge
MEMBAR = 2  # pci-testdev's 64-bit BAR
MEMBAR_SIZES = {0: 1 << 20, 1: 2 << 20}  # pci-bridge.cfg's membar, by bus


@pytest.fixture(scope="module")
def bus(hwl_machines: MachineFactory) -> Iterator[Bus]:
    with pci_bus(hwl_machines, "pci-bridge") as booted:
        yield booted


def scanned(bus: Bus, ids: tuple[int, int]) -> list[PciDevice]:
    return [d for d in bus.scan if (d.vendor, d.device) == ids]


# ------------------------------------------------------------------ the link


def test_the_link_scan_matches_qmp_across_the_bridge(bus: Bus) -> None:
    ours = {(d.bus, d.dev, d.fn): d for d in bus.scan}
    assert len(ours) == len(bus.scan) == len(bus.qmp)
    for q in bus.qmp:
        d = ours[(q["bus"], q["slot"], q["function"])]
        assert (d.vendor, d.device) == (q["id"]["vendor"], q["id"]["device"]), d.bdf
        assert d.class_code >> 8 == q["class_info"]["class"], d.bdf
        regions = {r["bar"]: r for r in q["regions"] if r["bar"] < 6}
        theirs = [
            (
                i,
                r["type"] == "io",
                r["address"],
                r["size"],
                bool(r.get("prefetch")),
                bool(r.get("mem_type_64")),
            )
            for i, r in sorted(regions.items())
        ]
        link = [
            (b.index, b.kind == "io", b.address, b.size, b.prefetchable, b.is64) for b in d.bars
        ]
        assert link == theirs, d.bdf
    # the bus behind the bridge is the one QEMU says, and the scan went there
    (bridge,) = scanned(bus, BRIDGE)
    (q_bridge,) = [q for q in bus.qmp if (q["bus"], q["slot"]) == (bridge.bus, bridge.dev)]
    secondary = q_bridge["pci_bridge"]["bus"]["secondary"]
    assert (bridge.header_type & 0x7F, bridge.bus, secondary) == (1, 0, 1)
    (e1000,) = scanned(bus, E1000)
    assert (e1000.bus, e1000.dev) == (secondary, 1)
    assert sorted(d.bus for d in scanned(bus, TESTDEV)) == [0, secondary]


def test_a_64_bit_bar_is_one_bar_of_two_registers(bus: Bus) -> None:
    for dev in scanned(bus, TESTDEV):
        wide = [b for b in dev.bars if b.index == MEMBAR]
        assert len(wide) == 1, dev.bars
        bar = wide[0]
        assert (bar.kind, bar.is64, bar.prefetchable) == ("mem", True, True)
        assert bar.size == MEMBAR_SIZES[dev.bus] and bar.address % bar.size == 0
        assert MEMBAR + 1 not in {b.index for b in dev.bars}  # its upper half


# ---------------------------------------------------------------- the server


def test_the_pci_server_shows_every_device_as_the_link_scans_it(bus: Bus) -> None:
    acl = "pci class 1; pci class 2; pci class 6; pci device 1b36:0005;"
    with bus.driver(acl) as everything:
        devices = everything.devices()
        assert len(devices) == len(bus.scan)
        for (devind, vid, did), theirs in zip(devices, bus.scan, strict=True):
            info = everything.call("dev_info", devind)
            assert (info["bus"], info["dev"], info["func"]) == (theirs.bus, theirs.dev, theirs.fn)
            assert (vid, did) == (theirs.vendor, theirs.device)
            assert (info["irq_line"], info["irq_pin"]) == (theirs.irq_line, theirs.irq_pin)
            ours = [(b["index"], b["is_io"], b["base"], b["size"]) for b in info["bars"]]
            link = [(b.index, b.kind == "io", b.address, b.size) for b in theirs.bars]
            assert ours == link, theirs.bdf  # the 64-bit BARs too: they lie below 4 GiB
            assert everything.call("find_dev", theirs.bus, theirs.dev, theirs.fn) == devind
            assert (
                everything.call("slot_name", devind) == f"0.{theirs.bus}.{theirs.dev}.{theirs.fn}"
            )


def test_a_driver_reserves_the_device_behind_the_bridge(bus: Bus) -> None:
    (e1000,) = scanned(bus, E1000)
    (io,) = [b for b in e1000.bars if b.kind == "io"]
    (mem,) = [b for b in e1000.bars if b.kind == "mem"]
    with bus.driver("pci device 8086:100e;") as nic:
        (only,) = nic.devices()
        devind = only[0]
        assert nic.call("dev_info", devind)["bus"] == e1000.bus == 1
        assert nic.inb(io.address)[0] == Errno.EPERM
        granted = nic.call("reserve", devind)
        assert granted == {
            "io": [[io.address, io.size]],
            "mem": [[mem.address, mem.size]],
            "irq": [e1000.irq_line],
        }
        assert nic.inb(io.address)[0] == 0  # the port answers through the bridge
        assert nic.cmd("irq", irq=e1000.irq_line)["status"] == 0
        assert nic.call("release", devind) == [devind]


def test_the_server_grants_a_64_bit_bar_as_one_range(bus: Bus) -> None:
    with bus.driver("pci device 1b36:0005;") as probe:
        devices = probe.devices()
        assert len(devices) == 2
        for (devind, _, _), theirs in zip(devices, scanned(bus, TESTDEV), strict=True):
            (wide,) = [b for b in theirs.bars if b.index == MEMBAR]
            assert probe.call("get_bar", devind, 0x10 + 4 * MEMBAR) == [
                wide.address,
                wide.size,
                False,
            ]
            upper = probe.refused(Errno.EINVAL, "get_bar", devind, 0x10 + 4 * (MEMBAR + 1))
            assert "not a BAR" in upper
            granted = probe.call("reserve", devind)
            assert [wide.address, wide.size] in granted["mem"], granted
            probe.call("release", devind)
