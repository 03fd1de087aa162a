"""Kernel calls on a real machine: port I/O, IRQs and DMA, each within privileges.

The machine's link belongs to the kernel process; the test is its root and
attaches further processes whose privileges it sets with ``privctl``, as RS
does from system.conf entries.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hwl import Machine, ipc
from hwl.hw import ata
from hwl.ipc import wire
from hwl.ipc.arena import Buffer
from hwl.kernel.calls import IRQ_WAIT_US, MAX_BLOCKS, MAX_WAIT_US
from hwl.kernel.errno import Errno
from hwl.kernel.launcher import KernelProcess
from hwl.link import abi
from hwl.link.batch import Batch, Patchable
from hwl.proto import vdevio
from hwl.proto.vdevio import Check, Copy
from hwl.pytest_plugin import MachineFactory

pytestmark = pytest.mark.qemu

IDE0 = "io 1f0:8 3f6; irq 14; system devio vdevio sdevio irqctl;"


@pytest.fixture(scope="module")
def machine_kernel(hwl_machines: MachineFactory) -> Iterator[tuple[Machine, KernelProcess]]:
    machine = hwl_machines.boot("pc")
    try:
        yield machine, KernelProcess.start(machine)
    finally:
        machine.close()


@pytest.fixture
def hw_root(machine_kernel: tuple[Machine, KernelProcess]) -> ipc.Connection:
    root = machine_kernel[1].root
    assert root is not None
    return root


@pytest.fixture
def process(machine_kernel: tuple[Machine, KernelProcess], hw_root: ipc.Connection):  # type: ignore[no-untyped-def]
    """A factory of attached processes with the privileges of a system.conf body."""
    made: list[ipc.Connection] = []

    def make(label: str, body: str) -> ipc.Connection:
        conn = machine_kernel[1].attach()
        hw_root.privctl_set(conn.endpoint, f"service {label} {{ {body} }};")
        made.append(conn)
        return conn

    yield make
    for conn in made:
        conn.close()


def kernel_log(machine_kernel: tuple[Machine, KernelProcess]) -> str:
    return (machine_kernel[1].run_dir / "kernel.log").read_text()


def identify_batch(drive: int = 0xA0) -> Batch:
    """Select the master and start IDENTIFY; done when the data is ready (DRQ)."""
    b = Batch()
    b.outb(0x3F6, 0)  # interrupts on
    b.outb(0x1F6, drive)
    b.inb(0x1F7)  # clears an INTRQ left pending by earlier commands
    b.outb(0x1F7, ata.CMD_IDENTIFY)
    b.wait(0x1F7, ata.BSY | ata.DRQ, ata.DRQ)
    return b


@contextlib.contextmanager
def granted(
    owner: ipc.Connection, grantee: int, size: int = 512, *, write: bool = True
) -> Iterator[tuple[Buffer, int]]:
    """``size`` bytes of ``owner``'s arena and a grant of them to ``grantee``
    (readable, and writable unless ``write`` is False), revoked and freed after."""
    buf = owner.arena.alloc(size)
    grant = owner.arena.grant(grantee, buf.offset, size, read=True, write=write)
    try:
        yield buf, grant
    finally:
        owner.arena.revoke(grant)
        owner.arena.free(buf)


def identify(conn: ipc.Connection) -> bytes:
    """IDENTIFY through vdevio, its 512 bytes through sdevio into our own grant."""
    conn.vdevio(identify_batch())
    with granted(conn, conn.endpoint) as (buf, grant):
        conn.sdevio("in", 0x1F0, 256, 2, conn.endpoint, grant)
        conn.devio_in(0x1F7)  # acknowledge
        return buf.read()


def assert_armed(conn: ipc.Connection, hook: int) -> None:
    """The hook's line is unmasked: a command's interrupt arrives as a notify."""
    identify(conn)
    assert conn.receive(ipc.HARDWARE, timeout=5).is_notify, "the hook's line is masked"
    conn.irq_enable(hook)


def test_the_machine_link_now_belongs_to_the_kernel(
    machine_kernel: tuple[Machine, KernelProcess],
) -> None:
    with pytest.raises(Exception, match="belongs to the kernel"):
        _ = machine_kernel[0].link


def test_devio_reads_the_ide_status_port_within_its_io_range(process) -> None:  # type: ignore[no-untyped-def]
    conn = process("ide0", IDE0)
    conn.devio_out(0x1F6, 0xA0)  # SeaBIOS leaves the (absent) slave selected
    status = conn.devio_in(0x1F7)
    assert status != 0xFF and status & ata.DRDY, f"status {status:#x}"
    assert not status & ata.BSY


@pytest.mark.parametrize(
    ("port", "width"),
    [(0x170, 1), (0x1F8, 1), (0x1F6, 4), (0x3F7, 1), (0x60, 1)],
)
def test_ports_outside_its_io_ranges_get_eperm_and_a_log_line(  # type: ignore[no-untyped-def]
    process, machine_kernel: tuple[Machine, KernelProcess], port: int, width: int
) -> None:
    conn = process("ide0", IDE0)
    with pytest.raises(ipc.IpcError) as err:
        conn.devio_in(port, width)
    assert err.value.errno is Errno.EPERM
    assert f"port {port:#x}" in str(err.value)
    assert f"EPERM: ide0 ({conn.endpoint}) devio: port {port:#x}" in kernel_log(machine_kernel)
    assert conn.devio_in(0x1F7) != 0xFF  # and the process goes on working


def test_one_forbidden_op_refuses_the_whole_vdevio(process) -> None:  # type: ignore[no-untyped-def]
    conn = process("ide0", IDE0)
    b = Batch()
    b.outb(0x1F6, 0xA0)
    b.inb(0x177)
    with pytest.raises(ipc.IpcError) as err:
        conn.vdevio(b)
    assert err.value.errno is Errno.EPERM and "0x177" in str(err.value)


def test_a_batch_checked_once_is_checked_again_under_new_privileges(  # type: ignore[no-untyped-def]
    process, hw_root: ipc.Connection
) -> None:
    """The kernel remembers batches that passed (wire.VDEVIO); new privileges
    (privctl set, as RS's restart does) start that memory over."""
    conn = process("ide0", IDE0)
    b = Batch()
    b.inb(0x1F7)
    for _ in range(3):
        conn.vdevio(b)  # allowed, and remembered
    hw_root.privctl_set(conn.endpoint, "service ide1 { io 170:8 376; system vdevio; };")
    with pytest.raises(ipc.IpcError) as err:
        conn.vdevio(b)
    assert err.value.errno is Errno.EPERM and "0x1f7" in str(err.value)


def test_a_checked_shape_is_checked_again_when_a_port_or_a_checked_operand_changes(  # type: ignore[no-untyped-def]
    process,
) -> None:
    """The kernel remembers a batch by its shape (op heads and the operands its
    checks read), not its bytes: new values written (a sector, a count) keep the
    shape and pass; another port, or a wait over its bound, is a new shape and is
    checked, and refused."""
    conn = process("ide0", IDE0)

    def batch(port: int, value: int, timeout_us: int) -> Patchable:
        b = Batch()
        b.outb(port, value)
        b.wait(0x1F7, ata.BSY, 0, timeout_us)
        return Patchable(b)

    command = batch(0x1F2, 1, 1000)
    for value in (1, 2, 3):
        command.set(0, value)
        conn.kcall_binary(wire.VDEVIO, wire.NO_HOOK, bytes(command.ops), "vdevio")
    with pytest.raises(ipc.IpcError) as err:
        conn.kcall_binary(wire.VDEVIO, wire.NO_HOOK, bytes(batch(0x172, 1, 1000).ops), "vdevio")
    assert err.value.errno is Errno.EPERM and "port 0x172" in str(err.value)
    too_long = batch(0x1F2, 1, MAX_WAIT_US + 1)
    with pytest.raises(ipc.IpcError) as err:
        conn.kcall_binary(wire.VDEVIO, wire.NO_HOOK, bytes(too_long.ops), "vdevio")
    assert err.value.errno is Errno.EINVAL and "waits" in str(err.value)
    command.set(0, 9)
    conn.kcall_binary(wire.VDEVIO, wire.NO_HOOK, bytes(command.ops), "vdevio")


DMAIO = IDE0 + " memory dma;"


def vdevio_copy(
    conn: ipc.Connection, batch: Batch, copy: Copy, hook: int | None = None
) -> tuple[list[int], int]:
    """vdevio with a DMA copy (hwl.proto.vdevio): the ops' results, bytes copied."""
    (ops,) = batch.packed()
    answer = conn.kcall_binary(wire.VDEVIO, vdevio.peer_field(hook), copy.pack() + ops, "vdevio")
    end = wire.RESPONSE.size + len(ops)
    assert len(answer) == end + vdevio.COPIED.size
    values = memoryview(answer)[wire.RESPONSE.size : end].cast("I")[3 :: abi.OP_SIZE // 4]
    return values.tolist(), int(vdevio.COPIED.unpack_from(answer, end)[0])


def test_vdevio_copies_to_a_grant_after_its_batch_only_when_its_checks_hold(  # type: ignore[no-untyped-def]
    process, hw_root: ipc.Connection
) -> None:
    driver = process("dmaio", DMAIO)
    driver.devio_out(0x1F6, 0xA0)  # SeaBIOS leaves the (absent) slave selected
    buf = driver.dma_alloc(8192)
    data = os.urandom(4096)
    driver.dma_write(buf, 100, data)
    with granted(hw_root, driver.endpoint, 4096 + 50) as (client, gid):
        client.write(bytes(client.size))
        b = Batch()
        st = b.inb(0x1F7)

        def copy(*checks: Check) -> Copy:
            return Copy(vdevio.TO_GRANT, buf.id, 100, 4096, hw_root.endpoint, gid, 50, checks)

        values, copied = vdevio_copy(driver, b, copy(Check(st, 0xFF, 0x100)))  # never holds
        assert copied == 0 and values[st] & ata.DRDY
        assert client.read() == bytes(client.size), "a failed check copied"
        values, copied = vdevio_copy(driver, b, copy(Check(st, ata.BSY, 0)))
        assert copied == 4096
        assert client.read(50) == bytes(50) and client.read(4096, 50) == data
        with pytest.raises(ipc.IpcError) as err:
            vdevio_copy(driver, b, copy(Check(1, 0, 0)))
        assert err.value.errno is Errno.EINVAL and "names op 1 of 1" in str(err.value)
    driver.dma_free(buf)


def test_vdevio_copies_from_a_grant_before_its_batch(  # type: ignore[no-untyped-def]
    process, hw_root: ipc.Connection
) -> None:
    driver = process("dmaio", DMAIO)
    buf = driver.dma_alloc(4096)
    data = os.urandom(4096)
    b = Batch()
    b.inb(0x1F7)
    with granted(hw_root, driver.endpoint, 4096, write=False) as (client, gid):
        client.write(data)
        _values, copied = vdevio_copy(
            driver, b, Copy(vdevio.FROM_GRANT, buf.id, 0, 4096, hw_root.endpoint, gid, 0)
        )
        assert copied == 4096 and driver.dma_read(buf, 0, 4096) == data
    driver.dma_free(buf)


def test_a_refused_dma_copy_runs_nothing(  # type: ignore[no-untyped-def]
    process, hw_root: ipc.Connection
) -> None:
    """A read's grant that does not allow writing, a buffer that is not the
    caller's, a copy past its end, no 'memory dma': refused before the batch ran."""
    driver = process("dmaio", DMAIO)
    buf = driver.dma_alloc(4096)
    driver.devio_out(0x1F6, 0xA0)
    b = Batch()
    b.outb(0x1F6, 0xB0)  # would select the slave
    with granted(hw_root, driver.endpoint, 4096, write=False) as (_client, gid):
        bad = [
            (Copy(vdevio.TO_GRANT, buf.id, 0, 4096, hw_root.endpoint, gid, 0), Errno.EPERM,
             "does not allow writing"),
            (Copy(vdevio.TO_GRANT, buf.id + 1000, 0, 512, hw_root.endpoint, gid, 0), Errno.EINVAL,
             "not one of this process's"),
            (Copy(vdevio.FROM_GRANT, buf.id, 512, 4096, hw_root.endpoint, gid, 0), Errno.EINVAL,
             "of a 4096-byte buffer"),
        ]  # fmt: skip
        for copy, errno, why in bad:
            with pytest.raises(ipc.IpcError) as err:
                vdevio_copy(driver, b, copy)
            assert err.value.errno is errno and why in str(err.value), err.value
            assert driver.devio_in(0x1F6) & 0x10 == 0, "the batch ran"
        nodma = process("nodma", IDE0)
        with pytest.raises(ipc.IpcError) as err:
            vdevio_copy(nodma, b, Copy(vdevio.TO_GRANT, 1, 0, 512, hw_root.endpoint, gid, 0))
        assert err.value.errno is Errno.EPERM and "memory ... dma" in str(err.value)
    driver.dma_free(buf)


def test_a_process_without_devio_on_its_system_line_gets_ecalldenied(process) -> None:  # type: ignore[no-untyped-def]
    conn = process("noio", "io 1f0:8;")
    with pytest.raises(ipc.IpcError) as err:
        conn.devio_in(0x1F7)
    assert err.value.errno is Errno.ECALLDENIED


def test_identify_through_vdevio_and_sdevio(process) -> None:  # type: ignore[no-untyped-def]
    conn = process("ide0", IDE0)
    data = identify(conn)
    model = bytes(b for pair in zip(data[55:94:2], data[54:94:2], strict=True) for b in pair)
    assert model.decode().strip() == "HWL DISK 0"
    serial = bytes(b for pair in zip(data[21:40:2], data[20:40:2], strict=True) for b in pair)
    assert serial.decode().strip() == "HWLHD0"


def test_sdevio_into_a_grant_it_may_not_write_is_refused(process, hw_root: ipc.Connection) -> None:  # type: ignore[no-untyped-def]
    conn = process("ide0", IDE0)
    with granted(hw_root, conn.endpoint, write=False) as (_buf, read_only):
        with pytest.raises(ipc.IpcError) as err:
            conn.sdevio("in", 0x1F0, 256, 2, hw_root.endpoint, read_only)
        assert err.value.errno is Errno.EPERM


def test_irq_becomes_a_hardware_notify_and_stays_masked_until_irqenable(process) -> None:  # type: ignore[no-untyped-def]
    conn = process("ide0", IDE0)
    hook = conn.irq_setpolicy(14, notify_id=3)
    try:
        identify(conn)
        note = conn.receive(ipc.HARDWARE, timeout=5)
        assert note.is_notify and note["interrupts"] == 1 << 3

        identify(conn)  # the drive interrupts again, but the line is masked
        with pytest.raises(ipc.IpcTimeout):
            conn.receive(ipc.HARDWARE, timeout=0.3)

        conn.irq_enable(hook)  # the latched edge is delivered now
        note = conn.receive(ipc.HARDWARE, timeout=5)
        assert note["interrupts"] == 1 << 3
        conn.irq_enable(hook)
    finally:
        conn.irq_rmpolicy(hook)


def test_vdevio_with_a_hook_reenables_it_after_the_batch(process) -> None:  # type: ignore[no-untyped-def]
    conn = process("ide0", IDE0)
    hook = conn.irq_setpolicy(14)
    try:
        identify(conn)
        conn.receive(ipc.HARDWARE, timeout=5)
        identify(conn)  # masked: latched, not delivered
        with pytest.raises(ipc.IpcTimeout):
            conn.receive(ipc.HARDWARE, timeout=0.3)
        b = Batch()
        status = b.inb(0x1F7)
        assert conn.vdevio(b, irq_enable=hook)[status] & 0x80 == 0
        assert conn.receive(ipc.HARDWARE, timeout=5).is_notify  # enabled by the vdevio
        with pytest.raises(ipc.IpcError) as err:
            conn.vdevio(b, irq_enable=hook + 99)  # not its hook: refused before the batch
        assert err.value.errno is Errno.EINVAL
        conn.irq_enable(hook)
    finally:
        conn.irq_rmpolicy(hook)


def test_a_shared_line_stays_masked_until_every_hook_reenabled(process) -> None:  # type: ignore[no-untyped-def]
    """The batch that re-enables a hook unmasks the line itself only when no
    other hook on it still waits for its irqenable."""
    a, b = process("ide0", IDE0), process("ide0b", IDE0)
    hook_a, hook_b = a.irq_setpolicy(14), b.irq_setpolicy(14)
    try:
        identify(a)
        assert a.receive(ipc.HARDWARE, timeout=5).is_notify
        assert b.receive(ipc.HARDWARE, timeout=5).is_notify
        status = Batch()
        status.inb(0x1F7)
        a.vdevio(status, irq_enable=hook_a)  # b's hook still waits: stays masked
        identify(a)
        with pytest.raises(ipc.IpcTimeout):
            a.receive(ipc.HARDWARE, timeout=0.3)
        b.vdevio(status, irq_enable=hook_b)  # the last one: unmasked, edge delivered
        assert a.receive(ipc.HARDWARE, timeout=5).is_notify
        assert b.receive(ipc.HARDWARE, timeout=5).is_notify
        a.irq_enable(hook_a)
        b.irq_enable(hook_b)
    finally:
        a.irq_rmpolicy(hook_a)
        b.irq_rmpolicy(hook_b)


PIO_READY = (0x1F7, ata.BSY | ata.DRQ | ata.ERR, ata.DRQ)


def test_sdevio_with_ready_moves_the_block_and_reenables_the_irq(process) -> None:  # type: ignore[no-untyped-def]
    """An interrupt handler's one call: status read (acknowledges), data, irqenable."""
    conn = process("ide0", IDE0)
    hook = conn.irq_setpolicy(14)
    try:
        with granted(conn, conn.endpoint) as (buf, grant):
            expected = identify(conn)  # by the two-call way; its interrupt is latched
            conn.receive(ipc.HARDWARE, timeout=5)
            conn.irq_enable(hook)
            conn.vdevio(identify_batch())  # IDENTIFY again: DRQ up, an interrupt posted
            conn.receive(ipc.HARDWARE, timeout=5)
            buf.write(bytes(512))
            moved = conn.sdevio("in", 0x1F0, 128, 4, conn.endpoint, grant, ready=PIO_READY,
                                   irq_enable=hook)  # fmt: skip
            assert moved.ready is not None and moved.ready & PIO_READY[1] == ata.DRQ
            assert moved.bytes == 512
            assert buf.read() == expected  # 32-bit units, the same bytes

            # Not ready (no command, no DRQ): the status comes back, nothing moves,
            # and the hook is re-enabled all the same.
            buf.write(b"\xaa" * 512)
            moved = conn.sdevio("in", 0x1F0, 256, 2, conn.endpoint, grant, ready=PIO_READY,
                                   irq_enable=hook)  # fmt: skip
            assert moved.ready is not None and not moved.ready & ata.DRQ
            assert moved.bytes == 0
            assert buf.read() == b"\xaa" * 512
            assert_armed(conn, hook)
    finally:
        conn.irq_rmpolicy(hook)


def read_sectors_batch(count: int, interrupts: bool = True) -> Batch:
    """READ SECTORS of ``count`` sectors from LBA 0: one interrupt per sector
    (none with ``interrupts`` False: nIEN, so no edge is left latched either)."""
    b = Batch()
    b.outb(0x3F6, 0 if interrupts else 0x02)
    b.outb(0x1F6, 0xE0)
    b.inb(0x1F7)
    b.outb(0x1F2, count)
    for reg in (0x1F3, 0x1F4, 0x1F5):
        b.outb(reg, 0)
    b.outb(0x1F7, ata.CMD_READ_SECTORS)
    return b


def polled_sectors(conn: ipc.Connection, count: int) -> bytes:
    """The sectors read without interrupts (no hook yet), to compare with."""
    with granted(conn, conn.endpoint, count * 512) as (buf, grant):
        conn.vdevio(read_sectors_batch(count, interrupts=False))
        drq = Batch()
        drq.wait(0x1F7, ata.BSY | ata.DRQ, ata.DRQ)
        for i in range(count):
            conn.vdevio(drq)
            conn.sdevio("in", 0x1F0, 128, 4, conn.endpoint, grant, i * 512)
        conn.devio_in(0x1F7)
        return buf.read()


def test_sdevio_blocks_move_a_multi_sector_read_on_the_hooks_interrupts(process) -> None:  # type: ignore[no-untyped-def]
    """Up to MAX_BLOCKS blocks per call: the interrupts between are the call's own.
    A call may stop short (an interrupt slow to come on a loaded host): the
    driver's way on, as in at_wini, is its next interrupt and another call."""
    conn = process("ide0", IDE0)
    count = MAX_BLOCKS + 4
    expected = polled_sectors(conn, count)
    hook = conn.irq_setpolicy(14)
    try:
        with granted(conn, conn.endpoint, count * 512) as (buf, grant):
            conn.vdevio(read_sectors_batch(count))
            calls: list[int] = []
            while sum(calls) < count * 512:
                assert conn.receive(ipc.HARDWARE, timeout=5).is_notify
                done = sum(calls)
                moved = conn.sdevio("in", 0x1F0, (count * 512 - done) // 4, 4, conn.endpoint,
                                       grant, done, ready=PIO_READY, irq_enable=hook,
                                       block=128)  # fmt: skip
                assert moved.ready is not None and moved.ready & PIO_READY[1] == ata.DRQ
                calls.append(moved.bytes)
            assert buf.read() == expected
            assert max(calls) <= MAX_BLOCKS * 512, calls
            assert max(calls) > 512, f"no call took a block on its own interrupt: {calls}"
            with pytest.raises(ipc.IpcTimeout):  # no notify for the blocks the calls took
                conn.receive(ipc.HARDWARE, timeout=0.3)
        assert_armed(conn, hook)
    finally:
        conn.irq_rmpolicy(hook)


def test_sdevio_blocks_stop_short_when_an_interrupt_does_not_come(process) -> None:  # type: ignore[no-untyped-def]
    conn = process("ide0", IDE0)
    expected = polled_sectors(conn, 2)
    hook = conn.irq_setpolicy(14)
    try:
        with granted(conn, conn.endpoint, 4 * 512) as (buf, grant):
            conn.vdevio(read_sectors_batch(2))  # two sectors, the call asks for four
            conn.receive(ipc.HARDWARE, timeout=5)
            moved = conn.sdevio("in", 0x1F0, 4 * 128, 4, conn.endpoint, grant,
                                   ready=PIO_READY, irq_enable=hook, block=128)  # fmt: skip
            assert moved.bytes == 2 * 512
            assert moved.ready is not None and moved.ready & PIO_READY[1] == ata.DRQ
            assert buf.read()[:1024] == expected
        assert_armed(conn, hook)
    finally:
        conn.irq_rmpolicy(hook)


def test_sdevio_blocks_on_a_shared_line_move_one_block_per_interrupt(process) -> None:  # type: ignore[no-untyped-def]
    """Another hook's owner must see every interrupt: no block waits inside the call."""
    a, b = process("ide0", IDE0), process("ide0b", IDE0)
    expected = polled_sectors(a, 2)
    hook_a, hook_b = a.irq_setpolicy(14), b.irq_setpolicy(14)
    try:
        with granted(a, a.endpoint, 2 * 512) as (buf, grant):
            a.vdevio(read_sectors_batch(2))
            for i in range(2):
                assert a.receive(ipc.HARDWARE, timeout=5).is_notify
                assert b.receive(ipc.HARDWARE, timeout=5).is_notify
                b.irq_enable(hook_b)
                moved = a.sdevio("in", 0x1F0, (2 - i) * 128, 4, a.endpoint, grant, i * 512,
                                    ready=PIO_READY, irq_enable=hook_a, block=128)  # fmt: skip
                assert moved.bytes == 512
            assert buf.read() == expected
    finally:
        a.irq_rmpolicy(hook_a)
        b.irq_rmpolicy(hook_b)


def test_vdevio_takes_a_commands_interrupt_inside_the_batch(process) -> None:  # type: ignore[no-untyped-def]
    """Command, interrupt and status read in one call, as at_wini's DMA commands:
    the interrupt the batch waited for is never the host's (no notify), and the
    hook is armed for the next one."""
    conn = process("ide0", IDE0)
    hook = conn.irq_setpolicy(14)
    try:
        expected = identify(conn)
        assert conn.receive(ipc.HARDWARE, timeout=5).is_notify
        conn.irq_enable(hook)
        b = identify_batch()
        fired = b.irq_wait(14, IRQ_WAIT_US)
        status = b.inb(0x1F7)  # acknowledges the interrupt
        values = conn.vdevio(b, irq_enable=hook)
        assert values[fired] == 1
        assert values[status] & (ata.BSY | ata.DRQ) == ata.DRQ
        with granted(conn, conn.endpoint) as (buf, grant):
            conn.sdevio("in", 0x1F0, 128, 4, conn.endpoint, grant)
            assert buf.read() == expected
        with pytest.raises(ipc.IpcTimeout):
            conn.receive(ipc.HARDWARE, timeout=0.3)
        assert_armed(conn, hook)
    finally:
        conn.irq_rmpolicy(hook)


def test_a_vdevio_wait_that_times_out_leaves_the_interrupt_to_a_notify(process) -> None:  # type: ignore[no-untyped-def]
    """No error: the wait's result is 0, what follows it did not run, and the
    interrupt that comes later is a notify as usual."""
    conn = process("ide0", IDE0)
    hook = conn.irq_setpolicy(14)
    try:
        b = Batch()
        b.inb(0x1F7)  # nothing pending, no command: nothing will interrupt
        fired = b.irq_wait(14, 2000)
        b.outb(0x1F6, 0xB0)  # would select the slave: must not run
        assert conn.vdevio(b, irq_enable=hook)[fired] == 0
        assert conn.devio_in(0x1F6) & 0x10 == 0, "the op after the wait ran"
        assert_armed(conn, hook)
    finally:
        conn.irq_rmpolicy(hook)


@pytest.mark.parametrize(
    ("line", "timeout_us", "with_hook", "errno", "why"),
    [
        (14, 1000, False, Errno.EINVAL, "needs a hook"),
        (15, 1000, True, Errno.EPERM, "not the hook's 14"),
        (14, IRQ_WAIT_US + 1, True, Errno.EINVAL, f"at most {IRQ_WAIT_US}"),
    ],
)
def test_vdevio_refuses_an_irq_wait_that_is_not_the_hooks(  # type: ignore[no-untyped-def]
    process, line: int, timeout_us: int, with_hook: bool, errno: Errno, why: str
) -> None:
    conn = process("ide0", IDE0)
    hook = conn.irq_setpolicy(14)
    try:
        b = Batch()
        b.irq_wait(line, timeout_us)
        with pytest.raises(ipc.IpcError) as err:
            conn.vdevio(b, irq_enable=hook if with_hook else None)
        assert err.value.errno is errno and why in str(err.value), err.value
        assert_armed(conn, hook)  # nothing ran, nothing changed
    finally:
        conn.irq_rmpolicy(hook)


def test_vdevio_refuses_an_irq_wait_on_a_shared_line(process) -> None:  # type: ignore[no-untyped-def]
    """Another hook's owner must see every interrupt: EBUSY, and nothing ran."""
    a, b = process("ide0", IDE0), process("ide0b", IDE0)
    hook_a, hook_b = a.irq_setpolicy(14), b.irq_setpolicy(14)
    try:
        batch = identify_batch()
        batch.irq_wait(14, 1000)
        with pytest.raises(ipc.IpcError) as err:
            a.vdevio(batch, irq_enable=hook_a)
        assert err.value.errno is Errno.EBUSY and "shared" in str(err.value), err.value
        with pytest.raises(ipc.IpcTimeout):  # the IDENTIFY in it was not issued either
            a.receive(ipc.HARDWARE, timeout=0.3)
    finally:
        a.irq_rmpolicy(hook_a)
        b.irq_rmpolicy(hook_b)


@pytest.mark.parametrize(
    ("fields", "errno", "why"),
    [
        ({"ready": [0x177, 0x08, 0x08]}, Errno.EPERM, "port 0x177"),
        ({"ready": [0x1F7, 0x08]}, Errno.EINVAL, "ready must be"),
        ({"ready": [0x1F7, 0x1FF, 0x08]}, Errno.EINVAL, "out of range"),
        ({"ready": "1f7"}, Errno.EINVAL, "ready must be"),
        ({"hook": 12345}, Errno.EINVAL, "hook"),
        ({"block": 128}, Errno.EINVAL, "'block' needs 'hook'"),
    ],
)
def test_sdevio_refuses_a_bad_ready_check_or_hook(  # type: ignore[no-untyped-def]
    process, fields: dict[str, object], errno: Errno, why: str
) -> None:
    conn = process("ide0", IDE0)
    with granted(conn, conn.endpoint) as (_buf, grant):
        base = {"port": 0x1F0, "width": 2, "count": 256, "dir": "in",
                "endpoint": conn.endpoint, "grant": grant}  # fmt: skip
        with pytest.raises(ipc.IpcError) as err:
            conn.kcall("sdevio", {**base, **fields})
        assert err.value.errno is errno and why in str(err.value), err.value
        assert conn.devio_in(0x1F7) != 0xFF  # it goes on working


def test_irq_lines_outside_its_irq_list_get_eperm(process, machine_kernel) -> None:  # type: ignore[no-untyped-def]
    conn = process("ide0", IDE0)
    with pytest.raises(ipc.IpcError) as err:
        conn.irq_setpolicy(15)
    assert err.value.errno is Errno.EPERM
    assert "irqsetpolicy: IRQ 15" in kernel_log(machine_kernel)
    with pytest.raises(ipc.IpcError) as err:
        conn.irq_enable(12345)  # a hook that is not ours
    assert err.value.errno is Errno.EINVAL


def test_dma_needs_the_memory_dma_privilege(process, machine_kernel) -> None:  # type: ignore[no-untyped-def]
    conn = process("nodma", IDE0)
    with pytest.raises(ipc.IpcError) as err:
        conn.dma_alloc(4096)
    assert err.value.errno is Errno.EPERM
    assert "dmaalloc: no 'memory ... dma' privilege" in kernel_log(machine_kernel)


def test_dma_buffers_map_copy_and_are_private(process) -> None:  # type: ignore[no-untyped-def]
    owner = process("dma1", "system umap; memory dma;")
    other = process("dma2", "memory dma;")
    buf = owner.dma_alloc(8192, align=4096)
    assert buf.phys % 4096 == 0 and buf.size == 8192
    assert owner.umap(buf, 100) == buf.phys + 100
    owner.dma_write(buf, 10, b"guest bytes")
    assert owner.dma_read(buf, 10, 11) == b"guest bytes"
    local = owner.arena.alloc(16)
    owner.dma_to_grant(buf, 10, 11, ipc.SELF, 0, local.offset)
    assert local.read(11) == b"guest bytes"
    with pytest.raises(ipc.IpcError) as err:
        other.dma_read(buf, 0, 16)  # the same id means nothing to another process
    assert err.value.errno is Errno.EINVAL
    owner.dma_free(buf)


def test_dma_buffers_are_freed_when_their_owner_exits(process, machine_kernel) -> None:  # type: ignore[no-untyped-def]
    big = 96 << 20  # most of the 128 MiB guest: two cannot coexist
    first = process("dmabig1", "memory dma;")
    second = process("dmabig2", "memory dma;")
    first.dma_alloc(big)
    with pytest.raises(ipc.IpcError) as err:
        second.dma_alloc(big)
    assert err.value.errno is Errno.ENOMEM
    first.close()
    deadline = time.monotonic() + 5
    while True:
        try:
            second.dma_alloc(big)
            break
        except ipc.IpcError:
            assert time.monotonic() < deadline, "the dead owner's buffer was never freed"
            time.sleep(0.02)


def test_getinfo_machine_reports_the_guest(hw_root: ipc.Connection, machine_kernel) -> None:  # type: ignore[no-untyped-def]
    info = hw_root.getinfo("machine")
    assert info["ram"] == machine_kernel[0].profile.memory
    assert isinstance(info["tsc_khz"], int) and info["tsc_khz"] > 0


def test_kernel_stops_with_the_machine(hwl_machines: MachineFactory, tmp_path: Path) -> None:
    machine = hwl_machines.boot("pc")
    kernel = KernelProcess.start(machine)
    assert kernel.alive()
    machine.close()
    assert not kernel.alive()


def test_privctl_add_io_and_add_irq_extend_a_running_process(  # type: ignore[no-untyped-def]
    process, hw_root: ipc.Connection
) -> None:
    """What the PCI server does when a driver reserves a device."""
    conn = process("late", "system devio irqctl;")
    with pytest.raises(ipc.IpcError):
        conn.devio_in(0x177)
    hw_root.privctl_add_io(conn.endpoint, 0x170, 8)
    hw_root.privctl_add_irq(conn.endpoint, 15)
    conn.devio_out(0x176, 0xA0)
    assert conn.devio_in(0x177) != 0xFF
    hook = conn.irq_setpolicy(15)
    conn.irq_rmpolicy(hook)
    with pytest.raises(ipc.IpcError) as err:
        conn.devio_in(0x178)
    assert err.value.errno is Errno.EPERM
