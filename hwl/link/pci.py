"""PCI configuration space through ports 0xCF8/0xCFC (configuration mechanism #1).

Reads and writes are batch steps, so a whole header, or the sizing of all six
BARs, is one round trip to the stub.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hwl.link.batch import Batch

if TYPE_CHECKING:
    from hwl.link.link import Link

CONFIG_ADDRESS = 0xCF8
CONFIG_DATA = 0xCFC


def config_address(bus: int, dev: int, fn: int, offset: int) -> int:
    if not (0 <= bus < 256 and 0 <= dev < 32 and 0 <= fn < 8 and 0 <= offset < 256):
        raise ValueError(f"bad PCI address {bus:02x}:{dev:02x}.{fn} offset {offset:#x}")
    return 0x80000000 | bus << 16 | dev << 11 | fn << 8 | (offset & 0xFC)


def read_into(batch: Batch, bus: int, dev: int, fn: int, offset: int, width: int = 4) -> int:
    """Add a config read to ``batch``; returns the index of its value."""
    if width not in (1, 2, 4) or offset % width:
        raise ValueError(f"config read of width {width} at unaligned offset {offset:#x}")
    batch.outl(CONFIG_ADDRESS, config_address(bus, dev, fn, offset))
    return batch.in_(CONFIG_DATA + (offset & 3), width)


def write_into(
    batch: Batch, bus: int, dev: int, fn: int, offset: int, value: int, width: int = 4
) -> None:
    if width not in (1, 2, 4) or offset % width:
        raise ValueError(f"config write of width {width} at unaligned offset {offset:#x}")
    batch.outl(CONFIG_ADDRESS, config_address(bus, dev, fn, offset))
    batch.out(CONFIG_DATA + (offset & 3), value, width)


@dataclass(frozen=True)
class Bar:
    """One base address register, sized by writing all ones."""

    index: int
    kind: str  # "io" or "mem"
    address: int
    size: int
    prefetchable: bool = False
    is64: bool = False


@dataclass(frozen=True)
class PciDevice:
    bus: int
    dev: int
    fn: int
    vendor: int
    device: int
    class_code: int  # base << 16 | sub << 8 | prog_if
    revision: int
    header_type: int
    irq_line: int
    irq_pin: int
    bars: list[Bar] = field(default_factory=list)

    @property
    def bdf(self) -> str:
        return f"{self.bus:02x}:{self.dev:02x}.{self.fn}"

    @property
    def ids(self) -> str:
        return f"{self.vendor:04x}:{self.device:04x}"


def scan(link: Link) -> list[PciDevice]:
    """Enumerate bus 0 and any buses behind PCI-to-PCI bridges."""
    found: list[PciDevice] = []
    buses = [0]
    while buses:
        bus = buses.pop(0)
        for dev, fn in _present_functions(link, bus):
            d = _read_function(link, bus, dev, fn)
            found.append(d)
            if d.header_type & 0x7F == 1:  # bridge: its secondary bus number
                buses.append(link.pci_read(bus, dev, fn, 0x18) >> 8 & 0xFF)
    return found


def _present_functions(link: Link, bus: int) -> list[tuple[int, int]]:
    b = Batch()
    ids = {dev: read_into(b, bus, dev, 0, 0) for dev in range(32)}
    hdr = {dev: read_into(b, bus, dev, 0, 0x0C) for dev in range(32)}
    r = link.execute(b)
    present = [(dev, 0) for dev in range(32) if r[ids[dev]] & 0xFFFF != 0xFFFF]
    multi = [dev for dev, _ in present if r[hdr[dev]] >> 16 & 0x80]
    if multi:
        b = Batch()
        more = {(dev, fn): read_into(b, bus, dev, fn, 0) for dev in multi for fn in range(1, 8)}
        r = link.execute(b)
        present += [key for key, i in more.items() if r[i] & 0xFFFF != 0xFFFF]
    return sorted(present)


def _read_function(link: Link, bus: int, dev: int, fn: int) -> PciDevice:
    b = Batch()
    words = [read_into(b, bus, dev, fn, off) for off in range(0, 0x40, 4)]
    r = link.execute(b)
    w = [r[i] for i in words]
    header_type = w[3] >> 16 & 0xFF
    nbars = {0: 6, 1: 2}.get(header_type & 0x7F, 0)
    return PciDevice(
        bus=bus,
        dev=dev,
        fn=fn,
        vendor=w[0] & 0xFFFF,
        device=w[0] >> 16,
        class_code=w[2] >> 8,
        revision=w[2] & 0xFF,
        header_type=header_type,
        irq_line=w[15] & 0xFF,
        irq_pin=w[15] >> 8 & 0xFF,
        bars=_size_bars(link, bus, dev, fn, w, nbars),
    )


def _size_bars(link: Link, bus: int, dev: int, fn: int, w: list[int], nbars: int) -> list[Bar]:
    """Size every BAR in one batch: decoding off, write ones, read back, restore."""
    if nbars == 0:
        return []
    command = w[1] & 0xFFFF
    b = Batch()
    write_into(b, bus, dev, fn, 0x04, command & ~0x3, 2)
    probes = []
    for i in range(nbars):
        off = 0x10 + 4 * i
        write_into(b, bus, dev, fn, off, 0xFFFFFFFF)
        probes.append(read_into(b, bus, dev, fn, off))
        write_into(b, bus, dev, fn, off, w[4 + i])
    write_into(b, bus, dev, fn, 0x04, command, 2)
    r = link.execute(b)
    bars = []
    skip = False
    for i in range(nbars):
        if skip:  # upper half of a 64-bit BAR
            skip = False
            continue
        orig, probe = w[4 + i], r[probes[i]]
        if probe == 0:
            continue
        if orig & 1:
            size = (~(probe & 0xFFFFFFFC) & 0xFFFF) + 1
            bars.append(Bar(i, "io", orig & 0xFFFFFFFC, size))
        else:
            is64 = (orig >> 1 & 3) == 2
            skip = is64
            size = (~(probe & 0xFFFFFFF0) & 0xFFFFFFFF) + 1
            address = orig & 0xFFFFFFF0
            if is64 and i + 1 < nbars:
                address |= w[5 + i] << 32
            bars.append(Bar(i, "mem", address, size, bool(orig & 8), is64))
    return bars
