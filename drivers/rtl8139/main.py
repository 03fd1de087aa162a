"""rtl8139: Realtek 8139 cards (QEMU's rtl8139, an 8139C+ at PCI revision 0x20;
docs/network.md).

``service up hwl.drivers.rtl8139 -args "instance=0"`` (system.conf entry ``rtl8139``);
``mode=classic`` selects the classic ring-buffer mode (MINIX's driver), the
default is C+ descriptor mode (Linux's 8139cp).

Registers through the I/O BAR. Rings and packet buffers live in DMA buffers of
the driver's, mapped into it, so a frame costs no kernel call of its own. Every
start resets the card (CR.RST): C+ mode latches until a reset, and a classic
driver may follow a C+ one.

C+ mode:
- SEND: the frames are copied into free transmit buffers, their descriptors
  written in memory (OWN|FS|LS, EOR on the ring's last), then TxPoll's
  normal-priority bit is written: by the stub, through a *watched doorbell*
  (hwl.proto.vdevio.WATCH) on a counter after the transmit buffers, which the
  driver increments, so a SEND makes no kernel call; when the stub may be halted
  (its sleep word says so), or the kernel refused the watch, by one *posted*
  kernel call. Either way the driver answers at once while QEMU sends every
  owned descriptor during that write. A descriptor is
  free again once the card cleared its OWN, read from memory; with none free
  the driver makes a call that runs after its posted writes, and takes back
  (counted as ``oerror``) what the card still leaves owned after it.
- Each interrupt: one call reads ISR and clears it (write 1 to clear), reads the
  Media Status register (link) and RxMissed (frames dropped for want of a
  descriptor, then cleared), and re-enables the line. Received frames are taken
  from the ring in memory (OWN clear) and given straight back (OWN, EOR on the
  last, buffer size): no register write. QEMU reports the length with the 4 CRC
  bytes (and writes them): the driver strips them. There is no receive flow
  control in C+ mode: a full ring drops, counted as ``iqdrop``.
- Any RCR write only resets the classic ring pointers, so C+ mode changes need
  no care.

Classic mode (``mode=classic``):
- A 64 KiB receive ring (+16 and 1.5 KiB of slack) at RBSTART. Each interrupt's
  call also reads CBR (where the card writes next); the frames up to it are
  parsed from memory (4-byte header: status, length with CRC; 4-byte aligned;
  a frame may wrap at 64 KiB) into a queue, and one call writes
  CAPR = read offset - 16, which frees the space and lets QEMU deliver what it held
  back: IMR leaves RXOVW out, so QEMU holds frames back while the ring is full
  instead of dropping them (``rtl8139_can_receive``; read, not measured). Any
  RCR write resets both ring pointers, so a mode change drains the ring first;
  frames arriving in between are lost.
- SEND: the four TSAD/TSD slots strictly in order (QEMU only tries the current
  one); each frame is a TSAD write (its own buffer), a TSD write (which sends it)
  and a TSD read (TOK), so a batch of frames is one call.

Link state: Media Status bit LINKB (link down), re-read on every interrupt (QEMU
raises ISR bit 5 on a link change).

Restart: a fresh start. The kernel turned bus mastering off at the previous
driver's death (its untagged buffers are then freed); this driver reserves the
card with bus mastering still off, resets it (so the card forgets the old rings),
and only then turns bus mastering on. Live update: the new version takes the
rings, positions, mode and IRQ hook from the saved state and touches no hardware;
the watched doorbell is the endpoint's and goes on as it is.
"""

from __future__ import annotations

import logging
import struct
import time
from array import array
from collections import deque
from collections.abc import Sequence

from hwl.driver import netdriver, nic
from hwl.frames import scatter
from hwl.ipc import codec
from hwl.ipc.client import Connection
from hwl.link.batch import Batch
from hwl.proto import ndev
from hwl.proto.ndev import Frames

log = logging.getLogger("rtl8139")

PCI_IDS = {(0x10EC, 0x8139)}

