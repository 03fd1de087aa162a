"""MMIO (stub ABI 3) on a real pc machine: the e1000's BAR0 in the PCI hole.

First on the raw link (the stub's own checks), then through the kernel, whose
vdevio checks every MMIO op against the caller's memory ranges (what the PCI
server grants with ``privctl add_mem`` when a driver reserves the device).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from agents import MakeProc

from hwl import Batch, LinkError, LinkWaitTimeoutError, Machine, ipc
from hwl.ipc import wire
from hwl.kernel.errno import Errno
from hwl.kernel.launcher import KernelProcess
from hwl.link import abi
from hwl.link.pci import PciDevice
from hwl.proto import vdevio
from hwl.pytest_plugin import MachineFactory

pytestmark = pytest.mark.qemu

E1000 = (0x8086, 0x100E)
STATUS, STATUS_LU = 0x8, 0x2
RDBAL = 0x2800
BAR0_SIZE = 128 << 10


def raw_op(code: int, addr: int, width: int = 4) -> Batch:
    """A batch holding one op exactly as given (the host's own checks bypassed)."""
    b = Batch()
    b.ops.append((code, width, 0, addr, 0, 0))
    return b


@pytest.fixture(scope="module")
def machine(hwl_machines: MachineFactory) -> Iterator[Machine]:
    m = hwl_machines.boot("pc")
    try:
        yield m
    finally:
        m.close()


@pytest.fixture(scope="module")
def e1000(machine: Machine) -> PciDevice:
    """The e1000 as the link's own scan sees it (before the kernel takes the link)."""
    return next(d for d in machine.link.pci_scan() if (d.vendor, d.device) == E1000)


def bar0(dev: PciDevice) -> int:
    bar = dev.bars[0]
    assert bar.kind == "mem" and bar.size == BAR0_SIZE, bar
    return bar.address


def test_raw_link_reads_writes_and_waits_on_e1000_registers(
    machine: Machine, e1000: PciDevice
) -> None:
    link, base = machine.link, bar0(e1000)
    assert link.mmio_read(base + STATUS) & STATUS_LU, "e1000 link is not up"
    link.mmio_write(base + RDBAL, 0x00ABC000)
    assert link.mmio_read(base + RDBAL) == 0x00ABC000
    b = Batch()
    seen = b.mmio_wait(base + STATUS, STATUS_LU, STATUS_LU, timeout_us=1000)
    assert link.execute(b)[seen] & STATUS_LU
    b = Batch()
    b.mmio_wait(base + STATUS, STATUS_LU, 0, timeout_us=300)  # never true
    with pytest.raises(LinkWaitTimeoutError) as info:
        link.execute(b)
    assert info.value.last_value & STATUS_LU


@pytest.mark.parametrize("addr", [0, 0x100000, (64 << 20) - 4], ids=["zero", "stub", "ram"])
def test_stub_refuses_mmio_on_ram(machine: Machine, addr: int) -> None:
    with pytest.raises(LinkError) as info:
        machine.link.execute(raw_op(abi.OP_MMIO_RD, addr))
    assert info.value.status == abi.ST_BADARG
    assert machine.link.nop(7) == 7  # still serving


def test_stub_refuses_misaligned_and_wrapping_mmio(machine: Machine, e1000: PciDevice) -> None:
    for addr, width in ((bar0(e1000) + 1, 4), (bar0(e1000) + 1, 2), (0xFFFFFFFE, 4)):
        with pytest.raises(LinkError) as info:
            machine.link.execute(raw_op(abi.OP_MMIO_WR, addr, width))
        assert info.value.status == abi.ST_BADARG, (hex(addr), width)
    with pytest.raises(ValueError):
        Batch().mmio_read(bar0(e1000) + 2)  # the host refuses it first


# --- through the kernel ----------------------------------------------------------
ICR, ICS, IMS, IMC = 0xC0, 0xC8, 0xD0, 0xD8
ICR_LSC = 0x04
E1000_IRQ = 11


@pytest.fixture(scope="module")
def kernel(machine: Machine, e1000: PciDevice) -> Iterator[KernelProcess]:
    """The kernel takes the link (after the raw tests and the scan)."""
    k = KernelProcess.start(machine)
    try:
        yield k
    finally:
        k.stop()


def driver(
    process: MakeProc,
    kernel: KernelProcess,
    e1000: PciDevice,
    label: str,
    calls: str = "vdevio irqctl",
) -> ipc.Connection:
    """A process granted the e1000's BAR0 (and its I/O BAR and IRQ) as the PCI
    server's reserve grants them, and kernel ``calls``."""
    conn = process(label, f"system {calls};")
    assert kernel.root is not None
    kernel.root.privctl_add_mem(conn.endpoint, bar0(e1000), BAR0_SIZE)
    io = e1000.bars[1]
    kernel.root.privctl_add_io(conn.endpoint, io.address, io.size)
    kernel.root.privctl_add_irq(conn.endpoint, E1000_IRQ)
    return conn


def test_driver_reads_status_and_writes_a_register_through_vdevio(
    process: MakeProc, kernel: KernelProcess, e1000: PciDevice
) -> None:
    conn, base = driver(process, kernel, e1000, "e1000a"), bar0(e1000)
    b = Batch()
    status = b.mmio_read(base + STATUS)
    b.mmio_write(base + RDBAL, 0x00DEF000)
    back = b.mmio_read(base + RDBAL)
    lu = b.mmio_wait(base + STATUS, STATUS_LU, STATUS_LU, timeout_us=1000)
    values = conn.vdevio(b)
    assert values[status] & STATUS_LU, f"STATUS {values[status]:#x}"
    assert values[back] == 0x00DEF000
    assert values[lu] & STATUS_LU
    b = Batch()
    b.mmio_wait(base + STATUS, STATUS_LU, 0, timeout_us=200)
    with pytest.raises(ipc.IpcError) as info:
        conn.vdevio(b)
    assert info.value.errno is Errno.ETIMEDOUT


def test_mmio_port_op_and_irq_unmask_in_one_vdevio(
    process: MakeProc, kernel: KernelProcess, e1000: PciDevice
) -> None:
    conn, base = driver(process, kernel, e1000, "e1000b"), bar0(e1000)
    hook = conn.irq_setpolicy(E1000_IRQ)
    try:
        b = Batch()
        b.mmio_write(base + IMC, 0xFFFFFFFF)
        b.mmio_read(base + ICR)  # clear what is pending
        b.mmio_write(base + IMS, ICR_LSC)
        b.mmio_write(base + ICS, ICR_LSC)  # raise the interrupt
        conn.vdevio(b)
        assert conn.receive(ipc.HARDWARE, timeout=5).is_notify
        for _ in range(2):  # the unmask by the batch let the second one through
            b = Batch()
            cause = b.mmio_read(base + ICR)  # read-to-clear: the line drops
            port = b.inl(e1000.bars[1].address)  # the (dead) I/O BAR: reads 0
            b.mmio_write(base + ICS, ICR_LSC)  # a later one, for the next turn
            values = conn.vdevio(b, irq_enable=hook)
            assert values[cause] & ICR_LSC, f"ICR {values[cause]:#x}"
            assert values[port] == 0
            assert conn.receive(ipc.HARDWARE, timeout=5).is_notify
        b = Batch()
        b.mmio_write(base + IMC, 0xFFFFFFFF)
        b.mmio_read(base + ICR)
        conn.vdevio(b, irq_enable=hook)
    finally:
        conn.irq_rmpolicy(hook)


def test_mmio_outside_the_granted_bar_is_eperm_and_logged(
    process: MakeProc, kernel: KernelProcess, e1000: PciDevice
) -> None:
    conn, base = driver(process, kernel, e1000, "e1000c"), bar0(e1000)
    for addr in (base + BAR0_SIZE, base - 4, 0x100000, 0x2000000):  # past, before, stub, RAM
        b = Batch()
        b.mmio_read(base + STATUS)  # a good op first: nothing of the batch may run
        b.mmio_write(addr, 0)
        with pytest.raises(ipc.IpcError) as info:
            conn.vdevio(b)
        assert info.value.errno is Errno.EPERM, hex(addr)
        assert f"{addr:#x}" in (kernel.run_dir / "kernel.log").read_text()
    b = Batch()
    b.mmio_read(base + BAR0_SIZE - 4)  # the BAR's last register: still allowed
    conn.vdevio(b)
    nobody = process("e1000d", "system vdevio;")  # no memory ranges at all
    b = Batch()
    b.mmio_read(base + STATUS)
    with pytest.raises(ipc.IpcError) as info:
        nobody.vdevio(b)
    assert info.value.errno is Errno.EPERM
    assert nobody.getinfo("whoami")["label"] == "e1000d"  # the kernel keeps serving


def test_kernel_refuses_mmio_on_ram_even_with_a_ram_range(
    process: MakeProc, kernel: KernelProcess
) -> None:
    """A memory range over RAM (umap's business) makes the kernel pass the op;
    the stub still refuses it: EIO, and the kernel keeps serving."""
    conn = process("ramdrv", "system vdevio; memory 2000000:1000;")
    b = Batch()
    b.mmio_read(0x2000000)
    with pytest.raises(ipc.IpcError) as info:
        conn.vdevio(b)
    assert info.value.errno is Errno.EIO and "bad argument" in info.value.detail
    b = Batch()
    b.mmio_read(0x3000000)  # outside the range: the kernel's own refusal
    with pytest.raises(ipc.IpcError) as info:
        conn.vdevio(b)
    assert info.value.errno is Errno.EPERM


def test_posted_vdevio_is_answered_queued_and_runs_in_order(
    process: MakeProc, kernel: KernelProcess, e1000: PciDevice
) -> None:
    """A posted batch comes back with the count of the caller's finished posted
    batches; a plain vdevio after it runs after it (it sees its write)."""
    conn, base = driver(process, kernel, e1000, "e1000p"), bar0(e1000)
    finished = 0
    for i in range(20):
        b = Batch()
        b.mmio_write(base + RDBAL, 0x00100000 + i * 0x1000)
        now = conn.vdevio_posted(b).finished
        assert finished <= now <= i + 1  # counted once run, in order; never more than queued
        finished = now
    b = Batch()
    back = b.mmio_read(base + RDBAL)
    assert conn.vdevio(b)[back] == 0x00100000 + 19 * 0x1000  # the last posted write ran
    b = Batch()
    b.mmio_write(base + RDBAL, 0)
    assert conn.vdevio_posted(b).finished in (20, 21)  # the earlier ones counted, this maybe
    b = Batch()
    for i in range(2 * abi.MAX_OPS):  # two slots' worth in one posted batch
        b.mmio_write(base + RDBAL, 0x00200000 + i * 0x10)
    conn.vdevio_posted(b)
    b = Batch()
    back = b.mmio_read(base + RDBAL)
    assert conn.vdevio(b)[back] == 0x00200000 + (2 * abi.MAX_OPS - 1) * 0x10  # all of it ran
    b = Batch()
    for _ in range(vdevio.MAX_POSTED_SLOTS * abi.MAX_OPS + 1):
        b.mmio_write(base + RDBAL, 0)
    with pytest.raises(ipc.IpcError) as info:  # the client's own check bypassed
        conn.kcall_binary(wire.VDEVIO, vdevio.POSTED, b"".join(b.packed()), "vdevio")
    assert info.value.errno is Errno.EINVAL


def test_posted_vdevio_is_checked_as_any_and_a_stopped_one_is_logged(
    process: MakeProc, kernel: KernelProcess, e1000: PciDevice
) -> None:
    conn, base = driver(process, kernel, e1000, "e1000q"), bar0(e1000)
    b = Batch()
    b.mmio_write(base + BAR0_SIZE, 0)  # past the BAR: refused before it is queued
    with pytest.raises(ipc.IpcError) as info:
        conn.vdevio_posted(b)
    assert info.value.errno is Errno.EPERM
    b = Batch()
    b.irq_wait(E1000_IRQ, timeout_us=100)  # waits need a hook, and a posted batch has none
    with pytest.raises(ipc.IpcError) as info:
        conn.vdevio_posted(b)
    assert info.value.errno is Errno.EINVAL
    b = Batch()
    b.mmio_wait(base + STATUS, STATUS_LU, 0, timeout_us=200)  # never true: the stub stops it
    assert conn.vdevio_posted(b).stopped == 0  # not run yet, or not counted yet
    b = Batch()
    status = b.mmio_read(base + STATUS)
    assert conn.vdevio(b)[status] & STATUS_LU  # the kernel keeps serving the caller
    b = Batch()
    b.mmio_read(base + STATUS)
    assert conn.vdevio_posted(b).stopped == 1  # the stopped one, collected by now
    log = kernel.run_dir / "kernel.log"
    deadline = time.monotonic() + 5
    while "e1000q" not in log.read_text() or "posted vdevio stopped" not in log.read_text():
        assert time.monotonic() < deadline, "no log line for the stopped posted batch"
        time.sleep(0.05)
    line = next(x for x in log.read_text().splitlines() if "posted vdevio stopped" in x)
    assert "e1000q" in line and "timeout" in line, line


def test_posted_batches_fill_the_slots_and_other_calls_still_run(
    process: MakeProc, kernel: KernelProcess, e1000: PciDevice
) -> None:
    """Posted batches queued faster than the stub runs them wait for room, and
    the kernel keeps a slot for its own one-op calls (a devio) meanwhile."""
    conn, base = driver(process, kernel, e1000, "e1000r", "vdevio devio irqctl"), bar0(e1000)
    io = e1000.bars[1].address
    for i in range(3 * abi.NSLOTS):
        b = Batch()
        b.delay(2000)  # longer than a call: the slots fill
        b.mmio_write(base + RDBAL, 0x00300000 + i * 0x1000)
        conn.vdevio_posted(b)
        if i % abi.NSLOTS == abi.NSLOTS - 1:
            assert conn.devio_in(io, 4) == 0  # the dead I/O BAR reads 0
    b = Batch()
    back = b.mmio_read(base + RDBAL)
    assert conn.vdevio(b)[back] == 0x00300000 + (3 * abi.NSLOTS - 1) * 0x1000
