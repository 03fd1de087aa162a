"""Watched doorbells (vdevio WATCH, guest/abi.h struct hwl_watch) on a real pc
machine, with the e1000's RDBAL register as the device write a test can read back.

A driver process arms a watch on a word of its own DMA buffer; each change of
the word is one write by the stub, with the word's value (a tail index) or the
op's own; the checks are vdevio's; the watch ends with its process, its
buffer, a privctl set or a disarm, and a halted stub shows in the sleep word.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from agents import MakeProc

from hwl import Batch, Machine, ipc
from hwl.driver.nic import TxDoorbell
from hwl.frames import Bell
from hwl.ipc import wire
from hwl.ipc.kcalls import DmaHandle, FrameTemplate
from hwl.kernel.errno import Errno
from hwl.kernel.launcher import KernelProcess
from hwl.link import abi
from hwl.link.pci import PciDevice
from hwl.proto import vdevio

pytestmark = pytest.mark.qemu

E1000 = (0x8086, 0x100E)
RDBAL, RDBAH = 0x2800, 0x2804
BAR0_SIZE = 128 << 10
WORD, SLEEP = 0, 4  # the bell's two words at the start of the test's buffer
SETTLE = 2.0  # seconds a test waits for the stub's halt or the kernel's log


@pytest.fixture(scope="module")
def e1000(pc: Machine) -> PciDevice:
    """The e1000 as the link's own scan sees it (before the kernel takes the link)."""
    return next(d for d in pc.link.pci_scan() if (d.vendor, d.device) == E1000)


@pytest.fixture(scope="module")
def kernel(pc: Machine, e1000: PciDevice) -> Iterator[KernelProcess]:
    k = KernelProcess.start(pc)
    try:
        yield k
    finally:
        k.stop()


def bar0(dev: PciDevice) -> int:
    return dev.bars[0].address


def driver(
    process: MakeProc, kernel: KernelProcess, e1000: PciDevice, label: str, dma: bool = True
) -> ipc.Connection:
    """A process granted the e1000's BAR0, as the PCI server's reserve grants it."""
    conn = process(label, "system vdevio;" + (" memory dma;" if dma else ""))
    assert kernel.root is not None
    kernel.root.privctl_add_mem(conn.endpoint, bar0(e1000), BAR0_SIZE)
    return conn


def write(addr: int, value: int = 0) -> Batch:
    b = Batch()
    b.mmio_write(addr, value)
    return b


def read(conn: ipc.Connection, addr: int) -> int:
    b = Batch()
    i = b.mmio_read(addr)
    return conn.vdevio(b)[i]


def armed(conn: ipc.Connection, e1000: PciDevice, **kw: bool) -> tuple[DmaHandle, memoryview]:
    buf = conn.dma_alloc(4096)
    view = conn.dma_map(buf)
    conn.vdevio_watch(buf.id, WORD, SLEEP, write(bar0(e1000) + RDBAL, 0x00ABC000), **kw)
    return buf, view


def fill(conn: ipc.Connection, buf: DmaHandle, e1000: PciDevice, first: int = 0) -> int:
    """Arm watches on words ``first``, ``first`` + 1, ... until the kernel says all
    are in use (EBUSY); how many it took."""
    op = write(bar0(e1000) + RDBAH)
    for n in range(abi.NWATCH + 1):
        at = 8 * (first + n)
        try:
            conn.vdevio_watch(buf.id, at, at + 4, op)
        except ipc.IpcError as exc:
            assert exc.errno is Errno.EBUSY, exc
            return n
    raise AssertionError(f"more than the stub's {abi.NWATCH} watches armed")


