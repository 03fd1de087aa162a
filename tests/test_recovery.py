"""DriverTracker's bookkeeping, without a machine: which DS keys are events, what a
restart it had not noticed looks like, and re-sending in order. The real recovery
(a driver killed under VFS's clients) is tested on QEMU in test_vfs.py,
test_at_wini.py and test_block_load.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

from hwl.ipc.client import Connection
from hwl.system.ds import Ds
from hwl.system.recovery import (
    RETRY_SECONDS,
    SOON_SECONDS,
    DriverTracker,
    TrackedDriver,
    UpEvent,
)


class Changes:
    """Stands in for DS's check loop: the keys a notify would have drained."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys

    def changes(self) -> Iterator[tuple[str, str]]:
        while self.keys:
            yield self.keys.pop(0), "u32"


def tracker(keys: list[str], endpoints: dict[str, int]) -> DriverTracker[TrackedDriver[Any]]:
    return DriverTracker(
        cast(Connection, None),
        cast(Ds, Changes(keys)),
        "net",
        TrackedDriver,
        lookup=lambda label: endpoints[label],
    )


def test_only_tracked_labels_of_its_class_are_events() -> None:
    keys = ["drv.blk.at_wini", "drv.net.e1000", "drv.net.rtl8139", "drv.net."]
    t = tracker(keys, {"e1000": 77})
    e1000 = t.track("e1000")
    assert t.on_ds_notify(resolve=True) == [UpEvent("e1000", 77, restarted=True)]
    assert keys == []  # everything drained, also what nobody tracks
    assert e1000.endpoint == 77 and t.retry_delay(e1000) == SOON_SECONDS


def test_a_dead_driver_is_looked_up_again_and_its_requests_resent_in_order() -> None:
    endpoints = {"e1000": 10}
    t = tracker([], endpoints)
    driver = t.track("e1000")
    assert t.endpoint("e1000") == 10
    endpoints["e1000"] = 11
    assert t.endpoint("e1000") == 10  # cached until the driver is marked down
    t.mark_down(driver, "EDEADSRCDST")
    assert not driver.up and driver.endpoint is None and t.retry_delay(driver) == RETRY_SECONDS
    driver.pending.extend(["a", "b", "c"])
    assert t.waiting() == [driver]
    sent: list[str] = []

    def run_until_b(item: str) -> bool:
        sent.append(item)
        return item != "b"

    def run(item: str) -> bool:
        sent.append(item)
        return True

    assert not t.resend(driver, run_until_b)
    assert sent == ["a", "b"] and list(driver.pending) == ["b", "c"]  # b failed: it stays
    assert t.resend(driver, run)
    assert sent == ["a", "b", "b", "c"] and not driver.pending
    assert t.endpoint("e1000") == 11
