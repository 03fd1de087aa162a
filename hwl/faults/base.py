"""The one shape every fault has: inject, heal, a context manager, a description,
and its inject and heal written to the machine's event log.

The event log is the ``events.jsonl`` RS keeps in the run directory (one JSON
object per line, hwl/system/events.py). A fault appends ``fault-inject`` when it
is in place and ``fault-heal`` when it is undone, each with the fault's
:meth:`Fault.describe` under ``fault``; its ``time`` and ``mono`` are taken just
before the action, on the clocks RS's own events use, so a reader can put the
fault, RS's ``crash`` and its ``restart`` on one time line.

Injected faults stay in a registry until healed: :func:`active` lists them and
:func:`heal_all` undoes them (a test fixture's teardown, a campaign's trial end).
A fault whose effect cannot be undone (a kill, a ``service fi``) is ``instant``:
it logs its inject and is never active; recovering from it is the system's job.

See docs/faults.md.
"""

from __future__ import annotations

import abc
import itertools
import logging
import threading
import time
from pathlib import Path
from typing import Any, ClassVar, Self

from hwl.errors import HwlError
from hwl.faults.trigger import Trigger
from hwl.system.events import append_event

log = logging.getLogger(__name__)

EVENT_INJECT = "fault-inject"
EVENT_HEAL = "fault-heal"
EVENTS_FILE = "events.jsonl"

_ids = itertools.count(1)
_lock = threading.Lock()
_active: list[Fault] = []


class FaultError(HwlError):
    """A fault could not be injected or healed, or was used the wrong way."""


class Fault(abc.ABC):
    """A fault: ``inject()``, ``heal()``, or ``with fault:`` for both.

    ``trigger`` decides at each :meth:`offer` whether the fault is injected; a
    subclass may also consult it when it injects (a disk error picks its
    sectors with it). Subclasses give ``kind``, :meth:`_inject`, :meth:`_heal`,
    :meth:`target` and :meth:`params`.
    """

    kind: ClassVar[str] = "fault"
    instant: ClassVar[bool] = False  # nothing to undo: never active, heal is a no-op

    def __init__(self, run_dir: Path, trigger: Trigger | None = None) -> None:
        self.run_dir = run_dir
        self.trigger = trigger if trigger is not None else Trigger()
        self.id = next(_ids)
        self.injected = False
        self.detail: dict[str, Any] = {}  # what inject found out (a pid, a node name)

    # --------------------------------------------------------- for subclasses
    @abc.abstractmethod
    def _inject(self) -> None:
        """Put the fault in place; record what heal needs in ``self.detail``."""

    def _heal(self) -> None:  # noqa: B027 (instant faults have nothing to undo)
        """Undo the fault."""

    @abc.abstractmethod
    def target(self) -> str:
        """What the fault hits: a service label, a drive, the machine."""

    def params(self) -> dict[str, Any]:
        """The fault's own settings, for :meth:`describe`."""
        return {}

    # ---------------------------------------------------------------- API
    def describe(self) -> dict[str, Any]:
        """What, where and how, as plain JSON values (the events carry it)."""
        return {
            "kind": self.kind,
            "id": self.id,
            "target": self.target(),
            **self.params(),
            "trigger": self.trigger.describe(),
            **self.detail,
        }

    def inject(self) -> None:
        """Put the fault in place now (the trigger is not asked: see :meth:`offer`)."""
        if self.injected:
            raise FaultError(f"{self} is injected already: heal it first")
        wall, mono = time.time(), time.monotonic()
        self.detail = {}
        self._inject()
        if not self.instant:
            self.injected = True
            with _lock:
                _active.append(self)
        self._log(EVENT_INJECT, wall, mono)

    def heal(self) -> None:
        """Undo the fault; nothing if it is not injected (instant faults never are).
        A failed heal is logged with its error and raised; the fault counts as
        healed either way, so a teardown does not retry it forever."""
        if not self.injected:
            return
        wall, mono = time.time(), time.monotonic()
        self.injected = False
        with _lock:
            if self in _active:
                _active.remove(self)
        try:
            self._heal()
        except Exception as exc:
            self._log(EVENT_HEAL, wall, mono, error=str(exc))
            raise
        self._log(EVENT_HEAL, wall, mono)

    def offer(self, size: int = 1) -> bool:
        """An opportunity of ``size`` units (bytes read so far, a request): inject
        if the trigger fires and the fault is not in place. Returns whether it did."""
        if self.injected or not self.trigger.should_fail(size):
            return False
        self.inject()
        return True

    def __enter__(self) -> Self:
        self.inject()
        return self

    def __exit__(self, *exc: object) -> None:
        self.heal()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} #{self.id} {self.kind} on {self.target()}>"

    # ------------------------------------------------------------- events
    @property
    def events_path(self) -> Path:
        return self.run_dir / EVENTS_FILE

    def _log(self, event: str, wall: float, mono: float, **extra: Any) -> None:
        """Append the event; a run directory that is gone (the machine closed
        first) loses the line, not the heal."""
        try:
            append_event(
                self.events_path, event, time=wall, mono=mono, fault=self.describe(), **extra
            )
        except OSError as exc:
            log.warning("%s: cannot write %s to %s: %s", self, event, self.events_path, exc)


def active() -> list[Fault]:
    """The faults injected and not healed yet, oldest first."""
    with _lock:
        return list(_active)


def heal_all() -> list[tuple[Fault, Exception]]:
    """Heal every active fault, newest first (undo in the reverse order of doing);
    every one is tried. Returns the faults whose heal failed, with the error."""
    failed: list[tuple[Fault, Exception]] = []
    for fault in reversed(active()):
        try:
            fault.heal()
        except Exception as exc:
            log.warning("healing %s failed: %s", fault, exc)
            failed.append((fault, exc))
    return failed