def wait_for(what: str, ok: object) -> None:
    deadline = time.monotonic() + SETTLE
    while not ok():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_each_change_of_the_word_is_one_write_with_its_value(
    process: MakeProc, kernel: KernelProcess, e1000: PciDevice
) -> None:
    """A plain vdevio after a store runs after the stub's write (the stub looks at
    its watches before each slot), whether the stub was awake or halted."""
    conn = driver(process, kernel, e1000, "watcher")
    _buf, view = armed(conn, e1000, value_from_word=True)
    bell = Bell(view, WORD, SLEEP)
    for value in (0x00111000, 0x00222000, 0x00111000, 0x00FFF000):
        bell.ring(value)
        assert read(conn, bar0(e1000) + RDBAL) == value
    time.sleep(0.1)  # the stub halts after its idle spin (20 ms)
    bell.ring(0x00333000)
    assert read(conn, bar0(e1000) + RDBAL) == 0x00333000


def test_without_the_value_flag_the_op_writes_its_own_value(
    process: MakeProc, kernel: KernelProcess, e1000: PciDevice
) -> None:
    conn = driver(process, kernel, e1000, "poller")
    _buf, view = armed(conn, e1000)
    conn.vdevio(write(bar0(e1000) + RDBAL, 0))
    Bell(view, WORD, SLEEP).ring(7)
    assert read(conn, bar0(e1000) + RDBAL) == 0x00ABC000
    conn.vdevio(write(bar0(e1000) + RDBAL, 0))
    Bell(view, WORD, SLEEP).ring(7)  # no change: no write
    assert read(conn, bar0(e1000) + RDBAL) == 0


def test_a_halted_stub_shows_in_the_sleep_word_and_a_call_wakes_it(
    process: MakeProc, kernel: KernelProcess, e1000: PciDevice
) -> None:
    conn = driver(process, kernel, e1000, "sleeper")
    _buf, view = armed(conn, e1000, value_from_word=True)
    read(conn, bar0(e1000) + RDBAL)  # the stub takes the watch up (and clears the 1)
    bell = Bell(view, WORD, SLEEP)
    wait_for("the stub never showed a halt", lambda: view[SLEEP] == 1)
    assert bell.ring(0x00444000) == abi.WATCH_ASLEEP  # the caller must wake the stub now
    wake = Batch()
    wake.mmio_read(bar0(e1000) + RDBAH)
    conn.vdevio_posted(wake)  # a read: the write is the stub's own, from the word
    wait_for("the woken stub never cleared the sleep word", lambda: view[SLEEP] == 0)
    assert read(conn, bar0(e1000) + RDBAL) == 0x00444000


def test_the_watch_is_checked_as_any_vdevio(
    process: MakeProc, kernel: KernelProcess, e1000: PciDevice
) -> None:
    conn = driver(process, kernel, e1000, "checked")
    buf = conn.dma_alloc(4096)
    base = bar0(e1000)

    def refused(errno: Errno, payload: bytes) -> None:
        with pytest.raises(ipc.IpcError) as info:
            conn.kcall_binary(wire.VDEVIO, vdevio.WATCH, payload, "vdevio")
        assert info.value.errno is errno, info.value

    def head(buffer: int = buf.id, word: int = WORD, sleep: int = SLEEP, flags: int = 0) -> bytes:
        return vdevio.WATCH_HEAD.pack(buffer, word, sleep, flags)

    op = b"".join(write(base + RDBAL).packed())
    refused(Errno.EPERM, head() + b"".join(write(base + BAR0_SIZE).packed()))  # past the BAR
    refused(Errno.EINVAL, head(buffer=buf.id + 1000) + op)  # not its buffer
    refused(Errno.EINVAL, head(word=4096) + op)  # outside the buffer
    refused(Errno.EINVAL, head(word=2) + op)  # not aligned
    refused(Errno.EINVAL, head(sleep=WORD) + op)  # one word for both
    refused(Errno.EINVAL, head(flags=4) + op)
    refused(Errno.EINVAL, head(flags=vdevio.WATCH_FRAMES) + op)  # no template head
    refused(Errno.EINVAL, head() + op + op)  # one op only
    b = Batch()
    b.mmio_read(base + RDBAL)
    refused(Errno.EINVAL, head() + b"".join(b.packed()))  # a read rings nothing
    refused(Errno.EINVAL, head()[:8])
    nodma = driver(process, kernel, e1000, "nodma", dma=False)
    with pytest.raises(ipc.IpcError) as info:
        nodma.kcall_binary(wire.VDEVIO, vdevio.WATCH, head() + op, "vdevio")
    assert info.value.errno is Errno.EPERM
    assert read(conn, base + RDBAL) is not None  # the kernel serves the caller still


