"""at_wini and libblockdriver end to end on QEMU.

One pc machine per DMA path of at_wini (``path=new``, ``path=old``: the module runs
once for each; hd0: 128 MiB of seeded random bytes on the primary channel). The
test boots DS, PCI and at_wini (instance 0, restart policy) and is
the client itself: attached as the operator, it grants buffers of its arena to
the driver and speaks the BDEV protocol (hwl/driver/proto.py). Bytes read are
compared with the image file; writes are checked on the image after a flush.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import hwl.config
from hwl import Machine
from hwl.driver import proto as bp
from hwl.ipc.client import Connection
from hwl.kernel.errno import Errno
from hwl.link import abi
from hwl.pytest_plugin import MachineFactory
from hwl.system.boot import System
from hwl.system.ds import Ds
from hwl.system.proto import Policy
from hwl.system.rs import RsError, up_fields

pytestmark = pytest.mark.qemu

SECTOR = 512
SHARER = str(Path(__file__).parent / "programs" / "irq_sharer.py")
AT_DEBUG_IN = 0xBF0
WATCH_HOG = str(Path(__file__).parent / "programs" / "watch_hog.py")


@dataclass
class Disk:
    machine: Machine
    system: System
    conn: Connection
    image: Path
    path: str  # at_wini's DMA path: "path=new" or "path=old"

    @property
    def args(self) -> str:
        """at_wini's arguments in this module run."""
        return f"instance=0 debug=1 {self.path}"

    def ep(self, label: str = "at_wini") -> int:
        return self.system.rs.lookup(label)

    def req(self, m_type: int, label: str = "at_wini", **fields: Any) -> tuple[int, dict[str, Any]]:
        reply = self.conn.sendrec(self.ep(label), m_type, fields, timeout=20)
        return reply.m_type, dict(reply.fields)

    def read(self, minor: int, position: int, count: int, label: str = "at_wini") -> bytes:
        buf = self.conn.arena.alloc(count)
        try:
            gid = self.conn.arena.grant(self.ep(label), buf.offset, count, read=True, write=True)
            status, f = self.req(bp.BDEV_READ, label, minor=minor, position=position,
                                 count=count, grant=gid, id=7)  # fmt: skip
            assert status == count, (status, f)
            assert f["id"] == 7
            self.conn.arena.revoke(gid)
            return buf.read()
        finally:
            self.conn.arena.free(buf)

    def write(self, minor: int, position: int, data: bytes) -> int:
        buf = self.conn.arena.alloc(len(data))
        try:
            buf.write(data)
            gid = self.conn.arena.grant(self.ep(), buf.offset, len(data), read=True)
            status, _ = self.req(bp.BDEV_WRITE, minor=minor, position=position,
                                 count=len(data), grant=gid, id=8)  # fmt: skip
            self.conn.arena.revoke(gid)
            return status
        finally:
            self.conn.arena.free(buf)

    def stats(self) -> dict[str, int]:
        """at_wini's DMA commands, separate data copies, and reads its command ring
        ran and had refused so far (debug_stats)."""
        status, f = self.req(bp.BDEV_IOCTL, minor=0, request="debug_stats")
        assert status == 0, f
        names = ("dma_commands", "copy_calls", "ring_reads", "ring_writes", "ring_refused")
        return {name: int(f[name]) for name in names}

    def inline(self, minor: int, position: int, count: int) -> tuple[int, dict[str, Any]]:
        """An inline READ: the data in the reply, no grant."""
        return self.req(bp.BDEV_READ, minor=minor, position=position, count=count,
                        inline=True, id=9)  # fmt: skip

    def image_bytes(self, position: int, count: int) -> bytes:
        with self.image.open("rb") as f:
            f.seek(position)
            return f.read(count)


def entry(label: str) -> str:
    """The stock at_wini entry of system.conf under ``label``. It has no ``io`` or
    ``irq`` lines: an instance has only what its PCI reserve of one channel grants
    (see docs/drivers.md)."""
    stock = hwl.config.load().get("at_wini")
    assert stock is not None and not stock.io and not stock.irq
    return stock.to_text().replace("service at_wini", f"service {label}", 1)


