"""The PCI bus as the server sees it: configuration space through kernel calls,
and the devices found on it (docs/pci.md, "Enumeration").

Configuration mechanism #1, each access two ``devio`` calls (the address to 0xCF8,
the data at 0xCFC..0xCFF); only the PCI server has those ports, so a pair cannot
be torn. :func:`scan` is ``hwl.link.pci.scan_config`` over :class:`ConfigSpace`
(MINIX's ``probe_bus``); this module adds what a holder is granted
(:meth:`Device.io_ranges`, :meth:`Device.mem_ranges`, :meth:`Device.irqs`): every
BAR with an address below 4 GiB, the interrupt line unless 0 or 0xFF, and for an
IDE controller's compatibility-mode channels their legacy ports and IRQs instead
of BARs 0-3 (MINIX's ``record_bars_normal``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from hwl.hw import ata
from hwl.ipc import codec
from hwl.link import pci
from hwl.link.pci import CONFIG_ADDRESS, CONFIG_DATA, Access, config_address

log = logging.getLogger(__name__)

CONFIG_SIZE = 256

PCI_BAR = 0x10  # the first base address register
HT_NORMAL = 0  # header type of an ordinary function

# Class codes.
CLASS_MASS_STORAGE = 0x01
SUBCLASS_IDE = 0x01
IDE_PRI_NATIVE = 0x01  # programming interface: primary channel in native mode
IDE_SEC_NATIVE = 0x04

#: The ports and IRQ of each IDE channel in compatibility mode:
#: (BARs it replaces, command block, control port, IRQ).
IDE_LEGACY = tuple(
    (bars, (ch.cmd, ata.COMMAND_BLOCK_PORTS), (ch.ctl, 1), ch.irq)
    for bars, ch in (((0, 1), ata.PRIMARY), ((2, 3), ata.SECONDARY))
)

NO_IRQ = (0, 0xFF)  # interrupt-line values that mean "no IRQ assigned"


class PortIO(Protocol):
    """What configuration access needs: the kernel's devio calls (a connection)."""

    def devio_in(self, port: int, width: int = 1) -> int: ...

    def devio_out(self, port: int, value: int, width: int = 1) -> None: ...


def check_access(offset: int, width: int) -> None:
    """An access of ``width`` bytes at ``offset`` must be aligned and inside 256 bytes."""
    if width not in (1, 2, 4):
        raise ValueError(f"width {width} is not 1, 2 or 4")
    if not 0 <= offset <= CONFIG_SIZE - width:
        raise ValueError(f"offset {offset:#x} is outside the 256-byte configuration space")
    if offset % width:
        raise ValueError(f"offset {offset:#x} is not aligned to the width {width}")


class ConfigSpace:
    """Configuration reads and writes over port I/O (mechanism #1)."""

    def __init__(self, io: PortIO) -> None:
        self.io = io

    def read(self, bus: int, dev: int, func: int, offset: int, width: int = 4) -> int:
        check_access(offset, width)
        self.io.devio_out(CONFIG_ADDRESS, config_address(bus, dev, func, offset), 4)
        return self.io.devio_in(CONFIG_DATA + (offset & 3), width)

    def write(self, bus: int, dev: int, func: int, offset: int, value: int, width: int = 4) -> None:
        check_access(offset, width)
        if not 0 <= value < 1 << (8 * width):
            raise ValueError(f"value {value:#x} does not fit in {width} bytes")
        self.io.devio_out(CONFIG_ADDRESS, config_address(bus, dev, func, offset), 4)
        self.io.devio_out(CONFIG_DATA + (offset & 3), value, width)

    def run(self, accesses: Sequence[Access], then: Sequence[Access] = ()) -> list[int]:
        """``hwl.link.pci.ConfigAccess`` one access at a time: no vdevio privilege."""
        try:
            return [v for v in map(self._access, accesses) if v is not None]
        finally:
            for a in then:
                self._access(a)

    def _access(self, a: Access) -> int | None:
        if a.value is None:
            return self.read(a.bus, a.dev, a.fn, a.offset, a.width)
        self.write(a.bus, a.dev, a.fn, a.offset, a.value, a.width)
        return None


@dataclass(frozen=True)
class Bar:
    """One base address register; ``index`` 0..5, its register is ``0x10 + 4 * index``."""

    index: int
    is_io: bool
    base: int
    size: int
    prefetchable: bool = False
    is64: bool = False

    @property
    def reg(self) -> int:
        return PCI_BAR + 4 * self.index

    @property
    def incomplete(self) -> bool:
        """No address assigned (MINIX's PBF_INCOMPLETE): nothing to grant."""
        return self.base == 0

    def to_fields(self) -> dict[str, codec.Value]:
        return {"index": self.index, "reg": self.reg, "is_io": self.is_io, "base": self.base,
                "size": self.size, "prefetchable": self.prefetchable,
                "is64": self.is64}  # fmt: skip

    @classmethod
    def from_fields(cls, f: dict[str, codec.Value]) -> Bar:
        return cls(_int(f["index"]), bool(f["is_io"]), _int(f["base"]), _int(f["size"]),
                   bool(f.get("prefetchable")), bool(f.get("is64")))  # fmt: skip


