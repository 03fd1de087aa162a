"""dp8390: NE2000-compatible PCI cards (QEMU's ne2k_pci, a Realtek 8029), a NIC driver.

``service up hwl.drivers.dp8390 -args "instance=0"``
(system.conf entry ``dp8390``; docs/network.md).

The card has no bus master: frames move through its remote-DMA data port, in
32-bit units, between the card's 48 KiB of memory and a staging buffer of the
driver's in guest RAM (mapped into the driver, so filling it costs no kernel
call). Card memory: one transmit buffer at page 0x40, the receive ring at pages
0x46..0xC0 (the whole rest, as QEMU's card holds 48 KiB).

- A SEND makes no kernel call: the frames go into free slots of a staging ring
  (``FRAME_SLOTS``), their lengths into a table beside it, and their count into a
  watched word; the stub runs a *frame template* (hwl.proto.vdevio.WATCH_FRAMES,
  the ops below, checked by the kernel once at start) for each, patched with the
  frame's length and slot, and counts the frames it sent and refused in the
  buffer (refused ones are ``oerror``). A full ring: a plain call, which runs
  after the stub has sent every staged frame. Where no template can be armed:
- A SEND of up to ``TX_PER_CALL`` frames is one *posted* kernel call (the
  driver answers while the stub works): TPSR, then per frame the remote write of
  its bytes, the wait for remote-DMA completion, TBCR and CR.TXP, the wait for
  PTX (QEMU transmits during that write). The ops come from one packed
  per-frame template with the lengths and staging address patched in. The
  staging buffer has two halves used in turn; a half is written again only once
  the posted call that read it has finished (the kernel's count in each answer;
  else a plain call, which runs after every posted one). A call the stub stopped
  (a wait that ran out) is counted as ``oerror``.
- Each interrupt: one call reads and clears ISR and reads CURR; one more reads
  every page between BNRY and CURR in a single remote read (it wraps at PSTOP as
  the ring does) and moves BNRY, so the whole ring is drained at once and the
  card never fills while the driver lives. The frames wait in the driver (at
  most ``MAX_QUEUED``; more are counted as ``iqdrop``) for the client's RECVs.
  Not while no client has set a mode other than DOWN (a restarted driver before
  its client's CONF): the frames stay in the ring, which fills and then takes no
  more, so no drain delays INIT and CONF; the first RECV after them drains it.
- A ring header that makes no sense (a next page outside the ring, a length
  outside 60..1514) resets the card and is counted as ``ierror``.
- The MAC is the PROM's (QEMU's unicast filter compares with the PROM, not PAR0-5),
  so the address cannot be changed. Multicast modes accept every multicast frame
  (MAR all ones); the client filters. There is no link state: always up.

A restart is a fresh start (reset, re-initialisation, a new frame template).
Live update: the new version takes the old one's staging buffer, IRQ hook and
card from the saved state, goes on with its frame template (the endpoint's, as
its DMA buffers are) from the saved count of frames staged, and touches no
hardware in its init.
"""

from __future__ import annotations

import logging
import struct
from array import array
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from hwl.driver import netdriver, nic
from hwl.frames import Bell, scatter
from hwl.ipc import codec
from hwl.ipc.client import Connection, IpcError
from hwl.ipc.kcalls import FrameTemplate
from hwl.link import abi
from hwl.link.batch import Batch
from hwl.proto import ndev
from hwl.proto.ndev import Frames

log = logging.getLogger("dp8390")

PCI_IDS = {(0x10EC, 0x8029)}

# registers, page 0 (offsets from the I/O base)
CR, PSTART, PSTOP, BNRY, TPSR, TBCR0, TBCR1, ISR = range(8)
RSAR0, RSAR1, RBCR0, RBCR1, RCR, TCR, DCR, IMR = range(8, 16)
CURR = 0x07  # page 1
PAR0 = 0x01  # page 1
MAR0 = 0x08  # page 1
DATA = 0x10
RESET = 0x1F