def at_wini_up(system: System, args: str = "instance=0 debug=1", label: str = "at_wini") -> int:
    return system.rs.up(
        [sys.executable, "-m", "hwl.drivers.at_wini", *args.split()],
        label=label,
        conf=entry(label),
        policy=Policy.RESTART,
    )


@pytest.fixture(scope="module", params=["path=new", "path=old"])
def disk(hwl_machines: MachineFactory, request: pytest.FixtureRequest) -> Iterator[Disk]:
    machine = hwl_machines.boot("pc")
    try:
        boot = [
            up_fields([sys.executable, "-m", "hwl.servers.ds"], label="ds"),
            up_fields([sys.executable, "-m", "hwl.servers.pci"], label="pci"),
        ]
        system = System.start(machine, boot)
        try:
            path = str(request.param)
            at_wini_up(system, f"instance=0 debug=1 {path}")
            yield Disk(machine, system, system.rs.conn, machine.run_dir / "hd0.img", path)
        finally:
            system.stop()
    finally:
        machine.close()


def test_announce_open_and_geometry(disk: Disk) -> None:
    ds = Ds.find(disk.conn)
    assert ds.retrieve_u32("drv.blk.at_wini") == bp.DS_DRIVER_UP
    status, f = disk.req(bp.BDEV_OPEN, minor=0, access=bp.BDEV_R_BIT | bp.BDEV_W_BIT)
    assert status == 0, f
    status, f = disk.req(bp.BDEV_IOCTL, minor=0, request="geometry")
    assert status == 0, f
    assert f["size"] == 128 << 20 and f["base"] == 0


def test_dma_read_matches_the_image(disk: Disk) -> None:
    disk.req(bp.BDEV_OPEN, minor=0, access=bp.BDEV_R_BIT)
    for position, count in ((0, SECTOR), (4096 * 7, 65536), (1 << 20, 300 * SECTOR)):
        assert disk.read(0, position, count) == disk.image_bytes(position, count)
    t0 = time.perf_counter()
    n = 4 << 20
    data = disk.read(0, 8 << 20, n)
    dt = time.perf_counter() - t0
    assert data == disk.image_bytes(8 << 20, n)
    print(f"DMA read: {n / dt / 1e6:.1f} MB/s")


def test_a_mib_at_an_odd_sector_is_one_command_byte_exact(disk: Disk) -> None:
    """1 MiB at an odd sector (every 64 KiB piece of it across a 64 KiB boundary
    on the disk) into and out of a grant at an odd offset: one READ/WRITE DMA EXT
    of 2048 sectors each way, the bytes exactly the image's. The new path copies
    inside the command's kernel call; the old one with a dmacopy of its own."""
    mib, at = 1 << 20, 1000  # the grant starts 1000 bytes into the buffer
    disk.req(bp.BDEV_OPEN, minor=0, access=bp.BDEV_R_BIT | bp.BDEV_W_BIT)
    arena, ep = disk.conn.arena, disk.ep()
    buf = arena.alloc(mib + 2 * at)
    try:
        gid = arena.grant(ep, buf.offset + at, mib, read=True, write=True)
        before = disk.stats()
        position = 12345 * SECTOR
        status, f = disk.req(bp.BDEV_READ, minor=0, position=position, count=mib, grant=gid, id=1)
        assert status == mib, f
        assert buf.read(mib, at) == disk.image_bytes(position, mib)
        data = os.urandom(mib)
        buf.write(data, at)
        position = (90 << 20) + 77 * SECTOR
        status, f = disk.req(bp.BDEV_WRITE, minor=0, position=position, count=mib, grant=gid, id=2)
        assert status == mib, f
        after = disk.stats()
        assert disk.req(bp.BDEV_IOCTL, minor=0, request="flush")[0] == 0
        assert disk.image_bytes(position, mib) == data
        assert disk.read(0, position - SECTOR, mib + 2 * SECTOR) == disk.image_bytes(
            position - SECTOR, mib + 2 * SECTOR
        )
        arena.revoke(gid)
    finally:
        arena.free(buf)
    separate = 0 if disk.path == "path=new" else 2
    assert (
        after["dma_commands"] - before["dma_commands"],
        after["copy_calls"] - before["copy_calls"],
    ) == (2, separate)


