"""The stock profiles' heartbeats: every driver and server has a period, and a hung
disk driver (SIGSTOP) is found by it and replaced while a client reads on."""

from __future__ import annotations

import hashlib
import itertools
import os
import signal
from pathlib import Path

import pytest

from hwl.cli.up import Reader
from hwl.machine.profile import Profile, profile_dir
from hwl.system.durations import parse_ticks
from hwl.system.running import RunningSystem

#: Who calls whom with a blocking sendrec, by tier: drivers (0, the default) are
#: called by the filter (1), both by VFS and INET (2). While a callee hangs its
#: caller cannot answer a ping either, so each tier's period must outlast the
#: detection of a hang in the tier below. DS and PCI call nobody that can hang.
TIERS = {"filter": 1, "vfs": 2, "inet": 2}
OUTSIDE = {"ds", "pci"}
READ = 16 << 20


def stock_profiles() -> list[Path]:
    return sorted(p for p in profile_dir().glob("*.cfg") if Profile.load(p).services)


@pytest.mark.parametrize("path", stock_profiles(), ids=lambda p: p.stem)
def test_every_service_of_a_stock_profile_has_a_period(path: Path) -> None:
    services = Profile.load(path).services
    periods = {s.label: parse_ticks(s.options.get("period", "0")) for s in services}
    assert all(p > 0 for p in periods.values()), periods
    tiers: dict[int, list[int]] = {}
    for label, period in periods.items():
        if label not in OUTSIDE:
            tiers.setdefault(TIERS.get(label, 0), []).append(period)
    levels = sorted(tiers)
    for low, high in itertools.pairwise(levels):
        # A hang is found within three periods of the callee (two missed pings,
        # checked at the next); the caller is taken for hung after two of its own.
        assert 3 * max(tiers[low]) < 2 * min(tiers[high]), periods


@pytest.mark.qemu
def test_a_stopped_disk_driver_is_found_by_its_heartbeat_and_the_reader_sees_no_error(
    hwl_system: RunningSystem,
) -> None:
    """SIGSTOP of at_wini in the middle of a read through VFS: RS's heartbeat
    misses it, kills it and starts a new one; VFS re-issues the request; every
    byte equals the disk image and the client sees no error."""
    at_wini = next(r for r in hwl_system.rs.status() if r.label == "at_wini")
    assert at_wini.period > 0
    reader = Reader(hwl_system.run_dir, "/dev/c0d0", at=0, size=READ)
    reader.start()
    assert reader.started.wait(30)
    os.kill(at_wini.pid, signal.SIGSTOP)
    missed = hwl_system.system.wait_event(
        lambda e: e["event"] == "heartbeat-missed" and e["label"] == "at_wini",
        timeout=4 * at_wini.period / 60 + 5,
    )
    restarted = hwl_system.system.wait_event(
        lambda e: e["event"] == "restart" and e["label"] == "at_wini", timeout=10
    )
    reader.join(60)
    assert not reader.is_alive(), "the reader hangs"
    assert reader.error is None, reader.error
    image = hwl_system.machine.disks["hd0"].read_bytes()[:READ]
    assert reader.digest == hashlib.sha256(image).hexdigest()
    assert restarted["mono"] > missed["mono"]
    now = {r.label: r for r in hwl_system.rs.status()}
    assert now["at_wini"].pid != at_wini.pid and now["at_wini"].restarts == at_wini.restarts + 1
    assert now["vfs"].restarts == 0, "VFS, blocked on the hung driver, must not be taken for hung"
