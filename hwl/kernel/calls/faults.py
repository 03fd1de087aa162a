"""``faultctl``: hardware faults at the kernel's own layer, the root's only (the
faults are :mod:`hwl.kernel.hwfaults`'s; a spurious interrupt is :mod:`hwl.kernel.irq`'s)."""

from __future__ import annotations

import logging
from typing import Protocol

from hwl.kernel.calls.base import I32_MAX, U32, Fields, Reply, fail, get_int, get_str
from hwl.kernel.errno import Errno
from hwl.kernel.hwfaults import HwFault, HwFaults
from hwl.kernel.proc import Proc
from hwl.kernel.trigger import Trigger

log = logging.getLogger("hwl.kernel.calls")


class Root(Protocol):
    @property
    def root_endpoint(self) -> int: ...


class Spurious(Protocol):
    """The IRQ hooks (hwl.kernel.irq.Irqs), for a spurious interrupt."""

    def spurious(self, line: int) -> int: ...


class FaultCalls:
    def __init__(self, root: Root, irqs: Spurious, hw: HwFaults) -> None:
        self.root = root
        self.irqs = irqs
        self.hw = hw

    def do_faultctl(self, proc: Proc, f: Fields) -> Reply:
        """Hardware faults at the kernel's layer, the root's only (hwl/kernel/hwfaults.py):
        ``op`` add (``kind`` port-flip with ``port`` and ``bit``, or irq-lost with
        ``line``; the trigger's ``probability``, ``interval``, ``times``, ``space``,
        ``seed``) -> ``id``; remove (``id``) -> the fault as it ended; spurious
        (``line``) -> ``hooks`` notified; list -> ``faults``."""
        if proc.endpoint != self.root.root_endpoint:
            fail(Errno.EPERM, "faultctl: only the root sets hardware faults")
        op = get_str(f, "op")
        if op == "list":
            return {"faults": self.hw.describe()}  # type: ignore[dict-item]
        if op == "remove":
            fault_id = get_int(f, "id", 0, I32_MAX)
            if fault_id not in self.hw.faults:
                fail(Errno.ESRCH, f"faultctl: no hardware fault {fault_id}")
            return {"fault": self.hw.remove(fault_id).describe()}
        if op == "spurious":
            line = get_int(f, "line", 0, 15)
            return {"hooks": self.irqs.spurious(line)}
        if op != "add":
            fail(Errno.EINVAL, f"faultctl: unknown op {op!r} (add, remove, spurious, list)")
        kind = get_str(f, "kind")
        try:
            trigger = Trigger(
                probability=get_int(f, "probability", 0, 100, 100),
                interval=get_int(f, "interval", 1, I32_MAX, 1),
                times=get_int(f, "times", -1, I32_MAX, -1),
                space=get_int(f, "space", 0, I32_MAX, 0),
                seed=get_int(f, "seed", 0, U32, 0),
            )
        except ValueError as exc:
            fail(Errno.EINVAL, f"faultctl: {exc}")
        fault = HwFault(self.hw.new_id(), kind, trigger)
        if kind == "port-flip":
            fault.port = get_int(f, "port", 0, 0xFFFF)
            fault.bit = get_int(f, "bit", 0, 31)
        elif kind == "irq-lost":
            fault.line = get_int(f, "line", 0, 15)
        else:
            fail(Errno.EINVAL, f"faultctl: unknown kind {kind!r} (port-flip, irq-lost)")
        try:
            self.hw.add(fault)
        except LookupError as exc:
            fail(Errno.ENOSPC, f"faultctl: {exc}")
        log.warning("hardware fault %d set by %s: %s", fault.id, proc.label, fault.describe())
        return {"id": fault.id}