# registers (offsets from the I/O base)
IDR0, MAR0, TSD0, TSAD0, RBSTART = 0x00, 0x08, 0x10, 0x20, 0x30
CR, CAPR, CBR, IMR, ISR = 0x37, 0x38, 0x3A, 0x3C, 0x3E
TCR, RCR, MPC, MSR = 0x40, 0x44, 0x4C, 0x58
TXPOLL, CPCMD, RDSAR_LO, RDSAR_HI = 0xD9, 0xE0, 0xE4, 0xE8
TNPDS_LO, TNPDS_HI = TSAD0, TSAD0 + 4  # C+: the normal-priority TX ring's address

CR_BUFE, CR_TE, CR_RE, CR_RST = 0x01, 0x04, 0x08, 0x10
ISR_ROK, ISR_RER, ISR_TOK, ISR_TER, ISR_RXOVW, ISR_LINKCHG, ISR_FOVW = (
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40,
)  # fmt: skip
IMR_BITS = ISR_ROK | ISR_RER | ISR_RXOVW | ISR_LINKCHG | ISR_FOVW
# classic: without RXOVW in IMR QEMU holds frames back while the ring is full and
# delivers them after the CAPR write (flow control); with it, it drops them
IMR_CLASSIC = IMR_BITS & ~ISR_RXOVW
RCR_AAP, RCR_APM, RCR_AM, RCR_AB = 0x01, 0x02, 0x04, 0x08
RCR_MXDMA_UNLIMITED = 0x7 << 8
RCR_RBLEN_64K = 0x3 << 11
CPCMD_TXENB, CPCMD_RXENB = 0x0001, 0x0002
TXPOLL_NPQ = 0x40
MSR_LINKB = 0x04  # set: link down
TSD_OWN, TSD_TUN, TSD_TOK = 0x2000, 0x4000, 0x8000

# C+ descriptors: dw0 flags|size, dw1 VLAN, dw2/dw3 buffer address
OWN, EOR, FS, LS = 1 << 31, 1 << 30, 1 << 29, 1 << 28
RX_SIZE_MASK = 0x1FFF
RX_ERR = 1 << 21 | 1 << 20 | 1 << 19 | 1 << 18  # RES, RWT, RUNT, CRC (8139cp's view)
DESC = struct.Struct("<IIII")
TX_WATCH = 0.002  # seconds a full ring's oldest SEND is watched before a call waits
_DW0 = struct.Struct("<I")  # a descriptor's first word: OWN, EOR, FS, LS, length
RING = 64  # descriptors per ring (QEMU wraps the TX ring at 64 anyway)
BUF = 2048
RING_BYTES = RING * DESC.size  # the ring, then the buffers, in one DMA buffer
BELL_AT = RING_BYTES + RING * BUF  # then the watched doorbell's word and sleep word
TX_BYTES = BELL_AT + 4096  # a whole page more: a mapped buffer ends on a page
TX_PER_CALL = RING - 1
CRC = 4
FRAME_MIN, FRAME_MAX = ndev.ETH_MIN + CRC, ndev.ETH_MAX + CRC  # lengths as the card reports them

# classic mode
RX_RING = 64 * 1024
RX_RING_ALLOC = RX_RING + 16 + 1536
TX_SLOTS = 4
CLASSIC_TX_PER_CALL = 64  # 3 ops per frame: TSAD, TSD, TSD read back
CLASSIC_HEADER_OK = 0x0001
MAX_QUEUED = 1024
RESET_WAIT_US = 100_000