def test_all_watches_taken_is_ebusy_and_rearming_a_word_takes_none(
    process: MakeProc, kernel: KernelProcess, e1000: PciDevice
) -> None:
    conn = driver(process, kernel, e1000, "greedy")
    buf = conn.dma_alloc(4096)
    armed_now = fill(conn, buf, e1000)
    assert armed_now == abi.NWATCH  # the other tests' watches ended with their processes
    op = write(bar0(e1000) + RDBAH)
    conn.vdevio_watch(buf.id, 0, 4, op, value_from_word=True)  # the same word: re-armed
    conn.vdevio_watch(buf.id, 0, 4, None)  # disarmed: one free again
    assert fill(conn, buf, e1000, first=abi.NWATCH) == 1
    conn.dma_free(buf)  # the buffer's watches end with it
    other = conn.dma_alloc(4096)
    assert fill(conn, other, e1000) == abi.NWATCH
    conn.dma_free(other)


@pytest.mark.parametrize("how", ["exit", "privctl set"])
def test_the_watch_ends_with_its_process_or_its_privileges(
    process: MakeProc, kernel: KernelProcess, e1000: PciDevice, how: str
) -> None:
    """Ended, the watch makes no write, its sleep word shows WATCH_ENDED (so a
    driver that goes on ringing goes through the kernel's checks), and its entry
    is free."""
    label = f"ender{how.replace(' ', '')}"
    conn = driver(process, kernel, e1000, label)
    buf = conn.dma_alloc(4096)
    view = conn.dma_map(buf)
    assert fill(conn, buf, e1000) == abi.NWATCH
    conn.vdevio_watch(buf.id, 0, 4, None)
    conn.vdevio_watch(buf.id, 0, 4, write(bar0(e1000) + RDBAL), value_from_word=True)
    bell = Bell(view, 0, 4)
    bell.ring(0x00555000)
    assert read(conn, bar0(e1000) + RDBAL) == 0x00555000
    watcher = driver(process, kernel, e1000, f"{label}2")
    if how == "exit":
        conn.close()
    else:
        assert kernel.root is not None
        kernel.root.privctl_set(conn.endpoint, f"service {label} {{ system vdevio; }};")
        assert view[4] == abi.WATCH_ENDED  # ring through the kernel
        assert bell.ring(0x00666000) == abi.WATCH_ENDED
        assert read(watcher, bar0(e1000) + RDBAL) == 0x00555000  # no write
    other = watcher.dma_alloc(4096)
    wait_for("the ended watches were not freed", lambda: fill(watcher, other, e1000) > 0)
    log = (kernel.run_dir / "kernel.log").read_text()
    why = "the process ended" if how == "exit" else "its privileges were set anew"
    assert f"of {label} " in log and why in log


def test_a_store_made_while_a_wake_up_is_queued_is_not_undone(
    pc: Machine, process: MakeProc, kernel: KernelProcess, e1000: PciDevice
) -> None:
    """The interleaving that stopped e1000's transmission in a loaded CI run: the
    stub was halted when the driver rang tail 1 (a posted call queued), awake when
    it rang tail 2 (no call). The stub writes 2 from the word before it runs the
    queued slot, so that slot must only wake it, not write 1. The machine is
    paused to hold the interleaving still."""
    conn = driver(process, kernel, e1000, "tail")
    buf = conn.dma_alloc(4096)
    view = conn.dma_map(buf)
    bell = TxDoorbell("RDBAL", WORD, lambda v: write(bar0(e1000) + RDBAL, v), value_from_word=True)
    bell.arm(conn, buf)
    assert bell.watched
    read(conn, bar0(e1000) + RDBAL)  # the stub takes the watch up
    wait_for("the stub never showed a halt", lambda: view[SLEEP] == abi.WATCH_ASLEEP)
    assert pc.qmp is not None
    pc.qmp.execute("stop")
    try:
        bell.ring(conn, view, 0x00111000)  # halted: a posted call
        view[SLEEP] = 0  # as the stub, had it woken meanwhile
        bell.ring(conn, view, 0x00222000)  # awake: the stub will see the word
    finally:
        pc.qmp.execute("cont")
    assert read(conn, bar0(e1000) + RDBAL) == 0x00222000


