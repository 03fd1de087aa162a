"""A server's cache of the kernel's process table (``getinfo proctab``).

RS, DS and PCI each need to know who a caller is (its label, whether it is a
system process) and which endpoints still live; reading the table for every
request costs a kernel call, so they keep the last table read and read it again
only when an endpoint is not in it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from hwl.ipc.client import IpcError

_log = logging.getLogger(__name__)


class Kernel(Protocol):
    """What the table reads from (a connection has it)."""

    def proctab(self) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Proc:
    """A live process as the kernel's process table shows it."""

    endpoint: int
    label: str
    pid: int
    system: bool


def procs_of(rows: Iterable[dict[str, Any]]) -> dict[int, Proc]:
    """The process table by endpoint; malformed rows are skipped."""
    found = {}
    for row in rows:
        endpoint, label, pid = row.get("endpoint"), row.get("label"), row.get("pid", -1)
        if isinstance(endpoint, int) and isinstance(label, str) and isinstance(pid, int):
            found[endpoint] = Proc(endpoint, label, pid, bool(row.get("system", True)))
    return found


class ProcTable:
    """The last process table read, by endpoint. A refused read is logged on
    ``log`` (the owner's logger) and keeps the previous table."""

    def __init__(self, kernel: Kernel, log: logging.Logger = _log) -> None:
        self.kernel = kernel
        self.log = log
        self.last: dict[int, Proc] = {}  # the last table read

    def read(self) -> dict[int, Proc]:
        """Read the table afresh; a refusal raises :class:`IpcError`."""
        self.last = procs_of(self.kernel.proctab())
        return self.last

    def refresh(self) -> dict[int, Proc] | None:
        """Read the table afresh; None (and a warning) if the kernel refused."""
        try:
            return self.read()
        except IpcError as exc:
            self.log.warning("getinfo proctab failed: %s", exc)
            return None

    def get(self, endpoint: int, *, strict: bool = False) -> Proc | None:
        """The live process at ``endpoint``: cached, the table read again on a miss.
        ``strict``: a refused read raises :class:`IpcError` instead of answering None."""
        found = self.last.get(endpoint)
        if found is None:
            procs = self.read() if strict else self.refresh()
            if procs is not None:
                found = procs.get(endpoint)
        return found

    def alive(self, endpoint: int) -> bool:
        """Whether ``endpoint`` is a live process now (reads the table afresh;
        True when the kernel refused: the caller cannot tell, so keeps what it holds)."""
        procs = self.refresh()
        return procs is None or endpoint in procs
