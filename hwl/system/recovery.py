"""Driver recovery for the clients of drivers (VFS for block drivers, INET for network
drivers), as MINIX's VFS ``bdev_up`` and INET's driver-up handling do it.

A driver announces each incarnation by publishing ``drv.<kind>.<label>`` in DS
(``driver_announce`` / ``netdriver_announce``). A client keeps one
:class:`DriverTracker` per driver class:

>>> tracker = DriverTracker(conn, ds, "net", TrackedDriver)
>>> tracker.subscribe()                      # at init: drv\\.net\\..*
>>> driver = tracker.track("dp8390")         # a driver the client uses
>>> ep = tracker.endpoint("dp8390")          # looked up once, then cached
>>> tracker.mark_down(driver, "EDEADSRCDST") # a call found it dead: forget ep
>>> driver.pending.append(request)           # what was in flight waits for it
>>> for event in tracker.on_ds_notify():     # on DS's notify
...     reconfigure(event.label)             # the client's own re-open / re-init
...     tracker.resend(event.label, run)     # then what was in flight, in order

The tracker knows labels, endpoints, up/down, when DS last announced a label and
the in-flight requests; what "re-open" means (block minors, a NIC's mode) stays
with the client. The endpoint is learned from RS's service table (``lookup``): a
driver with policy reset comes back with a new endpoint, and RS lists it only
once its init is answered, so right after an announcement a lookup may fail for
a little while: :meth:`DriverTracker.retry_delay` says how soon to try again.

See docs/vfs.md and docs/inet.md.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Generic, Literal, TypeVar

from hwl.ipc.client import Connection
from hwl.proto.ds import DRIVER_UP_BLK, DRIVER_UP_NET
from hwl.system.ds import Ds, DsError
from hwl.system.rs import Rs

log = logging.getLogger(__name__)

Kind = Literal["blk", "net"]
PREFIXES: Final[dict[str, str]] = {"blk": DRIVER_UP_BLK, "net": DRIVER_UP_NET}

#: A retry while a driver is down, when DS has not announced it lately.
RETRY_SECONDS: Final = 0.25
#: After DS said a driver is up: RS may not list it yet (it is still answering
#: its init), so the next try comes soon.
SOON_SECONDS: Final = 0.005
#: How long after DS's announcement the tries come soon.
ANNOUNCED_SECONDS: Final = 1.0
#: Recovery attempts made at once before a client waits for an alarm.
IMMEDIATE_TRIES: Final = 3

T = TypeVar("T")


@dataclass
class TrackedDriver(Generic[T]):
    """One driver a client uses: its label, the endpoint of the incarnation the
    client talks to (None: look it up), whether it is believed up, when DS last
    announced it, and the requests waiting for it, oldest first.

    A client subclasses it to keep its own per-driver state (VFS: open minors);
    :meth:`reset` is where that subclass forgets what a dead incarnation held."""

    label: str
    endpoint: int | None = None
    up: bool = True
    announced: float = 0.0  # monotonic time of the last drv.<kind>.<label> change in DS
    pending: deque[T] = field(default_factory=deque)

    def reset(self) -> None:
        """Forget the incarnation: called when the driver is marked down."""
        self.endpoint = None

    @property
    def waiting(self) -> bool:
        """True while the driver is down or requests wait for it."""
        return not self.up or bool(self.pending)


@dataclass(frozen=True)
class UpEvent:
    """DS announced ``label`` (a driver the client tracks): a new incarnation, or
    the same one announcing again. ``endpoint`` is the one a fresh lookup found
    (None: not asked for, or RS does not list it yet); ``restarted`` is True when
    the client believed the driver up, so this is a restart it has not noticed."""

    label: str
    endpoint: int | None
    restarted: bool


D = TypeVar("D", bound=TrackedDriver[Any])


class DriverTracker(Generic[D]):
    """Follows the drivers of one class (``kind`` ``"blk"`` or ``"net"``) through
    DS's driver-up keys; see the module's docstring.

    ``new`` makes the record of a newly tracked label: :class:`TrackedDriver`, or
    a subclass holding the client's own state; ``lookup`` finds a label's endpoint
    (RS's by default) and raises when there is no such service up."""

    def __init__(
        self,
        conn: Connection,
        ds: Ds | None,
        kind: Kind,
        new: Callable[[str], D],
        *,
        lookup: Callable[[str], int] | None = None,
    ) -> None:
        if kind not in PREFIXES:
            raise ValueError(f"kind must be 'blk' or 'net', not {kind!r}")
        self.conn = conn
        self.ds = ds
        self.kind = kind
        self.prefix = PREFIXES[kind]
        self.drivers: dict[str, D] = {}
        self._new = new
        self._lookup = lookup or (lambda label: Rs(self.conn, timeout=10).lookup(label))

    # ------------------------------------------------------------ labels
    def subscribe(self) -> None:
        """Subscribe to ``drv.<kind>.*`` in DS (OVERWRITE: a restart that keeps its
        endpoint keeps its old subscription). DsError if DS refuses."""
        self._ds().subscribe(re.escape(self.prefix) + ".*", overwrite=True)

    def track(self, label: str) -> D:
        """The record of ``label``, made on first use."""
        driver = self.drivers.get(label)
        if driver is None:
            driver = self.drivers[label] = self._new(label)
        return driver

    def get(self, label: str) -> D | None:
        return self.drivers.get(label)

    def __iter__(self) -> Iterator[D]:
        return iter(list(self.drivers.values()))

    def label_of(self, key: str) -> str | None:
        """The label of a driver-up key of this class, or None."""
        if key.startswith(self.prefix) and len(key) > len(self.prefix):
            return key[len(self.prefix) :]
        return None

    # ---------------------------------------------------------- endpoints
    def endpoint(self, label: str) -> int:
        """The endpoint of ``label``'s incarnation: cached, else looked up (and
        cached); the lookup's error (RsError by default) if there is none."""
        driver = self.track(label)
        if driver.endpoint is None:
            driver.endpoint = self._lookup(label)
        return driver.endpoint

    def mark_down(self, driver: D, why: str) -> None:
        """A call found the incarnation gone (EDEADSRCDST, EDEADEPT, ERESTART, no
        such service): forget it; requests wait until :meth:`resend`."""
        if driver.up:
            log.warning("driver %s is down (%s); requests wait for it", driver.label, why)
        else:
            log.info("driver %s is still down (%s)", driver.label, why)
        driver.up = False
        driver.reset()

    # ---------------------------------------------------------- DS events
    def on_ds_notify(self, *, resolve: bool = False) -> list[UpEvent]:
        """Drain DS's changed keys (call on DS's notify): an event for each
        announcement of a tracked label, in DS's order. Keys of other classes and
        of labels nobody tracks are consumed and dropped. With ``resolve``, each
        event's endpoint is looked up afresh (and cached)."""
        try:
            keys = [key for key, _type in self._ds().changes()]
        except DsError as exc:
            log.warning("ds check: %s", exc)
            return []
        events: list[UpEvent] = []
        for key in keys:
            label = self.label_of(key)
            driver = self.drivers.get(label) if label is not None else None
            if driver is None:
                continue
            restarted = driver.up
            if restarted:
                log.info("%s changed: a new incarnation of %s", key, driver.label)
            driver.announced = time.monotonic()
            endpoint = None
            if resolve:
                driver.endpoint = None
                try:
                    endpoint = self.endpoint(driver.label)
                except Exception as exc:  # RS does not list it yet: retry_delay is soon
                    log.info("lookup of %s after its announcement: %s", driver.label, exc)
            events.append(UpEvent(driver.label, endpoint, restarted))
        return events

    def retry_delay(self, driver: D) -> float:
        """How long to wait before the next recovery attempt of a down driver."""
        soon = time.monotonic() - driver.announced < ANNOUNCED_SECONDS
        return SOON_SECONDS if soon else RETRY_SECONDS

    # ---------------------------------------------------------- in flight
    def resend(self, driver: D, run: Callable[[Any], bool]) -> bool:
        """Re-issue the waiting requests in order with ``run`` (False: the driver
        went down again, the request stays first); True once none is left."""
        while driver.pending:
            if not run(driver.pending[0]):
                return False
            driver.pending.popleft()
        return True

    def waiting(self) -> list[D]:
        """The drivers that are down or have requests waiting."""
        return [d for d in self.drivers.values() if d.waiting]

    def _ds(self) -> Ds:
        if self.ds is None:
            self.ds = Ds.find(self.conn, timeout=10)
        return self.ds
