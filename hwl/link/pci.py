"""PCI configuration space through ports 0xCF8/0xCFC (configuration mechanism #1).

Enumeration and BAR sizing run over :class:`ConfigAccess`, so the PCI server
(servers/pci/bus.py) scans with ``devio`` calls what the link scans with batches:
each :meth:`ConfigAccess.run` is one round trip to the stub.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

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
    sub_vendor: int | None = None  # subsystem ids: header type 0 only
    sub_device: int | None = None

    @property
    def bdf(self) -> str:
        return f"{self.bus:02x}:{self.dev:02x}.{self.fn}"

    @property
    def ids(self) -> str:
        return f"{self.vendor:04x}:{self.device:04x}"


@dataclass(frozen=True)
class Access:
    """One configuration read (``value`` None) or write."""

    bus: int
    dev: int
    fn: int
    offset: int
    width: int = 4
    value: int | None = None


class ConfigAccess(Protocol):
    """Configuration accesses, a list at a time: the link batches the list, the
    PCI server (which has devio, not vdevio) makes them one by one."""

    def run(self, accesses: Sequence[Access], then: Sequence[Access] = ()) -> list[int]:
        """Make ``accesses`` in order, then the writes ``then`` even if one of
        them failed; the values read, in order."""
        ...


class LinkConfig:
    """:class:`ConfigAccess` on the link: one run, one batch."""

    def __init__(self, link: Link) -> None:
        self.link = link

    def run(self, accesses: Sequence[Access], then: Sequence[Access] = ()) -> list[int]:
        b = Batch()
        reads = [_add(b, a) for a in accesses]
        for a in then:
            _add(b, a)
        r = self.link.execute(b)
        return [r[i] for i in reads if i is not None]


def _add(b: Batch, a: Access) -> int | None:
    if a.value is None:
        return read_into(b, a.bus, a.dev, a.fn, a.offset, a.width)
    write_into(b, a.bus, a.dev, a.fn, a.offset, a.value, a.width)
    return None


def scan(link: Link) -> list[PciDevice]:
    """Enumerate bus 0 and any buses behind PCI-to-PCI bridges."""
    return scan_config(LinkConfig(link))


def bar_count(header_type: int) -> int:
    """How many BARs a header of this type has."""
    return {0: 6, 1: 2}.get(header_type & 0x7F, 0)


def scan_config(cfg: ConfigAccess) -> list[PciDevice]:
    """Every function on bus 0 and behind bridges, in bus, device, function order.

    A bus takes at most four runs (ids, headers, and again for functions 1..7 of
    multi-function devices) and a function one more for its BARs; the accesses
    are only those a one-by-one scan needs, since each costs the server two calls.
    """
    found: list[PciDevice] = []
    seen: set[int] = set()
    pending = [0]
    while pending:
        bus = pending.pop(0)
        if bus in seen:
            continue
        seen.add(bus)
        headers = _headers(cfg, bus, [(dev, 0) for dev in range(32)])
        multi = [dev for (dev, _), w in headers.items() if w[3] >> 16 & 0x80]
        headers |= _headers(cfg, bus, [(dev, fn) for dev in multi for fn in range(1, 8)])
        for (dev, fn), w in sorted(headers.items()):
            d = _read_function(cfg, bus, dev, fn, w)
            found.append(d)
            secondary = w[6] >> 8 & 0xFF
            if d.header_type & 0x7F == 1 and secondary and secondary not in seen:
                pending.append(secondary)  # a bridge: the bus behind it
    return found


def _headers(
    cfg: ConfigAccess, bus: int, where: list[tuple[int, int]]
) -> dict[tuple[int, int], list[int]]:
    """The first 64 bytes of each (dev, fn) in ``where`` that is present."""
    if not where:
        return {}
    ids = cfg.run([Access(bus, dev, fn, 0, 2) for dev, fn in where])
    present = [key for key, vid in zip(where, ids, strict=True) if vid != 0xFFFF]
    if not present:
        return {}
    w = cfg.run([Access(bus, dev, fn, off) for dev, fn in present for off in range(0, 0x40, 4)])
    return {key: w[16 * i : 16 * i + 16] for i, key in enumerate(present)}


def _read_function(cfg: ConfigAccess, bus: int, dev: int, fn: int, w: list[int]) -> PciDevice:
    header_type = w[3] >> 16 & 0xFF
    normal = header_type & 0x7F == 0
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
        bars=_size_bars(cfg, bus, dev, fn, w, bar_count(header_type)),
        sub_vendor=w[11] & 0xFFFF if normal else None,
        sub_device=w[11] >> 16 if normal else None,
    )


def _size_bars(
    cfg: ConfigAccess, bus: int, dev: int, fn: int, w: list[int], nbars: int
) -> list[Bar]:
    """Size every BAR in one run: decoding off, write ones, read back, restore;
    the command register is restored even if an access fails."""
    if nbars == 0:
        return []
    command = w[1] & 0xFFFF
    accesses = [Access(bus, dev, fn, 0x04, 2, command & ~0x3)]
    for i in range(nbars):
        off = 0x10 + 4 * i
        accesses += [
            Access(bus, dev, fn, off, value=0xFFFFFFFF),
            Access(bus, dev, fn, off),
            Access(bus, dev, fn, off, value=w[4 + i]),
        ]
    probes = cfg.run(accesses, then=[Access(bus, dev, fn, 0x04, 2, command)])
    bars = []
    skip = False
    for i in range(nbars):
        if skip:  # upper half of a 64-bit BAR
            skip = False
            continue
        orig, probe = w[4 + i], probes[i]
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