def test_an_ended_watch_turns_the_doorbell_into_posted_writes(
    process: MakeProc, kernel: KernelProcess, e1000: PciDevice
) -> None:
    conn = driver(process, kernel, e1000, "unwatched")
    buf = conn.dma_alloc(4096)
    view = conn.dma_map(buf)
    bell = TxDoorbell("RDBAL", WORD, lambda v: write(bar0(e1000) + RDBAL, v), value_from_word=True)
    bell.arm(conn, buf)
    conn.vdevio_watch(buf.id, WORD, SLEEP, None)  # ended (as by a privctl set)
    bell.ring(conn, view, 0x00777000)
    assert not bell.watched
    assert read(conn, bar0(e1000) + RDBAL) == 0x00777000


# --- frame templates (WATCH_FRAMES): the stub runs a checked template per frame staged
SLOTS, STRIDE = 4, 256
TABLE, COUNTS, STAGED = SLOTS * STRIDE, SLOTS * STRIDE + 64, SLOTS * STRIDE + 128


def template(**kw: object) -> FrameTemplate:
    fields: dict[str, object] = dict(table=TABLE, slots=SLOTS, stride=STRIDE, base=0,
                                     counts=COUNTS, max_len=STRIDE, patches=(0,))  # fmt: skip
    fields.update(kw)
    return FrameTemplate(**fields)  # type: ignore[arg-type]


def stage(view: memoryview, bell: Bell, staged: int, lengths: list[int]) -> int:
    table = view[TABLE : TABLE + 2 * SLOTS].cast("H")
    for length in lengths:
        table[staged % SLOTS] = length
        staged += 1
    bell.ring(staged)
    return staged


def test_a_frame_template_runs_per_frame_and_refuses_a_bad_length(
    process: MakeProc, kernel: KernelProcess, e1000: PciDevice
) -> None:
    """Each frame staged runs the template once; a length of 0 or over max_len
    runs nothing and is counted; the counts follow every frame."""
    conn = driver(process, kernel, e1000, "framer")
    buf = conn.dma_alloc(4096)
    view = conn.dma_map(buf)
    conn.vdevio_frames(buf.id, STAGED, template(max_len=100), write(bar0(e1000) + RDBAL, 0xABC000))
    bell = Bell(view, STAGED, STAGED + 4)
    counts = view[COUNTS : COUNTS + 8].cast("I")
    conn.vdevio(write(bar0(e1000) + RDBAL, 0))
    staged = stage(view, bell, 0, [0, 101])  # both refused: no write
    assert read(conn, bar0(e1000) + RDBAL) == 0  # runs after the stub's frames
    assert list(counts) == [2, 2]
    staged = stage(view, bell, staged, [60, 100, 0, 64])  # a whole ring, wrapping
    assert read(conn, bar0(e1000) + RDBAL) == 0xABC000
    assert list(counts) == [6, 3]
    conn.vdevio(write(bar0(e1000) + RDBAL, 0))
    staged = stage(view, bell, staged, [60] * (SLOTS + 1))  # more than a ring: refused whole
    assert read(conn, bar0(e1000) + RDBAL) == 0
    assert list(counts) == [11, 8]


