"""hwl.faults: one API for every fault (docs/faults.md).

Each fault is an object with ``inject()``, ``heal()``, ``with fault:`` (inject,
then heal on the way out) and ``describe()``; each inject and heal is an event
in the machine's event log (``fault-inject``, ``fault-heal``). A
:class:`Trigger` says, in the words of Linux's fault-injection framework
(probability, interval, times, space), at which opportunity a fault fires.

- processes: :class:`Kill`, :class:`Stop`, :class:`Fi` (``service fi``);
- disks: :class:`DiskError`, :class:`SlowDisk`, :class:`DiskStall`;
- the machine: :class:`Pause`, :class:`LinkDown`;
- the hardware, at the kernel's layer: :class:`PortBitFlip`, :class:`LostIrq`,
  :class:`SpuriousIrq` (hwl/kernel/hwfaults.py).

:func:`active` lists the faults injected and not healed; :func:`heal_all` heals
them (a fixture's teardown).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hwl.faults.base import EVENT_HEAL, EVENT_INJECT, Fault, FaultError, active, heal_all
    from hwl.faults.disk import DiskError, DiskStall, SlowDisk
    from hwl.faults.hardware import LostIrq, PortBitFlip, SpuriousIrq
    from hwl.faults.machine import LinkDown, Pause
    from hwl.faults.process import Fi, Kill, Stop
    from hwl.faults.trigger import Trigger

# Imported on first use: the kernel imports hwl.faults.trigger alone, without the
# QMP and RS clients the faults themselves need.
_HOME = {
    "EVENT_HEAL": "base",
    "EVENT_INJECT": "base",
    "Fault": "base",
    "FaultError": "base",
    "active": "base",
    "heal_all": "base",
    "DiskError": "disk",
    "DiskStall": "disk",
    "SlowDisk": "disk",
    "LostIrq": "hardware",
    "PortBitFlip": "hardware",
    "SpuriousIrq": "hardware",
    "LinkDown": "machine",
    "Pause": "machine",
    "Fi": "process",
    "Kill": "process",
    "Stop": "process",
    "Trigger": "trigger",
}
__all__ = [
    "EVENT_HEAL",
    "EVENT_INJECT",
    "DiskError",
    "DiskStall",
    "Fault",
    "FaultError",
    "Fi",
    "Kill",
    "LinkDown",
    "LostIrq",
    "Pause",
    "PortBitFlip",
    "SlowDisk",
    "SpuriousIrq",
    "Stop",
    "Trigger",
    "active",
    "heal_all",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'hwl.faults' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hwl.faults.{home}"), name)
