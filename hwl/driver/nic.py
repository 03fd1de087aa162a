"""What every PCI NIC driver does before it moves a frame: find its card, reserve it,
hook its interrupt; the Ethernet facts they share; and their common base
(:class:`NicDriverBase`: init, live-update state, DMA buffer views).

``instance`` n takes the n-th visible device with one of the driver's PCI ids,
in bus order, as MINIX's drivers do with their ``instance`` argument.

See docs/network.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass

from hwl import frames
from hwl.driver import netdriver
from hwl.ipc import codec
from hwl.ipc.client import Connection, IpcError
from hwl.ipc.kcalls import DmaHandle
from hwl.link import abi
from hwl.link.batch import Batch
from hwl.proto import ndev
from hwl.proto.errno import Errno
from hwl.system import sef
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


def saved_dma(buf: DmaHandle) -> list[codec.Value]:
    """A DMA buffer as a live update's saved state holds it (:func:`restored_dma`)."""
    return [buf.id, buf.phys, buf.size, buf.tag]


def restored_dma(value: codec.Value) -> DmaHandle:
    """The DMA buffer :func:`saved_dma` saved (a state without the tag: untagged)."""
    if not isinstance(value, list) or not 3 <= len(value) <= 4:
        raise ValueError(f"a saved DMA buffer is [id, phys, size, tag], not {value!r}")
    return DmaHandle(*value)  # type: ignore[arg-type]


class NicDriverBase:
    """What the NIC drivers keep alike: ``instance=n`` and the fields every driver
    has; ``init``'s two ways in (:meth:`start` on the card, or a live update's saved
    state, which touches no hardware); the saved state's common part (the IRQ hook,
    the MAC, the ``rx`` and ``tx`` DMA buffers); those buffers mapped at their first
    use (a live update's new version holds them only once RS swapped the endpoints,
    after its init); and a batch on the card with the IRQ hook re-enabled after it
    if asked. A driver supplies :meth:`start`, :meth:`init_reply`, :meth:`saved`
    and :meth:`take_saved`, and the netdriver callbacks it has."""

    def __init__(self, args: dict[str, str]) -> None:
        self.instance = int(args.get("instance", "0"))
        self.conn: Connection | None = None
        self.irq_hook = -1
        self.mac = b""
        self.rx: DmaHandle | None = None
        self.tx: DmaHandle | None = None
        self.rxv: memoryview | None = None
        self.txv: memoryview | None = None
        self.restored: dict[str, codec.Value] | None = None

    # the driver's part
    def start(self, conn: Connection) -> None:
        """A fresh start: reserve the card, allocate the buffers, start the card."""
        raise NotImplementedError

    def init_reply(self) -> ndev.InitReply:
        raise NotImplementedError

    def saved(self) -> dict[str, codec.Value]:
        """The driver's own part of the saved state."""
        raise NotImplementedError

    def take_saved(self, state: dict[str, codec.Value]) -> None:
        """Take the driver's own part of the saved state (:meth:`saved`)."""
        raise NotImplementedError

    # netdriver's callbacks
    def init(self, instance: int) -> ndev.InitReply:
        conn = self.conn = sef.connection()
        if self.restored is None:
            self.start(conn)
        else:
            state = self.restored
            self.irq_hook = int(state["hook"])  # type: ignore[arg-type]
            self.mac = bytes(state["mac"])  # type: ignore[arg-type]
            self.rx, self.tx = restored_dma(state["rx"]), restored_dma(state["tx"])
            self.take_saved(state)
        return self.init_reply()

    def state_save(self) -> codec.Value:
        assert self.rx is not None and self.tx is not None
        rx, tx = saved_dma(self.rx), saved_dma(self.tx)
        return {"hook": self.irq_hook, "mac": self.mac, "rx": rx, "tx": tx, **self.saved()}

    def state_restore(self, state: codec.Value) -> None:
        if isinstance(state, dict):
            self.restored = state

    # helpers
    def rx_view(self) -> memoryview:
        """The receive buffer, mapped at its first use."""
        if self.rxv is None:
            assert self.conn is not None and self.rx is not None
            self.rxv = self.conn.dma_map(self.rx)
        return self.rxv

    def tx_view(self) -> memoryview:
        """The transmit buffer, mapped at its first use."""
        if self.txv is None:
            assert self.conn is not None and self.tx is not None
            self.txv = self.conn.dma_map(self.tx)
        return self.txv

    def _vdevio(self, b: Batch, irq: bool = False) -> list[int]:
        assert self.conn is not None
        return self.conn.vdevio(b, irq_enable=self.irq_hook if irq else None)


