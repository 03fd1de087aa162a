"""VFS's open files: an fd belongs to (client endpoint, number) and holds the
device, the access mode and the byte position. The last close of a minor closes
it on the driver; the files of clients that ended without closing them are
closed for them (as MINIX's VFS does at a process's exit)."""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from hwl.proto import bdev as bp
from hwl.system.proctab import ProcTable

from .devices import Driver
from .errors import DriverDown, Refused

if TYPE_CHECKING:
    from .main import VfsServer

log = logging.getLogger(__name__)

MAX_FDS: Final = 64  # per client
REAP_SECONDS: Final = 2.0


@dataclass
class File:
    driver: Driver
    minor: int
    flags: int
    position: int = 0
    dirty: bool = False


class Files:
    """The fd table of every client."""

    def __init__(self, server: VfsServer) -> None:
        self.server = server
        self.table: dict[tuple[int, int], File] = {}

    def free_fd(self, client: int) -> int | None:
        """The lowest fd number ``client`` does not use (None: it has MAX_FDS)."""
        used = {fd for (owner, fd) in self.table if owner == client}
        return next((n for n in range(MAX_FDS) if n not in used), None)

    def reap(self) -> None:
        """Close the files of clients that no longer exist; re-arm while any are open."""
        server = self.server
        if not self.table:
            return
        alive = ProcTable(server.conn, log).refresh()  # afresh: a refusal is logged, None
        if alive is not None:
            dead = sorted({client for client, _fd in self.table if client not in alive})
            for client in dead:
                keys = sorted(k for k in self.table if k[0] == client)
                for key in keys:
                    self.close(key)
                log.info("closed %d files of client %d, which has ended", len(keys), client)
            for driver in server.drivers.values():  # nobody waits for these any more
                kept = [op for op in driver.pending if op.m.source in alive]
                if len(kept) != len(driver.pending):
                    driver.pending = deque(kept)
        if self.table:
            server.arm(REAP_SECONDS)

    def close(self, key: tuple[int, int]) -> None:
        """Forget one fd; flush if it wrote, and close the minor on its last file.
        A driver that is down is left alone (a new incarnation has nothing open)."""
        devices = self.server.devices
        file = self.table.pop(key)
        driver = file.driver
        try:
            if file.dirty:
                devices.call(driver, bp.BDEV_IOCTL, minor=file.minor, request=bp.IOCTL_FLUSH)
        except (DriverDown, Refused) as exc:
            log.warning("flush of %s minor %d at close: %s", driver.label, file.minor, exc)
        minor = driver.minors[file.minor]
        minor.opens -= 1
        if minor.opens <= 0:
            del driver.minors[file.minor]
            with contextlib.suppress(DriverDown):
                devices.call(driver, bp.BDEV_CLOSE, minor=file.minor)
