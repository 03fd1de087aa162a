"""Faults of the whole machine: a pause, and a NIC's link going down.

A pause (QMP ``stop``) freezes the guest: the stub answers nothing and no
interrupt comes, while the host side (the kernel, the drivers, their alarms)
runs on, so a driver whose timeout is shorter than the pause sees one. QEMU
drains its block devices when it stops; the requests in flight complete first.

A link down (QMP ``set_link``) is what the NIC model shows its driver (the
link-status bit, and frames no longer leave or arrive), not a host-side change.

See docs/faults.md.
"""

from __future__ import annotations

from typing import Any

from hwl.faults.base import FaultError
from hwl.faults.qemu import QemuFault, QemuHost
from hwl.faults.trigger import Trigger


class Pause(QemuFault):
    """Stop the machine's CPUs; heal continues them."""

    kind = "pause"

    def target(self) -> str:
        return "machine"

    def status(self) -> str:
        """QEMU's run state: ``running``, ``paused``, ..."""
        return str(self.execute("query-status")["status"])

    def _inject(self) -> None:
        state = self.status()
        if state != "running":
            raise FaultError(f"{self}: the machine is {state}, not running")
        self.execute("stop")

    def _heal(self) -> None:
        self.execute("cont")


class LinkDown(QemuFault):
    """Take down the link of ``nic`` (a NIC's device id, or its netdev's id, as
    ``set_link`` takes them); heal brings it up."""

    kind = "link-down"

    def __init__(self, host: QemuHost, nic: str, trigger: Trigger | None = None) -> None:
        super().__init__(host, trigger)
        self.nic = nic

    def target(self) -> str:
        return self.nic

    def params(self) -> dict[str, Any]:
        return {"nic": self.nic}

    def _inject(self) -> None:
        self.execute("set_link", {"name": self.nic, "up": False})

    def _heal(self) -> None:
        self.execute("set_link", {"name": self.nic, "up": True})
