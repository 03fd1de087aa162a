"""e1000's adoption of a dead incarnation's receive ring: where the new driver
reads next, in every state a SIGKILL can leave the ring in (no QEMU: the ring is
memory the test lays out as the card and the dead driver would)."""

from __future__ import annotations

import pytest

from hwl.drivers.e1000.main import DD, DESC, RING, RX_STATUS, rx_resume


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
