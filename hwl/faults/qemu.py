"""What disk and machine faults share: a QEMU machine reached through QMP."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from hwl.faults.base import Fault, FaultError
from hwl.faults.trigger import Trigger
from hwl.machine.qmp import Qmp


class QemuHost(Protocol):
    """A running machine: its run directory (the event log) and its QMP client
    (:class:`hwl.machine.machine.Machine`)."""

    @property
    def run_dir(self) -> Path: ...

    @property
    def qmp(self) -> Qmp | None: ...


class QemuFault(Fault):
    """A fault done through QMP; a QEMU error becomes a :class:`FaultError` that
    names the fault and the command."""

    def __init__(self, host: QemuHost, trigger: Trigger | None = None) -> None:
        super().__init__(host.run_dir, trigger)
        self.host = host

    @property
    def qmp(self) -> Qmp:
        qmp = self.host.qmp
        if qmp is None:
            raise FaultError(f"{self}: the machine is not running")
        return qmp

    def execute(self, cmd: str, args: dict[str, object] | None = None) -> Any:
        try:
            return self.qmp.execute(cmd, args)
        except FaultError:
            raise
        except Exception as exc:
            raise FaultError(f"{self}: QMP {cmd} failed: {exc}") from exc

    def hmp(self, command_line: str) -> str:
        """A human-monitor command; its errors come back as text, made FaultError."""
        try:
            text = self.qmp.hmp(command_line)
        except FaultError:
            raise
        except Exception as exc:
            raise FaultError(f"{self}: HMP {command_line!r} failed: {exc}") from exc
        if text.startswith("Error"):
            raise FaultError(f"{self}: HMP {command_line!r}: {text.strip()}")
        return text
