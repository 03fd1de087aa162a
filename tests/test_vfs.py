"""VFS end to end on QEMU: device files over at_wini, and recovery from its crash.

One pc machine for the module (hd0: 128 MiB of seeded random bytes). The test
boots DS, PCI, at_wini (instance 0) and VFS (tests/blockpath.py), and is VFS's
client through :class:`hwl.system.vfs.Vfs`: bytes read are compared with hd0.img
on the host, writes are checked on the image after close (VFS flushes at close).
"""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from blockpath import Setup, at_wini_up, block_path

import hwl.config
from hwl.ipc import codec
from hwl.ipc.arena import Buffer
from hwl.kernel.errno import Errno
from hwl.pytest_plugin import MachineFactory
from hwl.system import vfs as vp
from hwl.system.proto import Policy
from hwl.system.vfs import Vfs, VfsError

pytestmark = pytest.mark.qemu

SECTOR = 512
DISK = 128 << 20
SHORT_INLINE = str(Path(__file__).parent / "programs" / "short_inline_at_wini.py")


@pytest.fixture(scope="module")
def setup(hwl_machines: MachineFactory) -> Iterator[Setup]:
    with block_path(hwl_machines) as s:
        yield s


def test_read_matches_the_image(setup: Setup) -> None:
    with setup.vfs.open("/dev/c0d0", "rb") as f:
        assert isinstance(f, io.BufferedReader)
        assert f.read(SECTOR) == setup.image_bytes(0, SECTOR)
        f.seek(1000)  # no alignment needed
        assert f.read(3001) == setup.image_bytes(1000, 3001)
        assert f.tell() == 4001
        assert f.seek(-SECTOR, os.SEEK_END) == DISK - SECTOR
        assert f.read() == setup.image_bytes(DISK - SECTOR, SECTOR)
        assert f.read(10) == b""  # at the end: 0, as POSIX
        n = 4 << 20
        f.seek(8 << 20)
        t0 = time.perf_counter()
        data = f.read(n)
        dt = time.perf_counter() - t0
        assert data == setup.image_bytes(8 << 20, n)
        print(f"vfs read: {n / dt / 1e6:.1f} MB/s")


def test_write_pattern_then_close_reaches_the_image(setup: Setup) -> None:
    position = (50 << 20) + 100  # unaligned head and tail: VFS merges sectors
    pattern = bytes(range(256)) * 300 + b"tail"
    before = setup.image_bytes(position - SECTOR, SECTOR)
    with setup.vfs.open("/dev/c0d0", "r+b") as f:
        assert isinstance(f, io.BufferedRandom)
        f.seek(position)
        f.write(pattern)
    assert setup.image_bytes(position, len(pattern)) == pattern
    assert setup.image_bytes(position - SECTOR, SECTOR - 100) == before[: SECTOR - 100]
    with setup.vfs.open("/dev/c0d0", "rb", buffering=0) as raw:
        raw.seek(position)
        assert raw.read(len(pattern)) == pattern


def test_a_user_process_attaches(setup: Setup) -> None:
    with Vfs.attach(setup.machine.run_dir, timeout=30) as vfs, vfs.open("/dev/c0d0", "rb") as f:
        f.seek(12345)
        assert f.read(777) == setup.image_bytes(12345, 777)


def test_partitions_follow_the_mbr(setup: Setup) -> None:
    mbr = setup.image_bytes(0, SECTOR)
    assert mbr[510:512] != b"\x55\xaa"  # hd0 is random fill: no partition table
    with pytest.raises(VfsError) as info:
        setup.vfs.open("/dev/c0d0p0", "rb")
    assert info.value.minix_errno is Errno.ENXIO