CR_STP, CR_STA, CR_TXP = 0x01, 0x02, 0x04
CR_RREAD, CR_RWRITE, CR_NODMA = 0x08, 0x10, 0x20
CR_PAGE1 = 0x40
ISR_PRX, ISR_PTX, ISR_RXE, ISR_TXE, ISR_OVW, ISR_CNT, ISR_RDC, ISR_RST = (1 << i for i in range(8))
RCR_AB, RCR_AM, RCR_PRO, RCR_MON = 0x04, 0x08, 0x10, 0x20
TCR_LOOPBACK = 0x02
DCR_WORD = 0x49  # word-wide, normal operation, FIFO threshold 8 bytes

PAGE = 256
TX_PAGE = 0x40
RX_START = 0x46
RX_STOP = 0xC0
RING_PAGES = RX_STOP - RX_START
TX_SLOT = 1536  # staging bytes per frame
TX_PER_CALL = 63  # frames per posted call: 1 + 12 ops each, three slots (vdevio.MAX_POSTED_SLOTS)
# The frame template's staging (hwl.proto.vdevio.WATCH_FRAMES), in the transmit
# buffer: FRAME_SLOTS slots of TX_SLOT bytes (where the posted path's two halves
# are), a u16 length per slot, the stub's two counts (done, refused), then the
# count of frames staged (the watched word) and its sleep word.
FRAME_SLOTS = 256
TABLE_AT = FRAME_SLOTS * TX_SLOT
COUNTS_AT = TABLE_AT + 2 * FRAME_SLOTS
STAGED_AT = COUNTS_AT + 8
TX_BYTES = STAGED_AT + 8
COUNTS = struct.Struct("<II")
U32 = 0xFFFFFFFF
MAX_QUEUED = 1024
WAIT_US = 2000
IMR_BITS = ISR_PRX | ISR_RXE | ISR_OVW
# what the stub patches in _frame_ops's ops, in order (guest/abi.h, HWL_PATCH_*)
FRAME_PATCHES = (abi.PATCH_NONE, abi.PATCH_LEN4_LO, abi.PATCH_LEN4_HI, abi.PATCH_NONE,
                 abi.PATCH_NONE, abi.PATCH_NONE, abi.PATCH_SLOT, abi.PATCH_NONE,
                 abi.PATCH_LEN_LO, abi.PATCH_LEN_HI, abi.PATCH_NONE, abi.PATCH_NONE,
                 abi.PATCH_NONE)  # fmt: skip


def _tpsr_op(io: int) -> bytes:
    """The op that points the transmitter at the TX page, once per SEND."""
    return abi.OP.pack(abi.OP_OUT, 1, io + TPSR, TX_PAGE, 0, 0)


@dataclass
class Ring:
    """The receive ring as the driver last saw it."""

    bnry: int = RX_START  # the last page read
    curr: int = RX_START + 1  # where the card writes next

    @property
    def next(self) -> int:
        return RX_START if self.bnry + 1 >= RX_STOP else self.bnry + 1

    def pending_pages(self) -> int:
        return (self.curr - self.next) % RING_PAGES


