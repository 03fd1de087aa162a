"""The filter driver on QEMU: VFS -> filter -> at_wini (profile ``filter``: CRC32C
sums in MINIX's layout on hd0, formatted at boot), with at_wini told to lie.

One machine for the module. The filter's timeout is its default (3 s).
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from filter_rig import LAYOUT, SECTOR, SIZE, Rig, filter_ioctl, rig

import hwl.config
from hwl.kernel.errno import Errno
from hwl.pytest_plugin import MachineFactory
from hwl.system import vfs as vp
from hwl.system.proto import Policy
from hwl.system.vfs import VfsError

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def r(hwl_machines: MachineFactory) -> Iterator[Rig]:
    with rig(hwl_machines, "filter") as setup:
        yield setup


def test_the_filtered_disk_is_the_raw_one_less_its_sums(r: Rig) -> None:
    with r.vfs.open("/dev/c0d0", "rb", buffering=0) as f:
        assert f.seek(0, os.SEEK_END) == SIZE
        f.seek(0)
        assert f.read(1 << 20) == r.logical(0, 1 << 20)  # the data kept by the format
        f.seek(SIZE - 3000)
        assert f.read(5000) == r.logical(SIZE - 3000, 3000)
    for sector in (0, 7, 8, 1000, SIZE // SECTOR - 1):  # format wrote every sum
        assert r.stored_sum(sector) == r.computed_sum(sector)


def test_patterns_are_written_and_read_back_byte_exact(r: Rig) -> None:
    rng = random.Random(21)
    cases = [(0, 4096), (3 * SECTOR, 5 * SECTOR), (10_000_003, 70_001), (4 << 20, 3 << 20),
             (SIZE - 1000, 1000)]  # fmt: skip
    for position, count in cases:
        data = rng.randbytes(count)
        with r.vfs.open("/dev/c0d0", "r+b") as f:
            f.seek(position)
            f.write(data)
        with r.vfs.open("/dev/c0d0", "rb") as f:
            f.seek(position)
            assert f.read(count) == data, (position, count)
        # on the raw image: the data where the layout puts it, and its sums
        assert r.logical(position, count) == data
        first, last = position // SECTOR, (position + count - 1) // SECTOR
        for sector in {first, last, (first + last) // 2, first - 1, last + 1} - {
            -1,
            SIZE // SECTOR,
        }:
            assert r.stored_sum(sector) == r.computed_sum(sector), sector


def test_a_flipped_bit_is_caught_at_wini_refreshed_and_the_read_redone(r: Rig) -> None:
    position = 6 << 20
    pid = r.row("at_wini").pid
    before = filter_ioctl(r, "filter_stats")
    r.lie("at_wini", "flip", count=1, position=r.raw_position(position + 77), bit=3)
    with r.vfs.open("/dev/c0d0", "rb") as f:
        f.seek(position)
        assert f.read(65536) == r.logical(position, 65536)
    r.wait_up("at_wini", pid)
    after = filter_ioctl(r, "filter_stats")
    assert after["bad_sums"] == before["bad_sums"] + 1  # type: ignore[operator]
    # the kernel checked the sums as at_wini copied the groups out of its DMA buffer
    # to the client (a sums grant), and caught the bit at_wini flipped in that buffer;
    # the re-read went the same way
    assert after["direct"] == before["direct"] + 1  # type: ignore[operator]
    assert after["sumcopies"] == before["sumcopies"]
    log = r.log("filter")
    assert f"bad checksum at sector {position // SECTOR}" in log
    assert "asking RS to refresh at_wini" in log
    assert "flipped bit 3" in r.log("at_wini")


@pytest.mark.parametrize("action", ["drop", "hang"])
def test_a_dropped_reply_or_a_hang_times_out_and_is_redone(r: Rig, action: str) -> None:
    position = 9 << 20
    pid = r.row("at_wini").pid
    r.lie("at_wini", action, count=1)
    t0 = time.monotonic()
    with r.vfs.open("/dev/c0d0", "rb") as f:
        f.seek(position)
        assert f.read(1 << 20) == r.logical(position, 1 << 20)
    waited = time.monotonic() - t0
    r.wait_up("at_wini", pid)
    assert "timeout: no answer to read" in r.log("filter")
    assert 2.5 < waited < 30, waited  # the filter's 3 s, then a refresh


def _reader(r: Rig, stop: threading.Event, errors: list[str], moved: list[int]) -> None:
    """Read 1 MiB pieces in a loop, each checked against the image."""
    rng = random.Random(7)
    try:
        with r.vfs.open("/dev/c0d0", "rb", buffering=0) as f:
            for _ in range(100_000):
                if stop.is_set():
                    return
                position = rng.randrange(0, (SIZE >> 20) - 1) << 20
                f.seek(position)
                if f.read(1 << 20) != r.logical(position, 1 << 20):
                    errors.append(f"wrong bytes at {position}")
                moved[0] += 1
    except Exception as exc:  # the assertion is on errors
        errors.append(repr(exc))


def _under_load(r: Rig, action: str, label: str, times: int) -> None:
    stop, moved = threading.Event(), [0]
    errors: list[str] = []
    thread = threading.Thread(target=_reader, args=(r, stop, errors, moved))
    thread.start()
    try:
        for _ in range(times):
            before = moved[0]
            deadline = time.monotonic() + 30
            while moved[0] < before + 3 and thread.is_alive():
                assert time.monotonic() < deadline, "the reader stalled"
                time.sleep(0.01)
            row = r.row(label)
            if action == "kill":
                os.kill(row.pid, signal.SIGKILL)
                r.wait_up(label, row.pid)
            else:
                r.system.rs.update(label)
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()
    assert errors == []
    assert moved[0] >= 3 * times


def test_sigkill_of_at_wini_under_load_costs_no_error_and_no_byte(r: Rig) -> None:
    _under_load(r, "kill", "at_wini", 3)
    assert "dead" in r.log("filter")


def test_sigkill_of_the_filter_under_load_is_recovered_by_vfs(r: Rig) -> None:
    _under_load(r, "kill", "filter", 2)
    assert "driver filter is up again" in r.log("vfs")


def test_live_update_of_the_filter_under_load(r: Rig) -> None:
    _under_load(r, "update", "filter", 2)
    assert r.log("filter").count("filter up (LU)") >= 2


def test_a_driver_that_keeps_corrupting_gets_eio_and_the_filter_serves_on(r: Rig) -> None:
    position = 12 << 20
    r.lie("at_wini", "flip", count=-1, position=r.raw_position(position + 5), sticky=1)
    try:
        fd = r.vfs.open_fd("/dev/c0d0", vp.O_RDONLY)
        try:
            with pytest.raises(VfsError) as info:
                r.vfs.pread(fd, 4096, position)
            assert info.value.minix_errno is Errno.EIO
            # elsewhere the filter serves on, through the same lying driver
            assert r.vfs.pread(fd, 4096, position + (1 << 20)) == r.logical(
                position + (1 << 20), 4096
            )
        finally:
            r.vfs.close_fd(fd)
    finally:
        r.lie("at_wini", "clear")
    line = next(x for x in r.log("filter").splitlines() if "EIO:" in x)
    assert "driver at_wini" in line and "bad checksum" in line, line
    with r.vfs.open("/dev/c0d0", "rb") as f:  # the lie gone, the data was right all along
        f.seek(position)
        assert f.read(4096) == r.logical(position, 4096)


def test_readback_catches_a_write_that_reads_back_wrong(r: Rig) -> None:
    """The filter live-updated to a version with ``readback``: at_wini flips a bit
    of the write's read-back; the filter refreshes it and writes again."""
    argv = [sys.executable, "-m", "hwl.drivers.filter"]
    r.system.rs.update("filter", [*argv, "driver=at_wini,checksum=crc,readback"])
    try:
        position = 14 << 20  # whole groups: the write reads nothing before it
        data = random.Random(8).randbytes(64 << 10)
        pid = r.row("at_wini").pid
        r.lie("at_wini", "flip", count=1, bit=5)  # the next read is the read-back
        with r.vfs.open("/dev/c0d0", "r+b") as f:
            f.seek(position)
            f.write(data)
        r.wait_up("at_wini", pid)
        assert r.logical(position, len(data)) == data
        assert f"read-back of raw sector {LAYOUT.phys(position // SECTOR)} differs" in r.log(
            "filter"
        )
    finally:
        r.system.rs.update("filter", [*argv, "driver=at_wini,checksum=crc"])