def test_a_filter_span_is_one_command(disk: Disk) -> None:
    """The filter reads 1 MiB of its data as 1.125 MiB of groups (data and sums,
    drivers/filter/layout.py): one DMA command of 2304 sectors, not a MiB and a
    remainder (the DMA buffer holds 2 MiB)."""
    size = 2304 * SECTOR
    disk.req(bp.BDEV_OPEN, minor=0, access=bp.BDEV_R_BIT)
    arena, ep = disk.conn.arena, disk.ep()
    buf = arena.alloc(size)
    try:
        gid = arena.grant(ep, buf.offset, size, read=True, write=True)
        before = disk.stats()
        position = 3 << 20
        status, f = disk.req(bp.BDEV_READ, minor=0, position=position, count=size, grant=gid, id=3)
        assert status == size, f
        assert buf.read(size) == disk.image_bytes(position, size)
        arena.revoke(gid)
    finally:
        arena.free(buf)
    assert disk.stats()["dma_commands"] - before["dma_commands"] == 1


def test_write_then_flush_reaches_the_image(disk: Disk) -> None:
    disk.req(bp.BDEV_OPEN, minor=0, access=bp.BDEV_R_BIT | bp.BDEV_W_BIT)
    data = os.urandom(70 * SECTOR)
    position = 50 << 20
    assert disk.write(0, position, data) == len(data)
    status, f = disk.req(bp.BDEV_IOCTL, minor=0, request="flush")
    assert status == 0, f
    assert disk.image_bytes(position, len(data)) == data
    assert disk.read(0, position, len(data)) == data


def test_bad_requests_are_refused(disk: Disk) -> None:
    disk.req(bp.BDEV_OPEN, minor=0, access=bp.BDEV_R_BIT)
    status, _ = disk.req(bp.BDEV_READ, minor=0, position=1, count=SECTOR, grant=1, id=1)
    assert status == -Errno.EINVAL
    status, _ = disk.req(bp.BDEV_OPEN, minor=9, access=bp.BDEV_R_BIT)
    assert status == -Errno.ENXIO
    status, _ = disk.req(bp.BDEV_READ, minor=0, position=0, count=SECTOR, grant=12345, id=1)
    assert status < 0  # a grant the client never made
    # At the end of the disk a read is short, past it empty.
    end = 128 << 20
    assert disk.read(0, end - SECTOR, SECTOR) == disk.image_bytes(end - SECTOR, SECTOR)
    status, _ = disk.req(bp.BDEV_READ, minor=0, position=end, count=SECTOR, grant=1, id=1)
    assert status == 0


def test_inline_reads_come_from_the_command_ring_on_the_new_path(disk: Disk) -> None:
    """An inline read is one frame of at_wini's command ring on ``path=new``: every
    DMA command of these reads was the ring's, none the kernel's, and no data copy
    was a kernel call. ``path=old`` keeps every command on the kernel's way."""
    disk.req(bp.BDEV_OPEN, minor=0, access=bp.BDEV_R_BIT)
    before = disk.stats()
    rng = random.Random(5)
    for _ in range(64):
        position, count = rng.randrange(1 << 15) * SECTOR, rng.choice((1, 3, 8)) * SECTOR
        status, f = disk.inline(0, position, count)
        assert status == count, f
        assert f["data"] == disk.image_bytes(position, count) and f["id"] == 9
    after = disk.stats()
    commands = after["dma_commands"] - before["dma_commands"]
    new = disk.path == "path=new"
    assert commands == 64
    assert after["copy_calls"] - before["copy_calls"] == (0 if new else 64)
    assert after["ring_reads"] - before["ring_reads"] == (64 if new else 0)
    assert after["ring_refused"] == before["ring_refused"]


