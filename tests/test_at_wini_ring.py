"""at_wini's command ring through kills and live updates, on QEMU.

The ring serves VFS's inline reads and writes (4 KiB and less) without the
kernel's process (drivers/at_wini/ring.py). A client thread reads 4 KiB at random
positions through VFS, comparing every read with hd0.img, and writes 4 KiB and
smaller pieces into another region, keeping a model of it, while the test
SIGKILLs at_wini or live-updates it: no request may fail, no read come back
wrong, the written region must read back as the model; a restarted at_wini arms
a ring of its own, and a live update's new version goes on with the old one's.
"""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
from collections.abc import Iterator

import pytest
from blockpath import Setup, block_path

from hwl.proto import vfs as vp
from hwl.pytest_plugin import MachineFactory
from hwl.system.proto import LuState
from hwl.system.vfs import Vfs

pytestmark = pytest.mark.qemu

REGION, SPAN, BLOCK = 16 << 20, 8 << 20, 4096
WRITTEN, WRITTEN_SPAN = 40 << 20, 1 << 20  # where the client writes
ARMED = re.compile(r"command ring armed on DMA buffer (\d+) \((\d+) frames staged before\)")


@pytest.fixture(scope="module")
def setup(hwl_machines: MachineFactory) -> Iterator[Setup]:
    with block_path(hwl_machines, backoff_unit=0.0) as s:
        yield s


class SmallClient(threading.Thread):
    """4 KiB preads (each checked) and small pwrites through VFS, inline: the
    ring's, until stopped; then the written region is read back."""

    def __init__(self, setup: Setup, seed: int) -> None:
        super().__init__(daemon=True)
        self.setup, self.rng = setup, random.Random(seed)
        self.image = setup.image_bytes(REGION, SPAN)
        self.model = bytearray(setup.image_bytes(WRITTEN, WRITTEN_SPAN))
        self.stop = threading.Event()
        self.reads = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        buf = bytearray(BLOCK)
        try:
            with Vfs.attach(self.setup.machine.run_dir, timeout=30) as vfs:
                fd = vfs.open_fd("/dev/c0d0", vp.O_RDWR)
                while not self.stop.is_set():
                    at = BLOCK * self.rng.randrange(SPAN // BLOCK)
                    assert vfs.read_into(fd, memoryview(buf), REGION + at) == BLOCK
                    assert buf == self.image[at : at + BLOCK], f"wrong bytes at {REGION + at}"
                    self.reads += 1
                    size = self.rng.choice((BLOCK, 512, 1000))
                    at = self.rng.randrange(WRITTEN_SPAN - size)
                    if size != 1000:
                        at -= at % 512  # whole sectors: the ring; else merged in VFS
                    data = self.rng.randbytes(size)
                    assert vfs.pwrite(fd, data, WRITTEN + at) == size
                    self.model[at : at + size] = data
                got = vfs.pread(fd, WRITTEN_SPAN, WRITTEN)
                assert got == self.model, "the written region does not read back"
                vfs.close_fd(fd)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def wait_for(self, more: int, timeout: float = 30.0) -> None:
        """Until ``more`` reads (and as many writes) past the count now, or the
        thread ended."""
        target, deadline = self.reads + more, time.monotonic() + timeout
        while self.reads < target and self.is_alive():
            assert time.monotonic() < deadline, f"{self.reads} reads, not {target}"
            time.sleep(0.005)

    def finish(self) -> None:
        self.stop.set()
        self.join(60)
        assert not self.is_alive()
        assert self.error is None, self.error


def armed(setup: Setup) -> list[tuple[int, int]]:
    """(buffer, frames staged before) of each arming in at_wini's log so far."""
    return [(int(b), int(n)) for b, n in ARMED.findall(setup.log_text("at_wini"))]


def test_small_reads_go_through_at_wini_kills(setup: Setup) -> None:
    """Four SIGKILLs while the client reads and writes: VFS re-issues what was in
    flight, every read is right, every write is there, and each new incarnation
    works by a ring of its own."""
    arms = len(armed(setup))
    reader = SmallClient(setup, seed=1)
    reader.start()
    try:
        reader.wait_for(50)
        for _ in range(4):
            row = setup.at_wini_row()
            os.kill(row.pid, signal.SIGKILL)
            setup.wait_at_wini_up(row.pid, row.restarts)
            reader.wait_for(50)
    finally:
        reader.finish()
    assert len(armed(setup)) >= arms + 5  # the first incarnation's, and one per restart
    assert "command ring off" not in setup.log_text("at_wini")


def test_a_live_update_hands_the_ring_over(setup: Setup) -> None:
    """Three live updates while the client reads and writes: the client sees no
    gap (VFS never marks at_wini down), and each new version arms the old one's
    ring buffer again, going on from its count."""
    endpoint = setup.system.rs.lookup("at_wini")
    downs = setup.log_text("vfs").count("is down")
    reader = SmallClient(setup, seed=2)
    reader.start()
    try:
        reader.wait_for(50)
        before = armed(setup)
        for _ in range(3):
            setup.system.rs.update("at_wini", state=LuState.REQUEST_FREE)
            reader.wait_for(50)
    finally:
        reader.finish()
    assert setup.system.rs.lookup("at_wini") == endpoint
    assert setup.log_text("vfs").count("is down") == downs
    new = armed(setup)[len(before) :]
    assert len(new) == 3, new
    buffer = before[-1][0]
    assert all(b == buffer for b, _ in new)  # the same buffer, handed over
    counts = [n for _, n in new]
    assert counts == sorted(counts) and counts[0] > 0  # its count went on
