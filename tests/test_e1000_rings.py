"""e1000's adoption of a dead incarnation's receive ring: where the new driver
reads next, in every state a SIGKILL can leave the ring in (the ring laid out in
memory as the card and the dead driver would), and end to end on the ``inet``
profile: a driver killed after taking frames and before giving their buffers back
(tests/programs/e1000_dies_mid_receive.py), whose successor must receive on."""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path

import pytest

import hwl.net
from hwl.drivers.e1000.main import DD, DESC, RING, RX_STATUS, rx_resume
from hwl.machine.machine import Machine
from hwl.system.boot import System
from hwl.system.nicrig import LINUX_IP

REPO = Path(__file__).resolve().parents[1]
DIES = REPO / "tests" / "programs" / "e1000_dies_mid_receive.py"


def ring(filled: range | list[int]) -> memoryview:
    """A receive ring whose descriptors ``filled`` (indices mod RING) have DD."""
    rxv = memoryview(bytearray(RING * DESC))
    for i in filled:
        rxv[(i % RING) * DESC + RX_STATUS] = DD
    return rxv


def test_unread_frames_follow_the_last_descriptor_given_back() -> None:
    # the card filled 10..14 after RDT 9; the dead driver took none of them
    assert rx_resume(ring(range(10, 15)), rdt=9, rdh=15) == 10


def test_frames_taken_but_not_given_back_are_skipped() -> None:
    # the dead driver cleared 10..12 and died before its RDT write: 13 is next,
    # not 10, which the card will never fill again (reception would stop there)
    assert rx_resume(ring(range(13, 15)), rdt=9, rdh=15) == 13


def test_every_filled_frame_taken_leaves_the_driver_at_the_cards_head() -> None:
    assert rx_resume(ring([]), rdt=9, rdh=15) == 15
    assert rx_resume(ring([]), rdt=9, rdh=10) == 10  # nothing filled at all


@pytest.mark.parametrize("taken", [0, 1, 100, RING - 1])
def test_a_full_ring_that_wraps(taken: int) -> None:
    # RDH == RDT: the card filled all RING - 1 descriptors it had, from RDT + 1 on
    rdt = 200
    filled = [rdt + 1 + k for k in range(taken, RING - 1)]
    assert rx_resume(ring(filled), rdt=rdt, rdh=rdt) == (rdt + 1 + taken) % RING


def test_a_cleared_descriptor_at_the_head_is_not_passed() -> None:
    # descriptors at and after RDH belong to the card, whatever their status says
    rxv = ring([20, 21])
    assert rx_resume(rxv, rdt=9, rdh=15) == 15


@pytest.mark.qemu
def test_a_driver_killed_before_giving_taken_frames_back_leaves_reception_working(
    tmp_path: Path,
) -> None:
    cfg = (REPO / "qemu-configs" / "inet.cfg").read_text()
    stock = 'program = "hwl.drivers.e1000"'
    assert stock in cfg
    profile = tmp_path / "inet-dies.cfg"
    profile.write_text(cfg.replace(stock, f'program = "{DIES}"'))
    with Machine(str(profile)) as machine, System.start(machine, backoff_unit=0.0):
        net = hwl.net.Inet.attach(machine.run_dir)
        try:
            # the first frames kill the first incarnation; its successor answers
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(TimeoutError):
                    hwl.net.ping(LINUX_IP, timeout=0.5, inet=net)
                    break
                assert time.monotonic() < deadline, "no ping answered after the restart"
            answered = 0
            for _ in range(20):
                with contextlib.suppress(TimeoutError):
                    hwl.net.ping(LINUX_IP, timeout=1.0, inet=net)
                    answered += 1
        finally:
            net.close()
        logs = "\n".join(p.read_text(errors="replace") for p in machine.run_dir.glob("*.log"))
    assert "dying before the RDT write" in logs  # the state was made
    adopted = re.findall(r"adopted the rings \(.*?(\d+) descriptors taken and not given back", logs)
    assert adopted and int(adopted[0]) >= 1, adopted  # ... and adopted past
    assert answered == 20