def test_inline_writes_go_by_the_command_ring_on_the_new_path(disk: Disk) -> None:
    """An inline write brings its bytes in the request; on ``path=new`` the ring
    writes them (no kernel call, no copy by the kernel), on ``path=old`` the
    kernel's way does. A flush puts them in the image; bad ones are EINVAL."""
    disk.req(bp.BDEV_OPEN, minor=0, access=bp.BDEV_R_BIT | bp.BDEV_W_BIT)
    before = disk.stats()
    base = 100 << 20
    writes = [(base + 4096 * i, os.urandom(size)) for i, size in enumerate((4096, 512, 1536))]
    for position, data in writes:
        status, f = disk.req(bp.BDEV_WRITE, minor=0, position=position, inline=True,
                             data=data, id=3)  # fmt: skip
        assert status == len(data), f
    status, f = disk.req(bp.BDEV_IOCTL, minor=0, request="flush")
    assert status == 0, f
    for position, data in writes:
        assert disk.image_bytes(position, len(data)) == data
        assert disk.inline(0, position, len(data))[1]["data"] == data
    after = disk.stats()
    new = disk.path == "path=new"
    assert after["ring_writes"] - before["ring_writes"] == (3 if new else 0)
    assert after["copy_calls"] - before["copy_calls"] == (0 if new else 6)  # old: both ways
    for fields in ({"data": b"x" * (4096 + SECTOR)}, {"data": "text"}, {"data": b"x" * 100},
                   {"data": b"x" * SECTOR, "position": 1}):  # fmt: skip
        request: dict[str, Any] = {"minor": 0, "position": base, "inline": True, **fields}
        status, f = disk.req(bp.BDEV_WRITE, **request)
        assert status == -Errno.EINVAL, (fields, f)
    assert disk.image_bytes(base, 4096) == writes[0][1]  # nothing of them written


def test_bad_inline_reads_are_refused_and_the_driver_serves_on(disk: Disk) -> None:
    disk.req(bp.BDEV_OPEN, minor=0, access=bp.BDEV_R_BIT)
    for position, count in ((0, 4096 + SECTOR), (0, -SECTOR), (1, SECTOR), (0, 100)):
        status, f = disk.inline(0, position, count)
        assert status == -Errno.EINVAL, (position, count, f)
        assert "data" not in f
    end = 128 << 20
    status, f = disk.inline(0, end - SECTOR, 2 * SECTOR)  # short at the end of the disk
    assert status == SECTOR and f["data"] == disk.image_bytes(end - SECTOR, SECTOR)
    status, f = disk.inline(0, end, SECTOR)
    assert status == 0 and f["data"] == b""
    status, f = disk.inline(0, 4096, 4096)
    assert status == 4096 and f["data"] == disk.image_bytes(4096, 4096)


def test_ports_outside_the_reservation_are_eperm(disk: Disk) -> None:
    status, f = disk.req(AT_DEBUG_IN, port=0x1F7)
    assert status == 0, f
    status, f = disk.req(AT_DEBUG_IN, port=0x3F7)
    assert status == -Errno.EPERM, f
    status, f = disk.req(AT_DEBUG_IN, port=0x60)
    assert status == -Errno.EPERM, f


