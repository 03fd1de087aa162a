"""Who may see which PCI device: per-service ACLs from system.conf (docs/pci.md,
"ACLs").

A device is visible to a caller if one of its ``pci device`` lines names the ids
(and subsystem ids, when the line has them) or one of its ``pci class`` lines
matches as far as the line goes (MINIX's ``visible()``); a caller with neither,
and every user process, sees nothing. The lines are the entry the caller runs
under, read from the kernel (``privctl get``), else the stock system.conf's entry
for its label. Labels and ACLs are cached by endpoint and pid, and dropped by
:meth:`Callers.sweep` when the endpoint died or runs another process; ``reserve``
always reads the ACL afresh.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from hwl.config import PciClass, PciDevice, SystemConf, SystemConfError, load, parse
from hwl.ipc import codec
from hwl.ipc.client import IpcError
from hwl.servers.pci.bus import Device
from hwl.system.proctab import Proc, ProcTable

log = logging.getLogger(__name__)


class Kernel(Protocol):
    """The kernel calls the ACL table needs (a connection has them)."""

    def proctab(self) -> list[dict[str, Any]]: ...

    def kcall(
        self, name: str, fields: dict[str, codec.Value] | None = None
    ) -> dict[str, codec.Value]: ...


@dataclass(frozen=True)
class Acl:
    """The devices one caller may see and reserve."""

    label: str
    devices: tuple[PciDevice, ...] = ()
    classes: tuple[PciClass, ...] = ()
    source: str = "none"  # "kernel", "system.conf", or why there is none

    def allows(self, d: Device) -> bool:
        for entry in self.devices:
            if entry.matches(d.vid, d.did, d.sub_vid, d.sub_did):
                return True
        return any(c.matches(d.base_class, d.sub_class, d.interface) for c in self.classes)

    def describe(self) -> str:
        lines = [f"pci device {d}" for d in self.devices]
        lines += [f"pci class {c}" for c in self.classes]
        return "; ".join(lines) or "no pci lines"


class Callers:
    """Labels and ACLs of the processes that call the PCI server, by endpoint."""

    def __init__(self, kernel: Kernel, stock: Callable[[], SystemConf] = load) -> None:
        self.kernel = kernel
        self._load_stock = stock
        self._stock: SystemConf | None = None
        self.procs = ProcTable(kernel, log)
        self._acls: dict[int, tuple[int, Acl]] = {}  # endpoint -> (pid, acl)

    # ------------------------------------------------------------ processes
    def sweep(self) -> set[int] | None:
        """Read the table, forget ACLs of processes that are gone or were replaced;
        returns the live endpoints (None: the kernel refused)."""
        procs = self.procs.refresh()
        if procs is None:
            return None
        for endpoint, (pid, _acl) in list(self._acls.items()):
            current = procs.get(endpoint)
            if current is None or current.pid != pid:
                del self._acls[endpoint]
        return set(procs)

    # ----------------------------------------------------------------- ACLs
    def acl(self, endpoint: int, *, fresh: bool = False) -> Acl:
        """The ACL of the process at ``endpoint``."""
        if fresh:
            self.procs.refresh()
            proc = self.procs.last.get(endpoint)  # the previous table if the kernel refused
        else:
            cached = self._acls.get(endpoint)
            if cached is not None:
                return cached[1]
            proc = self.procs.get(endpoint)
        if proc is None:
            return Acl(f"<dead {endpoint}>", source="not a live process")
        acl = self._read_acl(proc)
        self._acls[endpoint] = (proc.pid, acl)
        log.debug("ACL of %s (%d) from %s: %s", acl.label, endpoint, acl.source, acl.describe())
        return acl

    def _read_acl(self, proc: Proc) -> Acl:
        if not proc.system:
            return Acl(proc.label, source="a user process (no system.conf entry)")
        try:
            priv = self.kernel.kcall("privctl", {"endpoint": proc.endpoint, "op": "get"})["priv"]
            if not isinstance(priv, dict):
                raise ValueError(f"privctl get answered {priv!r}")
            if priv.get("system") is False:
                return Acl(proc.label, source="a user process (no system.conf entry)")
            text = priv.get("conf")
            if not isinstance(text, str):
                raise ValueError("privctl get answered no conf text")
            entries = list(parse(text, f"<entry of {proc.label}>"))
            if len(entries) != 1:
                raise ValueError(f"the kernel's entry holds {len(entries)} services")
            entry = entries[0]
            return Acl(proc.label, entry.pci_devices, entry.pci_classes, "kernel")
        except (IpcError, KeyError, ValueError, SystemConfError) as exc:
            log.warning(
                "the kernel did not give %s's entry (%s); using the stock system.conf",
                proc.label,
                exc,
            )
        stock = self.stock().get(proc.label)
        if stock is None:
            return Acl(proc.label, source="no system.conf entry")
        return Acl(proc.label, stock.pci_devices, stock.pci_classes, "system.conf")

    def stock(self) -> SystemConf:
        if self._stock is None:
            try:
                self._stock = self._load_stock()
            except SystemConfError as exc:
                log.error("cannot read the stock system.conf: %s", exc)
                self._stock = SystemConf()
        return self._stock

    def forget(self, endpoint: int) -> None:
        self._acls.pop(endpoint, None)
