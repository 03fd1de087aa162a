"""The link to the guest stub: port I/O, MMIO, string I/O, DMA memory and IRQs.

Requests go through a ring of slots in shared guest RAM. The host writes a
slot and bumps ``req_head``; the stub, polling, runs the slot and bumps
``req_tail``. While a request is short the host spins on ``req_tail`` (a round
trip is a few microseconds); when it runs long the host sets ``host_waiting``
and sleeps on COM2, where the stub rings a doorbell byte on completion. A
stub that went idle halts; the host rings COM2 to wake it.

See docs/link.md.
"""

from __future__ import annotations

import logging
import os
import select
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from hwl.errors import (
    IrqTimeoutError,
    LinkError,
    LinkWaitTimeoutError,
    QemuExitedError,
    StubTimeoutError,
)
from hwl.link import abi, pci
from hwl.link.batch import Batch, BatchResult, results_struct
from hwl.link.memory import DmaBuffer, GuestMemory

log = logging.getLogger(__name__)

# How long to spin on a request before sleeping on the doorbell. On these 2-core
# hosts a spinning Python takes CPU from QEMU (a 200 µs spin cost PIO 10 %, a 5 ms
# spin 70 %), and a doorbell wake-up costs 10-40 µs. So: spin about twice as long as
# recent requests took, between SPIN_MIN and SPIN_MAX; when requests usually run
# longer than SPIN_MAX, spin only SPIN_MIN and sleep.
SPIN_MIN = 20e-6
SPIN_MAX = 100e-6
# Sleeping on the doorbell re-checks the ring after a slice that starts short and
# doubles, a safety net for a bell that comes late (with Nagle on QEMU's end, about
# 1 batch in 80 did): a miss costs ~100 µs, and a long request few wake-ups.
SLEEP_FIRST = 100e-6
SLEEP_SLICE = 0.005
SCRATCH_SIZE = 1 << 20
_U32 = struct.Struct("<I")
_SLOT_HEAD = struct.Struct("<III")  # nops, status, fail_index


class Doorbell(Protocol):
    """The COM2 line: write wakes the stub, the fd becomes readable when it rings us."""

    def write(self, data: bytes) -> int | None: ...

    def fileno(self) -> int: ...


@dataclass
class Ticket:
    """A submitted batch: its place in the ring and whether it was collected."""

    target: int
    slot: int
    batch: Batch
    collected: bool = False


@dataclass(frozen=True)
class NativeResult:
    """What a native loop reports: status, units done and guest time in seconds."""

    status: int
    ata_status: int
    done: int
    seconds: float