def test_bad_input_is_refused_and_harms_nothing(setup: Setup) -> None:
    vfs = setup.vfs
    cases: list[tuple[Errno, int, dict[str, codec.Value]]] = [
        (Errno.ENOENT, vp.VFS_OPEN, {"path": "/dev/nope", "flags": 0}),
        (Errno.ENOENT, vp.VFS_OPEN, {"path": "/dev/c5d0", "flags": 0}),
        (Errno.EINVAL, vp.VFS_OPEN, {"path": "/dev/c0d0", "flags": 3}),
        (Errno.EINVAL, vp.VFS_OPEN, {"path": 7, "flags": 0}),
        (Errno.EBADF, vp.VFS_READ, {"fd": 55, "count": 1, "grant": 0}),
        (Errno.EBADF, vp.VFS_CLOSE, {"fd": -1}),
        (Errno.EINVAL, vp.VFS_LSEEK, {"fd": "x", "offset": 0, "whence": 0}),
        (Errno.ENOSYS, vp.VFS_BASE + 99, {}),
    ]
    for errno, m_type, fields in cases:
        with pytest.raises(VfsError) as info:
            vfs.call(m_type, fields)
        assert info.value.minix_errno is errno, (m_type, fields, info.value)
    fd = vfs.open_fd("/dev/c0d0", vp.O_RDONLY)
    try:
        fd_cases: list[tuple[Errno, int, dict[str, codec.Value]]] = [
            (Errno.EINVAL, vp.VFS_LSEEK, {"offset": -1, "whence": 0}),
            (Errno.EINVAL, vp.VFS_LSEEK, {"offset": 0, "whence": 9}),
            (Errno.EINVAL, vp.VFS_READ, {"count": -5, "grant": 0}),
            (Errno.EBADF, vp.VFS_WRITE, {"count": 1, "grant": 0}),  # opened read-only
            (Errno.ENOTTY, vp.VFS_IOCTL, {"request": "format"}),
        ]
        for errno, m_type, fields in fd_cases:
            with pytest.raises(VfsError) as info:
                vfs.call(m_type, {"fd": fd, **fields})
            assert info.value.minix_errno is errno, (m_type, fields, info.value)
        vfs_log = setup.machine.run_dir / "vfs.log"
        downs = vfs_log.read_text().count("is down")
        for count in (SECTOR, 100):  # whole sectors: the driver meets the bad grant
            with pytest.raises(VfsError) as info:  # a grant the client never made
                vfs.call(vp.VFS_READ, {"fd": fd, "count": count, "grant": 999, "position": 0})
            assert info.value.minix_errno is Errno.EINVAL, info.value
        assert vfs_log.read_text().count("is down") == downs  # not the driver's fault
        # A huge count is a short read (VFS_MAX_IO), past the end is 0.
        buf = memoryview(bytearray(8 << 20))
        assert vfs.read_into(fd, buf) == vp.VFS_MAX_IO
        assert vfs.lseek(fd, 10 * DISK) == 10 * DISK
        assert vfs.read_into(fd, buf) == 0
        assert vfs.ioctl(fd, "geometry")["size"] == DISK
    finally:
        vfs.close_fd(fd)
    with pytest.raises(VfsError) as info:
        vfs.close_fd(fd)
    assert info.value.minix_errno is Errno.EBADF
    with setup.vfs.open("/dev/c0d0", "r+b", buffering=0) as raw:
        raw.seek(DISK)
        with pytest.raises(VfsError) as info:
            raw.write(b"x")
        assert info.value.minix_errno is Errno.ENOSPC
        raw.seek(0)
        assert raw.read(SECTOR) == setup.image_bytes(0, SECTOR)
    with pytest.raises(ValueError):
        setup.vfs.open("/dev/c0d0", "r")  # text mode: devices are binary
    with setup.vfs.open("/dev/c0d0", "rb") as f, pytest.raises(io.UnsupportedOperation):
        f.write(b"x")


def test_inline_reads_bring_their_data_in_the_reply(setup: Setup) -> None:
    """A read of 4 KiB or less is an inline READ (no grant): whole sectors from
    the driver's inline replies, any other span through VFS's bounce buffer,
    short at the end of the device; a bad inline request is EINVAL, VFS and the
    driver serve on."""
    vfs = setup.vfs
    fd = vfs.open_fd("/dev/c0d0", vp.O_RDWR)
    try:
        for position, count in ((0, 4096), (SECTOR * 9, SECTOR), (7, 100), (4090, 4096),
                                (DISK - 100, 4096), (DISK, 512)):  # fmt: skip
            reply = vfs.call(vp.VFS_READ, {"fd": fd, "count": count, "inline": True,
                                           "position": position})  # fmt: skip
            want = setup.image_bytes(position, min(count, max(0, DISK - position)))
            assert reply.m_type == len(want) and reply["data"] == want, (position, count)
        assert vfs.lseek(fd, 0, os.SEEK_CUR) == 0  # preads: the position stays
        bad: list[dict[str, codec.Value]] = [
            {"count": 4097, "inline": True},  # over VFS_INLINE_MAX
            {"count": 8, "inline": 1},  # not a boolean
            {"count": 8},  # neither inline nor a grant
        ]
        for fields in bad:
            with pytest.raises(VfsError) as info:
                vfs.call(vp.VFS_READ, {"fd": fd, **fields})
            assert info.value.minix_errno is Errno.EINVAL, (fields, info.value)
        with pytest.raises(VfsError) as info:
            vfs.call(vp.VFS_WRITE, {"fd": fd, "count": 8, "inline": True})
        assert info.value.minix_errno is Errno.EINVAL, info.value
        assert vfs.pread(fd, 1000, 123) == setup.image_bytes(123, 1000)
    finally:
        vfs.close_fd(fd)


