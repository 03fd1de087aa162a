"""Hardware faults the kernel injects (hwl/kernel/hwfaults.py, hwl.faults.hardware)
on a real machine: a flipped bit in port reads, a lost and a spurious interrupt,
set by the root only. The test is the kernel's root (as in test_kernel_hw.py) and
attaches a process with the IDE channel's privileges, as at_wini has them."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from hwl import Machine, faults, ipc
from hwl.faults import LostIrq, PortBitFlip, SpuriousIrq, Trigger
from hwl.hw import ata
from hwl.ipc import codec
from hwl.kernel.errno import Errno
from hwl.kernel.launcher import KernelProcess
from hwl.link.batch import Batch
from hwl.pytest_plugin import MachineFactory
from hwl.system.events import read_events

pytestmark = pytest.mark.qemu

IDE0 = "io 1f0:8 3f6; irq 14; system devio vdevio sdevio irqctl;"
STATUS = 0x1F7
Make = Callable[[str, str], ipc.Connection]


@pytest.fixture(scope="module")
def kernel(hwl_machines: MachineFactory) -> Iterator[KernelProcess]:
    machine: Machine = hwl_machines.boot("pc")
    try:
        yield KernelProcess.start(machine)
    finally:
        machine.close()


@pytest.fixture
def process(kernel: KernelProcess) -> Iterator[Make]:
    made: list[ipc.Connection] = []
    assert kernel.root is not None
    root = kernel.root

    def make(label: str, body: str) -> ipc.Connection:
        conn = kernel.attach()
        root.privctl_set(conn.endpoint, f"service {label} {{ {body} }};")
        made.append(conn)
        return conn

    yield make
    for conn in made:
        conn.close()
    assert not faults.heal_all()


def identify(conn: ipc.Connection) -> None:
    """IDENTIFY on the master, interrupts on: the drive interrupts when its data is
    ready; the data is read out and the status read (which acknowledges it)."""
    b = Batch()
    b.outb(0x3F6, 0)
    b.outb(0x1F6, 0xA0)
    b.inb(STATUS)
    b.outb(STATUS, ata.CMD_IDENTIFY)
    b.wait(STATUS, ata.BSY | ata.DRQ, ata.DRQ)
    conn.vdevio(b)
    buf = conn.arena.alloc(512)
    grant = conn.arena.grant(conn.endpoint, buf.offset, 512, read=True, write=True)
    try:
        conn.sdevio("in", 0x1F0, 256, 2, conn.endpoint, grant)
    finally:
        conn.arena.revoke(grant)
        conn.arena.free(buf)
    conn.devio_in(STATUS)


def test_a_bit_flips_in_port_reads_as_the_trigger_says(
    kernel: KernelProcess, process: Make
) -> None:
    conn = process("ide0", IDE0)
    conn.devio_out(0x1F6, 0xA0)
    real = conn.devio_in(STATUS)
    assert not real & ata.ERR
    flip = PortBitFlip(kernel, STATUS, 0, Trigger(times=2))  # ERR, twice
    with flip:
        assert conn.devio_in(STATUS) == real | ata.ERR
        b = Batch()
        first, second = b.inb(STATUS), b.inb(STATUS)
        other = b.inb(0x1F6)
        values = conn.vdevio(b)
        assert (values[first], values[second]) == (real | ata.ERR, real)
        assert values[other] & 0xF0 == 0xA0  # another port: untouched
        assert conn.devio_in(STATUS) == real  # times: used up
    assert (flip.detail["fired"], flip.detail["opportunities"]) == (2, 4)
    assert conn.devio_in(STATUS) == real
    events = [e for e in read_events(kernel.run_dir / "events.jsonl")
              if e["event"].startswith("fault-") and e["fault"]["id"] == flip.id]  # fmt: skip
    assert [e["event"] for e in events] == ["fault-inject", "fault-heal"]
    assert events[1]["fault"]["fired"] == 2 and events[0]["fault"]["port"] == STATUS


def test_a_lost_interrupt_leaves_the_line_masked_until_irqenable(
    kernel: KernelProcess, process: Make
) -> None:
    """The lost one never arrives; the line stays masked as after any interrupt
    (the next one latches in the PIC), until the driver's irqenable, which a
    driver that missed it makes after its own timeout."""
    conn = process("ide0", IDE0)
    hook = conn.irq_setpolicy(14)
    try:
        with LostIrq(kernel, 14, Trigger(times=1)) as lost:
            identify(conn)
            with pytest.raises(ipc.IpcTimeout):
                conn.receive(ipc.HARDWARE, timeout=0.5)  # lost
            identify(conn)
            with pytest.raises(ipc.IpcTimeout):
                conn.receive(ipc.HARDWARE, timeout=0.3)  # masked
            conn.irq_enable(hook)  # the latched one arrives (times=1: not lost)
            assert conn.receive(ipc.HARDWARE, timeout=5).is_notify
            conn.irq_enable(hook)
        assert (lost.detail["fired"], lost.detail["opportunities"]) == (1, 2)
        identify(conn)
        assert conn.receive(ipc.HARDWARE, timeout=5).is_notify
        conn.irq_enable(hook)
    finally:
        conn.irq_rmpolicy(hook)


def test_a_spurious_interrupt_is_notified_and_masks_the_line(
    kernel: KernelProcess, process: Make
) -> None:
    conn = process("ide0", IDE0)
    hook = conn.irq_setpolicy(14)
    try:
        spurious = SpuriousIrq(kernel, 14)
        spurious.inject()  # no command: the drive raised nothing
        assert conn.receive(ipc.HARDWARE, timeout=5).is_notify
        assert spurious.detail["hooks"] == 1 and faults.active() == []
        identify(conn)  # masked until irqenable, as after a real one
        with pytest.raises(ipc.IpcTimeout):
            conn.receive(ipc.HARDWARE, timeout=0.3)
        conn.irq_enable(hook)
        assert conn.receive(ipc.HARDWARE, timeout=5).is_notify
        conn.irq_enable(hook)
    finally:
        conn.irq_rmpolicy(hook)


def test_only_the_root_sets_hardware_faults(process: Make) -> None:
    allowed = process("fi0", "system ALL;")  # every call, but not the root
    with pytest.raises(ipc.IpcError) as err:
        allowed.kcall("faultctl", {"op": "list"})
    assert err.value.errno is Errno.EPERM
    plain = process("fi1", IDE0)
    with pytest.raises(ipc.IpcError) as err:
        plain.kcall("faultctl", {"op": "list"})
    assert err.value.errno is Errno.ECALLDENIED


def test_faultctl_refuses_nonsense(kernel: KernelProcess) -> None:
    assert kernel.root is not None
    cases: list[tuple[dict[str, codec.Value], Errno]] = [
        ({"op": "add", "kind": "meltdown"}, Errno.EINVAL),
        ({"op": "add", "kind": "port-flip", "port": 0x1F7, "bit": 40}, Errno.EINVAL),
        ({"op": "add", "kind": "irq-lost", "line": 14, "probability": 101}, Errno.EINVAL),
        ({"op": "remove", "id": 999}, Errno.ESRCH),
        ({"op": "explode"}, Errno.EINVAL),
    ]
    for fields, errno in cases:
        with pytest.raises(ipc.IpcError) as err:
            kernel.root.kcall("faultctl", fields)
        assert err.value.errno is errno, fields
    assert kernel.root.kcall("faultctl", {"op": "list"}) == {"faults": []}
    with pytest.raises(ValueError, match="whole-number"):
        PortBitFlip(kernel, STATUS, 0, Trigger(probability=2.5))