class Link:
    """Host side of the stub's request ring; one request in flight at a time."""

    def __init__(
        self,
        memory: GuestMemory,
        ctl_addr: int,
        slots_addr: int,
        doorbell: Doorbell,
        alive: Callable[[], bool] = lambda: True,
    ) -> None:
        self.memory = memory
        self._mem = memory.view
        self._ctl = memory.view[ctl_addr : ctl_addr + abi.CTL_SIZE].cast("I")
        self._slots = slots_addr
        self._bell = doorbell
        self._bell_fd = doorbell.fileno()
        self._alive = alive
        self._lock = threading.Lock()
        self._waiting_lock = threading.Lock()
        self._waiters = 0
        self._head = self._ctl[abi.W_REQ_HEAD]
        self._recent = SPIN_MIN  # moving average of request durations, seconds
        self._spin = SPIN_MIN
        self._owners: list[Ticket | None] = [None] * abi.NSLOTS  # last submitter of each slot
        self.tsc_khz = self._ctl[abi.W_TSC_KHZ]
        for index in range(abi.NWATCH):  # a new owner of the link starts with none armed:
            self.watch_clear(index)  # an earlier one's would watch memory it no longer owns
        memory.set_pool(self._ctl[abi.W_FREE_BASE], self._ctl[abi.W_RAM_BYTES])
        self.scratch = memory.alloc(SCRATCH_SIZE, align=1 << 16)

    # ------------------------------------------------------------------ ring
    def _ring(self) -> None:
        self._bell.write(b"!")

    def _host_waiting(self, delta: int) -> None:
        with self._waiting_lock:
            self._waiters += delta
            self._ctl[abi.W_HOST_WAITING] = self._waiters

    def _post(self, slot: int, nops: int, quiet: bool = False) -> int:
        """Publish the slot already written at ``slot``; returns its ticket (new head).
        ``quiet``: no doorbell when it completes (nobody waits for it)."""
        ctl = self._ctl
        _U32.pack_into(self._mem, slot + abi.SLOT_QUIET, quiet)
        _U32.pack_into(self._mem, slot, nops)
        target = (self._head + 1) & 0xFFFFFFFF
        ctl[abi.W_REQ_HEAD] = target
        self._head = target
        if ctl[abi.W_STUB_SLEEPING]:
            self._ring()
        return target

    def _wait_for(self, target: int, timeout: float) -> None:
        """Wait until the stub completed the request whose ticket is ``target``."""
        ctl = self._ctl
        spins = 0
        start = time.perf_counter()
        while (ctl[abi.W_REQ_TAIL] - target) & 0xFFFFFFFF >= 0x80000000:
            spins += 1
            if spins & 0x3F == 0 and time.perf_counter() - start > self._spin:
                self._sleep_until_done(target, start + timeout)
                break
        self._recent = 0.75 * self._recent + 0.25 * (time.perf_counter() - start)
        self._spin = (
            SPIN_MIN if self._recent > SPIN_MAX else min(SPIN_MAX, max(SPIN_MIN, 2 * self._recent))
        )

    def _round_trip(self, slot: int, nops: int, timeout: float) -> None:
        self._wait_for(self._post(slot, nops), timeout)

    def _sleep_until_done(self, target: int, deadline: float) -> None:
        ctl = self._ctl
        slice_ = SLEEP_FIRST
        self._host_waiting(+1)
        try:
            while (ctl[abi.W_REQ_TAIL] - target) & 0xFFFFFFFF >= 0x80000000:
                if ctl[abi.W_STUB_SLEEPING]:
                    self._ring()
                self._doze(slice_)
                slice_ = min(2 * slice_, SLEEP_SLICE)
                if time.perf_counter() > deadline:
                    self._check_alive()
                    raise StubTimeoutError(
                        f"the stub did not complete request {target} in time "
                        f"(tail {ctl[abi.W_REQ_TAIL]}, sleeping={ctl[abi.W_STUB_SLEEPING]})"
                    )
        finally:
            self._host_waiting(-1)

    def _doze(self, seconds: float) -> None:
        """Sleep until a doorbell byte arrives or ``seconds`` pass."""
        ready, _, _ = select.select([self._bell_fd], [], [], seconds)
        if ready:
            try:
                data = os.read(self._bell_fd, 4096)
            except BlockingIOError:
                return
            if not data:
                self._check_alive()
                time.sleep(seconds)  # closed line; avoid a busy loop until the check fires

    def _check_alive(self) -> None:
        if not self._alive():
            raise QemuExitedError(
                "QEMU exited while a request was in flight", returncode=None, stderr=""
            )

    def _slot_addr(self) -> int:
        """The next slot; refuses to overwrite a submitted batch not yet collected."""
        index = self._head % abi.NSLOTS
        owner = self._owners[index]
        if owner is not None and not owner.collected:
            raise RuntimeError(
                f"slot {index} holds a submitted batch not collected yet "
                f"(at most {abi.NSLOTS} can be outstanding): collect it first"
            )
        return self._slots + index * abi.SLOT_SIZE

    def _raise_for(
        self, slot: int, ops: list[tuple[int, int, int, int, int, int]], base: int
    ) -> None:
        _nops, status, fail = _SLOT_HEAD.unpack_from(self._mem, slot)
        if status == abi.ST_OK:
            return
        index = base + fail
        code, width, port, a, b, _c = ops[index] if index < len(ops) else (0, 0, 0, 0, 0, 0)
        last = _U32.unpack_from(
            self._mem, slot + abi.SLOT_OPS + fail * abi.OP_SIZE + abi.OP_C_OFFSET
        )[0]
        where = f"op {index} (code {code}, width {width}, port {port:#x}, a={a:#x}, b={b:#x})"
        if status == abi.ST_TIMEOUT:
            raise LinkWaitTimeoutError(
                f"wait timed out at {where}: last value read {last:#x}",
                op_index=index,
                last_value=last,
            )
        name = abi.STATUS_NAMES.get(status, f"status {status}")
        raise LinkError(f"stub refused {where}: {name}", status=status, op_index=index)

    # ------------------------------------------------------------- requests
    def execute(self, batch: Batch, timeout: float = 10.0) -> BatchResult:
        """Run a batch; more than one slot's worth runs as consecutive slots."""
        if batch.scratch_bytes > self.scratch.size:
            raise ValueError(
                f"batch reads {batch.scratch_bytes} bytes; "
                f"the scratch buffer holds {self.scratch.size}"
            )
        ops = batch.ops
        batch.place_scratch(self.scratch.phys)
        values: list[int] = []
        with self._lock:
            for chunk, packed in enumerate(batch.packed()):
                first = chunk * abi.MAX_OPS
                nops = min(abi.MAX_OPS, len(ops) - first)
                slot = self._slot_addr()
                self._mem[slot + abi.SLOT_OPS : slot + abi.SLOT_OPS + len(packed)] = packed
                self._round_trip(slot, nops, timeout)
                self._raise_for(slot, ops, first)
                values.extend(results_struct(nops).unpack_from(self._mem, slot + abi.SLOT_OPS))
        data = {}
        for index, target in batch.strings.items():
            view = (target.buffer or self.scratch).view
            data[index] = bytes(view[target.offset : target.offset + target.size])
        return BatchResult(values, data)

    def batch(self) -> Batch:
        return Batch()

    def submit(self, batch: Batch) -> Ticket:
        """Queue a batch (one slot's worth) without waiting for it: the stub runs
        queued slots back to back, so the host's work overlaps the device's. Up to
        NSLOTS batches may be outstanding; ``collect`` them in any order."""
        if not 0 < len(batch) <= abi.MAX_OPS:
            raise ValueError(f"submit takes 1..{abi.MAX_OPS} ops, not {len(batch)}; use execute")
        if batch.strings and any(t.buffer is None for t in batch.strings.values()):
            raise ValueError(
                "a submitted batch must read into its own buffers (ins(..., into=buf))"
            )
        (packed,) = batch.packed()
        return self._queue(packed, len(batch), batch)

    def collect(self, ticket: Ticket, timeout: float = 10.0) -> BatchResult:
        """Wait for a submitted batch and return its values (raises as execute does)."""
        if ticket.collected:
            raise ValueError("this ticket was collected already")
        self._wait_for(ticket.target, timeout)
        ticket.collected = True
        ops = ticket.batch.ops
        self._raise_for(ticket.slot, ops, 0)
        values = list(results_struct(len(ops)).unpack_from(self._mem, ticket.slot + abi.SLOT_OPS))
        data = {}
        for index, target in ticket.batch.strings.items():
            assert target.buffer is not None
            data[index] = bytes(target.buffer.view[target.offset : target.offset + target.size])
        return BatchResult(values, data)

    def submit_packed(self, packed: bytes, nops: int, quiet: bool = False) -> Ticket:
        """Queue ops already in the stub's wire format (the kernel's ``vdevio``, which
        checked them). Collect with ``collect_raw``. ``quiet``: the stub rings no
        doorbell when it is done, even while the host waits (a posted batch)."""
        if not 0 < nops <= abi.MAX_OPS or len(packed) != nops * abi.OP_SIZE:
            raise ValueError(f"{len(packed)} bytes are not {nops} packed ops (1..{abi.MAX_OPS})")
        return self._queue(packed, nops, Batch(), quiet)

    def _queue(self, packed: bytes, nops: int, batch: Batch, quiet: bool = False) -> Ticket:
        """Write packed ops into the next slot and post it; the slot is the ticket's
        until it is collected."""
        with self._lock:
            slot = self._slot_addr()
            self._mem[slot + abi.SLOT_OPS : slot + abi.SLOT_OPS + len(packed)] = packed
            ticket = Ticket(self._post(slot, nops, quiet), slot, batch)
            self._owners[(ticket.target - 1) % abi.NSLOTS] = ticket
            return ticket

    def done(self, ticket: Ticket) -> bool:
        """Whether the stub has finished a submitted batch (never waits)."""
        return (self._ctl[abi.W_REQ_TAIL] - ticket.target) & 0xFFFFFFFF < 0x80000000

    def collect_raw(self, ticket: Ticket, nops: int) -> tuple[int, int, bytes]:
        """(status, index of the failed op, the ops as the stub left them) of a
        finished batch; each op's result is its last 32-bit word. Unlike
        ``collect`` it does not raise for a refused or timed-out op."""
        if ticket.collected or not self.done(ticket):
            raise ValueError("the ticket was collected already or is not finished")
        ticket.collected = True
        _nops, status, fail = _SLOT_HEAD.unpack_from(self._mem, ticket.slot)
        start = ticket.slot + abi.SLOT_OPS
        return status, fail, bytes(self._mem[start : start + nops * abi.OP_SIZE])

    def _single(self, code: int, width: int, port: int, a: int = 0, b: int = 0) -> int:
        with self._lock:
            slot = self._slot_addr()
            abi.OP.pack_into(self._mem, slot + abi.SLOT_OPS, code, width, port, a, b, 0)
            self._round_trip(slot, 1, 10.0)
            if _U32.unpack_from(self._mem, slot + abi.SLOT_STATUS)[0] != abi.ST_OK:
                self._raise_for(slot, [(code, width, port, a, b, 0)], 0)
            value: int = _U32.unpack_from(self._mem, slot + abi.SLOT_OPS + abi.OP_C_OFFSET)[0]
            return value

    def inb(self, port: int) -> int:
        return self._single(abi.OP_IN, 1, port)

    def inw(self, port: int) -> int:
        return self._single(abi.OP_IN, 2, port)

    def inl(self, port: int) -> int:
        return self._single(abi.OP_IN, 4, port)

    def outb(self, port: int, value: int) -> None:
        self._single(abi.OP_OUT, 1, port, value & 0xFF)

    def outw(self, port: int, value: int) -> None:
        self._single(abi.OP_OUT, 2, port, value & 0xFFFF)

    def outl(self, port: int, value: int) -> None:
        self._single(abi.OP_OUT, 4, port, value & 0xFFFFFFFF)

    def mmio_read(self, addr: int, width: int = 4) -> int:
        """One load of ``width`` bytes from device memory at ``addr`` (not RAM)."""
        b = Batch()
        i = b.mmio_read(addr, width)
        return self.execute(b)[i]

    def mmio_write(self, addr: int, value: int, width: int = 4) -> None:
        b = Batch()
        b.mmio_write(addr, value, width)
        self.execute(b)

    def nop(self, value: int = 0) -> int:
        """A round trip that touches no device: echoes ``value``."""
        return self._single(abi.OP_NOP, 0, 0, value)

    def ins(self, port: int, count: int, width: int = 2) -> bytes:
        """String input: ``count`` units of ``width`` bytes from ``port``."""
        b = Batch()
        i = b.ins(port, count, width)
        return self.execute(b).data[i]

    def outs(self, port: int, data: bytes, width: int = 2) -> None:
        """String output of ``data`` (a multiple of ``width`` bytes) to ``port``."""
        if len(data) % width:
            raise ValueError(f"{len(data)} bytes is not a multiple of the width {width}")
        if len(data) > self.scratch.size:
            raise ValueError(f"{len(data)} bytes exceed the scratch buffer ({self.scratch.size})")
        with self._lock:  # the scratch buffer is shared by every request
            self.scratch.write(data)
        b = Batch()
        b.outs_from(port, self.scratch, len(data) // width, width)
        self.execute(b)

    # --------------------------------------------------------------- memory
    def read_phys(self, addr: int, size: int) -> bytes:
        return self.memory.read(addr, size)

    def write_phys(self, addr: int, data: bytes) -> None:
        self.memory.write(addr, data)

    def alloc_dma(self, size: int, align: int = 4096, boundary: int = 0) -> DmaBuffer:
        """A physically contiguous buffer in guest RAM, for DMA or string I/O."""
        with self._lock:
            return self.memory.alloc(size, align, boundary)

    def free_dma(self, buf: DmaBuffer) -> None:
        with self._lock:
            self.memory.free(buf)

    # ------------------------------------------------------------------ IRQs
    def irq_unmask(self, line: int) -> None:
        """Let ``line`` fire once more (MINIX's irqenable)."""
        self._single(abi.OP_IRQ_UNMASK, 0, 0, line)

    def irq_mask(self, line: int) -> None:
        self._single(abi.OP_IRQ_MASK, 0, 0, line)

    def irq_count(self, line: int) -> int:
        """Interrupts the stub has seen on ``line`` since boot."""
        return int(self._ctl[abi.W_IRQ_COUNT + line])

    def irq_masked(self, line: int) -> bool:
        return bool(self._ctl[abi.W_IRQ_MASK] >> line & 1)

    def poll_irqs(self) -> list[int]:
        """Take the IRQ events the stub has posted since the last call."""
        ctl, lines = self._ctl, list[int]()
        if ctl[abi.W_IRQ_TAIL] == ctl[abi.W_IRQ_HEAD]:
            return lines  # the usual case, checked without the lock (only we move the tail)
        with self._waiting_lock:
            tail, head = ctl[abi.W_IRQ_TAIL], ctl[abi.W_IRQ_HEAD]
            while tail != head:
                lines.append(int(ctl[abi.W_IRQ_RING + tail % abi.IRQ_RING]))
                tail = (tail + 1) & 0xFFFFFFFF
            ctl[abi.W_IRQ_TAIL] = tail
        return lines

    def wait_irq(self, timeout: float) -> list[int]:
        """Wait for at least one IRQ event and return the lines that fired."""
        deadline = time.monotonic() + timeout
        self._host_waiting(+1)
        try:
            while True:
                lines = self.poll_irqs()
                if lines:
                    return lines
                left = deadline - time.monotonic()
                if left <= 0:
                    raise IrqTimeoutError(f"no interrupt within {timeout} s")
                self._doze(min(left, SLEEP_SLICE))
                self._check_alive()
        finally:
            self._host_waiting(-1)

    # ------------------------------------------------------------------ PCI
    def pci_read(self, bus: int, dev: int, fn: int, offset: int, width: int = 4) -> int:
        b = Batch()
        i = pci.read_into(b, bus, dev, fn, offset, width)
        return self.execute(b)[i]

    def pci_write(
        self, bus: int, dev: int, fn: int, offset: int, value: int, width: int = 4
    ) -> None:
        b = Batch()
        pci.write_into(b, bus, dev, fn, offset, value, width)
        self.execute(b)

    def pci_scan(self) -> list[pci.PciDevice]:
        """Every function on bus 0 (and behind bridges), with BAR sizes."""
        return pci.scan(self)

    # --------------------------------------------------------------- native
    def native(self, code: int, args: tuple[int, ...], timeout: float = 60.0) -> NativeResult:
        """Run one of the stub's native loops (abi.OP_NATIVE_*); ``args`` are the
        input fields of struct hwl_native, cmd_base .. seed."""
        block = self.alloc_dma(abi.NATIVE_SIZE, align=64)
        try:
            block.write(abi.NATIVE.pack(*args, 0, 0, 0, 0))
            b = Batch()
            b._add(code, 0, 0, 0, block.phys)
            self.execute(b, timeout=timeout)
            fields = abi.NATIVE.unpack(block.read())
        finally:
            self.free_dma(block)
        status, ata_status, done, ticks = fields[-4:]
        return NativeResult(status, ata_status, done, ticks / (self.tsc_khz * 1000.0))

    # ------------------------------------------------- for an event loop (the kernel)
    @property
    def doorbell_fd(self) -> int:
        """Readable when the stub rings: a request finished or an IRQ came while
        ``set_host_waiting(True)``."""
        return self._bell_fd

    def set_host_waiting(self, waiting: bool) -> None:
        """Ask the stub to ring on completions and IRQs (while the host sleeps)."""
        self._host_waiting(+1 if waiting else -1)

    def drain_doorbell(self) -> bool:
        """Swallow the doorbell bytes; False when the line closed (QEMU is gone)."""
        try:
            data = os.read(self._bell_fd, 4096)
        except BlockingIOError:
            return True
        return bool(data)

    # ------------------------------------------------------- watched doorbells
    def watch_set(
        self, index: int, gen: int, word: int, sleep: int, flags: int, base: int, op: bytes
    ) -> None:
        """Arm watch ``index`` (guest/abi.h, struct hwl_watch): off first, then its
        fields, then ``gen`` (non-zero), each a plain store the stub sees in order."""
        if not 0 <= index < abi.NWATCH or not 0 < gen <= 0xFFFFFFFF or len(op) != abi.OP_SIZE:
            raise ValueError(f"watch {index}, gen {gen}, a {len(op)}-byte op")
        at = abi.W_WATCH + index * abi.WATCH_WORDS
        ctl = self._ctl
        ctl[at + abi.WATCH_GEN] = 0
        ctl[at + abi.WATCH_WORD] = word
        ctl[at + abi.WATCH_SLEEP] = sleep
        ctl[at + abi.WATCH_FLAGS] = flags
        ctl[at + abi.WATCH_BASE] = base
        ctl[at + abi.WATCH_OP : at + abi.WATCH_OP + 4] = memoryview(op).cast("I")
        ctl[at + abi.WATCH_GEN] = gen

    def frames_set(self, index: int, frames: bytes) -> None:
        """The frame template of watch ``index`` (struct hwl_frames, packed), written
        while the watch is off: :meth:`watch_set` with WATCH_FRAMES arms it after."""
        if not 0 <= index < abi.NWATCH or len(frames) != abi.FRAMES_SIZE:
            raise ValueError(f"frames {index}: {len(frames)} bytes, not {abi.FRAMES_SIZE}")
        self._ctl[abi.W_WATCH + index * abi.WATCH_WORDS + abi.WATCH_GEN] = 0
        at = abi.FRAMES_OFFSET + index * abi.FRAMES_SIZE
        self._ctl.cast("B")[at : at + abi.FRAMES_SIZE] = frames

    def watch_clear(self, index: int) -> None:
        """Turn watch ``index`` off; the stub may still be making its write: a
        request completed after this one (:meth:`nop`) is after it."""
        self._ctl[abi.W_WATCH + index * abi.WATCH_WORDS + abi.WATCH_GEN] = 0

    def watch_gen(self, index: int) -> int:
        return self._ctl[abi.W_WATCH + index * abi.WATCH_WORDS + abi.WATCH_GEN]

    @property
    def stub_sleeping(self) -> bool:
        return bool(self._ctl[abi.W_STUB_SLEEPING])

    @property
    def halts(self) -> int:
        return int(self._ctl[abi.W_HALTS])

    @property
    def bells_sent(self) -> int:
        """Doorbell bytes the stub has rung (completions and IRQs while the host waited)."""
        return int(self._ctl[abi.W_BELLS_SENT])

    def close(self) -> None:
        self._ctl.release()