def test_inline_writes_bring_their_data_in_the_request(setup: Setup) -> None:
    """A write of 4 KiB or less is an inline WRITE (no grant): whole sectors in the
    driver's inline requests, any other span merged through VFS's bounce buffer;
    the bytes reach the image (close flushes) and nothing around them changes;
    a bad inline WRITE is EINVAL."""
    vfs = setup.vfs
    base = 90 << 20
    before = setup.image_bytes(base, 3 * 4096)
    model = bytearray(before)
    fd = vfs.open_fd("/dev/c0d0", vp.O_RDWR)
    try:
        for at, size in ((0, 4096), (4096 + 7, 100), (2 * 4096 - 10, 4096)):
            data = os.urandom(size)
            assert vfs.pwrite(fd, data, base + at) == size
            model[at : at + size] = data
        assert vfs.pread(fd, 3 * 4096, base) == model
        bad: list[dict[str, codec.Value]] = [
            {"count": 8, "inline": True},  # no data
            {"count": 8, "inline": True, "data": b"x" * 9},  # not count long
            {"count": 4097, "inline": True, "data": b"x" * 4097},  # over VFS_INLINE_MAX
            {"count": 8, "inline": True, "data": "text"},  # not bytes
        ]
        for fields in bad:
            with pytest.raises(VfsError) as info:
                vfs.call(vp.VFS_WRITE, {"fd": fd, "position": base, **fields})
            assert info.value.minix_errno is Errno.EINVAL, (fields, info.value)
        with pytest.raises(VfsError) as info:  # a READ brings no data
            vfs.call(vp.VFS_READ, {"fd": fd, "count": 8, "inline": True, "data": b"x" * 8})
        assert info.value.minix_errno is Errno.EINVAL, info.value
    finally:
        vfs.close_fd(fd)
    assert setup.image_bytes(base, 3 * 4096) == model


def test_pread_and_pwrite_leave_the_fd_position_alone(setup: Setup) -> None:
    vfs = setup.vfs
    fd = vfs.open_fd("/dev/c0d0", vp.O_RDWR)
    try:
        assert vfs.lseek(fd, 777) == 777
        assert vfs.pread(fd, 3001, 1000) == setup.image_bytes(1000, 3001)  # unaligned
        big = vfs.pread(fd, 2 << 20, 30 << 20)  # one READ: a short count, as POSIX
        assert big == setup.image_bytes(30 << 20, vp.VFS_MAX_IO)
        assert vfs.pread(fd, 10, DISK - 4) == setup.image_bytes(DISK - 4, 4)
        assert vfs.pread(fd, 10, DISK) == b""
        pattern = os.urandom(5000)
        assert vfs.pwrite(fd, pattern, (60 << 20) + 3) == len(pattern)
        assert vfs.pread(fd, len(pattern), (60 << 20) + 3) == pattern
        for position in (-1, -(1 << 40)):
            with pytest.raises(VfsError) as info:
                vfs.pread(fd, 10, position)
            assert info.value.minix_errno is Errno.EINVAL
        with pytest.raises(VfsError) as info:
            vfs.pwrite(fd, b"x", DISK)
        assert info.value.minix_errno is Errno.ENOSPC
        assert vfs.lseek(fd, 0, os.SEEK_CUR) == 777  # none of it moved the fd
        assert vfs.pread(fd, 16, 777) == setup.image_bytes(777, 16)
    finally:
        vfs.close_fd(fd)
    assert setup.image_bytes((60 << 20) + 3, len(pattern)) == pattern  # close flushed