FILTER_ENTRY = """service filter
{
	type		blk;
	ipc		SYSTEM rs ds vfs at_wini at_wini1;
	control		at_wini at_wini1;
	%s
};"""


def test_without_sumcopyto_the_filter_checks_and_copies_itself(r: Rig) -> None:
    """An entry without ``system SUMCOPYTO``: the kernel refuses the checked copy,
    the filter says so once and goes back to its own check and copy; every read is
    still right, and a flipped bit still caught. (Reads that start inside a group:
    one that starts on a group goes through a sums grant, which needs no call.)"""
    position = (9 << 20) + SECTOR
    updates = r.log("filter").count("filter up (LU)")
    r.system.rs.update("filter", conf=FILTER_ENTRY % "")
    try:
        r.wait_log("filter", "filter up (LU)", updates + 1)
        before = filter_ioctl(r, "filter_stats")
        with r.vfs.open("/dev/c0d0", "rb") as f:
            f.seek(position)
            assert f.read(1 << 20) == r.logical(position, 1 << 20)
            r.lie("at_wini", "flip", count=1, position=r.raw_position(position + 4096), bit=1)
            f.seek(position)
            assert f.read(65536) == r.logical(position, 65536)
        after = filter_ioctl(r, "filter_stats")
        assert after["sumcopies"] == before["sumcopies"] == 0
        assert after["bad_sums"] == before["bad_sums"] + 1  # type: ignore[operator]
        log = r.log("filter")
        assert log.count("sumcopyto refused") == 1 and "ECALLDENIED" in log
    finally:
        r.system.rs.update("filter", conf=FILTER_ENTRY % "system\t\tSUMCOPYTO;")
    with r.vfs.open("/dev/c0d0", "rb") as f:  # back on the checked copy
        f.seek(position)
        assert f.read(65536) == r.logical(position, 65536)
    assert filter_ioctl(r, "filter_stats")["sumcopies"] == 1


