"""How long a call waits for the stub before the kernel's loop takes it over
(hwl.kernel.calls.stub): SPIN always, up to SPIN_IDLE while nobody else waits.

No QEMU: a fake link whose batch finishes a set time after it was submitted.
The effect on a disk read is measured by ``hwl bench disk``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest

from hwl.kernel.calls.base import Answer
from hwl.kernel.calls.stub import SPIN, SPIN_IDLE, Stub
from hwl.kernel.kernel import Kernel
from hwl.kernel.proc import Proc, State
from hwl.kernel.stublink import HasLink
from hwl.link.link import Link, Ticket


class SlowLink:
    """A link whose one batch is done ``after`` seconds after its submission."""

    def __init__(self, after: float) -> None:
        self.after = after
        self.submitted = 0.0

    def submit(self) -> Ticket:
        self.submitted = time.perf_counter()
        return cast(Ticket, object())

    def done(self, _ticket: Ticket) -> bool:
        return time.perf_counter() - self.submitted >= self.after

    def collect_raw(self, _ticket: Ticket, nops: int) -> tuple[int, int, bytes]:
        return 0, 0, bytes(nops)


class Machine:
    def __init__(self, link: SlowLink) -> None:
        self.link = cast(Link, link)
        self.link_ok = True


class Answers:
    def answer(self, proc: Proc, number: int, run: Callable[[], Answer | None]) -> None:
        raise AssertionError("nothing finishes later in these tests")


@pytest.fixture
def proc() -> Proc:
    """Only what a submit reads and sets of a process."""
    return cast(Proc, type("P", (), {"state": State.RUNNING, "label": "drv", "endpoint": 7})())


def submit(after: float, others_wait: bool, proc: Proc) -> tuple[bytes | None, float]:
    """Submit a batch the fake link finishes after ``after`` s: (the answer, or
    None if the loop took it over; seconds the call spun)."""
    link = SlowLink(after)
    stub = Stub(cast(HasLink, Machine(link)), Answers())
    stub.others_wait = lambda: others_wait
    start = time.perf_counter()
    answer = stub.submit(proc, 0, lambda _link: link.submit(), 3, lambda s, f, ops: ops)
    return answer, time.perf_counter() - start


def test_a_call_spins_past_spin_while_nobody_else_waits(proc: Proc) -> None:
    answer, took = submit(3 * SPIN, others_wait=False, proc=proc)
    assert answer == bytes(3)
    assert proc.state is State.RUNNING and took >= 3 * SPIN


def test_a_call_leaves_the_stub_to_the_loop_when_others_wait(proc: Proc) -> None:
    answer, _took = submit(50e-3, others_wait=True, proc=proc)
    assert answer is None and proc.state is State.KCALL  # long before the batch's end


def test_no_call_spins_past_spin_idle(proc: Proc) -> None:
    answer, took = submit(SPIN_IDLE + 50e-3, others_wait=False, proc=proc)
    assert answer is None and proc.state is State.KCALL
    assert took >= SPIN_IDLE


def test_the_kernel_counts_a_ready_fd_as_someone_waiting(tmp_path: Path) -> None:
    """The kernel's check is a zero-timeout poll of every fd its loop watches."""
    kernel = Kernel(tmp_path, None)
    a, b = socket.socketpair()
    try:
        kernel.watch(a.fileno(), lambda: None)
        assert not kernel.calls.stub.others_wait()
        b.send(b"x")
        assert kernel.calls.stub.others_wait()
    finally:
        kernel.shutdown()
        a.close()
        b.close()