def test_mbr_partitions_are_minors(disk: Disk) -> None:
    disk.req(bp.BDEV_OPEN, minor=0, access=bp.BDEV_R_BIT | bp.BDEV_W_BIT)
    original = disk.read(0, 0, SECTOR)
    mbr = bytearray(original)
    parts = [(2048, 4096), (8192, 100), (0, 0), (20000, 10**9)]  # the last one is clipped
    for i, (first, sectors) in enumerate(parts):
        entry = bytearray(16)
        entry[4] = 0x83 if sectors else 0
        entry[8:12] = first.to_bytes(4, "little")
        entry[12:16] = sectors.to_bytes(4, "little")
        mbr[446 + 16 * i : 462 + 16 * i] = entry
    mbr[510:512] = b"\x55\xaa"
    try:
        assert disk.write(0, 0, bytes(mbr)) == SECTOR
        # Partitions are read when a drive goes from no open minor to one.
        client = disk.conn.endpoint
        del client
        for _ in range(10):
            status, _ = disk.req(bp.BDEV_CLOSE, minor=0)
            if status != 0:
                break
        status, f = disk.req(bp.BDEV_OPEN, minor=1, access=bp.BDEV_R_BIT)
        assert status == 0, f
        status, f = disk.req(bp.BDEV_IOCTL, minor=1, request="geometry")
        assert (f["base"], f["size"]) == (2048 * SECTOR, 4096 * SECTOR)
        assert disk.read(1, 0, 8 * SECTOR) == disk.image_bytes(2048 * SECTOR, 8 * SECTOR)
        disk.req(bp.BDEV_OPEN, minor=2, access=bp.BDEV_R_BIT)
        assert disk.read(2, 99 * SECTOR, SECTOR) == disk.image_bytes(8291 * SECTOR, SECTOR)
        status, _ = disk.req(bp.BDEV_READ, minor=2, position=100 * SECTOR, count=SECTOR,
                             grant=1, id=1)  # fmt: skip
        assert status == 0  # past the partition's end
        status, _ = disk.req(bp.BDEV_OPEN, minor=3, access=bp.BDEV_R_BIT)
        assert status == -Errno.ENXIO
        status, f = disk.req(bp.BDEV_IOCTL, minor=4, request="geometry")
        assert status == -Errno.ERESTART or f.get("size") == ((128 << 20) - 20000 * SECTOR)
    finally:
        disk.req(bp.BDEV_OPEN, minor=0, access=bp.BDEV_R_BIT | bp.BDEV_W_BIT)
        disk.write(0, 0, original)


