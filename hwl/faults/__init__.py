"""hwl.faults: one API for every fault (docs/faults.md).

Each fault is an object with ``inject()``, ``heal()``, ``with fault:`` (inject,
then heal on the way out) and ``describe()``; each inject and heal is an event
in the machine's event log (``fault-inject``, ``fault-heal``). A
:class:`Trigger` says, in the words of Linux's fault-injection framework
(probability, interval, times, space), at which opportunity a fault fires.

- processes: :class:`Kill`, :class:`Stop`, :class:`Fi` (``service fi``);
- disks: :class:`DiskError`, :class:`SlowDisk`, :class:`DiskStall`;
- the machine: :class:`Pause`, :class:`LinkDown`.

:func:`active` lists the faults injected and not healed; :func:`heal_all` heals
them (a fixture's teardown).
"""

from __future__ import annotations

from hwl.faults.base import EVENT_HEAL, EVENT_INJECT, Fault, FaultError, active, heal_all
from hwl.faults.disk import DiskError, DiskStall, SlowDisk
from hwl.faults.machine import LinkDown, Pause
from hwl.faults.process import Fi, Kill, Stop
from hwl.faults.trigger import Trigger

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
    "Pause",
    "SlowDisk",
    "Stop",
    "Trigger",
    "active",
    "heal_all",
]
