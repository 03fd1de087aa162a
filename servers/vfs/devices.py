"""VFS's block drivers: the calls to a driver, and recovery when one dies.

A call that fails with a dead or new incarnation marks the driver down (the
request waits, DriverDown); recovery looks the label up again, re-opens every
minor VFS has open there and re-issues the waiting requests in order
(docs/vfs.md)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from hwl.ipc.client import IpcError
from hwl.proto import bdev as bp
from hwl.proto import codec
from hwl.proto.errno import Errno, errno_of
from hwl.system.recovery import IMMEDIATE_TRIES, TrackedDriver
from hwl.system.rs import RsError

from .errors import DriverDown, Refused

if TYPE_CHECKING:
    from .main import VfsServer
    from .requests import Op  # noqa: F401 (Driver's base names it as a string)

log = logging.getLogger(__name__)

Fields = dict[str, codec.Value]

#: Driver answers that mean "this incarnation is gone or new": keep the request.
RECOVERABLE: Final = frozenset({Errno.EDEADSRCDST, Errno.EDEADEPT, Errno.ERESTART, Errno.ESRCH})


@dataclass
class Minor:
    opens: int = 0
    access: int = 0
    size: int = 0


@dataclass
class Driver(TrackedDriver["Op"]):
    """A block driver as the recovery tracker follows it, with what VFS has open
    on it (re-opened on a new incarnation) and the incarnation's ``gen``."""

    gen: int | None = None
    minors: dict[int, Minor] = field(default_factory=dict)

    def reset(self) -> None:
        super().reset()
        self.gen = None


class Devices:
    """The drivers VFS calls, through the recovery tracker."""

    def __init__(self, server: VfsServer) -> None:
        self.server = server

    def endpoint(self, driver: Driver) -> int:
        """The driver's endpoint, cached by the tracker; a failed RS lookup is
        DriverDown while VFS holds something there or RS is restarting the driver
        (EAGAIN), else Refused."""
        tracker = self.server.tracker
        assert tracker is not None
        try:
            return tracker.endpoint(driver.label)
        except RsError as exc:
            if isinstance(exc.__cause__, IpcError):  # RS did not answer
                raise Refused(exc.errno, f"RS lookup of {driver.label}: {exc}") from exc
            if driver.minors or driver.pending or exc.errno is Errno.EAGAIN:
                self.mark_down(driver, str(exc))  # it comes back: the request waits
                raise DriverDown from exc
            raise Refused(Errno.ENXIO, f"no driver {driver.label!r} is running") from exc

    def call(self, driver: Driver, m_type: int, **fields: codec.Value) -> tuple[int, Fields]:
        """One request to the driver; a dead or new incarnation raises DriverDown,
        another failure Refused."""
        ep = self.endpoint(driver)
        if driver.gen is not None and m_type != bp.BDEV_OPEN:
            fields["gen"] = driver.gen
        try:
            reply = self.server.conn.sendrec(ep, m_type, fields)
        except IpcError as exc:
            if exc.errno in RECOVERABLE:
                self.mark_down(driver, str(exc))
                raise DriverDown from exc
            raise Refused(exc.errno, f"{driver.label}: {exc}") from exc
        if reply.m_type < 0:
            errno = errno_of(reply.m_type)
            # Only ERESTART in a reply means the driver restarted: an EDEADSRCDST
            # it answers comes from a grant (the client's, gone with its owner).
            if errno is Errno.ERESTART:
                self.mark_down(driver, f"{errno.name} from {driver.label}")
                raise DriverDown
            raise Refused(errno, str(reply.get("error", "")))
        gen = reply.get("gen")
        if m_type == bp.BDEV_OPEN and isinstance(gen, int):
            driver.gen = gen
        return reply.m_type, dict(reply.fields)

    def mark_down(self, driver: Driver, why: str) -> None:
        assert self.server.tracker is not None
        self.server.tracker.mark_down(driver, why)

    # ------------------------------------------------------------ recovery
    def recover(self, driver: Driver) -> bool:
        """Re-open what VFS has open on the driver (a new incarnation), then
        re-issue the pending requests. False if the driver is still down."""
        old_gen = driver.gen
        driver.endpoint, driver.gen = None, None
        if not driver.minors and not driver.pending:
            driver.up = True  # nothing to recover; the next open looks the driver up
            return True
        if not driver.minors:  # nothing to re-open: is there a driver at all?
            try:
                self.endpoint(driver)
            except DriverDown:
                return False
        for minor_no, minor in list(driver.minors.items()):
            try:
                self.call(driver, bp.BDEV_OPEN, minor=minor_no, access=minor.access)
                if old_gen is not None and driver.gen == old_gen:
                    self.call(driver, bp.BDEV_CLOSE, minor=minor_no)  # not a new incarnation
            except DriverDown:
                return False
            except Refused as exc:
                log.warning("re-open of %s minor %d failed: %s", driver.label, minor_no, exc)
        if not driver.up:
            log.info("driver %s is up again (gen %s); %d requests re-issued",
                     driver.label, driver.gen, len(driver.pending))  # fmt: skip
        driver.up = True
        tracker = self.server.tracker
        assert tracker is not None
        run = self.server.requests.run
        return tracker.resend(driver, lambda op: run(driver, op))

    def retry(self, driver: Driver) -> None:
        for _ in range(IMMEDIATE_TRIES):
            if self.recover(driver):
                return
        assert self.server.tracker is not None
        self.server.arm(self.server.tracker.retry_delay(driver))

    def retry_all(self) -> None:
        if self.server.tracker is not None:
            for driver in self.server.tracker.waiting():
                self.retry(driver)

    def ds_changes(self) -> None:
        tracker = self.server.tracker
        assert tracker is not None
        for event in tracker.on_ds_notify():
            driver = tracker.drivers[event.label]
            if driver.minors or driver.pending or not driver.up:
                # A restart VFS may not have noticed yet: re-open before the next request.
                self.retry(driver)