class Rtl8139(nic.NicDriverBase):
    def __init__(self, args: dict[str, str]) -> None:
        super().__init__(args)
        mode = args.get("mode", "cplus")
        if mode not in ("cplus", "classic"):
            raise SystemExit(f"mode={mode!r}: cplus or classic")
        self.classic = mode == "classic"
        self.io = 0
        self.rx_next = 0  # C+: the next descriptor the card fills; classic: the read offset
        self.tx_next = 0  # C+: the next TX descriptor; classic: the next TSD slot
        self.tx_clean = 0  # C+: the oldest descriptor given to the card, not seen sent
        self.tx_ends: deque[int] = deque()  # C+: each posted SEND's last descriptor
        self.tx_words: memoryview | None = None
        # C+: TxPoll as a watched doorbell on a counter after the transmit buffers
        self.txpoll = nic.TxDoorbell("TxPoll", BELL_AT, self._txpoll, value_from_word=False)
        self.bell_count: int | None = None  # the counter, once read back
        self.rcr = RCR_APM | RCR_AB
        self.mar = 0  # the multicast filter byte (0 or 0xFF)
        self.link = False
        self.queue: deque[bytes] = deque()  # classic: frames drained from the ring
        self.dirty = True  # classic: frames may wait in the ring

    # ------------------------------------------------------------------ init
    def start(self, conn: Connection) -> None:
        pci, card = nic.reserve(conn, PCI_IDS, self.instance, bus_master=False)
        self.io = card.io_base
        self.irq_hook = conn.irq_setpolicy(card.irq, 0, notify_id=0)
        self._reset()  # the card forgets its old rings before it may DMA again
        nic.bus_master_on(pci, card.devind)
        if self.classic:
            self.rx = conn.dma_alloc(RX_RING_ALLOC)
            self.tx = conn.dma_alloc(CLASSIC_TX_PER_CALL * BUF)
        else:
            self.rx = conn.dma_alloc(RING_BYTES + RING * BUF)
            self.tx = conn.dma_alloc(TX_BYTES)
        self.rxv, self.txv = conn.dma_map(self.rx), conn.dma_map(self.tx)
        if self.classic:  # each start's call also enables the IRQ hook
            self._start_classic()
        else:
            self._start_cplus()
            self.txpoll.arm(conn, self.tx)

    def _txpoll(self, _value: int) -> Batch:
        """TxPoll's normal-priority bit (the doorbell's value is only the counter)."""
        b = Batch()
        b.outb(self.io + TXPOLL, TXPOLL_NPQ)
        return b

    def init_reply(self) -> ndev.InitReply:
        name = f"rtl8139#{self.instance}" + (" classic" if self.classic else "")
        most = CLASSIC_TX_PER_CALL if self.classic else TX_PER_CALL
        return ndev.InitReply(hwaddr=self.mac, name=name, link=self.link, max_send=most)

    def _reset(self) -> None:
        """CR.RST: IMR, the ring addresses and C+ mode back to their reset values;
        then the MAC (IDR0-5) and the link."""
        io, b = self.io, Batch()
        b.outb(io + CR, CR_RST)
        b.wait(io + CR, CR_RST, 0, timeout_us=RESET_WAIT_US)
        b.outw(io + IMR, 0)
        b.outw(io + ISR, 0xFFFF)
        mac = [b.inb(io + IDR0 + i) for i in range(6)]
        msr = b.inb(io + MSR)
        values = self._vdevio(b)
        self.mac = bytes(values[i] for i in mac)
        self.link = not values[msr] & MSR_LINKB

    def _start_cplus(self) -> None:
        """Both rings in memory, then CpCmd (latches C+), ring addresses, CR, RCR, IMR,
        and the IRQ hook enabled: one call."""
        rx, tx, rxv, txv = self.rx, self.tx, self.rxv, self.txv
        assert rx is not None and tx is not None and rxv is not None and txv is not None
        for i in range(RING):
            DESC.pack_into(rxv, i * DESC.size, self._rx_give(i), 0,
                           rx.phys + RING_BYTES + i * BUF, 0)  # fmt: skip
            DESC.pack_into(txv, i * DESC.size, 0, 0, tx.phys + RING_BYTES + i * BUF, 0)
        io, b = self.io, Batch()
        b.outw(io + CPCMD, CPCMD_RXENB | CPCMD_TXENB)
        b.outl(io + RDSAR_LO, rx.phys)
        b.outl(io + RDSAR_HI, 0)
        b.outl(io + TNPDS_LO, tx.phys)
        b.outl(io + TNPDS_HI, 0)
        self._start(b, IMR_BITS)  # CR: both ring positions back to descriptor 0

    def _start_classic(self) -> None:
        """RBSTART, CR, RCR (which zeroes both ring pointers), IMR, the IRQ hook: one call."""
        rx = self.rx
        assert rx is not None
        io, b = self.io, Batch()
        b.outl(io + RBSTART, rx.phys)
        self._start(b, IMR_CLASSIC)
        self.dirty = True

    def _start(self, b: Batch, imr: int) -> None:
        """After either mode's ring addresses: CR (receiver and transmitter on), RCR,
        MAR, MPC cleared, IMR, and the IRQ hook enabled, in the same call."""
        io = self.io
        b.outb(io + CR, CR_RE | CR_TE)
        b.outl(io + RCR, self._rcr_value(self.rcr))
        self._mar_ops(b, self.mar)
        b.outl(io + MPC, 0)
        b.outw(io + IMR, imr)
        self._vdevio(b, irq=True)
        self.rx_next = self.tx_next = self.tx_clean = 0
        self.tx_ends.clear()

    def _rcr_value(self, accept: int) -> int:
        return accept | RCR_MXDMA_UNLIMITED | (RCR_RBLEN_64K if self.classic else 0)

    def _mar_ops(self, b: Batch, mar: int) -> None:
        for i in range(8):
            b.outb(self.io + MAR0 + i, mar)

    @staticmethod
    def _rx_give(i: int) -> int:
        """dw0 of RX descriptor ``i`` handed to the card."""
        return OWN | (EOR if i == RING - 1 else 0) | BUF

    def take_saved(self, state: dict[str, codec.Value]) -> None:
        self.classic = bool(state["classic"])
        self.io = int(state["io"])  # type: ignore[arg-type]
        self.rx_next = int(state["rx_next"])  # type: ignore[arg-type]
        self.tx_next = int(state["tx_next"])  # type: ignore[arg-type]
        self.tx_clean = int(state.get("tx_clean", self.tx_next))  # type: ignore[arg-type]
        self.rcr = int(state["rcr"])  # type: ignore[arg-type]
        self.mar = int(state["mar"])  # type: ignore[arg-type]
        self.link = bool(state["link"])
        self.queue.extend(f for f in state.get("queue") or [] if isinstance(f, bytes))  # type: ignore[union-attr]
        self.txpoll.watched = state.get("watched") is True  # an older version saved none
        self.dirty = True

    def saved(self) -> dict[str, codec.Value]:
        return {
            "classic": self.classic, "io": self.io, "rx_next": self.rx_next,
            "tx_next": self.tx_next, "tx_clean": self.tx_clean, "rcr": self.rcr,
            "mar": self.mar, "link": self.link,
            "queue": list(self.queue), "watched": self.txpoll.watched,
        }  # fmt: skip

    # ----------------------------------------------------------------- modes
    def set_mode(self, mode: int, mcast: tuple[bytes, ...]) -> None:
        accept = RCR_APM
        if mode & ndev.MODE_BCAST:
            accept |= RCR_AB
        if mode & (ndev.MODE_MCAST_LIST | ndev.MODE_MCAST_ALL):
            accept |= RCR_AM  # every multicast frame (MAR all ones); the client filters
        if mode & ndev.MODE_PROMISC:
            accept |= RCR_AAP | RCR_AM | RCR_AB
        if mode == ndev.MODE_DOWN:
            accept = 0
        mar = 0xFF if accept & RCR_AM else 0
        b = Batch()
        if mar != self.mar:
            self._mar_ops(b, mar)
        if accept != self.rcr:  # an RCR write resets the classic ring pointers
            if self.classic:
                self._drain_classic()
            b.outl(self.io + RCR, self._rcr_value(accept))
        if len(b):
            self._vdevio(b)
        if accept != self.rcr and self.classic:
            self.rx_next = 0
            self.dirty = True
        self.rcr, self.mar = accept, mar

    def stop(self) -> None:
        b = Batch()
        b.outw(self.io + IMR, 0)
        b.outb(self.io + CR, 0)
        self._vdevio(b)

    # ------------------------------------------------------------------ send
    def send(self, frames: Sequence[bytes]) -> int:
        return self._send_classic(frames) if self.classic else self._send_cplus(frames)

    def _send_cplus(self, frames: Sequence[bytes]) -> int:
        txv = self.tx_view()
        free = self._tx_free(txv) or (self._watch_oldest(txv) and self._tx_free(txv))
        if not free:  # wait for the card: this call runs after the posted TxPoll writes
            b = Batch()
            b.inb(self.io + CR)
            self._vdevio(b)
            free = self._tx_scan(txv) or self._take_back(txv)
        first = self.tx_next
        lens = scatter(txv, RING_BYTES, BUF, RING, first, Frames.of(frames)[:free], ndev.ETH_MIN)
        i = (first + len(lens)) % RING
        dw0 = array("I", [OWN | FS | LS | n for n in lens])
        # each descriptor's first word, in at most two strided writes (x86: little-endian)
        words, head = self._tx_words(), min(len(dw0), RING - first)
        words[first * 4 : (first + head) * 4 : 4] = dw0[:head]
        if head < len(dw0):
            words[0 : (len(dw0) - head) * 4 : 4] = dw0[head:]
        if first + head == RING:
            words[(RING - 1) * 4] |= EOR
        if self.bell_count is None:
            self.bell_count = self.txpoll.value(txv)
        self.bell_count = (self.bell_count + 1) & 0xFFFFFFFF
        assert self.conn is not None
        self.txpoll.ring(self.conn, txv, self.bell_count)
        self.tx_next = i
        self.tx_ends.append((i - 1) % RING)
        return len(lens)

    def _watch_oldest(self, txv: memoryview) -> bool:
        """Whether the oldest SEND the card holds was sent within TX_WATCH seconds,
        watched in memory (QEMU sends a SEND within its TxPoll write, which the
        stub may still be running): a look at one bit costs less than a call."""
        if not self.tx_ends:
            return False
        own_byte = self.tx_ends[0] * DESC.size + 3  # OWN is dw0's top bit
        deadline = time.perf_counter() + TX_WATCH
        while txv[own_byte] & 0x80:
            if time.perf_counter() > deadline:
                return False
        return True

    def _tx_words(self) -> memoryview:
        """The TX ring as 32-bit words (four per descriptor)."""
        if self.tx_words is None:
            self.tx_words = self.tx_view()[:RING_BYTES].cast("I")
        return self.tx_words

    def _tx_free(self, txv: memoryview) -> int:
        """C+ descriptors free for new frames, after taking back the SENDs the card
        sent (it sends in order: a SEND's last descriptor without OWN is all of it)."""
        ends, clean = self.tx_ends, self.tx_clean
        while ends and not _DW0.unpack_from(txv, ends[0] * DESC.size)[0] & OWN:
            clean = (ends.popleft() + 1) % RING
        self.tx_clean = clean
        return RING - 1 - (self.tx_next - clean) % RING

    def _tx_scan(self, txv: memoryview) -> int:
        """:meth:`_tx_free` descriptor by descriptor: after a call that ran after
        every posted write, or a live update, which keeps no SEND ends."""
        self.tx_ends.clear()
        clean, end = self.tx_clean, self.tx_next
        while clean != end and not _DW0.unpack_from(txv, clean * DESC.size)[0] & OWN:
            clean = (clean + 1) % RING
        self.tx_clean = clean
        return RING - 1 - (end - clean) % RING

    def _take_back(self, txv: memoryview) -> int:
        """The card left descriptors owned after a TxPoll write ran: it will not
        send them. Clear them, count them, and go on from where the card waits."""
        left = (self.tx_next - self.tx_clean) % RING
        netdriver.stats().oerror += left
        log.warning("%d frames not taken by the card (descriptor %d still owned)", left,
                    self.tx_clean)  # fmt: skip
        j = self.tx_clean
        for _ in range(left):
            _DW0.pack_into(txv, j * DESC.size, 0)
            j = (j + 1) % RING
        self.tx_next = self.tx_clean
        return RING - 1

    def _send_classic(self, frames: Sequence[bytes]) -> int:
        txv, tx = self.tx_view(), self.tx
        assert tx is not None
        frames = frames[:CLASSIC_TX_PER_CALL]
        io, b, reads = self.io, Batch(), []
        slot = self.tx_next
        for k, raw in enumerate(frames):
            frame = nic.pad(raw)
            at = k * BUF
            txv[at : at + len(frame)] = frame
            b.outl(io + TSAD0 + 4 * slot, tx.phys + at)
            b.outl(io + TSD0 + 4 * slot, len(frame))  # OWN clear: QEMU sends it now
            reads.append(b.inl(io + TSD0 + 4 * slot))
            slot = (slot + 1) % TX_SLOTS
        values = self._vdevio(b)
        sent = 0
        for at in reads:
            if not values[at] & TSD_TOK:
                break
            sent += 1
        # QEMU's current slot moved once per frame it sent
        self.tx_next = (self.tx_next + sent) % TX_SLOTS
        if sent < len(frames):
            netdriver.stats().oerror += len(frames) - sent
            log.warning("%d of %d frames not sent (TSD without TOK)", len(frames) - sent,
                        len(frames))  # fmt: skip
        return len(frames)

    # --------------------------------------------------------------- receive
    def intr(self, mask: int) -> None:
        """Read and clear ISR, read the link and the missed-frame counter, re-enable
        the line: one call. Frames are taken from memory afterwards."""
        io, b = self.io, Batch()
        isr = b.inw(io + ISR)
        b.outw(io + ISR, 0xFFFF)
        msr = b.inb(io + MSR)
        missed = b.inl(io + MPC)
        b.outl(io + MPC, 0)
        cbr = b.inw(io + CBR) if self.classic else None
        values = self._vdevio(b, irq=True)
        self.link = not values[msr] & MSR_LINKB
        stats = netdriver.stats()
        stats.iqdrop += values[missed] & 0xFFFFFF
        if values[isr] & ISR_RER:
            stats.ierror += 1
        if cbr is not None:  # whatever ISR said: a frame may have come after its read
            self._drain_classic(values[cbr])

    def get_link(self) -> bool:
        return self.link

    def recv(self, most: int) -> list[bytes]:
        return self._recv_classic(most) if self.classic else self._recv_cplus(most)

    def _recv_cplus(self, most: int) -> list[bytes]:
        rxv = self.rx_view()
        out: list[bytes] = []
        i, stats = self.rx_next, netdriver.stats()
        while len(out) < most:
            dw0 = struct.unpack_from("<I", rxv, i * DESC.size)[0]
            if dw0 & OWN:
                break
            length = (dw0 & RX_SIZE_MASK) - CRC  # QEMU counts (and writes) the CRC
            if dw0 & RX_ERR or dw0 & (FS | LS) != FS | LS or not 0 < length <= ndev.ETH_MAX:
                stats.ierror += 1
            else:
                at = RING_BYTES + i * BUF
                out.append(bytes(rxv[at : at + length]))
            struct.pack_into("<II", rxv, i * DESC.size, self._rx_give(i), 0)
            i = (i + 1) % RING
        self.rx_next = i
        return out

    def _recv_classic(self, most: int) -> list[bytes]:
        if not self.queue and self.dirty:
            self._drain_classic()
        out: list[bytes] = []
        while self.queue and len(out) < most:
            out.append(self.queue.popleft())
        return out

    def _drain_classic(self, cbr: int | None = None) -> None:
        """Queue every frame between the read offset and CBR, then write CAPR."""
        if cbr is None:
            b = Batch()
            at = b.inw(self.io + CBR)
            cbr = self._vdevio(b)[at]
        self.dirty = False
        rxv = self.rx_view()
        rd, stats = self.rx_next, netdriver.stats()
        if rd == cbr:
            return
        while rd != cbr:
            status, total = struct.unpack("<HH", _ring_bytes(rxv, rd, 4))
            if not status & CLASSIC_HEADER_OK or not FRAME_MIN <= total <= FRAME_MAX:
                log.warning("ring header at %#x makes no sense (status %#x, length %d): "
                            "restarting the ring", rd, status, total)  # fmt: skip
                stats.ierror += 1
                b = Batch()
                b.outl(self.io + RCR, self._rcr_value(self.rcr))  # both pointers to 0
                self._vdevio(b)
                self.rx_next = 0
                return
            if len(self.queue) < MAX_QUEUED:
                self.queue.append(_ring_bytes(rxv, rd + 4, total - CRC))
            else:
                stats.iqdrop += 1
            rd = (rd + 4 + total + 3) & ~3 & (RX_RING - 1)
        self.rx_next = rd
        b = Batch()
        b.outw(self.io + CAPR, (rd - 16) & 0xFFFF)
        self._vdevio(b)


def _ring_bytes(view: memoryview, at: int, n: int) -> bytes:
    """``n`` bytes of the classic ring from offset ``at``, wrapping at 64 KiB."""
    at &= RX_RING - 1
    if at + n <= RX_RING:
        return bytes(view[at : at + n])
    head = RX_RING - at
    return bytes(view[at:RX_RING]) + bytes(view[: n - head])


def main(argv: list[str]) -> int:
    return nic.run(Rtl8139(nic.driver_args(argv)))
