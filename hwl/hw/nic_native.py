"""The stub's native NIC transmit loop (OP_NATIVE_NIC_TX), run from the host.

This is the physical limit `hwl bench nic` divides a driver's transmit rate by:
the stub itself sends ``count`` copies of one frame through ne2k_pci, rtl8139
(C+ descriptors) or e1000, polled, with no link round trip per frame. On
ne2k_pci each copy first goes into the card's memory through the data port, as
every new frame must (the card has no DMA); rtl8139 and e1000 DMA it themselves. Like the
disk's native loops (bench/disk.py) it runs on a :class:`Link` before the kernel
takes it, since it reprograms the NIC from scratch.

The helper finds the NIC by PCI id, turns on I/O, memory and bus-master decoding
in its command register (rtl8139 and e1000 DMA their descriptors and the frame),
puts the frame and the descriptor ring in DMA buffers of the link, runs the loop
and frees the buffers.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Final

from hwl.errors import HwlError, LinkError
from hwl.link import abi
from hwl.link.batch import Batch
from hwl.link.link import Link
from hwl.link.pci import PciDevice

# nic name -> (kind, vendor, device)
NICS: Final = {
    "ne2k_pci": (abi.NIC_NE2K, 0x10EC, 0x8029),
    "rtl8139": (abi.NIC_RTL8139, 0x10EC, 0x8139),
    "e1000": (abi.NIC_E1000, 0x8086, 0x100E),
}
MIN_FRAME = 60
MAX_FRAME = 1514
MAX_BATCH: Final = {"ne2k_pci": 1, "rtl8139": 64, "e1000": 63}
PCI_COMMAND = 0x04
CMD_IO, CMD_MEMORY, CMD_BUS_MASTER = 0x1, 0x2, 0x4
NOT_RUN = 0xFFFFFFFF  # status until the loop writes its own
ETHERTYPE = 0x88B5  # IEEE 802 local experimental: no stack on the peer acts on it


class NicNativeError(HwlError):
    """The native NIC loop could not run or stopped early."""


@dataclass(frozen=True)
class NicTxResult:
    """What one run of the loop reports: frames sent and the sending loop's seconds."""

    status: int
    done: int
    seconds: float

    @property
    def pps(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


def tx_frame(size: int, seq: int = 0) -> bytes:
    """A broadcast frame of ``size`` bytes (60..1514) with a counting payload, so a
    receiver can check every byte."""
    if not MIN_FRAME <= size <= MAX_FRAME:
        raise ValueError(f"frame size {size} is outside {MIN_FRAME}..{MAX_FRAME}")
    header = b"\xff" * 6 + bytes.fromhex("020000000001") + ETHERTYPE.to_bytes(2, "big")
    payload = bytes((seq + i) & 0xFF for i in range(size - len(header)))
    return header + payload


def find_nic(link: Link, nic: str) -> PciDevice:
    """The first PCI function with ``nic``'s vendor and device id."""
    if nic not in NICS:
        raise ValueError(f"unknown NIC '{nic}' (known: {', '.join(NICS)})")
    _kind, vendor, device = NICS[nic]
    for d in link.pci_scan():
        if d.vendor == vendor and d.device == device:
            return d
    raise NicNativeError(f"no {nic} ({vendor:04x}:{device:04x}) on this machine's PCI bus")


def enable_bus_master(link: Link, d: PciDevice) -> None:
    """I/O, memory and bus-master decoding on: the loop needs its BAR and DMA."""
    command = link.pci_read(d.bus, d.dev, d.fn, PCI_COMMAND, 2)
    want = command | CMD_IO | CMD_MEMORY | CMD_BUS_MASTER
    if want != command:
        link.pci_write(d.bus, d.dev, d.fn, PCI_COMMAND, want, 2)


def _bases(nic: str, d: PciDevice) -> tuple[int, int]:
    """(io_base, mmio_base) from BAR0: I/O for ne2k and rtl8139, memory for e1000."""
    bar0 = next((b for b in d.bars if b.index == 0), None)
    want = "mem" if nic == "e1000" else "io"
    if bar0 is None or bar0.kind != want or bar0.address == 0:
        raise NicNativeError(f"{nic} at {d.bdf}: BAR0 is not an assigned {want} BAR ({bar0})")
    return (0, bar0.address) if want == "mem" else (bar0.address, 0)


def native_tx(
    link: Link, nic: str, frame: bytes, count: int, batch: int = 1, timeout: float = 60.0
) -> NicTxResult:
    """Send ``count`` copies of ``frame`` through ``nic`` from the stub's own loop,
    ``batch`` frames per doorbell write (rtl8139 up to 64, e1000 up to 63)."""
    if not MIN_FRAME <= len(frame) <= MAX_FRAME:
        raise ValueError(f"frame of {len(frame)} bytes is outside {MIN_FRAME}..{MAX_FRAME}")
    if not 0 <= count <= 0xFFFFFFFF:
        raise ValueError(f"count {count} does not fit in 32 bits")
    d = find_nic(link, nic)
    if not 1 <= batch <= MAX_BATCH[nic]:
        raise ValueError(f"{nic} takes batches of 1..{MAX_BATCH[nic]} frames, not {batch}")
    io_base, mmio_base = _bases(nic, d)
    enable_bus_master(link, d)
    kind = NICS[nic][0]
    buf = link.alloc_dma(MAX_FRAME + 2 + abi.NIC_RING_BYTES + abi.NIC_NATIVE_SIZE)
    ring = 0
    frame_at = abi.NIC_RING_BYTES  # the ring first: the buffer is page aligned
    block_at = frame_at + MAX_FRAME + 2
    try:
        buf.write(frame, frame_at)
        block = abi.NIC_NATIVE.pack(
            kind, io_base, mmio_base, buf.phys + frame_at, len(frame),
            buf.phys + ring, count, batch, NOT_RUN, 0, 0,
        )  # fmt: skip
        buf.write(block, block_at)
        b = Batch()
        b._add(abi.OP_NATIVE_NIC_TX, 0, 0, 0, buf.phys + block_at)
        with contextlib.suppress(LinkError):  # the block says what went wrong
            link.execute(b, timeout=timeout)
        fields = abi.NIC_NATIVE.unpack(buf.read(block_at, abi.NIC_NATIVE_SIZE))
    finally:
        link.free_dma(buf)
    status, done, ticks = fields[-3:]
    result = NicTxResult(status, done, ticks / (link.tsc_khz * 1000.0))
    if status != abi.ST_OK:
        name = "not run" if status == NOT_RUN else abi.STATUS_NAMES.get(status, str(status))
        raise NicNativeError(
            f"native {nic} TX loop at {d.bdf} failed: {name} after {done} of {count} frames"
        )
    return result


def native_tx_pps(link: Link, nic: str, size: int, count: int, batch: int = 1) -> float:
    """Frames per second of the native loop sending ``count`` frames of ``size`` bytes."""
    result = native_tx(link, nic, tx_frame(size), count, batch)
    if result.seconds <= 0:
        raise NicNativeError(f"native {nic} TX loop reported no time for {count} frames")
    return result.pps