class TxDoorbell:
    """A card's transmit doorbell (rtl8139's TxPoll, e1000's TDT) as a watched
    doorbell (hwl.proto.vdevio.WATCH): the stub makes the register write whenever
    the word at ``at`` of the transmit buffer changes (the sleep word follows it),
    so a SEND makes no kernel call. ``write`` gives the register write of a value;
    ``value_from_word``: the stub writes the word's value (a tail), else
    ``write(0)``'s own. While the stub may be halted a SEND wakes it with a posted
    read of the register, and the stub makes the write from the word before it:
    a posted write of a tail could run after the stub wrote a newer one and move
    the tail back (e1000 then sends the whole ring again, zero-length descriptors
    included, which stops QEMU's tap backend). Without a watch (the kernel refused
    or ended it) each SEND makes the posted write itself."""

    def __init__(
        self, name: str, at: int, write: Callable[[int], Batch], value_from_word: bool
    ) -> None:
        self.name, self.at, self.write = name, at, write
        self.value_from_word = value_from_word
        self.watched = False  # the driver's saved state carries it across a live update
        self._bell: frames.Bell | None = None  # the words, once the buffer is mapped
        self._wake: Batch | None = None  # the register's read, once its address is known

    def arm(self, conn: Connection, buf: DmaHandle) -> None:
        try:
            conn.vdevio_watch(buf.id, self.at, self.at + 4, self.write(0), self.value_from_word)
        except IpcError as exc:
            log.warning("%s is not watched (%s): each SEND makes a kernel call", self.name, exc)
            return
        self.watched = True

    def value(self, view: memoryview) -> int:
        """The word as it is (a live update's new version goes on from it)."""
        return self._words(view).value

    def ring(self, conn: Connection, view: memoryview, value: int) -> None:
        """Store ``value`` for the stub, and wake it or make the write through the
        kernel when the sleep word asks for it."""
        if self.watched:
            sleep = self._words(view).ring(value)
            if sleep == 0:
                return
            if sleep != abi.WATCH_ENDED:
                if self._wake is None:
                    self._wake = _read_of(self.write(0))
                conn.vdevio_posted(self._wake)
                return
            self.watched = False
            log.warning("%s is no longer watched (the kernel ended the watch): each SEND "
                        "makes a kernel call", self.name)  # fmt: skip
        conn.vdevio_posted(self.write(value))

    def _words(self, view: memoryview) -> frames.Bell:
        if self._bell is None:
            self._bell = frames.Bell(view, self.at, self.at + 4)
        return self._bell


def _read_of(write: Batch) -> Batch:
    """A read of the register that ``write``'s one op writes (no side effect on
    a doorbell register): a slot that only wakes the stub."""
    ((code, width, port, addr, _value, _),) = write.ops
    wake = Batch()
    if code == abi.OP_OUT:
        wake.in_(port, width)
    elif code == abi.OP_MMIO_WR:
        wake.mmio_read(addr, width)
    else:
        raise ValueError(f"a doorbell is one OUT or MMIO_WR, not op {code}")
    return wake


def run(driver: NicDriverBase) -> int:
    """A NIC driver's whole life (:func:`hwl.driver.netdriver.run`); its exit status.
    The C copy of frames is loaded first (built if new), not at the first SEND."""
    frames.ready()
    netdriver.run(netdriver.NetDriver.of(driver), driver.instance)
    return 0
