"""Interrupt forwarding: IRQ 14 arrives after an ATA command and stays masked until unmasked."""

from __future__ import annotations

import pytest

from hwl import IrqTimeoutError, Machine
from hwl.hw import ata


def start_read(pc: Machine) -> None:
    """A one-sector READ SECTORS; the drive raises INTRQ when the data is ready."""
    b = pc.link.batch()
    b.outb(0x3F6, 0)  # nIEN clear
    b.inb(0x1F7)  # reading status clears a pending INTRQ from earlier commands
    b.outb(0x1F6, 0xE0)
    b.outb(0x1F2, 1)
    for reg in (0x1F3, 0x1F4, 0x1F5):
        b.outb(reg, 0)
    b.outb(0x1F7, ata.CMD_READ_SECTORS)
    b.wait(0x1F7, ata.BSY | ata.DRQ, ata.DRQ)
    b.ins(0x1F0, 256, 2)
    b.inb(0x1F7)  # acknowledge: clears INTRQ
    pc.link.execute(b)


def test_irq14_is_forwarded_once_then_masked_until_unmasked(pc: Machine) -> None:
    link = pc.link
    link.poll_irqs()
    assert link.irq_masked(14)
    link.irq_unmask(14)
    assert not link.irq_masked(14)
    before = link.irq_count(14)

    start_read(pc)
    assert link.wait_irq(timeout=5) == [14]
    assert link.irq_count(14) == before + 1
    assert link.irq_masked(14), "a line that fired must stay masked"

    start_read(pc)  # fires again at the device, but the line is masked
    with pytest.raises(IrqTimeoutError):
        link.wait_irq(timeout=0.3)
    assert link.irq_count(14) == before + 1

    link.irq_unmask(14)  # the PIC latched the edge: it is delivered now
    assert link.wait_irq(timeout=5) == [14]
    assert link.irq_count(14) == before + 2
    assert link.irq_masked(14)


def test_irq_wait_times_out_cleanly(pc: Machine) -> None:
    with pytest.raises(IrqTimeoutError, match=r"no interrupt within 0\.1 s"):
        pc.link.wait_irq(timeout=0.1)
    assert pc.link.nop(3) == 3
