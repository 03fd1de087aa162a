"""The link itself: batches, errors that keep the stub serving, memory, idle halting."""

from __future__ import annotations

import itertools
import os
import time

import pytest

from hwl import Batch, GuestMemoryError, LinkError, LinkWaitTimeoutError, Machine
from hwl.link import abi

pytestmark = pytest.mark.qemu


def test_single_ops_and_echo(pc: Machine) -> None:
    link = pc.link
    assert link.nop(0xDEADBEEF) == 0xDEADBEEF
    link.outb(0x3F6, 0)
    link.outb(0x1F6, 0xA0)  # select master
    assert link.inb(0x1F7) & 0xC0 == 0x40  # DRDY, not BSY
    link.outb(0x1F3, 0x5A)  # LBA low is a read/write register
    assert link.inb(0x1F3) == 0x5A
    link.outw(0x1F2, 0x1234)  # 16-bit writes reach the byte register too
    assert link.inw(0x1F2) & 0xFF in (0x34, 0x12)


def test_batch_runs_in_order_and_returns_every_value(pc: Machine) -> None:
    b = Batch()
    echoes = [b.nop(i * 3) for i in range(10)]
    b.outb(0x1F3, 0x11)
    first = b.inb(0x1F3)
    b.outb(0x1F3, 0x22)
    second = b.inb(0x1F3)
    r = pc.link.execute(b)
    assert [r[i] for i in echoes] == [i * 3 for i in range(10)]
    assert (r[first], r[second]) == (0x11, 0x22)


def test_batch_longer_than_a_slot(pc: Machine) -> None:
    b = Batch()
    idx = [b.nop(i) for i in range(3 * abi.MAX_OPS + 5)]
    r = pc.link.execute(b)
    assert [r[i] for i in idx] == list(range(3 * abi.MAX_OPS + 5))


def test_wait_timeout_stops_the_batch_and_keeps_serving(pc: Machine) -> None:
    b = Batch()
    b.outb(0x1F3, 0x01)
    b.wait(0x1F3, 0xFF, 0x02, timeout_us=2000)  # never true
    b.outb(0x1F3, 0x03)  # must not run
    with pytest.raises(LinkWaitTimeoutError, match=r"op 1 .*last value read 0x1") as err:
        pc.link.execute(b)
    assert err.value.op_index == 1 and err.value.last_value == 1
    assert pc.link.inb(0x1F3) == 0x01
    assert pc.link.nop(9) == 9


def test_stub_refuses_bad_requests_and_keeps_serving(pc: Machine) -> None:
    link = pc.link
    for line in (2, 3, 4, 16):
        with pytest.raises(LinkError, match="bad argument"):
            link.irq_unmask(line)
    raw_requests = [  # (code, width, port, a, b, c) as a buggy or hostile host could send them
        (
            (abi.OP_INS, 2, 0x1F0, 256, 0x1000, 0),
            "bad argument",
        ),  # below free_base: the stub itself
        (
            (abi.OP_INS, 2, 0x1F0, 0x10000000, link.scratch.phys, 0),
            "bad argument",
        ),  # past RAM's end
        ((abi.OP_IN, 3, 0x1F7, 0, 0, 0), "bad argument"),  # the stub checks widths too
        ((99, 1, 0, 0, 0, 0), "unknown operation"),
    ]
    for op, message in raw_requests:
        b = Batch()
        b.ops.append(op)
        with pytest.raises(LinkError, match=message) as err:
            link.execute(b)
        assert err.value.op_index == 0
    assert link.nop(5) == 5


def test_batch_builder_rejects_nonsense() -> None:
    b = Batch()
    with pytest.raises(ValueError, match="width"):
        b.in_(0x1F7, 3)
    with pytest.raises(ValueError, match="port"):
        b.inb(0x10000)
    with pytest.raises(ValueError, match="32 bits"):
        b.wait(0x1F7, 1 << 32, 0)


def test_physical_memory_and_dma_buffers(pc: Machine) -> None:
    link = pc.link
    buf = link.alloc_dma(3 * 4096, align=1 << 16)
    try:
        assert buf.phys % (1 << 16) == 0
        data = os.urandom(buf.size)
        link.write_phys(buf.phys, data)
        assert buf.read() == data
        assert link.read_phys(buf.phys + 100, 50) == data[100:150]
        with pytest.raises(GuestMemoryError):
            buf.read(buf.size - 1, 2)
        with pytest.raises(GuestMemoryError):
            link.read_phys(link.memory.size - 4, 8)
    finally:
        link.free_dma(buf)
    bounded = [link.alloc_dma(40 << 10, boundary=64 << 10) for _ in range(4)]
    try:
        for b in bounded:
            assert b.phys >> 16 == (b.phys + b.size - 1) >> 16, "crosses a 64 KiB boundary"
        spans = sorted((b.phys, b.phys + b.size) for b in bounded)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    finally:
        for b in bounded:
            link.free_dma(b)
    with pytest.raises(GuestMemoryError, match=r"no .* left"):
        link.alloc_dma(1 << 30)


