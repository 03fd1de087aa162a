"""PCI enumeration through the link, checked against what QEMU itself reports over QMP;
and the same scan over the PCI server's devio access, on an in-memory bus with what
the pc profile lacks (bridges, 64-bit BARs, a BAR above 4 GiB, a loop, a failing
access). A real bridge and real 64-bit BARs: tests/test_pci_bridge.py."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pytest

from hwl import Machine, PciDevice
from hwl.link import pci
from hwl.servers.pci import bus

pytestmark = pytest.mark.qemu

EXPECTED = {
    "8086:7010": 0x0101,  # PIIX3 IDE: mass storage / IDE
    "10ec:8029": 0x0200,  # ne2k_pci: network / ethernet
    "10ec:8139": 0x0200,  # rtl8139
    "8086:100e": 0x0200,  # e1000
}


def by_ids(devices: list[PciDevice]) -> dict[str, PciDevice]:
    return {d.ids: d for d in devices}


def test_finds_the_profile_devices_with_their_classes(pc: Machine) -> None:
    found = by_ids(pc.link.pci_scan())
    for ids, cls in EXPECTED.items():
        assert ids in found, f"{ids} not found; saw {sorted(found)}"
        assert found[ids].class_code >> 8 == cls, f"{ids} class {found[ids].class_code:06x}"
    assert found["8086:7010"].class_code & 0x80, "PIIX IDE prog-if must advertise bus mastering"


def test_matches_qmp_query_pci(pc: Machine) -> None:
    """IDs, classes, BAR addresses and sizes, and IRQ lines agree with QEMU's own view."""
    ours = {(d.dev, d.fn): d for d in pc.link.pci_scan()}
    theirs = pc.qmp_execute("query-pci")[0]["devices"]
    assert len(ours) == len(theirs)
    for q in theirs:
        d = ours[(q["slot"], q["function"])]
        assert (d.vendor, d.device) == (q["id"]["vendor"], q["id"]["device"])
        assert d.class_code >> 8 == q["class_info"]["class"]
        regions = {r["bar"]: r for r in q["regions"] if r["bar"] < 6}
        assert {b.index for b in d.bars} == set(regions), d.bdf
        for bar in d.bars:
            r = regions[bar.index]
            assert (bar.kind, bar.address, bar.size) == (
                "io" if r["type"] == "io" else "mem",
                r["address"],
                r["size"],
            )
        if q["irq_pin"]:
            assert (d.irq_pin, d.irq_line) == (q["irq_pin"], q["irq"]), d.bdf


def test_irq_lines_follow_the_piix3_routing(pc: Machine) -> None:
    """The IRQ line in each header is what PIRQ[(slot + INTx - 1) % 4] routes to (PIIX3 0x60-0x63),
    with INTx counted from 0 for INTA."""
    routes = pc.link.pci_read(0, 1, 0, 0x60)
    for d in pc.link.pci_scan():
        if d.irq_pin and d.bus == 0 and d.dev > 1:
            route = routes >> (8 * ((d.dev - 1 + d.irq_pin - 1) % 4)) & 0xFF
            assert not route & 0x80, f"{d.bdf}: its PIRQ is not routed"
            assert d.irq_line == route, d.bdf


def test_nic_bars_have_their_datasheet_sizes(pc: Machine) -> None:
    found = by_ids(pc.link.pci_scan())
    sizes = {ids: [(b.kind, b.size) for b in d.bars] for ids, d in found.items()}
    assert sizes["10ec:8029"] == [("io", 256)]
    assert sizes["10ec:8139"] == [("io", 256), ("mem", 256)]
    assert sizes["8086:100e"] == [("mem", 128 << 10), ("io", 64)]
    assert sizes["8086:7010"] == [("io", 16)]


def test_config_write_reads_back(pc: Machine) -> None:
    """The interrupt-line register is writable scratch for software."""
    link = pc.link
    old = link.pci_read(0, 2, 0, 0x3C, width=1)
    link.pci_write(0, 2, 0, 0x3C, 0x5A, width=1)
    try:
        assert link.pci_read(0, 2, 0, 0x3C, width=1) == 0x5A
    finally:
        link.pci_write(0, 2, 0, 0x3C, old, width=1)
    assert link.pci_read(0, 2, 0, 0x3C, width=1) == old


# ------------------------------------------------------------ in-memory bus


@dataclass
class Function:
    """A function's 256 bytes of configuration space; ``sizes``: implemented BARs."""

    vid_did: int
    class_rev: int
    header_type: int = 0
    command: int = 0x0007
    bars: dict[int, int] = field(default_factory=dict)  # index: value
    sizes: dict[int, int] = field(default_factory=dict)  # index: size
    dword6: int = 0  # a bridge's bus numbers at 0x18
    sub_ids: int = 0
    irq: int = 0  # pin << 8 | line
    regs: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.regs = [0] * 64
        self.regs[0], self.regs[1], self.regs[2] = self.vid_did, self.command, self.class_rev
        self.regs[3] = self.header_type << 16
        for i, value in self.bars.items():
            self.regs[4 + i] = value
        self.regs[6] |= self.dword6
        self.regs[11], self.regs[15] = self.sub_ids, self.irq

    def write(self, offset: int, value: int, width: int) -> None:
        index, shift = offset // 4, 8 * (offset & 3)
        mask = ((1 << 8 * width) - 1) << shift
        new = self.regs[index] & ~mask | value << shift & mask
        bar = index - 4
        if 0 <= bar < pci.bar_count(self.header_type):
            new = self._bar(bar, new)
        self.regs[index] = new

    def _bar(self, i: int, value: int) -> int:
        if i in self.sizes:
            low = 0x3 if self.regs[4 + i] & 1 else 0xF
            return value & ~(self.sizes[i] - 1) & ~low & 0xFFFFFFFF | self.regs[4 + i] & low
        upper = i - 1 in self.sizes and self.regs[3 + i] & 0x7 == 0x4
        return value if upper else 0