class Dp8390(nic.NicDriverBase):
    def __init__(self, args: dict[str, str]) -> None:
        super().__init__(args)
        self.io = 0
        self.ring = Ring()
        self.dirty = True  # frames may wait in the ring
        self.queue: deque[bytes] = deque()
        self.rcr = RCR_AB
        self.up = False  # a client set a mode other than DOWN: interrupts drain the ring
        self.tx_ops: bytes | None = None  # one frame's send ops, packed (_tx_template)
        # posted SENDs: how many this process made, how many the kernel saw finish,
        # and which one last read each staging half (-1: wait for all first, as a
        # live update's new version must for the old one's)
        self.posted = self.finished = self.stopped = 0
        self.half_read_by = [-1, -1]
        self.half = 0
        # the frame template: frames staged (the watched word), frames the stub
        # refused as last seen; without it each SEND is a posted call
        self.framed = False
        self.staged = self.refused = 0
        self._bell: Bell | None = None

    # ------------------------------------------------------------------ init
    def start(self, conn: Connection) -> None:
        _pci, card = nic.reserve(conn, PCI_IDS, self.instance, bus_master=False)
        self.io = card.io_base
        self.tx = conn.dma_alloc(TX_BYTES)  # the template's slots, or two posted halves
        self.rx = conn.dma_alloc(RING_PAGES * PAGE)
        self.irq_hook = conn.irq_setpolicy(card.irq, 0, notify_id=0)
        self.mac = self._reset_card(enable_irq=True)
        self._arm_frames(conn)

    def _arm_frames(self, conn: Connection) -> None:
        """The per-frame ops as a frame template the stub runs for each frame staged,
        so a SEND makes no kernel call; refused (all watches taken, say): posted calls."""
        assert self.tx is not None
        view = self.tx_view()
        COUNTS.pack_into(view, COUNTS_AT, self.staged, 0)
        struct.pack_into("<II", view, STAGED_AT, self.staged, 0)
        template = FrameTemplate(TABLE_AT, FRAME_SLOTS, TX_SLOT, 0, COUNTS_AT, ndev.ETH_MAX,
                                 FRAME_PATCHES)  # fmt: skip
        try:
            conn.vdevio_frames(self.tx.id, STAGED_AT, template, self._frame_ops())
        except IpcError as exc:
            log.warning("no frame template (%s): each SEND is a posted call", exc)
            return
        self.framed, self.refused = True, 0

    def _frame_ops(self) -> Batch:
        """One frame's ops, patched by the stub (FRAME_PATCHES): the remote DMA of
        the frame from its slot into the TX page, then the transmit."""
        io, b = self.io, Batch()
        b.outb(io + TPSR, TX_PAGE)
        b.outb(io + RBCR0, 0)  # the length rounded up to 4, low
        b.outb(io + RBCR1, 0)  # and high
        b.outb(io + RSAR0, 0)
        b.outb(io + RSAR1, TX_PAGE)
        b.outb(io + CR, CR_STA | CR_RWRITE)
        b.outs_phys(io + DATA, 0, 4, 0)  # dwords, from the frame's slot
        b.wait(io + ISR, ISR_RDC, ISR_RDC, timeout_us=WAIT_US)
        b.outb(io + TBCR0, 0)  # the length, low
        b.outb(io + TBCR1, 0)  # and high
        b.outb(io + CR, CR_STA | CR_NODMA | CR_TXP)
        b.wait(io + ISR, ISR_PTX, ISR_PTX, timeout_us=WAIT_US)
        b.outb(io + ISR, ISR_RDC | ISR_PTX)
        return b

    def init_reply(self) -> ndev.InitReply:
        most = ndev.MAX_FRAMES if self.framed else TX_PER_CALL
        return ndev.InitReply(hwaddr=self.mac, name=f"dp8390#{self.instance}", link=True,
                              max_send=most)  # fmt: skip

    def take_saved(self, state: dict[str, codec.Value]) -> None:
        self.io = int(state["io"])  # type: ignore[arg-type]
        self.ring = Ring(*state["ring"])  # type: ignore[misc]
        self.rcr = int(state["rcr"])  # type: ignore[arg-type]
        self.up = bool(state.get("up", True))
        self.framed = state.get("framed") is True  # an older version saved none
        self.staged = int(state.get("staged", 0))  # type: ignore[arg-type]
        self.refused = int(state.get("refused", 0))  # type: ignore[arg-type]
        self.queue.extend(f for f in state.get("queue") or [] if isinstance(f, bytes))  # type: ignore[union-attr]

    def saved(self) -> dict[str, codec.Value]:
        return {
            "io": self.io, "ring": [self.ring.bnry, self.ring.curr], "rcr": self.rcr,
            "up": self.up, "queue": list(self.queue), "framed": self.framed,
            "staged": self.staged, "refused": self.refused,
        }  # fmt: skip

    def _reset_card(self, enable_irq: bool = False) -> bytes:
        """Reset, read the MAC from the PROM, set up the ring (its last call also
        enables the IRQ hook with ``enable_irq``: the first start); returns the MAC."""
        io = self.io
        b = Batch()
        b.inb(io + RESET)
        b.outb(io + RESET, 0)
        b.wait(io + ISR, ISR_RST, ISR_RST, timeout_us=100_000)
        b.outb(io + ISR, 0xFF)
        b.outb(io + CR, CR_STP | CR_NODMA)
        b.outb(io + DCR, DCR_WORD)
        b.outb(io + RBCR0, 0)
        b.outb(io + RBCR1, 0)
        b.outb(io + RCR, RCR_MON)
        b.outb(io + TCR, TCR_LOOPBACK)
        b.outb(io + PSTART, RX_START)
        b.outb(io + PSTOP, RX_STOP)
        b.outb(io + BNRY, RX_START)
        b.outb(io + IMR, 0)
        b.outb(io + ISR, 0xFF)
        # the PROM: 6 words, each a MAC byte twice
        b.outb(io + RBCR0, 12)
        b.outb(io + RBCR1, 0)
        b.outb(io + RSAR0, 0)
        b.outb(io + RSAR1, 0)
        b.outb(io + CR, CR_STP | CR_RREAD)
        words = [b.inw(io + DATA) for _ in range(6)]
        b.wait(io + ISR, ISR_RDC, ISR_RDC, timeout_us=WAIT_US)
        b.outb(io + ISR, ISR_RDC)
        values = self._vdevio(b)
        mac = bytes(values[i] & 0xFF for i in words)
        self.ring = Ring()
        b = Batch()
        b.outb(io + CR, CR_PAGE1 | CR_STP | CR_NODMA)
        for i in range(6):
            b.outb(io + PAR0 + i, mac[i])
        for i in range(8):
            b.outb(io + MAR0 + i, 0xFF if self.rcr & RCR_AM else 0)
        b.outb(io + CURR, self.ring.curr)
        b.outb(io + CR, CR_STP | CR_NODMA)
        b.outb(io + ISR, 0xFF)
        b.outb(io + IMR, IMR_BITS)
        b.outb(io + TCR, 0)
        b.outb(io + RCR, self.rcr)
        b.outb(io + CR, CR_STA | CR_NODMA)
        self._vdevio(b, irq=enable_irq)
        self.dirty = True
        return mac

    # ------------------------------------------------------------------ modes
    def set_mode(self, mode: int, mcast: tuple[bytes, ...]) -> None:
        rcr = 0
        if mode & ndev.MODE_BCAST:
            rcr |= RCR_AB
        if mode & (ndev.MODE_MCAST_LIST | ndev.MODE_MCAST_ALL):
            rcr |= RCR_AM
        if mode & ndev.MODE_PROMISC:
            rcr |= RCR_PRO
        if mode == ndev.MODE_DOWN:
            rcr = RCR_MON
        b = Batch()
        b.outb(self.io + CR, CR_PAGE1 | CR_STA | CR_NODMA)
        for i in range(8):
            b.outb(self.io + MAR0 + i, 0xFF if rcr & RCR_AM else 0)
        b.outb(self.io + CR, CR_STA | CR_NODMA)
        b.outb(self.io + RCR, rcr)
        self._vdevio(b)
        self.rcr = rcr
        self.up = mode != ndev.MODE_DOWN

    def stop(self) -> None:
        b = Batch()
        b.outb(self.io + IMR, 0)
        b.outb(self.io + CR, CR_STP | CR_NODMA)
        self._vdevio(b)

    # ------------------------------------------------------------------- send
    def send(self, frames: Sequence[bytes]) -> int:
        if self.framed:
            return self._send_framed(frames)
        return self._send_posted(frames)

    def _send_framed(self, frames: Sequence[bytes]) -> int:
        """Stage the frames in free slots, their lengths in the table, and count
        them in the watched word: the stub sends them without a kernel call."""
        view = self.tx_view()
        free = self._frames_free(view)
        if not free:  # a call runs after the stub has sent every frame staged
            self._vdevio(self._isr_read())
            free = self._frames_free(view)
            if not free:
                return 0
        first = self.staged % FRAME_SLOTS
        sizes = scatter(view, 0, TX_SLOT, FRAME_SLOTS, first, Frames.of(frames)[:free],
                        ndev.ETH_MIN)  # fmt: skip
        n, head = len(sizes), min(len(sizes), FRAME_SLOTS - first)
        table = view[TABLE_AT : TABLE_AT + 2 * FRAME_SLOTS].cast("H")
        table[first : first + head] = memoryview(sizes)[:head]
        table[: n - head] = memoryview(sizes)[head:]
        self.staged = (self.staged + n) & U32
        if self._bell is None:
            self._bell = Bell(view, STAGED_AT, STAGED_AT + 4)
        sleep = self._bell.ring(self.staged)
        assert self.conn is not None
        if sleep == abi.WATCH_ASLEEP:  # wake the stub: it runs the frames before the slot
            self.conn.vdevio_posted(self._isr_read())
        elif sleep == abi.WATCH_ENDED:  # after the stub's last frame: these go the other way
            log.warning("the frame template ended: each SEND is a posted call")
            self.framed = False
            return self._send_posted(frames[:n])
        return n

    def _isr_read(self) -> Batch:
        """A read of ISR, no side effect: a call for its order alone (it runs after
        the stub's staged frames and every posted call) or to wake the stub."""
        b = Batch()
        b.inb(self.io + ISR)
        return b

    def _frames_free(self, view: memoryview) -> int:
        """Slots free for new frames; a frame the stub refused counts as ``oerror``."""
        done, refused = (int(x) for x in COUNTS.unpack_from(view, COUNTS_AT))
        if refused != self.refused:
            netdriver.stats().oerror += (refused - self.refused) & U32
            log.warning("%d frames refused by the stub (a length, or a wait that ran out)",
                        (refused - self.refused) & U32)  # fmt: skip
            self.refused = refused
        return FRAME_SLOTS - ((self.staged - done) & U32)

    def _send_posted(self, frames: Sequence[bytes]) -> int:
        """Transmit up to a staging half's frames in one posted kernel call."""
        view, tx = self.tx_view(), self.tx
        assert tx is not None and self.conn is not None
        per_half = min(TX_PER_CALL, tx.size // (2 * TX_SLOT))
        frames = frames[:per_half]
        half = self.half
        if self.half_read_by[half] < 0 or self.half_read_by[half] > self.finished:
            self._vdevio(self._isr_read())  # runs after every posted call: the half is free
            self.finished = self.posted
        if self.tx_ops is None:
            self.tx_ops = self._tx_template()
        first = half * per_half * TX_SLOT
        sizes = scatter(view, first, TX_SLOT, per_half, 0, Frames.of(frames), ndev.ETH_MIN)
        n = len(sizes)
        ops = bytearray(_tpsr_op(self.io) + self.tx_ops * n)
        # the patched operands, one strided write per field over the packed ops
        # (x86: little-endian): op 1 + 12k + j of frame k, its a (word 1) or b (word 2)
        words = memoryview(ops).cast("I")
        stride = len(self.tx_ops) // 4
        count4 = array("I", [(size + 3) & ~3 for size in sizes])
        for j, word, values in (
            (0, 1, array("I", [c & 0xFF for c in count4])),  # RBCR0
            (1, 1, array("I", [c >> 8 for c in count4])),  # RBCR1
            (5, 1, array("I", [c >> 2 for c in count4])),  # OUTS: dwords
            (5, 2, array("I", range(tx.phys + first, tx.phys + first + n * TX_SLOT, TX_SLOT))),
            (7, 1, array("I", [size & 0xFF for size in sizes])),  # TBCR0
            (8, 1, array("I", [size >> 8 for size in sizes])),  # TBCR1
        ):
            at = 4 * (1 + j) + word
            words[at : at + n * stride : stride] = values
        answer = self.conn.vdevio_posted_packed(ops)
        self.posted += 1
        self.half_read_by[half], self.half = self.posted, 1 - half
        # the kernel's count is this process's; never trust more than was posted
        self.finished = max(self.finished, min(answer.finished, self.posted))
        if answer.stopped > self.stopped:
            netdriver.stats().oerror += answer.stopped - self.stopped
            log.warning("%d SENDs stopped by the stub (a wait ran out): see the kernel's log",
                        answer.stopped - self.stopped)  # fmt: skip
            self.stopped = answer.stopped
        return n

    def _tx_template(self) -> bytes:
        """One frame's ops, packed, with zero where :meth:`send` patches: remote DMA
        of the frame from its staging slot into the TX page, then transmit."""
        io, b = self.io, Batch()
        b.outb(io + RBCR0, 0)  # op 0: byte count, low
        b.outb(io + RBCR1, 0)  # op 1: byte count, high
        b.outb(io + RSAR0, 0)
        b.outb(io + RSAR1, TX_PAGE)
        b.outb(io + CR, CR_STA | CR_RWRITE)
        b.outs_phys(io + DATA, 0, 4, 0)  # op 5: words, staging address
        b.wait(io + ISR, ISR_RDC, ISR_RDC, timeout_us=WAIT_US)
        b.outb(io + TBCR0, 0)  # op 7: frame length, low
        b.outb(io + TBCR1, 0)  # op 8: frame length, high
        b.outb(io + CR, CR_STA | CR_NODMA | CR_TXP)
        b.wait(io + ISR, ISR_PTX, ISR_PTX, timeout_us=WAIT_US)
        b.outb(io + ISR, ISR_RDC | ISR_PTX)
        (packed,) = b.packed()
        return packed

    # ---------------------------------------------------------------- receive
    def intr(self, mask: int) -> None:
        """Clear ISR, learn CURR, re-enable the line; then drain the whole ring if a
        client set the card up. Until then the ring is left to fill: a drain (a port
        read per 4 bytes of the ring) would delay the INIT and CONF to come, and a
        full ring makes QEMU take no more flooded frames meanwhile."""
        io, b = self.io, Batch()
        isr = b.inb(io + ISR)
        b.outb(io + ISR, 0x7F)
        b.outb(io + CR, CR_PAGE1 | CR_STA | CR_NODMA)
        curr = b.inb(io + CURR)
        b.outb(io + CR, CR_STA | CR_NODMA)
        values = self._vdevio(b, irq=True)
        if values[isr] & ISR_OVW:
            log.info("ring overflow reported (ISR %#x)", values[isr])
        if self.up:
            self._drain(values[curr])
        else:
            self.dirty = True  # the first RECV after the CONF drains it

    def recv(self, most: int) -> list[bytes]:
        if not self.queue and self.dirty:
            b = Batch()
            b.outb(self.io + CR, CR_PAGE1 | CR_STA | CR_NODMA)
            curr = b.inb(self.io + CURR)
            b.outb(self.io + CR, CR_STA | CR_NODMA)
            self._drain(self._vdevio(b)[curr])
        out: list[bytes] = []
        while self.queue and len(out) < most:
            out.append(self.queue.popleft())
        return out

    def _drain(self, curr: int) -> None:
        """Read every page from BNRY+1 up to ``curr`` in one remote read, move BNRY."""
        if not RX_START <= curr < RX_STOP:
            self._ring_broken(f"CURR {curr:#x} outside the ring")
            return
        self.ring.curr = curr
        pages = self.ring.pending_pages()
        self.dirty = False
        if pages == 0:
            return
        view, rx = self.rx_view(), self.rx
        assert rx is not None
        start, size = self.ring.next, pages * PAGE
        new_bnry = RX_STOP - 1 if curr == RX_START else curr - 1
        io, b = self.io, Batch()
        b.outb(io + CR, CR_STA | CR_NODMA)
        b.outb(io + RBCR0, size & 0xFF)
        b.outb(io + RBCR1, size >> 8)
        b.outb(io + RSAR0, 0)
        b.outb(io + RSAR1, start)
        b.outb(io + CR, CR_STA | CR_RREAD)
        b.ins_phys(io + DATA, size // 4, 4, rx.phys)
        b.wait(io + ISR, ISR_RDC, ISR_RDC, timeout_us=WAIT_US)
        b.outb(io + ISR, ISR_RDC)
        b.outb(io + BNRY, new_bnry)
        self._vdevio(b)
        self.ring.bnry = new_bnry
        self._parse(bytes(view[:size]), start, pages)

    def _parse(self, data: bytes, start: int, pages: int) -> None:
        page, stats = start, netdriver.stats()
        while (page - start) % RING_PAGES < pages:
            at = ((page - start) % RING_PAGES) * PAGE
            nxt = data[at + 1]
            total = data[at + 2] | data[at + 3] << 8
            if not RX_START <= nxt < RX_STOP or not ndev.ETH_MIN + 4 <= total <= ndev.ETH_MAX + 4:
                self._ring_broken(f"header at page {page:#x}: next {nxt:#x}, length {total}")
                return
            if len(self.queue) < MAX_QUEUED:
                self.queue.append(data[at + 4 : at + total])
            else:
                stats.iqdrop += 1
            if nxt == page:
                break
            page = nxt

    def _ring_broken(self, why: str) -> None:
        log.warning("receive ring corrupt (%s): resetting the card", why)
        netdriver.stats().ierror += 1
        self._reset_card()  # it keeps the mode: RCR and the multicast filter


def main(argv: list[str]) -> int:
    return nic.run(Dp8390(nic.driver_args(argv)))
