"""The block path on a real QEMU machine, shared by the VFS and block load tests.

``block_path(hwl_machines)`` boots a pc machine (hd0: 128 MiB of seeded random
bytes), the kernel with RS, and DS, PCI, at_wini (instance 0, policy restart) and
VFS; the test is VFS's client through :class:`hwl.system.vfs.Vfs`. Bytes are
checked against ``hd0.img`` in the machine's run directory.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hwl.config
from hwl import Machine
from hwl.ipc.client import Connection
from hwl.pytest_plugin import MachineFactory
from hwl.system.boot import System
from hwl.system.proto import Policy
from hwl.system.rs import ServiceStatus, up_fields
from hwl.system.vfs import Vfs


@dataclass
class Setup:
    machine: Machine
    system: System
    conn: Connection
    vfs: Vfs
    image: Path

    def image_bytes(self, position: int, count: int) -> bytes:
        with self.image.open("rb") as f:
            f.seek(position)
            return f.read(count)

    def at_wini_row(self) -> ServiceStatus:
        return next(r for r in self.system.rs.status() if r.label == "at_wini")

    def log_path(self, label: str) -> Path:
        """The log the kernel gives every incarnation of ``label`` (appended to)."""
        return self.machine.run_dir / f"{label}.log"

    def log_text(self, label: str) -> str:
        path = self.log_path(label)
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_at_wini_up(self, old_pid: int, restarts: int, timeout: float = 15.0) -> ServiceStatus:
        """The row of an at_wini incarnation other than ``old_pid``, up, restarted
        more than ``restarts`` times; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            row = self.at_wini_row()
            if row.state == "up" and row.pid > 0 and row.pid != old_pid and row.restarts > restarts:
                return row
            assert time.monotonic() < deadline, f"at_wini not back within {timeout} s: {row}"
            time.sleep(0.005)


def at_wini_up(system: System, policy: Policy, *args: str) -> int:
    """``service up hwl.drivers.at_wini instance=0 ARGS`` under the stock entry."""
    stock = hwl.config.load().get("at_wini")
    assert stock is not None
    return system.rs.up(
        [sys.executable, "-m", "hwl.drivers.at_wini", "instance=0", *args],
        label="at_wini",
        conf=stock.to_text(),
        policy=policy,
    )


@contextlib.contextmanager
def block_path(
    hwl_machines: MachineFactory, *, backoff_unit: float = 1.0, vfs_timeout: float = 30.0
) -> Iterator[Setup]:
    """A booted block path; ``backoff_unit`` is RS's (seconds per unit of the
    2^n restart backoff)."""
    machine = hwl_machines.boot("pc")
    try:
        boot = [
            up_fields([sys.executable, "-m", "hwl.servers.ds"], label="ds"),
            up_fields([sys.executable, "-m", "hwl.servers.pci"], label="pci"),
        ]
        system = System.start(machine, boot, backoff_unit=backoff_unit)
        try:
            at_wini_up(system, Policy.RESTART)
            system.rs.up([sys.executable, "-m", "hwl.servers.vfs"], label="vfs")
            conn = system.rs.conn
            vfs = Vfs(conn, timeout=vfs_timeout)
            yield Setup(machine, system, conn, vfs, machine.run_dir / "hd0.img")
        finally:
            system.stop()
    finally:
        machine.close()