@dataclass(frozen=True)
class Device:
    """One function found on the bus; ``devind`` is its index in the server's table."""

    devind: int
    bus: int
    dev: int
    func: int
    vid: int
    did: int
    base_class: int
    sub_class: int
    interface: int
    revision: int
    header_type: int
    sub_vid: int | None
    sub_did: int | None
    irq_line: int  # the interrupt-line register as read
    irq_pin: int  # 0: none, 1..4: INTA..INTD
    bars: tuple[Bar, ...] = ()
    legacy_io: tuple[tuple[int, int], ...] = ()  # (base, length): compatibility-mode IDE
    legacy_irqs: tuple[int, ...] = ()

    @property
    def bdf(self) -> str:
        return f"{self.bus:02x}:{self.dev:02x}.{self.func}"

    @property
    def ids(self) -> str:
        return f"{self.vid:04x}:{self.did:04x}"

    @property
    def slot_name(self) -> str:
        """MINIX's ``pci_slot_name``: domain.bus.device.function, in decimal."""
        return f"0.{self.bus}.{self.dev}.{self.func}"

    @property
    def irq(self) -> int | None:
        """The IRQ line assigned through the interrupt-line register, if any."""
        return None if self.irq_line in NO_IRQ else self.irq_line

    def bar_at(self, reg: int) -> Bar | None:
        for bar in self.bars:
            if bar.reg == reg:
                return bar
        return None

    def io_ranges(self) -> list[tuple[int, int]]:
        """The port ranges a holder gets: I/O BARs with an address, legacy ports."""
        ranges = [(b.base, b.size) for b in self.bars if b.is_io and not b.incomplete]
        return [r for r in ranges if r[0] + r[1] <= 0x10000] + list(self.legacy_io)

    def mem_ranges(self) -> list[tuple[int, int]]:
        """The guest-physical ranges a holder gets: memory BARs below 4 GiB."""
        ranges = [(b.base, b.size) for b in self.bars if not b.is_io and not b.incomplete]
        return [r for r in ranges if r[0] + r[1] <= 1 << 32]

    def irqs(self) -> list[int]:
        lines = [] if self.irq is None or self.irq > 15 else [self.irq]
        return sorted(set(lines) | set(self.legacy_irqs))

    def to_fields(self) -> dict[str, codec.Value]:
        return {
            "devind": self.devind,
            "bus": self.bus,
            "dev": self.dev,
            "func": self.func,
            "vid": self.vid,
            "did": self.did,
            "base_class": self.base_class,
            "sub_class": self.sub_class,
            "interface": self.interface,
            "revision": self.revision,
            "header_type": self.header_type,
            "sub_vid": self.sub_vid,
            "sub_did": self.sub_did,
            "irq_line": self.irq_line,
            "irq_pin": self.irq_pin,
            "bars": [b.to_fields() for b in self.bars],
            "legacy_io": [[base, length] for base, length in self.legacy_io],
            "legacy_irqs": list(self.legacy_irqs),
        }

    @classmethod
    def from_fields(cls, f: dict[str, codec.Value]) -> Device:
        bars, legacy_io, legacy_irqs = f["bars"], f["legacy_io"], f["legacy_irqs"]
        if not (isinstance(bars, list) and isinstance(legacy_io, list)):
            raise ValueError("bars and legacy_io must be lists")
        if not isinstance(legacy_irqs, list):
            raise ValueError("legacy_irqs must be a list")
        sub_vid, sub_did = f.get("sub_vid"), f.get("sub_did")
        return cls(
            devind=_int(f["devind"]),
            bus=_int(f["bus"]),
            dev=_int(f["dev"]),
            func=_int(f["func"]),
            vid=_int(f["vid"]),
            did=_int(f["did"]),
            base_class=_int(f["base_class"]),
            sub_class=_int(f["sub_class"]),
            interface=_int(f["interface"]),
            revision=_int(f["revision"]),
            header_type=_int(f["header_type"]),
            sub_vid=None if sub_vid is None else _int(sub_vid),
            sub_did=None if sub_did is None else _int(sub_did),
            irq_line=_int(f["irq_line"]),
            irq_pin=_int(f["irq_pin"]),
            bars=tuple(Bar.from_fields(b) for b in bars if isinstance(b, dict)),
            legacy_io=tuple(
                (_int(r[0]), _int(r[1])) for r in legacy_io if isinstance(r, list) and len(r) == 2
            ),
            legacy_irqs=tuple(_int(i) for i in legacy_irqs),
        )


def _int(value: codec.Value) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{value!r} is not an integer")
    return value


# ------------------------------------------------------------------ scanning


