"""A plan's fault as a :mod:`hwl.faults` object, and its timing carried out.

- ``after-bytes``: the trial offers the fault, between two operations (or as the
  TCP client reads), the bytes it moved (a ``Trigger(space=K, times=1)``):
  injected once K bytes are through;
- ``at-random``: a timer thread injects it ``at_ms`` after the workload began,
  most likely while a request is under way;
- ``in-command``: at ``at_ms`` the drive is stalled (QEMU holds the next
  request, so at_wini's DMA command waits for its interrupt inside the stub),
  ``hold_ms`` later the fault hits, then the stall is healed. This is the window
  between an ATA command and its interrupt; the interrupt itself cannot be lost
  there (the kernel never sees an interrupt a batch waits for: docs/faults.md).

A fault that can be healed is healed ``heal_after_ms`` after its inject by the
same thread, since a stalled or paused disk blocks the client's own thread.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from hwl.campaign.schedule import Plan
from hwl.faults import (
    DiskError,
    DiskStall,
    Fault,
    Fi,
    Kill,
    LinkDown,
    Pause,
    SlowDisk,
    Stop,
    Trigger,
)
from hwl.proto.rs import RS_LABEL
from hwl.proto.sef import FiType
from hwl.system.running import RunningSystem

if TYPE_CHECKING:
    from hwl.campaign.trial import Observed

log = logging.getLogger(__name__)

_FI = {t.option: t for t in FiType}
#: Requests (disk operations, TCP rounds) a trial makes after its fault has played
#: out: proof that the system serves again, and the first good reply for the recovery.
AFTER_OPS = 2
#: Per request: a client blocked longer than this is a hang.
REQUEST_TIMEOUT = 20.0
#: fi types after which RS restarts the service (the others are answered by VFS).
RESTARTING_FI = frozenset({"crash", "hang", "exception"})
#: The events that say a target is back: RS's restart of a service, and a new RS
#: (label ``rs``) that took the services over after the kernel restarted it.
RESTART_EVENTS = frozenset({"restart", "rs-restart"})


def expects_restart(plan: Plan) -> bool:
    """Whether the plan's fault should end with RS restarting its target (for RS
    itself: the kernel). Nothing watches RS's heartbeat: a stopped RS is not
    restarted but goes on at the heal."""
    if plan.kind == "stop" and plan.target == RS_LABEL:
        return False
    if plan.kind in ("kill", "stop"):
        return True
    return plan.kind == "fi" and plan.settings.get("type") in RESTARTING_FI


def settled(inj: Injector, system: RunningSystem, obs: Observed, good_after: int) -> bool:
    """The fault has played out: done, and AFTER_OPS requests were answered right
    since; for a restart, since the target's restart event, which can come after
    requests that did not need the target (RS is on no request's path)."""
    if not inj.done:
        return False
    if inj.error or not obs.expect_restart:
        return good_after >= AFTER_OPS
    assert inj.inject_mono is not None
    back = next(
        (
            e["mono"]
            for e in system.events()
            if e["event"] in RESTART_EVENTS
            and e.get("label") == inj.plan.target
            and e["mono"] >= inj.inject_mono
        ),
        None,
    )
    if back is None:
        return False
    since, good = obs.ms(back) or 0.0, 0
    for t, _, ok in reversed(obs.timeline):
        if t < since or good >= AFTER_OPS:
            break
        good += 1 if ok else 0
    return good >= AFTER_OPS


def make_fault(system: RunningSystem, plan: Plan, drive: str | None) -> Fault:
    s = plan.settings
    trigger = Trigger(space=plan.after_bytes or 0, times=1)
    if plan.kind == "kill":
        sig = signal.Signals[str(s.get("signal", "SIGKILL"))]
        return Kill(system, plan.target, sig, trigger=trigger)
    if plan.kind == "stop":
        return Stop(system, plan.target, trigger=trigger)
    if plan.kind == "fi":
        return Fi(system, plan.target, _FI[str(s.get("type", "crash"))], trigger=trigger)
    if plan.kind == "pause":
        return Pause(system.machine, trigger=trigger)
    if plan.kind == "link-down":
        return LinkDown(system, plan.target, trigger=trigger)
    if drive is None:
        raise ValueError(f"{plan.kind} needs a drive: the disk workload's")
    if plan.kind == "disk-error":
        return DiskError(
            system.machine,
            plan.target,
            int(s["sector"]),
            str(s.get("op", "read")),
            once=bool(s.get("once", True)),
            trigger=trigger,
        )
    if plan.kind == "slow-disk":
        return SlowDisk(system.machine, plan.target, bps=int(s["bps"]), trigger=trigger)
    if plan.kind == "disk-stall":
        return DiskStall(system.machine, plan.target, trigger=trigger)
    raise ValueError(f"no fault kind {plan.kind!r}")


class Injector:
    """Carries out one plan's timing; :meth:`close` stops it and heals what is left."""

    def __init__(self, system: RunningSystem, plan: Plan, drive: str | None) -> None:
        self.plan = plan
        self.fault = make_fault(system, plan, drive)
        self.stall = (
            DiskStall(system.machine, drive)
            if plan.timing == "in-command" and drive is not None
            else None
        )
        self.inject_mono: float | None = None
        self.heal_mono: float | None = None
        self.error: str | None = None  # a fault that could not be injected or healed
        self.during_request: bool | None = None  # whether a client request was under way
        self.busy: threading.Event = threading.Event()  # set by the client during a request
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0.0

    @property
    def healable(self) -> bool:
        return not self.fault.instant

    def start(self, start_mono: float) -> None:
        """The workload begins now (``start_mono``)."""
        self._start = start_mono
        if self.plan.timing != "after-bytes":
            self._thread = threading.Thread(target=self._timed, name="campaign-fault", daemon=True)
            self._thread.start()

    def after_op(self, size: int) -> None:
        """The client moved ``size`` more bytes (after-bytes timing)."""
        if self.plan.timing != "after-bytes" or self.inject_mono is not None or self.error:
            return
        if self.fault.trigger.should_fail(size) and self._inject() and self.healable:
            self._thread = threading.Thread(target=self._heal_later, daemon=True)
            self._thread.start()

    @property
    def done(self) -> bool:
        """Injected, and healed if it can be (or failed: nothing more will happen)."""
        if self.error:
            return True
        if self.inject_mono is None:
            return False
        return not self.healable or self.heal_mono is not None

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for fault in (self.fault, self.stall):
            if fault is not None and fault.injected:
                self._heal(fault)

    # ------------------------------------------------------------ internals
    def _wait_until(self, at_ms: float) -> bool:
        delay = self._start + at_ms / 1000 - time.monotonic()
        return not self._stop.wait(max(0.0, delay))

    def _timed(self) -> None:
        if not self._wait_until(self.plan.at_ms or 0):
            return
        if self.stall is not None:
            try:
                self.stall.inject()
            except Exception as exc:
                self.error = f"stall for in-command: {exc}"
                return
            hold = (self.plan.hold_ms or 0) / 1000
            if self._stop.wait(hold):
                self._heal(self.stall)
                return
            injected = self._inject()
            self._heal(self.stall)
            if not injected:
                return
        elif not self._inject():
            return
        if self.healable:
            self._heal_later()

    def _heal_later(self) -> None:
        assert self.inject_mono is not None
        due = self.inject_mono + (self.plan.heal_after_ms or 0) / 1000
        self._stop.wait(max(0.0, due - time.monotonic()))
        self._heal(self.fault)
        if not self.fault.injected:
            self.heal_mono = time.monotonic()

    def _inject(self) -> bool:
        mono = time.monotonic()
        self.during_request = self.busy.is_set()
        try:
            self.fault.inject()
        except Exception as exc:
            log.warning("%s: inject failed: %s", self.fault, exc)
            self.error = f"inject: {exc}"
            return False
        self.inject_mono = mono
        return True

    def _heal(self, fault: Fault) -> None:
        try:
            fault.heal()
        except Exception as exc:
            log.warning("%s: heal failed: %s", fault, exc)
            self.error = self.error or f"heal: {exc}"

    def describe(self) -> dict[str, Any]:
        return self.fault.describe()