class Ports:
    """Configuration mechanism #1 behind devio calls, as the kernel gives the server."""

    def __init__(self, functions: dict[tuple[int, int, int], Function]) -> None:
        self.functions = functions
        self.address = 0
        self.calls = 0
        self.fail_on: tuple[int, int] | None = None  # (CONFIG_ADDRESS value, value written)

    def _selected(self) -> tuple[Function | None, int]:
        where = (self.address >> 16 & 0xFF, self.address >> 11 & 0x1F, self.address >> 8 & 7)
        return self.functions.get(where), self.address & 0xFC

    def devio_in(self, port: int, width: int = 1) -> int:
        self.calls += 1
        f, offset = self._selected()
        if f is None:
            return (1 << 8 * width) - 1
        shift = 8 * (port - pci.CONFIG_DATA)
        return f.regs[offset // 4] >> shift & (1 << 8 * width) - 1

    def devio_out(self, port: int, value: int, width: int = 1) -> None:
        self.calls += 1
        if port == pci.CONFIG_ADDRESS:
            self.address = value
            return
        if self.fail_on == (self.address, value):
            raise OSError("devio failed")
        f, offset = self._selected()
        if f is not None:
            f.write(offset + port - pci.CONFIG_DATA, value, width)


def fake_bus() -> dict[tuple[int, int, int], Function]:
    return {
        (0, 0, 0): Function(0x12378086, 0x06000002),
        (0, 1, 0): Function(0x70008086, 0x06010000, header_type=0x80),
        (0, 1, 1): Function(0x70108086, 0x01018000, bars={4: 0xC041}, sizes={4: 16}),
        (0, 1, 3): Function(0x71138086, 0x06800003),
        (0, 2, 0): Function(  # io, mem, 64-bit prefetchable above 4 GiB, 64-bit below
            0x10001AF4,
            0x02000000,
            bars={0: 0xC001, 1: 0xFEBC0000, 2: 0xC, 3: 0x8, 4: 0xFE000004},
            sizes={0: 32, 1: 0x1000, 2: 0x4000, 4: 0x4000},
            sub_ids=0x00011AF4,
            irq=0x010B,
        ),
        (0, 3, 0): Function(  # a bridge to bus 1
            0x00011B36, 0x06040000, header_type=1, bars={0: 0xFEA00000}, sizes={0: 0x100},
            dword6=0x010100, sub_ids=0xFFFF,
        ),
        (0, 4, 0): Function(0x00011B36, 0x06040000, header_type=1),  # no bus behind it yet
        (1, 0, 0): Function(  # a 64-bit BAR in the last slot
            0x813910EC, 0x02000000, bars={0: 0xD001, 5: 0xFD000004}, sizes={0: 256, 5: 256}
        ),
        (1, 1, 0): Function(0x00011B36, 0x06040000, header_type=1, dword6=0x010101),  # a loop
    }  # fmt: skip


def test_the_scan_over_devio_finds_bridges_and_64_bit_bars() -> None:
    functions = fake_bus()
    before = {where: list(f.regs) for where, f in functions.items()}
    found = pci.scan_config(bus.ConfigSpace(Ports(functions)))
    assert [(d.bus, d.dev, d.fn) for d in found] == list(functions)
    assert {where: f.regs for where, f in functions.items()} == before  # all restored
    nic, bridge = found[4], found[5]
    assert [(b.index, b.kind, b.address, b.size, b.prefetchable, b.is64) for b in nic.bars] == [
        (0, "io", 0xC000, 32, False, False),
        (1, "mem", 0xFEBC0000, 0x1000, False, False),
        (2, "mem", 0x8_0000_0000, 0x4000, True, True),
        (4, "mem", 0xFE000000, 0x4000, False, True),
    ]
    assert (nic.sub_vendor, nic.sub_device, nic.irq_line, nic.irq_pin) == (0x1AF4, 1, 11, 1)
    assert (bridge.sub_vendor, [b.size for b in bridge.bars]) == (None, [0x100])


def test_the_server_drops_what_it_cannot_grant(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=bus.__name__):
        devices = bus.scan(Ports(fake_bus()))
    assert [d.devind for d in devices] == list(range(9))
    ide, nic, rtl = devices[2], devices[4], devices[7]
    assert [b.index for b in nic.bars] == [0, 1, 4]
    assert ide.legacy_irqs == (14, 15) and [b.index for b in ide.bars] == [4]
    assert rtl.io_ranges() == [(0xD000, 256)] and rtl.mem_ranges() == []
    assert [r.getMessage() for r in caplog.records] == [
        "00:02.0 BAR 2: above 4 GiB (0x800000000), not usable here",
        "01:00.0 BAR 5: 64 bits past the BAR area",
    ]


def test_a_failing_access_still_restores_the_command_register() -> None:
    functions = fake_bus()
    ports = Ports(functions)
    ports.fail_on = (pci.config_address(0, 2, 0, 0x14), 0xFFFFFFFF)  # sizing BAR 1
    with pytest.raises(OSError, match="devio failed"):
        bus.scan(ports)
    assert functions[0, 2, 0].regs[1] & 0xFFFF == 0x0007