def test_a_driver_in_pio_mode_takes_no_sums_grant_and_reads_stay_right(r: Rig) -> None:
    """at_wini started again in PIO mode: its port I/O cannot write through a sums
    grant (EPERM, not the driver's fault); the filter says so once, reads the
    groups into its own buffer from then on, and every byte is right. (Last in the
    module: the filter keeps to that path.)"""
    row = r.row("at_wini")
    stock = hwl.config.load().get("at_wini")
    assert stock is not None
    argv = [sys.executable, "-m", "hwl.drivers.at_wini", "instance=0"]
    r.system.rs.down("at_wini")
    r.system.rs.up([*argv, "pio=1"], label="at_wini", conf=stock.to_text(),
                   policy=Policy[row.policy.upper()])  # fmt: skip
    position = 3 << 20
    before = filter_ioctl(r, "filter_stats")
    with r.vfs.open("/dev/c0d0", "rb") as f:
        f.seek(position)
        assert f.read(1 << 20) == r.logical(position, 1 << 20)
        f.seek(position + (1 << 20))
        assert f.read(1 << 20) == r.logical(position + (1 << 20), 1 << 20)
    after = filter_ioctl(r, "filter_stats")
    log = r.log("filter")
    assert log.count("took no sums grant") == 1 and "EPERM" in log
    assert after["direct"] == before["direct"]
    assert after["sumcopies"] > before["sumcopies"]  # type: ignore[operator]
    assert after["bad_sums"] == before["bad_sums"]  # EPERM is no data problem
