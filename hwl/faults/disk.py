"""Disk faults, done by QEMU's block layer under a running machine (docs/faults.md,
"Disk faults").

- :class:`DiskError`: an I/O error on chosen sectors, for reads, writes or both,
  once per sector or until healed (a ``blkdebug`` node reopened under the drive's
  format node). A request that touches a bad sector fails as a whole, and the IDE
  device answers it with ERR (the profile renders ``rerror``/``werror`` =
  ``report``) instead of stopping the machine.
- :class:`SlowDisk`: I/O throttling (``block_set_io_throttle``) of bytes or
  requests per second.
- :class:`DiskStall`: requests held until heal, or until QEMU drains the drive (a
  pause, a reopen, a driver stopping the bus master after its own timeout).

Which sectors fail is decided when the fault is injected: ``select``, a
:class:`~hwl.faults.trigger.Trigger`, is offered each sector of the range in order,
so the same seed makes the same sectors bad.
"""

from __future__ import annotations

import errno as host_errno
from collections.abc import Iterable
from typing import Any

from hwl.faults.base import FaultError
from hwl.faults.qemu import QemuFault, QemuHost
from hwl.faults.trigger import Trigger

OPS = ("read", "write", "any")
MAX_SECTORS = 1024  # one blkdebug rule per sector and operation
_EVENTS = {"read": ("read_aio",), "write": ("write_aio",), "any": ("read_aio", "write_aio")}
_IOTYPE = {"read_aio": "read", "write_aio": "write"}
_LIMITS = ("bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr")
FAULT_NODE_PREFIX = "hwl-fault-"


def _op(op: str) -> str:
    if op not in OPS:
        raise ValueError(f"operation {op!r}: use {', '.join(OPS)}")
    return op


class DiskError(QemuFault):
    """An I/O error (host ``errno``, EIO by default) on the sectors of ``sectors``
    that ``select`` picks (default: all), for ``op`` (read, write, any). ``once``:
    each bad sector fails the first request that touches it, then reads well;
    otherwise every such request fails until heal."""

    kind = "disk-error"

    def __init__(
        self,
        host: QemuHost,
        drive: str,
        sectors: int | Iterable[int],
        op: str = "read",
        *,
        once: bool = False,
        errno: int = host_errno.EIO,
        select: Trigger | None = None,
        trigger: Trigger | None = None,
    ) -> None:
        super().__init__(host, trigger)
        self.drive = drive
        self.sectors = [sectors] if isinstance(sectors, int) else list(sectors)
        if not self.sectors or len(self.sectors) > MAX_SECTORS:
            raise ValueError(f"{len(self.sectors)} sectors: give 1 to {MAX_SECTORS}")
        if any(s < 0 for s in self.sectors):
            raise ValueError("a sector number is at least 0")
        self.op = _op(op)
        self.once = once
        self.errno = errno
        self.select = select if select is not None else Trigger()

    def target(self) -> str:
        return self.drive

    def params(self) -> dict[str, Any]:
        first, last = min(self.sectors), max(self.sectors)
        return {
            "op": self.op,
            "once": self.once,
            "errno": self.errno,
            "range": [first, last],
            "select": self.select.describe(),
        }

    def rules(self, sectors: Iterable[int]) -> list[dict[str, object]]:
        """blkdebug's ``inject-error`` rules for ``sectors``."""
        return [
            {
                "event": event,
                "iotype": _IOTYPE[event],
                "errno": self.errno,
                "sector": sector,
                "once": self.once,
            }
            for sector in sectors
            for event in _EVENTS[self.op]
        ]

    def _inject(self) -> None:
        qmp = self.qmp
        try:
            fmt, file = qmp.drive_nodes(self.drive)
        except KeyError as exc:
            raise FaultError(f"{self}: {exc.args[0]}") from exc
        except Exception as exc:  # QMP's own errors, a QEMU without the block graph
            raise FaultError(f"{self}: the block graph: {exc}") from exc
        if file.startswith(FAULT_NODE_PREFIX):
            raise FaultError(f"{self}: drive {self.drive} has a disk error in place: heal it first")
        self.select.reset()
        bad = self.select.pick(self.sectors)
        node = f"{FAULT_NODE_PREFIX}{self.id}"
        driver = self._driver(fmt)
        self.execute(
            "blockdev-add",
            {
                "driver": "blkdebug",
                "node-name": node,
                "image": file,
                "inject-error": self.rules(bad),
            },
        )
        try:
            self._reopen(driver, fmt, node)
        except FaultError:
            self.execute("blockdev-del", {"node-name": node})
            raise
        self.detail.update(sectors=bad, node=node, format_node=fmt, file_node=file, driver=driver)

    def _heal(self) -> None:
        d = self.detail
        self._reopen(str(d["driver"]), str(d["format_node"]), str(d["file_node"]))
        self.execute("blockdev-del", {"node-name": str(d["node"])})

    def _driver(self, node: str) -> str:
        for info in self.execute("query-named-block-nodes", {"flat": True}):
            if info.get("node-name") == node:
                return str(info["drv"])
        raise FaultError(f"{self}: no block node {node!r}")

    def _reopen(self, driver: str, node: str, file: str) -> None:
        """Reopen the format node with ``file`` as its file child (every option not
        given goes back to its default, which is how hwl's profiles open it)."""
        options = {"driver": driver, "node-name": node, "file": file}
        self.execute("blockdev-reopen", {"options": [options]})