def test_a_frame_template_patches_the_frames_bytes_into_port_writes(
    process: MakeProc, kernel: KernelProcess
) -> None:
    """PATCH_BYTE0 + k writes byte k of the staged frame (at_wini's command ring
    puts a read's sector and count into the ATA registers so); a frame too short
    for a patched byte runs none of the ops and is counted refused. The ATA
    LBA registers (nobody drives the disk here) read back what was written."""
    conn = process("bytepatch", "system vdevio; memory dma; io 1f3:4;")
    select = Batch()
    select.outb(0x1F6, 0xA0)  # drive 0: the registers read back are the selected drive's
    conn.vdevio(select)
    buf = conn.dma_alloc(4096)
    view = conn.dma_map(buf)
    ports = (0x1F3, 0x1F4, 0x1F5)
    ops = Batch()
    for port in ports:
        ops.outb(port, 0)
    patches = (abi.PATCH_BYTE0, abi.PATCH_BYTE0 + 1, abi.PATCH_BYTE0 + 5)
    conn.vdevio_frames(buf.id, STAGED, template(patches=patches), ops)
    bell = Bell(view, STAGED, STAGED + 4)
    counts = view[COUNTS : COUNTS + 8].cast("I")

    def registers() -> list[int]:
        b = Batch()
        reads = [b.inb(port) for port in ports]
        values = conn.vdevio(b)
        return [values[i] for i in reads]

    view[0:6] = bytes([0x12, 0x34, 0, 0, 0, 0x56])  # slot 0
    staged = stage(view, bell, 0, [6])
    assert registers() == [0x12, 0x34, 0x56], list(counts)
    assert list(counts) == [1, 0]
    view[STRIDE : STRIDE + 6] = bytes([0x77, 0x88, 0, 0, 0, 0x99])  # slot 1, one byte short
    staged = stage(view, bell, staged, [5])
    assert registers() == [0x12, 0x34, 0x56]  # nothing ran
    assert list(counts) == [2, 1]
    view[2 * STRIDE : 3 * STRIDE] = bytes([0xA1, 0xB2, 0, 0, 0, 0xC3]) + bytes(STRIDE - 6)
    stage(view, bell, staged, [STRIDE])  # slot 2: a whole slot
    assert registers() == [0xA1, 0xB2, 0xC3]
    assert list(counts) == [3, 1]


def test_a_frame_template_is_checked_before_it_is_armed(
    process: MakeProc, kernel: KernelProcess, e1000: PciDevice
) -> None:
    conn = driver(process, kernel, e1000, "badframer")
    buf = conn.dma_alloc(4096)
    ok = write(bar0(e1000) + RDBAL)

    def refused(errno: Errno, tpl: FrameTemplate, batch: Batch = ok) -> None:
        with pytest.raises(ipc.IpcError) as info:
            conn.vdevio_frames(buf.id, STAGED, tpl, batch)
        assert info.value.errno is errno, info.value

    refused(Errno.EPERM, template(), write(bar0(e1000) + BAR0_SIZE))  # past its BAR
    refused(Errno.EINVAL, template(patches=(abi.PATCH_LEN_LO,)))  # a patch on an MMIO write
    refused(Errno.EINVAL, template(slots=SLOTS * 8))  # slots past the buffer's end
    refused(Errno.EINVAL, template(max_len=STRIDE + 4))  # a frame longer than a slot
    refused(Errno.EINVAL, template(table=4095))  # the table past the end, unaligned
    refused(Errno.EINVAL, template(counts=4094))
    refused(Errno.EINVAL, template(patches=(abi.PATCH_BYTE0 + abi.PATCH_BYTES,)))  # no such
    refused(Errno.EINVAL, template(patches=(abi.PATCH_BYTE0,)))  # a byte into an MMIO write
    refused(Errno.EINVAL, template(patches=(abi.PATCH_SLOT,)))  # SLOT on a write
    outs = Batch()
    outs.outs_phys(0x80, 1, 4, 0)
    refused(Errno.EINVAL, template(), outs)  # an OUTS that does not move its frame
    delay = Batch()
    delay.delay(1)
    refused(Errno.EINVAL, template(), delay)  # no DELAY, IRQ or native op in a frame
    slow = Batch()
    slow.wait(0x80, 0, 1, timeout_us=20_000)
    refused(Errno.EINVAL, template(), slow)  # a wait any frame may run: at most 10 ms
    assert read(conn, bar0(e1000) + RDBAL) is not None  # the kernel serves the caller still