def test_string_io_round_trip_through_a_device_buffer(pc: Machine) -> None:
    """Fill the drive's sector buffer with OUTS and read it back with INS, no disk write."""
    link = pc.link
    data = os.urandom(512)
    link.outb(0x1F6, 0xE0)
    link.outb(0x1F2, 1)
    for reg in (0x1F3, 0x1F4, 0x1F5):
        link.outb(reg, 0)
    link.outb(0x1F7, 0x30)  # WRITE SECTORS to LBA 0 ...
    b = Batch()
    b.wait(0x1F7, 0x88, 0x08)
    pc.link.execute(b)
    link.outs(0x1F0, data, 2)  # ... whose data we then read straight back from the disk
    b = Batch()
    b.wait(0x1F7, 0x80, 0)
    pc.link.execute(b)
    for reg in (0x1F3, 0x1F4, 0x1F5):  # the drive advanced its LBA registers past the write
        link.outb(reg, 0)
    link.outb(0x1F2, 1)
    link.outb(0x1F7, 0x20)  # READ SECTORS
    b = Batch()
    b.wait(0x1F7, 0x88, 0x08)
    got = b.ins(0x1F0, 128, 4)
    assert pc.link.execute(b).data[got] == data
    with pc.disks["hd0"].open("rb") as fh:
        assert fh.read(512) == data


def test_idle_stub_halts_and_a_doorbell_wakes_it(pc: Machine) -> None:
    link = pc.link
    halts = link.halts
    deadline = time.monotonic() + 2
    while not link.stub_sleeping and time.monotonic() < deadline:
        time.sleep(0.01)
    assert link.stub_sleeping, "an idle stub must halt instead of spinning"
    assert link.nop(77) == 77
    assert link.halts == halts + 1
    assert not link.stub_sleeping


def test_submitted_batches_pipeline_and_collect_in_any_order(pc: Machine) -> None:
    link = pc.link
    tickets = []
    for i in range(abi.NSLOTS):
        b = Batch()
        b.delay(200)
        b.nop(i)
        tickets.append(link.submit(b))
    with pytest.raises(RuntimeError, match="not collected yet"):
        link.submit(Batch([(abi.OP_NOP, 0, 0, 1, 0, 0)]))
    with pytest.raises(RuntimeError, match="not collected yet"):
        link.nop(1)  # would overwrite the oldest uncollected slot
    assert link.collect(tickets[5])[1] == 5
    with pytest.raises(RuntimeError, match="not collected yet"):
        link.nop(1)  # the ring is FIFO: the next slot is still the oldest batch's
    assert link.collect(tickets[0])[1] == 0
    assert link.nop(42) == 42  # its slot is free again
    for i in (7, 3, 1, 2, 4, 6):
        assert link.collect(tickets[i])[1] == i
    with pytest.raises(ValueError, match="collected already"):
        link.collect(tickets[0])


def test_submitted_batch_failure_surfaces_at_collect(pc: Machine) -> None:
    link = pc.link
    bad = Batch()
    bad.wait(0x1F3, 0xFF, 0x77, timeout_us=1000)
    good = Batch()
    good.nop(8)
    t_bad, t_good = link.submit(bad), link.submit(good)
    assert link.collect(t_good)[0] == 8
    with pytest.raises(LinkWaitTimeoutError):
        link.collect(t_bad)
    with pytest.raises(ValueError, match="own buffers"):
        scratch = Batch()
        scratch.ins(0x1F0, 4)
        link.submit(scratch)


def test_a_quiet_slot_rings_no_doorbell_while_the_host_waits(pc: Machine) -> None:
    """A posted batch (submit_packed quiet) completes without a doorbell byte even
    while the host waits; any other slot rings one."""
    link = pc.link
    (packed,) = Batch([(abi.OP_NOP, 0, 0, 5, 0, 0)]).packed()
    link.set_host_waiting(True)
    try:
        for quiet, more in ((True, 0), (False, 1)):
            bells = link.bells_sent
            ticket = link.submit_packed(packed, 1, quiet=quiet)
            deadline = time.monotonic() + 2
            while not link.done(ticket):
                assert time.monotonic() < deadline
            link.collect_raw(ticket, 1)
            time.sleep(0.05)  # the bell follows the completion
            assert link.bells_sent == bells + more, f"quiet={quiet}"
    finally:
        link.set_host_waiting(False)
        link.drain_doorbell()
