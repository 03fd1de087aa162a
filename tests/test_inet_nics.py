"""INET over three NICs in one machine (profile ``inet-nics``): an interface per
driver label, each on a subnet of its own, all three TAPs on Linux's bridge. Each
interface answers Linux's pings on its own address; killing one NIC driver leaves
the other two answering throughout, and its own interface answers again once INET
has re-opened the new incarnation."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from hwl.machine.machine import Machine
from hwl.system.boot import System

pytestmark = pytest.mark.qemu

#: driver label -> INET's address on it (inet-nics.cfg) and Linux's on that subnet
SUBNETS = {
    "dp8390": ("10.0.2.15", "10.0.2.2"),
    "rtl8139": ("10.0.3.15", "10.0.3.2"),
    "e1000": ("10.0.4.15", "10.0.4.2"),
}


@dataclass
class Rig:
    machine: Machine
    system: System

    def ping(self, address: str, count: int, interval: float = 0.05) -> int:
        """Replies to ``count`` pings from the namespace (each waits at most 1 s)."""
        out = self.machine.peer.run(
            ["ping", "-c", str(count), "-i", str(interval), "-W", "1", "-q", address],
            timeout=count * (interval + 1) + 10,
        ).stdout
        found = re.search(r"(\d+) received", out)
        assert found, out
        return int(found.group(1))

    def pid(self, label: str) -> int:
        rows = [s for s in self.system.rs.status() if s.label == label and s.state == "up"]
        assert rows and rows[0].pid > 0, f"{label} is not up"
        return rows[0].pid


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    with Machine("inet-nics") as machine, System.start(machine, backoff_unit=0.0) as system:
        for _label, (_ours, linux) in list(SUBNETS.items())[1:]:  # 10.0.2.2 is br0's already
            done = machine.peer.run(["ip", "addr", "add", f"{linux}/24", "dev", "br0"])
            assert done.returncode == 0, done.stderr
        rig = Rig(machine, system)
        deadline = time.monotonic() + 20  # INET up, the e1000's receiver on (1 s)
        while any(rig.ping(a, 1) == 0 for a, _ in SUBNETS.values()):
            assert time.monotonic() < deadline, "an interface never answered"
        yield rig


@pytest.mark.parametrize("label", sorted(SUBNETS))
def test_each_interface_answers_on_its_own_address(rig: Rig, label: str) -> None:
    assert rig.ping(SUBNETS[label][0], 20, 0.02) == 20


@pytest.mark.parametrize("label", sorted(SUBNETS))
def test_killing_one_driver_leaves_the_other_interfaces_answering(rig: Rig, label: str) -> None:
    others = [ours for other, (ours, _) in SUBNETS.items() if other != label]
    old = rig.pid(label)
    os.kill(old, signal.SIGKILL)
    for address in others:  # while the killed one restarts and INET re-opens it
        assert rig.ping(address, 10, 0.02) == 10, address
    deadline = time.monotonic() + 20
    while rig.ping(SUBNETS[label][0], 1) == 0:
        assert time.monotonic() < deadline, f"{label}'s interface never answered again"
    assert rig.pid(label) != old
    assert rig.ping(SUBNETS[label][0], 20, 0.02) == 20
