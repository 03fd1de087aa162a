"""The filter's test rig on a real QEMU machine, shared by test_filter.py and
test_filter_mirror.py: a profile booted (filter or filter-mirror), VFS's client,
the raw disk images read in the filter's layout, and at_wini told to lie.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from crc32c_ref import crc32c

from hwl import Machine
from hwl.drivers.at_wini import lie
from hwl.drivers.filter.layout import Layout
from hwl.ipc import codec
from hwl.proto import bdev as bp
from hwl.pytest_plugin import MachineFactory
from hwl.system.boot import System
from hwl.system.rs import ServiceStatus
from hwl.system.vfs import Vfs

SECTOR = 512
LAYOUT = Layout(8, "crc")
RAW = 32 << 20  # hd0 and hd1 of the filter profiles
SIZE = LAYOUT.filtered_sectors(RAW // SECTOR) * SECTOR  # what the filter offers of it


@dataclass
class Rig:
    machine: Machine
    system: System
    vfs: Vfs

    def image(self, disk: str = "hd0") -> Path:
        return self.machine.run_dir / f"{disk}.img"

    def raw(self, position: int, count: int, disk: str = "hd0") -> bytes:
        with self.image(disk).open("rb") as f:
            f.seek(position)
            return f.read(count)

    def logical(self, position: int, count: int, disk: str = "hd0") -> bytes:
        """Bytes of the filtered disk, read from the raw image through the layout."""
        first, end = position // SECTOR, -(-(position + count) // SECTOR)
        span = LAYOUT.span(first, end - first)
        ext = memoryview(bytearray(self.raw(span.phys * SECTOR, span.count * SECTOR, disk)))
        out = memoryview(bytearray((end - first) * SECTOR))
        LAYOUT.collapse(ext, first, out, end - first)
        head = position - first * SECTOR
        return bytes(out[head : head + count])

    def stored_sum(self, sector: int, disk: str = "hd0") -> int:
        raw = self.raw(LAYOUT.sum_sector(sector) * SECTOR + sector % 8 * 4, 4, disk)
        return int.from_bytes(raw, "little")

    def computed_sum(self, sector: int, disk: str = "hd0") -> int:
        data = self.raw(LAYOUT.phys(sector) * SECTOR, SECTOR, disk)
        return crc32c(data) ^ sector

    def row(self, label: str) -> ServiceStatus:
        return next(r for r in self.system.rs.status() if r.label == label)

    def wait_up(self, label: str, not_pid: int, timeout: float = 20.0) -> ServiceStatus:
        """``label``'s row once an incarnation other than ``not_pid`` is up."""
        deadline = time.monotonic() + timeout
        while True:
            row = self.row(label)
            if row.state == "up" and row.pid > 0 and row.pid != not_pid:
                return row
            assert time.monotonic() < deadline, f"{label} not back in {timeout} s: {row}"
            time.sleep(0.01)

    def lie(self, label: str, action: str, **fields: codec.Value) -> None:
        """Tell the at_wini instance ``label`` to lie (drivers/at_wini/lie.py)."""
        lie.tell(self.system.rs, label, {"action": action, **fields})

    def log(self, label: str) -> str:
        path = self.machine.run_dir / f"{label}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_log(self, label: str, text: str, count: int = 1, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.log(label).count(text) < count:
            assert time.monotonic() < deadline, f"{text!r} x{count} not in {label}.log"
            time.sleep(0.01)

    def raw_position(self, position: int) -> int:
        """The raw byte where logical byte ``position`` lives."""
        return LAYOUT.phys(position // SECTOR) * SECTOR + position % SECTOR


@contextlib.contextmanager
def rig(hwl_machines: MachineFactory, profile: str) -> Iterator[Rig]:
    """The profile booted with its services (RS's backoff unit small: the tests
    restart drivers often, and the backoff is RS's policy, not the filter's)."""
    machine = hwl_machines.boot(profile)
    try:
        system = System.start(machine, backoff_unit=0.01, timeout=60)
        try:
            yield Rig(machine, system, Vfs(system.rs.conn, timeout=120))
        finally:
            system.stop()
    finally:
        machine.close()


def filter_ioctl(r: Rig, request: str, status: int = 0) -> dict[str, codec.Value]:
    """An ioctl sent to the filter itself (VFS passes only geometry and flush);
    opened first, since an incarnation answers only for minors opened since it began."""
    conn = r.system.rs.conn
    filter_ep = r.system.rs.lookup("filter")
    opened = conn.sendrec(filter_ep, bp.BDEV_OPEN, {"minor": 0, "access": bp.BDEV_R_BIT},
                          timeout=30)  # fmt: skip
    assert opened.m_type == 0, opened.fields
    try:
        reply = conn.sendrec(filter_ep, bp.BDEV_IOCTL, {"minor": 0, "request": request},
                             timeout=30)  # fmt: skip
    finally:
        conn.sendrec(filter_ep, bp.BDEV_CLOSE, {"minor": 0}, timeout=30)
    assert reply.m_type == status, reply.fields
    return {k: v for k, v in reply.fields.items() if k not in ("gen", "id")}  # the protocol's
