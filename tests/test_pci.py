"""PCI enumeration through the link, checked against what QEMU itself reports over QMP."""

from __future__ import annotations

from hwl import Machine, PciDevice

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
