"""Faults of a service's process: a signal, a stop, or ``service fi``.

The service is named by its label; RS's table gives its pid at the moment of the
inject (recorded in the event as ``pid``), so a fault always hits the current
incarnation. RS itself (label ``rs``) is no row of its own table: its pid is the
one the kernel logged when it last started RS, and only signals reach it (the
kernel restarts it; ``service fi`` goes through RS). A host is anything with the
run directory and an RS client: :class:`hwl.system.boot.System`,
:class:`hwl.system.running.RunningSystem`.

See docs/faults.md.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any, Protocol

from hwl.errors import HwlError
from hwl.faults.base import Fault, FaultError
from hwl.faults.trigger import Trigger
from hwl.proto.rs import RS_LABEL
from hwl.proto.sef import FiType
from hwl.system.rs import Rs, RsError, ServiceStatus
from hwl.system.watch import rs_pid


class ServiceHost(Protocol):
    """Where services run: the run directory (the event log) and RS."""

    @property
    def run_dir(self) -> Path: ...

    @property
    def rs(self) -> Rs: ...


class _ServiceFault(Fault):
    def __init__(self, host: ServiceHost, label: str, trigger: Trigger | None = None) -> None:
        super().__init__(host.run_dir, trigger)
        self.host = host
        self.label = label

    def target(self) -> str:
        return self.label

    def _row(self) -> ServiceStatus:
        """The service's row in RS's table; it must have a process now."""
        try:
            rows = self.host.rs.status()
        except RsError as exc:
            raise FaultError(f"{self}: RS did not answer: {exc}") from exc
        row = next((r for r in rows if r.label == self.label), None)
        if row is None:
            raise FaultError(f"{self}: RS knows no service '{self.label}'")
        if row.pid <= 0:
            raise FaultError(f"{self}: '{self.label}' has no process now (state {row.state})")
        self.detail.update(pid=row.pid, endpoint=row.endpoint, restarts=row.restarts)
        return row

    def _pid(self) -> int:
        """The pid of the service's process of now (RS's own from the kernel's log)."""
        if self.label != RS_LABEL:
            return self._row().pid
        try:
            pid = rs_pid(self.host.run_dir)
        except HwlError as exc:
            raise FaultError(f"{self}: {exc}") from exc
        self.detail.update(pid=pid)
        return pid

    def _signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the service's process of now."""
        pid = self._pid()
        try:
            os.kill(pid, sig)
        except ProcessLookupError as exc:
            raise FaultError(f"{self}: pid {pid} is gone already") from exc


class Kill(_ServiceFault):
    """Send ``sig`` (default SIGKILL) to the service's process. Instant: what
    follows (RS's restart, or the service's own handling) is the recovery."""

    kind = "kill"
    instant = True

    def __init__(
        self,
        host: ServiceHost,
        label: str,
        sig: signal.Signals = signal.SIGKILL,
        trigger: Trigger | None = None,
    ) -> None:
        super().__init__(host, label, trigger)
        self.sig = signal.Signals(sig)

    def params(self) -> dict[str, Any]:
        return {"signal": self.sig.name}

    def _inject(self) -> None:
        self._signal(self.sig)


class Stop(_ServiceFault):
    """SIGSTOP the service's process: a hang that only a heartbeat can see. Heal
    sends SIGCONT to the same pid (if RS has killed it meanwhile, nothing is left
    to continue: the heal event then says ``continued: false``)."""

    kind = "stop"

    def _inject(self) -> None:
        self._signal(signal.SIGSTOP)

    def _heal(self) -> None:
        pid = int(self.detail["pid"])
        self.detail["continued"] = False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
            self.detail["continued"] = True


class Fi(_ServiceFault):
    """``service fi``: RS asks the service to inject ``fi_type`` into itself (a
    crash, a hang, an exception in the next request, a dropped or corrupted
    reply; :class:`hwl.proto.sef.FiType`). Instant: RS answers once it has asked;
    the crash and the restart follow as RS's own events."""

    kind = "fi"
    instant = True

    def __init__(
        self,
        host: ServiceHost,
        label: str,
        fi_type: FiType = FiType.CRASH,
        trigger: Trigger | None = None,
    ) -> None:
        super().__init__(host, label, trigger)
        self.fi_type = FiType(fi_type)

    def params(self) -> dict[str, Any]:
        return {"type": self.fi_type.option}

    def _inject(self) -> None:
        if self.label == RS_LABEL:
            raise FaultError(f"{self}: service fi goes through RS, which cannot be its own "
                             "target (kill RS instead: the kernel restarts it)")  # fmt: skip
        self._row()
        try:
            self.host.rs.fi(self.label, self.fi_type)
        except RsError as exc:
            raise FaultError(f"{self}: {exc}") from exc
