"""The filter's mirroring on QEMU: VFS -> filter -> at_wini (hd0) + at_wini1 (hd1)
(profile ``filter-mirror``: CRC32C sums, hd0 formatted and copied to hd1 at boot).

One machine for the module; the next to last test drops the main side, the last
one brings it back (``filter_resync``).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator

import pytest
from filter_rig import SECTOR, SIZE, Rig, filter_ioctl, rig

from hwl.kernel.errno import Errno
from hwl.pytest_plugin import MachineFactory
from hwl.system import vfs as vp

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def r(hwl_machines: MachineFactory) -> Iterator[Rig]:
    with rig(hwl_machines, "filter-mirror") as setup:
        yield setup


def test_the_format_copied_the_main_disk_to_the_mirror(r: Rig) -> None:
    for position in (0, 5 << 20, SIZE - (1 << 20)):
        assert r.logical(position, 1 << 20, "hd1") == r.logical(position, 1 << 20, "hd0")
    for sector in (0, 9, SIZE // SECTOR - 1):
        assert r.stored_sum(sector, "hd1") == r.computed_sum(sector, "hd1")


def test_writes_reach_both_disks(r: Rig) -> None:
    data = random.Random(3).randbytes(300_001)
    position = (2 << 20) + 1234
    with r.vfs.open("/dev/c0d0", "r+b") as f:
        f.seek(position)
        f.write(data)
    for disk in ("hd0", "hd1"):
        assert r.logical(position, len(data), disk) == data
        sector = (position + 1000) // SECTOR
        assert r.stored_sum(sector, disk) == r.computed_sum(sector, disk)


def test_a_clean_read_goes_through_a_sums_grant(r: Rig) -> None:
    position = 3 << 20
    before = filter_ioctl(r, "filter_stats")
    with r.vfs.open("/dev/c0d0", "rb", buffering=0) as f:
        f.seek(position)
        assert f.read(1 << 20) == r.logical(position, 1 << 20, "hd0")
    after = filter_ioctl(r, "filter_stats")
    # at_wini's DMA copy went straight to the client, the kernel checking the sums
    assert after["direct"] == before["direct"] + 1  # type: ignore[operator]
    assert after["sumcopies"] == before["sumcopies"]


def test_a_flipped_read_is_served_from_the_other_side_and_at_wini_refreshed(r: Rig) -> None:
    position = 7 << 20
    pid = r.row("at_wini").pid
    repairs = r.log("filter").count("repaired")
    before = filter_ioctl(r, "filter_stats")
    r.lie("at_wini", "flip", count=1, position=r.raw_position(position + 9))
    with r.vfs.open("/dev/c0d0", "rb", buffering=0) as f:
        f.seek(position)
        t0 = time.perf_counter()
        data = f.read(1 << 20)
        took = time.perf_counter() - t0
    assert data == r.logical(position, 1 << 20, "hd1")
    r.wait_up("at_wini", pid)
    r.wait_log("filter", "repaired", repairs + 1)  # after the answer: the client did not wait
    assert f"read of {1 << 20} bytes at {position} served from at_wini1" in r.log("filter")
    assert f"bad checksum at sector {position // SECTOR}" in r.log("filter")
    after = filter_ioctl(r, "filter_stats")
    # the main side's sums grant caught the flip in at_wini's DMA buffer; the other
    # side read into the filter's buffer, which held the groups for the mend
    assert after["direct"] == before["direct"]
    assert after["sumcopies"] == before["sumcopies"] + 1  # type: ignore[operator]
    assert after["bad_sums"] == before["bad_sums"] + 1  # type: ignore[operator]
    print(f"a flipped read served from the mirror in {took * 1e3:.1f} ms")


def test_a_bad_copy_on_the_disk_is_repaired_from_the_other(r: Rig) -> None:
    position = 11 << 20
    raw = r.raw_position(position + 100)
    good = r.raw(raw, 1)
    with r.image("hd0").open("r+b") as f:  # the disk itself goes bad under the driver
        f.seek(raw)
        f.write(bytes([good[0] ^ 0x40]))
    repairs = r.log("filter").count("repaired")
    with r.vfs.open("/dev/c0d0", "rb") as f:
        f.seek(position)
        assert f.read(65536) == r.logical(position, 65536, "hd1")
    r.wait_log("filter", "repaired", repairs + 1)
    fd = r.vfs.open_fd("/dev/c0d0", vp.O_RDWR)  # a flush: the repair reaches the image
    try:
        r.vfs.ioctl(fd, "flush")
    finally:
        r.vfs.close_fd(fd)
    assert r.raw(raw, 1) == good
    assert r.logical(position, 65536, "hd0") == r.logical(position, 65536, "hd1")


def test_a_mirrored_write_is_read_back_only_with_readback(r: Rig) -> None:
    """A mirror reads back a repair, not every write (that is ``readback``): a flip
    armed for the next read of the written sectors is still armed after the write,
    and the next read meets it (and is served from the other side)."""
    position = 15 << 20
    data = random.Random(15).randbytes(64 << 10)
    pid = r.row("at_wini").pid
    repairs = r.log("filter").count("repaired")
    r.lie("at_wini", "flip", count=1, position=r.raw_position(position + 5))
    with r.vfs.open("/dev/c0d0", "r+b", buffering=0) as f:
        f.seek(position)
        f.write(data)
        assert "read-back of raw sector" not in r.log("filter")
        f.seek(position)
        assert f.read(len(data)) == data
    assert f"bad checksum at sector {position // SECTOR}" in r.log("filter")
    r.wait_up("at_wini", pid)
    r.wait_log("filter", "repaired", repairs + 1)
    for disk in ("hd0", "hd1"):
        assert r.logical(position, len(data), disk) == data


def test_sigkill_of_either_driver_under_load_costs_nothing(r: Rig) -> None:
    stop, moved = threading.Event(), [0]
    errors: list[str] = []

    def reader() -> None:
        rng = random.Random(11)
        try:
            with r.vfs.open("/dev/c0d0", "rb", buffering=0) as f:
                for _ in range(100_000):
                    if stop.is_set():
                        return
                    position = rng.randrange(0, (SIZE >> 20) - 1) << 20
                    f.seek(position)
                    if f.read(1 << 20) != r.logical(position, 1 << 20, "hd1"):
                        errors.append(f"wrong bytes at {position}")
                    moved[0] += 1
        except Exception as exc:
            errors.append(repr(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for label in ("at_wini", "at_wini1", "at_wini"):
            before = moved[0]
            deadline = time.monotonic() + 30
            while moved[0] < before + 3 and thread.is_alive():
                assert time.monotonic() < deadline, "the reader stalled"
                time.sleep(0.01)
            row = r.row(label)
            os.kill(row.pid, signal.SIGKILL)
            r.wait_up(label, row.pid)
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive() and errors == []


def test_a_side_that_keeps_failing_is_dropped_and_the_other_serves_on(r: Rig) -> None:
    r.lie("at_wini", "flip", count=-1, sticky=1)  # every read of every incarnation
    try:
        with r.vfs.open("/dev/c0d0", "rb", buffering=0) as f:
            for i in range(6):
                f.seek(i << 20)
                assert f.read(1 << 20) == r.logical(i << 20, 1 << 20, "hd1"), i
        r.wait_log("filter", "mirror side at_wini (main) dropped")
        data = random.Random(4).randbytes(8192)
        position = 3 << 20
        with r.vfs.open("/dev/c0d0", "r+b") as f:
            f.seek(position)
            f.write(data)
        with r.vfs.open("/dev/c0d0", "rb") as f:
            f.seek(position)
            assert f.read(len(data)) == data
        assert r.logical(position, len(data), "hd1") == data
        assert r.logical(position, len(data), "hd0") != data  # the dropped side is left alone
    finally:
        r.lie("at_wini", "clear")
    line = next(x for x in r.log("filter").splitlines() if "dropped" in x)
    assert "serving from at_wini1 alone" in line, line


def test_a_dropped_side_is_resynced_and_serves_again(r: Rig) -> None:
    main = filter_ioctl(r, "filter_stats")["main"]
    assert isinstance(main, dict)
    if main["enabled"]:  # run alone: drop it as the test before does
        test_a_side_that_keeps_failing_is_dropped_and_the_other_serves_on(r)
    position, data = 5 << 20, random.Random(9).randbytes(1 << 20)
    with r.vfs.open("/dev/c0d0", "r+b") as f:  # written while main is dropped: hd1 only
        f.seek(position)
        f.write(data)
    assert r.logical(position, len(data), "hd0") != data
    r.lie("at_wini", "flip", count=-1, sticky=1)  # still lying: the resync must fail
    try:
        why = filter_ioctl(r, "filter_resync", -int(Errno.EIO))["error"]
        assert "resync of at_wini" in str(why), why
        main = filter_ioctl(r, "filter_stats")["main"]
        assert isinstance(main, dict) and main["enabled"] == 0  # still dropped
        with r.vfs.open("/dev/c0d0", "rb", buffering=0) as f:  # and at_wini1 serves on
            f.seek(position)
            assert f.read(len(data)) == data
    finally:
        r.lie("at_wini", "clear")
    assert filter_ioctl(r, "filter_resync") == {"resynced": 1}
    assert filter_ioctl(r, "filter_resync") == {"resynced": 0}  # nothing dropped now
    after = filter_ioctl(r, "filter_stats")
    assert isinstance(after["main"], dict) and after["main"]["enabled"] == 1, after
    assert after["resyncs"] == 1, after
    r.wait_log("filter", "mirror side at_wini (main) resynced from at_wini1")
    filtered = SIZE // SECTOR
    raw = (filtered // 8 * 9) * SECTOR  # every group of the filtered disk
    assert r.raw(0, raw, "hd0") == r.raw(0, raw, "hd1")  # data and sums, byte for byte
    # main is read first again: a flip there is seen, and at_wini1 serves the read
    line = f"read of {1 << 20} bytes at {position} served from at_wini1"
    served = r.log("filter").count(line)
    r.lie("at_wini", "flip", count=1, position=r.raw_position(position + 3))
    with r.vfs.open("/dev/c0d0", "rb", buffering=0) as f:
        f.seek(position)
        assert f.read(len(data)) == data
    r.wait_log("filter", line, served + 1)