def test_arena_buffers_move_the_data_without_a_bounce_buffer(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads into and writes from an arena buffer (Vfs.buffer) take no bounce
    buffer in the client: the kernel's copy is the data's only one."""
    vfs = setup.vfs
    arena = vfs.conn.arena
    buf = vfs.buffer(1 << 20)
    allocs: list[int] = []
    real_alloc = arena.alloc

    def counting_alloc(size: int, align: int = 64) -> Buffer:
        allocs.append(size)
        return real_alloc(size, align)

    monkeypatch.setattr(arena, "alloc", counting_alloc)
    pattern = os.urandom(1 << 20)
    fd = vfs.open_fd("/dev/c0d0", vp.O_RDWR)
    try:
        assert vfs.read_into(fd, buf, 20 << 20) == 1 << 20
        assert buf.read() == setup.image_bytes(20 << 20, 1 << 20)
        buf.write(pattern)
        assert vfs.write_from(fd, buf, 61 << 20) == 1 << 20
        buf.write(bytes(1 << 20))
        assert vfs.read_into(fd, buf, 61 << 20) == 1 << 20
        assert buf.read() == pattern
        assert allocs == []
        assert vfs.read_into(fd, memoryview(bytearray(512)), 0) == 512
        assert allocs == []  # a small read comes inline, in the reply: no grant
        assert vfs.read_into(fd, memoryview(bytearray(8192)), 0) == 8192
        assert allocs == [8192]  # plain memory takes a bounce buffer: the spy sees it
    finally:
        vfs.close_fd(fd)
        vfs.free_buffer(buf)
    assert setup.image_bytes(61 << 20, 1 << 20) == pattern  # close flushed


def test_a_kill_during_preads_is_only_a_delay(setup: Setup) -> None:
    row = setup.at_wini_row()
    rng = random.Random(5)
    positions = [rng.randrange(0, DISK - 65536) for _ in range(400)]
    vfs_log = setup.machine.run_dir / "vfs.log"
    downs = vfs_log.read_text().count("is down")
    fd = setup.vfs.open_fd("/dev/c0d0", vp.O_RDONLY)
    try:
        for i, position in enumerate(positions):
            if i == 100:
                os.kill(row.pid, signal.SIGKILL)
            got = setup.vfs.pread(fd, 65536, position)
            assert got == setup.image_bytes(position, 65536), position
        assert setup.vfs.lseek(fd, 0, os.SEEK_CUR) == 0
    finally:
        setup.vfs.close_fd(fd)
    setup.wait_at_wini_up(row.pid, row.restarts)
    assert vfs_log.read_text().count("is down") > downs  # the crash hit a request


def _kill_during_read(setup: Setup) -> None:
    """A thread SIGKILLs at_wini once the first MiB has arrived; the reader goes on."""
    row = setup.at_wini_row()
    pid, restarts = row.pid, row.restarts
    started, killed = threading.Event(), threading.Event()

    def killer() -> None:
        started.wait(10)
        time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        killed.set()

    n, piece = 16 << 20, 256 << 10
    position = 20 << 20
    vfs_log = setup.machine.run_dir / "vfs.log"
    downs = vfs_log.read_text().count("is down") if vfs_log.exists() else 0
    thread = threading.Thread(target=killer)
    thread.start()
    chunks: list[bytes] = []
    t0 = time.perf_counter()
    with setup.vfs.open("/dev/c0d0", "rb") as f:
        f.seek(position)
        while len(chunks) * piece < n:
            chunks.append(f.read(piece))
            if len(chunks) * piece >= 1 << 20:
                started.set()
    dt = time.perf_counter() - t0
    thread.join()
    assert killed.is_set()
    assert b"".join(chunks) == setup.image_bytes(position, n)
    setup.wait_at_wini_up(pid, restarts)
    assert vfs_log.read_text().count("is down") > downs  # the crash hit a request
    print(f"read through a driver crash: {n / dt / 1e6:.1f} MB/s, {dt:.2f} s")


def test_sigkill_during_a_sequential_read_is_only_a_delay(setup: Setup) -> None:
    _kill_during_read(setup)


def test_an_open_while_the_driver_restarts_waits_for_it(setup: Setup) -> None:
    """Nothing of at_wini's is open and RS is between a kill and the restart (its
    backoff): the open waits for the new incarnation instead of failing ENXIO."""
    # A fresh at_wini: the earlier tests' kills would make the backoffs 4 s and 8 s.
    setup.system.rs.down("at_wini")
    at_wini_up(setup.system, Policy.RESTART)
    for _ in range(2):  # a second restart in a row waits a backoff of >= 2 s
        row = setup.at_wini_row()
        os.kill(row.pid, signal.SIGKILL)
        # Until RS saw the death: not up, or (the first restart is at once) a new pid.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            now = setup.at_wini_row()
            if now.state != "up" or now.pid != row.pid:
                break
            time.sleep(0.005)
        state = setup.at_wini_row().state
        t0 = time.perf_counter()
        with setup.vfs.open("/dev/c0d0", "rb") as f:
            assert f.read(SECTOR) == setup.image_bytes(0, SECTOR)
        waited = time.perf_counter() - t0
        setup.wait_at_wini_up(row.pid, row.restarts)
    assert state == "restarting"
    assert waited > 0.5, "the second open waited out the backoff"


def test_sigkill_with_policy_reset_is_only_a_delay(setup: Setup) -> None:
    setup.system.rs.down("at_wini")
    endpoint = at_wini_up(setup.system, Policy.RESET)
    try:
        _kill_during_read(setup)
        assert setup.system.rs.lookup("at_wini") != endpoint
    finally:
        setup.system.rs.down("at_wini")
        at_wini_up(setup.system, Policy.RESTART)


def test_the_second_instance_serves_c1d0(setup: Setup) -> None:
    """at_wini1 (instance 1, the secondary channel) under the same stock entry;
    /dev/c1d0 is hd1 (32 MiB), and the primary keeps serving beside it."""
    stock = hwl.config.load().get("at_wini")
    assert stock is not None
    setup.system.rs.up(
        [sys.executable, "-m", "hwl.drivers.at_wini", "instance=1"],
        label="at_wini1",
        conf=stock.to_text(),
        policy=Policy.RESTART,
    )
    hd1 = setup.machine.run_dir / "hd1.img"
    try:
        pattern = bytes(range(251)) * 40
        position = (20 << 20) + 3
        with setup.vfs.open("/dev/c1d0", "r+b") as f:
            assert f.seek(0, os.SEEK_END) == 32 << 20
            f.seek(position)
            f.write(pattern)
            f.seek(0)
            with hd1.open("rb") as img:
                assert f.read(1 << 20) == img.read(1 << 20)
        with hd1.open("rb") as img:
            img.seek(position)
            assert img.read(len(pattern)) == pattern
        with setup.vfs.open("/dev/c0d0", "rb") as f:
            assert f.read(SECTOR) == setup.image_bytes(0, SECTOR)
    finally:
        setup.system.rs.down("at_wini1")


def test_a_driver_whose_inline_reply_is_short_is_eio_and_vfs_serves_on(setup: Setup) -> None:
    """A driver answering an inline read with fewer bytes than its count (on the
    secondary channel, /dev/c1d0): the client gets EIO naming it, the driver is
    not marked down, and VFS serves both devices on."""
    stock = hwl.config.load().get("at_wini")
    assert stock is not None
    setup.system.rs.up([sys.executable, SHORT_INLINE, "instance=1"], label="at_wini1",
                       conf=stock.to_text(), policy=Policy.RESTART)  # fmt: skip
    vfs_log = setup.machine.run_dir / "vfs.log"
    try:
        fd = setup.vfs.open_fd("/dev/c1d0", vp.O_RDONLY)  # VFS finds the new at_wini1
        downs = vfs_log.read_text().count("is down")
        with pytest.raises(VfsError) as info:
            setup.vfs.pread(fd, 4096, 0)
        assert info.value.minix_errno is Errno.EIO
        assert "at_wini1 answered an inline read of 4096 bytes" in str(info.value)
        with (setup.machine.run_dir / "hd1.img").open("rb") as img:  # grants: right
            assert setup.vfs.pread(fd, 8192, 0) == img.read(8192)
        setup.vfs.close_fd(fd)
        fd = setup.vfs.open_fd("/dev/c0d0")
        assert setup.vfs.pread(fd, 4096, 0) == setup.image_bytes(0, 4096)
        setup.vfs.close_fd(fd)
        assert vfs_log.read_text().count("is down") == downs
    finally:
        setup.system.rs.down("at_wini1")


def test_partitions_through_vfs(setup: Setup) -> None:
    """An MBR written through /dev/c0d0 gives /dev/c0d0p0 and p1 at the next
    first open; writes through a partition land at its offset on the disk."""
    original = setup.image_bytes(0, SECTOR)
    mbr = bytearray(SECTOR)
    for i, (first, sectors) in enumerate([(2048, 8192), (16384, 2048)]):
        entry = 446 + 16 * i
        mbr[entry + 4] = 0x83  # a Linux partition; type 0 means unused
        mbr[entry + 8 : entry + 12] = first.to_bytes(4, "little")
        mbr[entry + 12 : entry + 16] = sectors.to_bytes(4, "little")
    mbr[510:512] = b"\x55\xaa"
    with setup.vfs.open("/dev/c0d0", "r+b") as f:
        f.write(mbr)
    try:
        with setup.vfs.open("/dev/c0d0p0", "r+b") as p0, setup.vfs.open("/dev/c0d0p1", "rb") as p1:
            assert p0.seek(0, os.SEEK_END) == 8192 * SECTOR
            assert p1.seek(0, os.SEEK_END) == 2048 * SECTOR
            p0.seek(100)
            p0.write(b"in the first partition")
            p0.flush()
            p1.seek(SECTOR)
            assert p1.read(SECTOR) == setup.image_bytes((16384 + 1) * SECTOR, SECTOR)
            p0.seek(8192 * SECTOR - 4)
            assert p0.read(100) == setup.image_bytes(2048 * SECTOR + 8192 * SECTOR - 4, 4)
        assert setup.image_bytes(2048 * SECTOR + 100, 22) == b"in the first partition"
        with pytest.raises(VfsError) as info:
            setup.vfs.open("/dev/c0d0p2", "rb")  # an unused entry
        assert info.value.minix_errno is Errno.ENXIO
    finally:
        with setup.vfs.open("/dev/c0d0", "r+b") as f:
            f.write(original)
    assert setup.image_bytes(0, SECTOR) == original


def test_the_files_of_a_client_that_died_are_closed(setup: Setup) -> None:
    """A client killed with files open: VFS closes them (and so the minor on the
    driver) within its 2 s check; what it wrote is on the disk."""
    position = 90 << 20
    script = (
        "import sys, time\n"
        "from hwl.system.vfs import Vfs\n"
        f"vfs = Vfs.attach({str(setup.machine.run_dir)!r}, timeout=30)\n"
        "a = vfs.open('/dev/c0d0', 'r+b', buffering=0)\n"
        "b = vfs.open('/dev/c0d0', 'rb', buffering=0)\n"
        f"a.seek({position}); a.write(b'left open by a client that dies' * 16)\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n"
    )
    closed = setup.log_text("vfs").count("files of client")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 10
        while setup.log_text("vfs").count("files of client") == closed:
            assert time.monotonic() < deadline, "VFS never closed the dead client's files"
            time.sleep(0.05)
        assert "closed 2 files of client" in setup.log_text("vfs")
        assert setup.image_bytes(position, 31 * 16) == b"left open by a client that dies" * 16
    finally:
        proc.kill()
        proc.wait(10)


def test_a_client_killed_mid_read_is_not_a_driver_crash(setup: Setup) -> None:
    """Whole-sector reads go through an indirect grant of the client's grant: when
    the client dies mid-read, the driver's copy fails on its dead grant. That is
    the client's end, not the driver's: VFS must not mark at_wini down for it."""
    script = (
        "from hwl.system.vfs import Vfs\n"
        f"vfs = Vfs.attach({str(setup.machine.run_dir)!r}, timeout=30)\n"
        "fd = vfs.open_fd('/dev/c0d0')\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    for i in range(64):\n"
        "        vfs.pread(fd, 1 << 20, i << 20)\n"
    )
    downs = setup.log_text("vfs").count("is down")
    for delay in (0.05, 0.08, 0.11, 0.14, 0.17, 0.2, 0.23, 0.26):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(delay)
        finally:
            proc.kill()
            proc.wait(10)
    with setup.vfs.open("/dev/c0d0", "rb") as f:
        assert f.read(1 << 20) == setup.image_bytes(0, 1 << 20)
    assert setup.log_text("vfs").count("is down") == downs
