"""e1000: Intel PRO/1000 cards (QEMU's e1000, an 82540EM, and its 82544/82545 variants).

``service up hwl.drivers.e1000 -args "instance=0"`` (system.conf entry ``e1000``; docs/network.md).

Registers through MMIO only (BAR0, 32-bit accesses: QEMU's I/O BAR is a stub).
Both descriptor rings and their packet buffers live in two DMA buffers of the
driver's, mapped into it, so a frame costs no kernel call of its own:

- SEND: the frames are copied into free transmit buffers and their descriptors
  written in memory (EOP|IFCS|RS), then TDT is written: by the stub, through a
  *watched doorbell* (hwl.proto.vdevio.WATCH) on a word after the transmit
  buffers that holds the new tail, so a SEND makes no kernel call; when the stub
  may be halted, or the kernel refused the watch, by one *posted* kernel call.
  Either way the driver answers at once while QEMU transmits during the TDT
  write, so the next
  SEND is prepared while the card sends this one. A buffer is free again once
  the card wrote DD into its descriptor (RS asks for that), read from memory;
  with none free the driver reads TDH, a call that runs after its posted writes.
- Each interrupt: one call reads ICR (which acknowledges the card) and re-enables
  the line. Received frames are taken from the ring in memory (RCTL.SECRC: the
  length has no FCS); one call gives the buffers back with an RDT write.
- The link is used as it is (CTRL.SLU); the PHY is never touched, since an
  autonegotiation restart takes QEMU's link down for 500 ms. LSC updates it.

Restart: QEMU ignores CTRL.RST, and any RCTL write holds reception for 1 s. So a
restarted driver first adopts the rings its previous incarnation left (the
kernel keeps tagged DMA buffers for the label and turned bus mastering off at the
death): if RDBAL/TDBAL still point at them and the receiver is on, it takes the
ring positions from the card, turns bus mastering back on and writes no RCTL.
Received frames the dead driver took but never gave back (killed between taking
them and its RDT write) are given back at once (rx_resume).
Otherwise it re-initialises every register itself (fresh start, ~1 s until the
first frame); either way it watches its tail word anew. Live update: the new
version takes the rings, positions and IRQ hook from the saved state and touches
no hardware; the watched doorbell is the endpoint's and goes on as it is.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import Sequence

from hwl.driver import netdriver, nic
from hwl.frames import scatter
from hwl.ipc import codec
from hwl.ipc.client import Connection, IpcError
from hwl.ipc.kcalls import DmaHandle
from hwl.link.batch import Batch
from hwl.proto import ndev
from hwl.proto.ndev import Frames

log = logging.getLogger("e1000")

PCI_IDS = {(0x8086, 0x100E), (0x8086, 0x100F), (0x8086, 0x100C)}

CTRL, STATUS, ICR, ITR, IMS, IMC = 0x0000, 0x0008, 0x00C0, 0x00C4, 0x00D0, 0x00D8
RCTL, TCTL, TIPG = 0x0100, 0x0400, 0x0410
RDBAL, RDBAH, RDLEN, RDH, RDT = 0x2800, 0x2804, 0x2808, 0x2810, 0x2818
TDBAL, TDBAH, TDLEN, TDH, TDT = 0x3800, 0x3804, 0x3808, 0x3810, 0x3818
MTA, RAL0, RAH0 = 0x5200, 0x5400, 0x5404

CTRL_ASDE, CTRL_SLU = 0x20, 0x40
STATUS_LU = 0x02
ICR_TXDW, ICR_LSC, ICR_RXDMT0, ICR_RXO, ICR_RXT0 = 0x01, 0x04, 0x10, 0x40, 0x80
RCTL_EN, RCTL_UPE, RCTL_MPE, RCTL_BAM, RCTL_SECRC = 0x02, 0x08, 0x10, 0x8000, 0x04000000
TCTL_EN, TCTL_PSP = 0x02, 0x08
TCTL_CT, TCTL_COLD = 0x10 << 4, 0x40 << 12
TIPG_DEFAULT = 10 | 10 << 10 | 10 << 20
IMS_BITS = ICR_RXT0 | ICR_RXO | ICR_RXDMT0 | ICR_LSC

TX_CMD = 0x01 | 0x02 | 0x08  # EOP | IFCS | RS
DD, EOP = 0x01, 0x02
RING = 256  # descriptors per ring (a multiple of 8: RDLEN is masked to 128 bytes);
# room for two SENDs in flight, so the next is written while the card sends one
DESC = 16
BUF = 2048
RING_BYTES = 4096  # the ring, then the buffers, in one DMA buffer
BELL_AT = RING_BYTES + RING * BUF  # then the watched doorbell's word (TDT) and sleep word
TX_BYTES = BELL_AT + 4096  # a whole page more: a mapped buffer ends on a page
TX_PER_CALL = ndev.MAX_FRAMES  # frames a SEND may offer (taken as far as the ring has room)
RX_DESC = struct.Struct("<QHHBBH")
TX_DESC_ADDR = struct.Struct("<Q")
TX_CMD_AT, TX_STATUS = 11, 12  # the command and status bytes' offsets (DD: sent)
RX_STATUS = 12  # a receive descriptor's status byte (DD: filled by the card)


class E1000(nic.NicDriverBase):
    def __init__(self, args: dict[str, str]) -> None:
        super().__init__(args)
        self.bar = 0
        self.rx_next = 0  # the next descriptor the card fills
        self.tdt = 0
        self.tx_clean = 0  # the oldest descriptor given to the card and not seen sent
        self.tx_ends: deque[int] = deque()  # each posted SEND's last descriptor
        self.tx_ready = False  # the descriptors' fixed fields written by this process
        self.rctl = RCTL_EN | RCTL_BAM | RCTL_SECRC
        self.link = False
        self.adopted = False
        # TDT as a watched doorbell on a tail word after the transmit buffers
        self.tdt_bell = nic.TxDoorbell("TDT", BELL_AT, self._tdt_write, value_from_word=True)

    # ------------------------------------------------------------------ init
    def start(self, conn: Connection) -> None:
        pci, card = nic.reserve(conn, PCI_IDS, self.instance, bus_master=False)
        self.bar = card.mem_base
        self.irq_hook = conn.irq_setpolicy(card.irq, 0, notify_id=0)
        kept = {buf.tag: buf for buf in conn.dma_adopt()}
        if not self._adopt(kept):
            self.rx = conn.dma_alloc(RING_BYTES + RING * BUF, tag="rx")
            self.tx = conn.dma_alloc(TX_BYTES, tag="tx")
            self.rxv, self.txv = conn.dma_map(self.rx), conn.dma_map(self.tx)
            self._reinit()
        # Only now may the card DMA: into the adopted rings, or the new ones;
        # then the old ones, which the card no longer points at, can go.
        nic.bus_master_on(pci, card.devind)
        for buf in kept.values():
            if buf not in (self.rx, self.tx):
                conn.dma_free(buf)
        self._watch_tdt(conn)
        conn.irq_enable(self.irq_hook)

    def _watch_tdt(self, conn: Connection) -> None:
        """TDT as a watched doorbell on the tail word at BELL_AT, which first gets
        the tail the card has (so that the next SEND's tail is a change); without
        it (all watches taken, or an adopted buffer of an older, smaller layout)
        SENDs make a posted call."""
        assert self.tx is not None
        txv = self.tx_view()
        if txv.nbytes < TX_BYTES:
            log.warning("TDT is not watched: the transmit buffer has no room for it")
            return
        txv[BELL_AT : BELL_AT + 4] = self.tdt.to_bytes(4, "little")
        self.tdt_bell.arm(conn, self.tx)

    def _tdt_write(self, tdt: int) -> Batch:
        b = Batch()
        b.mmio_write(self.bar + TDT, tdt)
        return b

    def init_reply(self) -> ndev.InitReply:
        return ndev.InitReply(hwaddr=self.mac, name=f"e1000#{self.instance}", link=self.link,
                              max_send=TX_PER_CALL)  # fmt: skip

    def _read(self, *regs: int) -> list[int]:
        b = Batch()
        at = [b.mmio_read(self.bar + r) for r in regs]
        values = self._vdevio(b)
        return [values[i] for i in at]

    def _adopt(self, kept: dict[str, DmaHandle]) -> bool:
        """Take over the rings of the previous incarnation, if the card still uses them."""
        rx, tx = kept.get("rx"), kept.get("tx")
        if rx is None or tx is None:
            return False
        rdbal, tdbal, rdlen, rctl, rdh, rdt, tdt, ral, rah, status = self._read(
            RDBAL, TDBAL, RDLEN, RCTL, RDH, RDT, TDT, RAL0, RAH0, STATUS
        )
        if rdbal != rx.phys or tdbal != tx.phys or rdlen != RING * DESC or not rctl & RCTL_EN:
            log.info("kept rings not in use by the card (RDBAL %#x, RCTL %#x): fresh start",
                     rdbal, rctl)  # fmt: skip
            return False
        self.rx, self.tx, self.rctl = rx, tx, rctl
        self.rxv, self.txv = self.rx_view(), self.tx_view()
        self.tdt = self.tx_clean = tdt % RING  # a dead driver's posted writes ran
        self.rx_next = rx_resume(self.rxv, rdt % RING, rdh % RING)
        self.mac = struct.pack("<IH", ral, rah & 0xFFFF)
        self.link = bool(status & STATUS_LU)
        b = Batch()
        b.mmio_write(self.bar + IMC, 0xFFFFFFFF)
        b.mmio_read(self.bar + ICR)
        b.mmio_write(self.bar + IMS, IMS_BITS)
        taken = (self.rx_next - rdt - 1) % RING
        if taken:  # the dead driver took these frames but never gave the buffers back
            b.mmio_write(self.bar + RDT, (self.rx_next - 1) % RING)
        self._vdevio(b)
        self.adopted = True
        log.info("adopted the rings (RDH %d, RDT %d, TDT %d, %d descriptors taken and not "
                 "given back): no RCTL write", rdh, rdt, tdt, taken)  # fmt: skip
        return True

    def _reinit(self) -> None:
        """Every register a driver relies on, in the order the card needs them."""
        assert self.rx is not None and self.tx is not None and self.rxv is not None
        rxv, bar = self.rxv, self.bar
        for i in range(RING):
            RX_DESC.pack_into(rxv, i * DESC, self.rx.phys + RING_BYTES + i * BUF, 0, 0, 0, 0, 0)
        assert self.txv is not None
        self.txv[: RING * DESC] = bytes(RING * DESC)
        self.tx_ready = False
        ctrl, ral, rah, status = self._read(CTRL, RAL0, RAH0, STATUS)
        self.mac = struct.pack("<IH", ral, rah & 0xFFFF)
        b = Batch()
        b.mmio_write(bar + IMC, 0xFFFFFFFF)
        b.mmio_write(bar + RCTL, 0)
        b.mmio_write(bar + TCTL, 0)
        b.mmio_read(bar + ICR)
        b.mmio_write(bar + CTRL, ctrl | CTRL_SLU | CTRL_ASDE)
        rings = {RDBAL: self.rx.phys, RDBAH: 0, RDLEN: RING * DESC, RDH: 0, RDT: RING - 1,
                 TDBAL: self.tx.phys, TDBAH: 0, TDLEN: RING * DESC, TDH: 0, TDT: 0,
                 TIPG: TIPG_DEFAULT}  # fmt: skip
        for reg, value in rings.items():
            b.mmio_write(bar + reg, value)
        for i in range(128):
            b.mmio_write(bar + MTA + 4 * i, 0)
        b.mmio_write(bar + RAL0, ral)
        b.mmio_write(bar + RAH0, rah | 1 << 31)
        b.mmio_write(bar + IMS, IMS_BITS)
        b.mmio_write(bar + RCTL, self.rctl)
        b.mmio_write(bar + TCTL, TCTL_EN | TCTL_PSP | TCTL_CT | TCTL_COLD)
        self._vdevio(b)
        self.rx_next, self.tdt, self.tx_clean = 0, 0, 0
        self.tx_ends.clear()
        self.link = bool(status & STATUS_LU)

    def take_saved(self, state: dict[str, codec.Value]) -> None:
        self.bar = int(state["bar"])  # type: ignore[arg-type]
        self.rx_next = int(state["rx_next"])  # type: ignore[arg-type]
        self.tdt = int(state["tdt"])  # type: ignore[arg-type]
        self.tx_clean = int(state.get("tx_clean", self.tdt))  # type: ignore[arg-type]
        self.rctl = int(state["rctl"])  # type: ignore[arg-type]
        self.link = bool(state["link"])
        self.tdt_bell.watched = state.get("watched") is True  # an older version saved none

    def saved(self) -> dict[str, codec.Value]:
        return {"bar": self.bar, "rx_next": self.rx_next, "tdt": self.tdt,
                "tx_clean": self.tx_clean, "rctl": self.rctl, "link": self.link,
                "watched": self.tdt_bell.watched}  # fmt: skip

    # ----------------------------------------------------------------- modes
    def set_mode(self, mode: int, mcast: tuple[bytes, ...]) -> None:
        rctl = RCTL_EN | RCTL_SECRC
        if mode & ndev.MODE_BCAST:
            rctl |= RCTL_BAM
        if mode & (ndev.MODE_MCAST_LIST | ndev.MODE_MCAST_ALL):
            rctl |= RCTL_MPE  # every multicast frame; the client filters
        if mode & ndev.MODE_PROMISC:
            rctl |= RCTL_UPE | RCTL_MPE
        if mode == ndev.MODE_DOWN:
            rctl = 0
        if rctl != self.rctl:  # an RCTL write holds reception for 1 s: only on a change
            b = Batch()
            b.mmio_write(self.bar + RCTL, rctl)
            self._vdevio(b)
            self.rctl = rctl

    def stop(self) -> None:
        b = Batch()
        b.mmio_write(self.bar + IMC, 0xFFFFFFFF)
        self._vdevio(b)

    # ------------------------------------------------------------------ send
    def send(self, frames: Sequence[bytes]) -> int:
        txv = self.tx_view()
        free = self._tx_free(txv)
        if not free:  # wait for the card: this read runs after the posted TDT writes
            (tdh,) = self._read(TDH)
            self.tx_clean, free = tdh, RING - 1 - (self.tdt - tdh) % RING
            self.tx_ends.clear()
            if not free:
                return 0  # the card is stuck: offered again after the next interrupt or tick
        if not self.tx_ready:
            self._tx_template(txv)
        first = self.tdt
        lens = scatter(txv, RING_BYTES, BUF, RING, first, Frames.of(frames)[:free], ndev.ETH_MIN)
        tdt = (first + len(lens)) % RING
        # each descriptor's length and status, in at most two strided writes per field
        halves = txv[:RING_BYTES].cast("H")  # x86: little-endian, as the card reads them
        head = min(len(lens), RING - first)
        for at, part in ((first, lens[:head]), (0, lens[head:])):
            if part:
                halves[at * 8 + 4 : (at + len(part)) * 8 : 8] = part
                txv[at * DESC + TX_STATUS : (at + len(part)) * DESC : DESC] = bytes(len(part))
        assert self.conn is not None
        self.tdt_bell.ring(self.conn, txv, tdt)
        self.tdt = tdt
        self.tx_ends.append((tdt - 1) % RING)
        return len(lens)

    def _tx_template(self, txv: memoryview) -> None:
        """What never changes in a transmit descriptor: its buffer's address and the
        command (EOP|IFCS|RS), the same values any incarnation writes."""
        assert self.tx is not None
        for i in range(RING):
            TX_DESC_ADDR.pack_into(txv, i * DESC, self.tx.phys + RING_BYTES + i * BUF)
            txv[i * DESC + TX_CMD_AT] = TX_CMD
        self.tx_ready = True

    def _tx_free(self, txv: memoryview) -> int:
        """Descriptors free for new frames, after taking back the SENDs the card
        sent (in order: DD on a SEND's last descriptor is all of it)."""
        ends, clean = self.tx_ends, self.tx_clean
        while ends and txv[ends[0] * DESC + TX_STATUS] & DD:
            clean = (ends.popleft() + 1) % RING
        self.tx_clean = clean
        return RING - 1 - (self.tdt - clean) % RING

    # --------------------------------------------------------------- receive
    def intr(self, mask: int) -> None:
        b = Batch()
        icr_at = b.mmio_read(self.bar + ICR)
        icr = self._vdevio(b, irq=True)[icr_at]
        if icr & ICR_RXO:
            netdriver.stats().iqdrop += 1
        if icr & ICR_LSC:
            (status,) = self._read(STATUS)
            self.link = bool(status & STATUS_LU)

    def get_link(self) -> bool:
        return self.link

    def recv(self, most: int) -> list[bytes]:
        rxv, rx = self.rx_view(), self.rx
        assert rx is not None
        out: list[bytes] = []
        i, last = self.rx_next, None
        while len(out) < most:
            _addr, length, _csum, status, errors, _sp = RX_DESC.unpack_from(rxv, i * DESC)
            if not status & DD:
                break
            at = RING_BYTES + i * BUF
            if errors or not status & EOP or length > ndev.ETH_MAX:
                netdriver.stats().ierror += 1
            else:
                out.append(bytes(rxv[at : at + length]))
            RX_DESC.pack_into(rxv, i * DESC, rx.phys + at, 0, 0, 0, 0, 0)
            last, i = i, (i + 1) % RING
        if last is not None:
            self.rx_next = i
            b = Batch()
            b.mmio_write(self.bar + RDT, last)
            try:
                self._vdevio(b)
            except IpcError as exc:
                log.warning("RDT write failed: %s", exc)
        return out


def rx_resume(rxv: memoryview, rdt: int, rdh: int) -> int:
    """The descriptor an adopting driver reads next.

    The card filled the descriptors after RDT up to RDH (not included). The dead
    driver took some of them in order, clearing each (DD off), and may have died
    before its RDT write gave them back: those are skipped, or reception would
    wait forever on a descriptor the card will not fill again."""
    i = (rdt + 1) % RING
    while i != rdh and not rxv[i * DESC + RX_STATUS] & DD:
        i = (i + 1) % RING
    return i


def main(argv: list[str]) -> int:
    return nic.run(E1000(nic.driver_args(argv)))