class _Throttle(QemuFault):
    """A fault that is an I/O throttle on ``drive``; one at a time per drive."""

    def __init__(self, host: QemuHost, drive: str, op: str, trigger: Trigger | None) -> None:
        super().__init__(host, trigger)
        self.drive = drive
        self.op = _op(op)

    def target(self) -> str:
        return self.drive

    def _limits(self) -> dict[str, int]:
        for block in self.execute("query-block"):
            if block.get("device") == self.drive and "inserted" in block:
                return {k: int(block["inserted"].get(k, 0)) for k in _LIMITS}
        raise FaultError(f"{self}: QEMU has no drive '{self.drive}' with a medium")

    def _throttle(self, **limits: int) -> None:
        values = {k: limits.get(k, 0) for k in _LIMITS}
        self.execute("block_set_io_throttle", {"device": self.drive, **values})

    def _set(self, **limits: int) -> None:
        if any(self._limits().values()):
            raise FaultError(f"{self}: drive {self.drive} is throttled already: heal that first")
        self._throttle(**limits)

    def _heal(self) -> None:
        self._throttle()  # all 0: no limit; QEMU drains the queued requests through

    def _key(self, unit: str) -> str:
        return {"any": unit, "read": f"{unit}_rd", "write": f"{unit}_wr"}[self.op]


class SlowDisk(_Throttle):
    """At most ``bps`` bytes and/or ``iops`` requests per second (0: no limit of
    that kind) for ``op``, QEMU's leaky bucket with its default burst."""

    kind = "slow-disk"

    def __init__(
        self,
        host: QemuHost,
        drive: str,
        *,
        bps: int = 0,
        iops: int = 0,
        op: str = "any",
        trigger: Trigger | None = None,
    ) -> None:
        super().__init__(host, drive, op, trigger)
        if bps < 0 or iops < 0 or not (bps or iops):
            raise ValueError("a slow disk needs bps or iops above 0")
        self.bps = bps
        self.iops = iops

    def params(self) -> dict[str, Any]:
        return {"op": self.op, "bps": self.bps, "iops": self.iops}

    def _inject(self) -> None:
        limits = {}
        if self.bps:
            limits[self._key("bps")] = self.bps
        if self.iops:
            limits[self._key("iops")] = self.iops
        self._set(**limits)


class DiskStall(_Throttle):
    """Every request of ``op`` (``read`` or ``any``) held until heal, or until
    QEMU drains the drive (a driver's bus-master stop after its timeout)."""

    kind = "disk-stall"

    def __init__(
        self, host: QemuHost, drive: str, op: str = "any", trigger: Trigger | None = None
    ) -> None:
        super().__init__(host, drive, op, trigger)
        if self.op == "write":
            raise ValueError("a stall of writes alone is not offered: its budget would be "
                             "spent by a write of hwl's own; use op='any'")  # fmt: skip

    def params(self) -> dict[str, Any]:
        return {"op": self.op}

    def _inject(self) -> None:
        self._set(**{self._key("bps"): 1})
        # Spend the bucket's first pass: the guest's next request waits ~512 s.
        self.hmp(f'qemu-io {self.drive} "aio_read 0 512"')