def scan(io: PortIO) -> list[Device]:
    """Enumerate the bus; devind is the position in the returned list (bus order,
    then device, then function)."""
    devices: list[Device] = []
    for found in pci.scan_config(ConfigSpace(io)):
        device = _device(len(devices), found)
        devices.append(device)
        log.info("%s", describe(device))
    return devices


def describe(d: Device) -> str:
    """One log line: where, ids, class, IRQ, BARs and legacy ranges."""
    text = f"{d.bdf} {d.ids} class {d.base_class:02x}/{d.sub_class:02x}/{d.interface:02x}"
    text += f" irq {' '.join(map(str, d.irqs())) or '-'}"
    for b in d.bars:
        text += f" bar{b.index}={'io' if b.is_io else 'mem'}:{b.base:#x}+{b.size:#x}"
    if d.legacy_io:
        text += " legacy io " + " ".join(f"{base:#x}+{n}" for base, n in d.legacy_io)
    return text


def _device(devind: int, d: pci.PciDevice) -> Device:
    """The server's view: no BAR it cannot grant, legacy ranges for IDE channels
    in compatibility mode."""
    kind = d.header_type & 0x7F
    cls = d.class_code
    base_class, sub_class, interface = cls >> 16, cls >> 8 & 0xFF, cls & 0xFF
    bars = [
        Bar(b.index, b.kind == "io", b.address, b.size, b.prefetchable, b.is64)
        for b in d.bars
        if _usable(d, b)
    ]
    legacy_io: list[tuple[int, int]] = []
    legacy_irqs: list[int] = []
    if kind == HT_NORMAL and (base_class, sub_class) == (CLASS_MASS_STORAGE, SUBCLASS_IDE):
        for native_bit, (replaced, command, control, irq) in zip(
            (IDE_PRI_NATIVE, IDE_SEC_NATIVE), IDE_LEGACY, strict=True
        ):
            if interface & native_bit:
                continue
            bars = [b for b in bars if b.index not in replaced]
            legacy_io += [command, control]
            legacy_irqs.append(irq)
    return Device(
        devind=devind,
        bus=d.bus,
        dev=d.dev,
        func=d.fn,
        vid=d.vendor,
        did=d.device,
        base_class=base_class,
        sub_class=sub_class,
        interface=interface,
        revision=d.revision,
        header_type=d.header_type,
        sub_vid=d.sub_vendor,
        sub_did=d.sub_device,
        irq_line=d.irq_line,
        irq_pin=d.irq_pin,
        bars=tuple(bars),
        legacy_io=tuple(legacy_io),
        legacy_irqs=tuple(legacy_irqs),
    )


def _usable(d: pci.PciDevice, b: pci.Bar) -> bool:
    """A 64-bit BAR is granted only if it is whole and below 4 GiB."""
    if not b.is64:
        return True
    if b.index + 1 >= pci.bar_count(d.header_type):
        log.warning("%s BAR %d: 64 bits past the BAR area", d.bdf, b.index)
        return False
    if b.address >> 32:
        log.warning("%s BAR %d: above 4 GiB (%#x), not usable here", d.bdf, b.index, b.address)
        return False
    return True


# -------------------------------------------------------------------- names

#: Names for ``dev_name`` (MINIX's pci_findproduct): the devices hwl's machines have.
DEVICE_NAMES: dict[tuple[int, int], str] = {
    (0x8086, 0x1237): "Intel 82441FX (440FX) PCI and memory controller",
    (0x8086, 0x7000): "Intel 82371SB (PIIX3) PCI-ISA bridge",
    (0x8086, 0x7010): "Intel 82371SB (PIIX3) IDE controller",
    (0x8086, 0x7020): "Intel 82371SB (PIIX3) USB controller",
    (0x8086, 0x7113): "Intel 82371AB/EB/MB (PIIX4) power management",
    (0x8086, 0x100E): "Intel 82540EM Gigabit Ethernet (PRO/1000 MT)",
    (0x8086, 0x100F): "Intel 82545EM Gigabit Ethernet (PRO/1000 MT)",
    (0x8086, 0x100C): "Intel 82544GC Gigabit Ethernet (PRO/1000 T)",
    (0x10EC, 0x8029): "Realtek RTL8029 (NE2000 PCI)",
    (0x10EC, 0x8139): "Realtek RTL8139 Fast Ethernet",
    (0x1234, 0x1111): "QEMU standard VGA",
    (0x1AF4, 0x1000): "Red Hat virtio network device",
    (0x1AF4, 0x1001): "Red Hat virtio block device",
}

VENDOR_NAMES: dict[int, str] = {
    0x8086: "Intel",
    0x10EC: "Realtek",
    0x1234: "QEMU",
    0x1AF4: "Red Hat",
    0x1B36: "Red Hat",
}


def device_name(vid: int, did: int) -> str | None:
    """A name for the device, else its vendor's name and the ids, else None."""
    name = DEVICE_NAMES.get((vid, did))
    if name is not None:
        return name
    vendor = VENDOR_NAMES.get(vid)
    return None if vendor is None else f"{vendor} device {vid:04x}:{did:04x}"
