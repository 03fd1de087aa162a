"""Hardware faults the kernel injects at its own layer, set by the root with
``faultctl`` (hwl.faults.hardware is the client side).

- ``port-flip``: a bit of the value a port read returns is flipped: ``devio``
  reads and the IN ops of a ``vdevio`` batch (the value the driver gets; the
  stub's own waits and checks inside the batch saw the real one; ``sdevio``
  strings are not touched);
- ``irq-lost``: an interrupt the stub forwards is not turned into the owner's
  notify; the line stays masked as after any interrupt, until the driver's
  ``irqenable`` (a driver that never saw it recovers by its own timeout);
- a spurious interrupt: the hooks of a line get a HARDWARE notify although the
  device raised nothing (``Irqs.spurious``), once per ``faultctl``.

Each port read from the port, and each interrupt on the line, is an
opportunity for the fault's :class:`~hwl.kernel.trigger.Trigger` (Linux's
probability, interval, times, space; seeded), so a run is reproducible.

See docs/faults.md.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass
from typing import Any

from hwl.kernel.trigger import Trigger
from hwl.link import abi

KINDS = ("port-flip", "irq-lost")
MAX_FAULTS = 64
_OP_HEAD = struct.Struct("<BBH")  # code, width, port
_WORD = struct.Struct("<I")


@dataclass
class HwFault:
    id: int
    kind: str
    trigger: Trigger
    port: int = -1
    bit: int = 0
    line: int = -1

    def describe(self) -> dict[str, Any]:
        where = {"port": self.port, "bit": self.bit} if self.kind == "port-flip" else {}
        if self.kind == "irq-lost":
            where = {"line": self.line}
        return {
            "id": self.id,
            "kind": self.kind,
            **where,
            "trigger": self.trigger.describe(),
            "opportunities": self.trigger.opportunities,
            "fired": self.trigger.fired,
        }


class HwFaults:
    """The kernel's fault hooks; empty (and nearly free) unless the root set some."""

    def __init__(self) -> None:
        self.faults: dict[int, HwFault] = {}
        self._ids = itertools.count(1)

    def add(self, fault: HwFault) -> HwFault:
        if len(self.faults) >= MAX_FAULTS:
            raise LookupError(f"{MAX_FAULTS} hardware faults are set already")
        self.faults[fault.id] = fault
        return fault

    def new_id(self) -> int:
        return next(self._ids)

    def remove(self, fault_id: int) -> HwFault:
        return self.faults.pop(fault_id)

    def port_read(self, port: int, width: int, value: int) -> int:
        """The value a read of ``port`` returns to the driver."""
        for f in self.faults.values():
            hit = f.kind == "port-flip" and f.port == port and f.bit < 8 * width
            if hit and f.trigger.should_fail():
                value ^= 1 << f.bit
        return value

    def batch_results(self, done: bytes, n: int) -> bytes:
        """``done`` (a finished vdevio batch) with its IN results passed through
        :meth:`port_read`; the same bytes if no port-flip fault is set."""
        if not any(f.kind == "port-flip" for f in self.faults.values()):
            return done
        out = bytearray(done)
        for i in range(n):
            at = i * abi.OP_SIZE
            code, width, port = _OP_HEAD.unpack_from(out, at)
            if code != abi.OP_IN:
                continue
            (value,) = _WORD.unpack_from(out, at + abi.OP_C_OFFSET)
            _WORD.pack_into(out, at + abi.OP_C_OFFSET, self.port_read(port, width, value))
        return bytes(out)

    def irq_lost(self, line: int) -> bool:
        """Whether this interrupt on ``line`` is lost."""
        lost = False
        for f in self.faults.values():
            if f.kind == "irq-lost" and f.line == line and f.trigger.should_fail():
                lost = True
        return lost

    def describe(self) -> list[dict[str, Any]]:
        return [f.describe() for f in self.faults.values()]
