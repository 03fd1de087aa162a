"""Batches: port and MMIO operations that the stub executes in one round trip.

A batch is built up with calls that mirror the single operations (``inb``,
``outl``, ``wait``, ``ins`` …); each call that produces a value returns an index
to look the value up in the :class:`BatchResult`. A whole ATA command, with its
"wait until ready" steps and its data transfer, is one batch.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from hwl.link import abi
from hwl.link.memory import DmaBuffer

_WIDTHS = {1, 2, 4}
_PACKERS: dict[int, struct.Struct] = {}


_RESULTS: dict[int, struct.Struct] = {}


def ops_struct(n: int) -> struct.Struct:
    """The struct for ``n`` consecutive struct hwl_op, cached by length."""
    packer = _PACKERS.get(n)
    if packer is None:
        packer = _PACKERS[n] = struct.Struct("<" + "BBHIII" * n)
    return packer


def results_struct(n: int) -> struct.Struct:
    """Reads only the result word (``c``) of ``n`` consecutive ops."""
    reader = _RESULTS.get(n)
    if reader is None:
        reader = _RESULTS[n] = struct.Struct("<" + "12xI" * n)
    return reader


@dataclass(frozen=True)
class StringTarget:
    """Where an ``ins`` lands: a guest buffer (None: the link's scratch) and a range in it."""

    buffer: DmaBuffer | None
    offset: int
    size: int


@dataclass
class Batch:
    """An ordered list of stub operations, executed together by ``Link.execute``."""

    ops: list[tuple[int, int, int, int, int, int]] = field(default_factory=list)
    strings: dict[int, StringTarget] = field(default_factory=dict)
    scratch_bytes: int = 0  # how much of the link's scratch buffer ``ins`` without ``into`` uses
    _packed: list[bytes] | None = None  # ops as the stub reads them, one item per slot

    def packed(self) -> list[bytes]:
        """The ops in wire format, split into slots; kept until the batch changes,
        so a batch that is run again and again is packed once."""
        if self._packed is None:
            chunks = [self.ops[i : i + abi.MAX_OPS] for i in range(0, len(self.ops), abi.MAX_OPS)]
            self._packed = [ops_struct(len(c)).pack(*[x for op in c for x in op]) for c in chunks]
        return self._packed

    def _add(self, code: int, width: int, port: int, a: int = 0, b: int = 0, c: int = 0) -> int:
        if code in (abi.OP_IN, abi.OP_OUT, abi.OP_INS, abi.OP_OUTS, abi.OP_WAIT):
            if width not in _WIDTHS:
                raise ValueError(f"width must be 1, 2 or 4 bytes, not {width}")
            if not 0 <= port <= 0xFFFF:
                raise ValueError(f"port {port:#x} is outside 0..0xffff")
        elif code in abi.MMIO_CODES:
            if width not in _WIDTHS:
                raise ValueError(f"width must be 1, 2 or 4 bytes, not {width}")
            if a % width or a + width > 1 << 32:
                raise ValueError(f"MMIO address {a:#x} is not {width}-byte aligned below 4 GiB")
        for name, value in (("a", a), ("b", b), ("c", c)):
            if not 0 <= value <= 0xFFFFFFFF:
                raise ValueError(f"operand {name}={value} does not fit in 32 bits")
        self.ops.append((code, width, port, a, b, c))
        self._packed = None
        return len(self.ops) - 1

    def place_scratch(self, phys: int) -> None:
        """Point every ``ins`` without its own buffer at the scratch buffer at ``phys``."""
        for index, target in self.strings.items():
            code, width, port, a, b, c = self.ops[index]
            if target.buffer is None and b != phys + target.offset:
                self.ops[index] = (code, width, port, a, phys + target.offset, c)
                self._packed = None

    def __len__(self) -> int:
        return len(self.ops)

    # single port operations
    def inb(self, port: int) -> int:
        return self._add(abi.OP_IN, 1, port)

    def inw(self, port: int) -> int:
        return self._add(abi.OP_IN, 2, port)

    def inl(self, port: int) -> int:
        return self._add(abi.OP_IN, 4, port)

    def in_(self, port: int, width: int) -> int:
        return self._add(abi.OP_IN, width, port)

    def outb(self, port: int, value: int) -> None:
        self._add(abi.OP_OUT, 1, port, value & 0xFF)

    def outw(self, port: int, value: int) -> None:
        self._add(abi.OP_OUT, 2, port, value & 0xFFFF)

    def outl(self, port: int, value: int) -> None:
        self._add(abi.OP_OUT, 4, port, value & 0xFFFFFFFF)

    def out(self, port: int, value: int, width: int) -> None:
        self._add(abi.OP_OUT, width, port, value & ((1 << (8 * width)) - 1))

    # memory-mapped I/O (a device's memory BAR; never RAM)
    def mmio_read(self, addr: int, width: int = 4) -> int:
        """One volatile load of exactly ``width`` bytes at guest-physical ``addr``."""
        return self._add(abi.OP_MMIO_RD, width, 0, addr)

    def mmio_write(self, addr: int, value: int, width: int = 4) -> None:
        """One volatile store of exactly ``width`` bytes (e1000 registers: 4 only)."""
        self._add(abi.OP_MMIO_WR, width, 0, addr, value & ((1 << (8 * width)) - 1))

    def mmio_wait(
        self, addr: int, mask: int, value: int, timeout_us: int = 100_000, width: int = 4
    ) -> int:
        """Poll ``addr`` until ``(v & mask) == value``; the result is the last value
        read. The timeout travels in 10 µs units (at most 655 350 µs; 0: one read).
        On timeout the rest of the batch is not run and execute raises."""
        units = -(-timeout_us // abi.MMIO_WAIT_UNIT_US)
        if not 0 <= units <= 0xFFFF:
            raise ValueError(f"MMIO wait of {timeout_us} µs (at most {abi.MMIO_WAIT_MAX_US})")
        return self._add(abi.OP_MMIO_WAIT, width, units, addr, mask, value)

    # string operations
    def ins(
        self, port: int, count: int, width: int = 2, into: DmaBuffer | None = None, offset: int = 0
    ) -> int:
        """Read ``count`` units of ``width`` bytes from ``port``; the result is bytes.
        Without ``into`` the data lands in the link's scratch buffer."""
        size = count * width
        if into is None:
            offset = self.scratch_bytes
            self.scratch_bytes += (size + 3) & ~3
            phys = 0  # Link.execute puts the scratch buffer's address here
        else:
            if offset < 0 or offset + size > into.size:
                raise ValueError(
                    f"ins of {size} bytes at {offset} overflows a {into.size}-byte buffer"
                )
            phys = into.phys + offset
        index = self._add(abi.OP_INS, width, port, count, phys)
        self.strings[index] = StringTarget(into, offset, size)
        return index

    def outs_from(
        self, port: int, buf: DmaBuffer, count: int, width: int = 2, offset: int = 0
    ) -> None:
        """Write ``count`` units from a guest buffer to ``port``."""
        if offset < 0 or offset + count * width > buf.size:
            raise ValueError(f"outs of {count * width} bytes at {offset} overflows the buffer")
        self._add(abi.OP_OUTS, width, port, count, buf.phys + offset)

    def ins_phys(self, port: int, count: int, width: int, phys: int) -> None:
        """``rep ins`` into guest memory at ``phys``: for a driver's vdevio, where
        the kernel checks the range lies in one of the caller's DMA buffers."""
        self._add(abi.OP_INS, width, port, count, phys)

    def outs_phys(self, port: int, count: int, width: int, phys: int) -> None:
        """``rep outs`` from guest memory at ``phys`` (see ``ins_phys``)."""
        self._add(abi.OP_OUTS, width, port, count, phys)

    # control
    def wait(
        self, port: int, mask: int, value: int, timeout_us: int = 1_000_000, width: int = 1
    ) -> int:
        """Poll ``port`` until ``(v & mask) == value``; the result is the last value read.
        On timeout the rest of the batch is not run and execute raises."""
        return self._add(abi.OP_WAIT, width, port, mask, value, timeout_us)

    def delay(self, microseconds: int) -> None:
        self._add(abi.OP_DELAY, 0, 0, microseconds)

    def nop(self, value: int = 0) -> int:
        """Echo ``value``: the bare round trip, no device touched."""
        return self._add(abi.OP_NOP, 0, 0, value)

    def irq_unmask(self, line: int) -> None:
        """Unmask IRQ ``line`` at the stub's PIC (the kernel's irqenable, run at the
        end of a driver's batch instead of in a round trip of its own)."""
        self._add(abi.OP_IRQ_UNMASK, 0, 0, line)

    def irq_wait(self, line: int, timeout_us: int) -> int:
        """Wait for IRQ ``line`` inside the batch (unmasking it unless it fired
        already). Its interrupts are the batch's until an ``irq_unmask`` of the line
        or the batch's end, so the host never sees the ones waited for; one left
        unwaited is posted when the batch ends. On timeout the rest is not run."""
        return self._add(abi.OP_IRQ_WAIT, 0, 0, line, 0, timeout_us)


class Patchable:
    """A batch packed once whose OUT values are patched in place between runs: a
    driver's command whose sector and count change and nothing else. Nothing is
    rebuilt or repacked; only the value an OUT writes may change, which is also
    all the kernel's check of a batch's shape leaves out."""

    def __init__(self, batch: Batch) -> None:
        if batch.strings or not 0 < len(batch) <= abi.MAX_OPS:
            raise ValueError(f"a patchable batch is 1..{abi.MAX_OPS} ops without strings")
        (packed,) = batch.packed()
        self.ops = bytearray(packed)  # what vdevio sends
        self._words = memoryview(self.ops).cast("I")
        # op index -> the mask of its value, for OUT ops only
        self._masks = {
            i: (1 << 8 * width) - 1
            for i, (code, width, *_rest) in enumerate(batch.ops)
            if code == abi.OP_OUT
        }

    def __len__(self) -> int:
        return len(self.ops) // abi.OP_SIZE

    def set(self, index: int, value: int) -> None:
        """The value OUT op ``index`` writes (cut to the op's width)."""
        mask = self._masks.get(index)
        if mask is None:
            raise ValueError(f"op {index} is not an OUT: only an OUT's value is patched")
        self._words[index * 4 + 1] = value & mask  # the op's ``a`` word


@dataclass(frozen=True)
class BatchResult:
    """Values of a run batch: ``result[i]`` is an int, or bytes for an ``ins``."""

    values: list[int]
    data: dict[int, bytes]

    def __getitem__(self, index: int) -> int:
        return self.values[index]
