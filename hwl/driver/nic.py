"""What every PCI NIC driver does before it moves a frame: find its card, reserve it,
hook its interrupt; and the Ethernet facts they share.

``instance`` n takes the n-th visible device with one of the driver's PCI ids,
in bus order, as MINIX's drivers do with their ``instance`` argument.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass

from hwl.ipc import codec
from hwl.ipc.client import Connection
from hwl.link.batch import Batch
from hwl.proto import ndev
from hwl.proto.errno import Errno
from hwl.system.pci import Granted, Pci, PciError

log = logging.getLogger(__name__)

PCI_COMMAND = 0x04
PCI_COMMAND_IO = 0x1
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_BUS_MASTER = 0x4
PCI_COMMAND_INTX_DISABLE = 0x400  # set by the kernel at a dead driver's death
BROADCAST = b"\xff" * 6


@dataclass(frozen=True)
class NicCard:
    """A reserved card: where its registers are and which IRQ line it raises."""

    devind: int
    vid: int
    did: int
    io: tuple[tuple[int, int], ...]
    mem: tuple[tuple[int, int], ...]
    irq: int
    slot: str

    @property
    def io_base(self) -> int:
        if not self.io:
            raise PciError(Errno.ENXIO, "reserve", f"{self.vid:04x}:{self.did:04x} has no I/O BAR")
        return self.io[0][0]

    @property
    def mem_base(self) -> int:
        if not self.mem:
            raise PciError(
                Errno.ENXIO, "reserve", f"{self.vid:04x}:{self.did:04x} has no memory BAR"
            )
        return self.mem[0][0]


def reserve(
    conn: Connection, ids: Collection[tuple[int, int]], instance: int, bus_master: bool
) -> tuple[Pci, NicCard]:
    """Reserve the ``instance``-th visible card with one of ``ids``; turn on its
    decoders (and bus mastering, if asked: a card whose old rings cannot be in use).
    ENODEV if there is none."""
    pci = Pci.find(conn)
    seen = 0
    for devind, vid, did in pci.devices():
        if (vid, did) not in ids:
            continue
        if seen < instance:
            seen += 1
            continue
        granted: Granted = pci.reserve(devind)
        if not granted.irq:
            raise PciError(Errno.ENXIO, "reserve", f"{vid:04x}:{did:04x} has no IRQ line")
        # decoders on; INTx back on (the kernel masked it at a dead driver's death)
        _command_on(pci, devind, PCI_COMMAND_IO | PCI_COMMAND_MEMORY, PCI_COMMAND_INTX_DISABLE)
        if bus_master:
            bus_master_on(pci, devind)
        card = NicCard(devind, vid, did, granted.io, granted.mem, granted.irq[0],
                       pci.slot_name(devind))  # fmt: skip
        log.info("card %04x:%04x at %s: io %s mem %s irq %d", vid, did, card.slot,
                 [f"{b:#x}" for b, _ in card.io], [f"{b:#x}" for b, _ in card.mem],
                 card.irq)  # fmt: skip
        return pci, card
    wanted = ", ".join(f"{v:04x}:{d:04x}" for v, d in sorted(ids))
    raise PciError(Errno.ENODEV, "reserve", f"no card {wanted} with instance {instance} visible")


def bus_master_on(pci: Pci, devind: int) -> None:
    """Let the card DMA again: after it forgot the rings of a dead incarnation (the
    kernel turned bus mastering off at that death)."""
    _command_on(pci, devind, PCI_COMMAND_BUS_MASTER)


def _command_on(pci: Pci, devind: int, bits: int, clear: int = 0) -> None:
    command = pci.attr_r16(devind, PCI_COMMAND)
    wanted = (command | bits) & ~clear
    if wanted != command:
        pci.attr_w16(devind, PCI_COMMAND, wanted)


def pad(frame: bytes) -> bytes:
    """A frame as it goes on the wire: at least 60 bytes (the FCS is the card's)."""
    return frame if len(frame) >= ndev.ETH_MIN else frame + bytes(ndev.ETH_MIN - len(frame))


def driver_args(argv: list[str]) -> dict[str, str]:
    """MINIX-style ``key=value`` driver arguments."""
    args = {}
    for word in argv:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise SystemExit(f"argument {word!r} is not key=value")
        args[key] = value
    return args


class NicDriverBase:
    """What the NIC drivers keep alike: a batch on the card with the IRQ hook
    re-enabled after it if asked, and a live update's saved state taken for the
    next init (a driver's ``init`` takes over from ``restored`` when it is set)."""

    conn: Connection | None
    irq_hook: int
    restored: dict[str, codec.Value] | None

    def state_restore(self, state: codec.Value) -> None:
        if isinstance(state, dict):
            self.restored = state

    def _vdevio(self, b: Batch, irq: bool = False) -> list[int]:
        assert self.conn is not None
        return self.conn.vdevio(b, irq_enable=self.irq_hook if irq else None)