def test_restarted_driver_answers_erestart_until_reopen(disk: Disk) -> None:
    disk.req(bp.BDEV_OPEN, minor=0, access=bp.BDEV_R_BIT)
    assert disk.read(0, 0, SECTOR) == disk.image_bytes(0, SECTOR)
    status, f = disk.req(bp.BDEV_IOCTL, minor=0, request="geometry")
    old_gen = f["gen"]
    row = next(r for r in disk.system.rs.status() if r.label == "at_wini")
    endpoint = row.endpoint
    os.kill(row.pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while True:
        row = next(r for r in disk.system.rs.status() if r.label == "at_wini")
        if row.state == "up" and row.pid > 0 and row.restarts >= 1:
            break
        assert time.monotonic() < deadline, row
        time.sleep(0.05)
    assert row.endpoint == endpoint  # policy restart keeps the endpoint
    status, f = disk.req(bp.BDEV_IOCTL, minor=0, request="geometry")
    assert status == -Errno.ERESTART, f
    status, f = disk.req(bp.BDEV_READ, minor=0, position=0, count=SECTOR, grant=1, id=3)
    assert status == -Errno.ERESTART and f["id"] == 3, f
    # A request stamped with the old incarnation is dropped, even after the re-open.
    status, f = disk.req(bp.BDEV_OPEN, minor=0, access=bp.BDEV_R_BIT)
    assert status == 0 and f["gen"] != old_gen, f
    status, f = disk.req(bp.BDEV_IOCTL, minor=0, request="geometry", gen=old_gen)
    assert status == -Errno.ERESTART, f
    assert disk.read(0, 4096, 3 * SECTOR) == disk.image_bytes(4096, 3 * SECTOR)


@pytest.mark.parametrize("args", ["pio=1", "pio=1 lba48=1", "pio=1 pio32=0", "lba48=1"])
def test_pio_and_lba48_modes(disk: Disk, args: str) -> None:
    disk.system.rs.down("at_wini")
    at_wini_up(disk.system, f"instance=0 {args} {disk.path}")
    try:
        disk.req(bp.BDEV_OPEN, minor=0, access=bp.BDEV_R_BIT | bp.BDEV_W_BIT)
        position, n = 3 << 20, 300 * SECTOR
        t0 = time.perf_counter()
        assert disk.read(0, position, n) == disk.image_bytes(position, n)
        dt = time.perf_counter() - t0
        print(f"{args}: read {n / dt / 1e6:.2f} MB/s")
        data = os.urandom(37 * SECTOR)  # PIO: blocks of 16, 16 and 5 sectors
        assert disk.write(0, 60 << 20, data) == len(data)
        status, f = disk.req(bp.BDEV_IOCTL, minor=0, request="flush")
        assert status == 0, f
        assert disk.image_bytes(60 << 20, len(data)) == data
        assert disk.read(0, 60 << 20, len(data)) == data
    finally:
        disk.system.rs.down("at_wini")
        at_wini_up(disk.system, disk.args)


def test_without_a_watch_left_small_reads_go_through_the_kernel(disk: Disk) -> None:
    """Another service holds every watched doorbell: the restarted at_wini's
    command ring is refused (EBUSY, logged), and its inline reads go the
    kernel's way, each byte right."""
    rs = disk.system.rs
    rs.down("at_wini")  # its ring's watch goes with it
    try:
        rs.up([sys.executable, WATCH_HOG], label="watch_hog", policy=Policy.RESET,
              conf="service watch_hog { system VDEVIO; io 80; memory dma; };")  # fmt: skip
        log = disk.machine.run_dir / "watch_hog.log"
        assert f"holding {abi.NWATCH} watches" in log.read_text(), log.read_text()
        at_wini_up(disk.system, disk.args)
        disk.req(bp.BDEV_OPEN, minor=0, access=bp.BDEV_R_BIT)
        for position in (0, 4096 * 11, 1 << 20):
            status, f = disk.inline(0, position, 4096)
            assert status == 4096 and f["data"] == disk.image_bytes(position, 4096)
        stats = disk.stats()
        assert stats["ring_reads"] == 0 and stats["dma_commands"] >= 3
        if disk.path == "path=new":
            text = (disk.machine.run_dir / "at_wini.log").read_text()
            assert "no command ring" in text and "EBUSY" in text
    finally:
        for label in ("watch_hog", "at_wini"):
            with contextlib.suppress(RsError):
                rs.down(label)
        at_wini_up(disk.system, disk.args)  # the next tests: an at_wini with a ring


def test_device_errors_become_eio_after_retries(disk: Disk) -> None:
    disk.req(bp.BDEV_OPEN, minor=0, access=bp.BDEV_R_BIT)
    before = disk.stats()
    status, f = disk.req(bp.BDEV_IOCTL, minor=0, request="debug_read", lba=(128 << 20) // SECTOR)
    assert status == -Errno.EIO, f
    log = (disk.machine.run_dir / "at_wini.log").read_text()
    assert "attempt 4" in log and "status 0x" in log
    # On the new path the first attempt was the ring's: refused (its wait for a
    # status without ERR ran out); the retries went the kernel's way, which names
    # the status.
    refused = disk.stats()["ring_refused"] - before["ring_refused"]
    assert refused == (1 if disk.path == "path=new" else 0)
    if disk.path == "path=new":
        assert "attempt 1: DMA read at 262144: the command ring's frame was refused" in log
    # The driver serves on, its ring too.
    assert disk.read(0, 0, SECTOR) == disk.image_bytes(0, SECTOR)
    status, f = disk.inline(0, SECTOR, SECTOR)
    assert status == SECTOR and f["data"] == disk.image_bytes(SECTOR, SECTOR)
    assert "command ring off" not in (disk.machine.run_dir / "at_wini.log").read_text()


def test_dma_on_a_shared_irq_line_takes_its_interrupts_as_notifies(disk: Disk) -> None:
    """A DMA command waits for its interrupt inside its kernel call only on a line
    no other hook shares; on a shared one the kernel says EBUSY, and the driver
    goes on the notify way, so the other hook's owner sees every interrupt."""
    disk.req(bp.BDEV_OPEN, minor=0, access=bp.BDEV_R_BIT)
    wini_log, sharer_log = (disk.machine.run_dir / f"{n}.log" for n in ("at_wini", "sharer"))
    assert "is shared" not in wini_log.read_text()
    disk.system.rs.up([sys.executable, SHARER, "14"], label="sharer",
                      conf="service sharer { irq 14; system irqctl; ipc ALL; };")  # fmt: skip
    try:
        assert "hooked IRQ 14" in sharer_log.read_text()
        assert disk.read(0, 3 << 20, 65536) == disk.image_bytes(3 << 20, 65536)
        assert "IRQ 14 is shared" in wini_log.read_text()
        deadline = time.monotonic() + 5
        while "interrupts" not in sharer_log.read_text():
            assert time.monotonic() < deadline, "the sharer saw no interrupt"
            time.sleep(0.01)
        assert disk.read(0, 5 << 20, 4096) == disk.image_bytes(5 << 20, 4096)
    finally:
        disk.system.rs.down("sharer")


def test_two_instances_share_the_controller_by_channel(disk: Disk) -> None:
    status, f = disk.req(AT_DEBUG_IN, port=0x177)  # instance 0 has no secondary ports
    assert status == -Errno.EPERM, f
    endpoint = disk.system.rs.up(
        [sys.executable, "-m", "hwl.drivers.at_wini", "instance=1", "debug=1"],
        label="at_wini1",
        conf=entry("at_wini1"),
    )
    try:
        assert endpoint == disk.ep("at_wini1")
        assert Ds.find(disk.conn).retrieve_u32("drv.blk.at_wini1") == bp.DS_DRIVER_UP
        status, f = disk.req(bp.BDEV_OPEN, "at_wini1", minor=0, access=bp.BDEV_R_BIT)
        assert status == 0, f
        status, f = disk.req(bp.BDEV_IOCTL, "at_wini1", minor=0, request="geometry")
        assert f["size"] == 32 << 20
        hd1 = disk.machine.run_dir / "hd1.img"
        with hd1.open("rb") as img:
            img.seek(1 << 20)
            assert disk.read(0, 1 << 20, 64 * SECTOR, label="at_wini1") == img.read(64 * SECTOR)
        status, f = disk.req(AT_DEBUG_IN, "at_wini1", port=0x1F7)
        assert status == -Errno.EPERM, f
        status, f = disk.req(AT_DEBUG_IN, "at_wini1", port=0x177)
        assert status == 0, f
        # Both instances serve at the same time.
        assert disk.read(0, 0, SECTOR) == disk.image_bytes(0, SECTOR)
    finally:
        disk.system.rs.down("at_wini1")


def test_gather_and_scatter_through_a_vector_of_grants(disk: Disk) -> None:
    disk.req(bp.BDEV_OPEN, minor=0, access=bp.BDEV_R_BIT | bp.BDEV_W_BIT)
    arena, ep = disk.conn.arena, disk.ep()
    sizes = [3 * SECTOR, SECTOR, 260 * SECTOR]
    bufs = [arena.alloc(n) for n in sizes]
    try:
        grants = [arena.grant(ep, b.offset, b.size, read=True, write=True) for b in bufs]
        iov = [[g, n] for g, n in zip(grants, sizes, strict=True)]
        position = 70 << 20
        status, f = disk.req(bp.BDEV_GATHER, minor=0, position=position, iov=iov, id=11)
        assert status == sum(sizes) and f["id"] == 11, f
        assert b"".join(b.read() for b in bufs) == disk.image_bytes(position, sum(sizes))
        new = [os.urandom(n) for n in sizes]
        for b, data in zip(bufs, new, strict=True):
            b.write(data)
        status, f = disk.req(bp.BDEV_SCATTER, minor=0, position=position, iov=iov, id=12)
        assert status == sum(sizes), f
        assert disk.req(bp.BDEV_IOCTL, minor=0, request="flush")[0] == 0
        assert disk.image_bytes(position, sum(sizes)) == b"".join(new)
    finally:
        for b in bufs:
            arena.free(b)
