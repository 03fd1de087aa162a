"""hwl bench filter: the filter driver's cost, as ratios to the same figures
without it in the same run, and the time it takes to recover a corrupted read.

One machine (profile ``filter-mirror``: hd0 and hd1, 32 MiB each). The system is
booted with ds, pci, at_wini, at_wini1 and VFS with ``--channel 1=filter``, so
``/dev/c0d0`` is at_wini without the filter (the baseline) and ``/dev/c1d0`` the
filter over at_wini (and at_wini1 when mirrored). For each configuration,
checksum ``none``, ``crc`` and ``md5`` without mirroring, and ``crc`` mirrored,
the filter is started with it (``format``: every sum written and hd0 copied to
hd1 first), then each run measures the baseline and the filter back to back,
the filter first in every other run:

- ``*_read_ratio``: sequential reads, 8 x 1 MiB, filter MB/s over baseline MB/s;
- ``*_write_ratio``: the same for 8 x 1 MiB writes (flushed, outside the timing);
- ``*_randread_ratio``: 4 KiB reads at random 4 KiB-aligned positions in the
  first 8 MiB, queue depth 1: filter IOPS over baseline IOPS.

Every rate is taken from the median time of one request (1 MiB or 4 KiB) in
the run, so a scheduler hiccup of a few milliseconds on a shared 2-core host
does not decide a figure that is itself a few milliseconds long. Each figure is
the median of the runs' ratios (5 runs unless ``--repeat``); ``baseline_*`` are
the baseline's medians. Every byte read is compared with the disk image (through
the layout for the filter), outside the timed parts.

``corruption_recovery_ms``: with checksum ``crc`` (no mirror), at_wini is told
(``lie.tell``, drivers/at_wini/lie.py) to flip a bit in the next read; the time of a
4 KiB read through VFS that meets it (the filter's detection, RS's refresh of
at_wini, the re-read), p50 over :data:`CORRUPTIONS`; the bytes must be right.
``corruption_recovery_mirror_ms``: the same mirrored (served from at_wini1,
at_wini refreshed and repaired before the answer).

``baseline_read_cpu_{kernel,vfs,filter,at_wini,client}_us`` and
``crc_read_cpu_..._us``: each process's run time per 1 MiB sequential read without
the filter and through it (checksum ``crc``, no mirror): where the filter's cost
goes (the filter's own figure is about 0 for the baseline).

Targets: ``filter_crc_read_ratio`` >= 0.7, ``corruption_recovery_ms`` <= 100.
Regions: the baseline reads raw [0, 8 MiB) and writes raw [24, 32 MiB); the
filter reads logical [0, 8 MiB) and writes logical [8, 16 MiB) (raw < 18 MiB).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TypeVar

from hwl import Machine
from hwl.benchmarks import Targets, path_pids, report, run_time_per
from hwl.drivers.at_wini import lie
from hwl.drivers.filter.layout import Layout
from hwl.errors import HwlError
from hwl.ipc import codec
from hwl.system import vfs as vp
from hwl.system.boot import System
from hwl.system.rs import up_fields
from hwl.system.vfs import Vfs

T = TypeVar("T")
MIB = 1 << 20
BLOCK = 4096
SECTOR = 512
SEQ_MIB = 8
RANDS = 200
CORRUPTIONS = 25
CPU_READS = 80  # 1 MiB reads for read_cpu
BASE_READ, BASE_WRITE = 0, 24 * MIB  # raw, /dev/c0d0
FLT_READ, FLT_WRITE = 0, 8 * MIB  # logical, /dev/c1d0
CONFIGS = {
    "none": "checksum=none",
    "crc": "checksum=crc,format",
    "md5": "checksum=md5,format",
    "crc_mirror": "checksum=crc,mirror,driver2=at_wini1,format",
}


class WrongData(HwlError):
    """A read returned bytes that are not on the disk image."""


class Disk:
    """hd0.img read as the baseline or the filter (through its layout) sees it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.layout: Layout | None = None

    def raw(self, position: int, count: int) -> bytes:
        with self.path.open("rb") as f:
            f.seek(position)
            return f.read(count)

    def logical(self, position: int, count: int) -> bytes:
        if self.layout is None:
            return self.raw(position, count)
        lay = self.layout
        first, n = position // SECTOR, count // SECTOR
        span = lay.span(first, n)
        ext = memoryview(bytearray(self.raw(span.phys * SECTOR, span.count * SECTOR)))
        out = memoryview(bytearray(count))
        lay.collapse(ext, first, out, n)
        return bytes(out)

    def raw_position(self, position: int) -> int:
        if self.layout is None:
            return position
        return self.layout.phys(position // SECTOR) * SECTOR + position % SECTOR


def check(got: bytes | bytearray, want: bytes, what: str) -> None:
    if got != want:
        raise WrongData(f"{what}: {len(got)} bytes differ from the image")


@contextlib.contextmanager
def opened(vfs: Vfs, path: str, flags: int) -> Iterator[int]:
    fd = vfs.open_fd(path, flags)
    try:
        yield fd
    finally:
        with contextlib.suppress(HwlError):
            vfs.close_fd(fd)


def seq_read(vfs: Vfs, path: str, base: int, want: bytes) -> float:
    out = bytearray(SEQ_MIB * MIB)
    view = memoryview(out)
    with opened(vfs, path, vp.O_RDONLY) as fd:
        vfs.lseek(fd, base)
        times = []
        for i in range(SEQ_MIB):
            t0 = time.perf_counter()
            if vfs.read_into(fd, view[i * MIB : (i + 1) * MIB]) != MIB:
                raise WrongData(f"{path}: a short read")
            times.append(time.perf_counter() - t0)
    check(out, want, f"sequential read of {path}")
    return MIB / statistics.median(times) / 1e6


def seq_write(vfs: Vfs, path: str, base: int) -> tuple[float, bytes]:
    data = os.urandom(SEQ_MIB * MIB)
    view = memoryview(data)
    with opened(vfs, path, vp.O_RDWR) as fd:
        vfs.lseek(fd, base)
        times = []
        for i in range(SEQ_MIB):
            t0 = time.perf_counter()
            if vfs.write_from(fd, view[i * MIB : (i + 1) * MIB]) != MIB:
                raise WrongData(f"{path}: a short write")
            times.append(time.perf_counter() - t0)
        vfs.ioctl(fd, "flush")
    return MIB / statistics.median(times) / 1e6, data


def rand_read(vfs: Vfs, path: str, want: bytes, rng: random.Random) -> float:
    offsets = [BLOCK * rng.randrange(SEQ_MIB * MIB // BLOCK) for _ in range(RANDS)]
    out = bytearray(RANDS * BLOCK)
    view = memoryview(out)
    with opened(vfs, path, vp.O_RDONLY) as fd:
        times = []
        for i, offset in enumerate(offsets):
            t0 = time.perf_counter()
            if vfs.read_into(fd, view[i * BLOCK : (i + 1) * BLOCK], offset) != BLOCK:
                raise WrongData(f"{path}: a short random read")
            times.append(time.perf_counter() - t0)
    for i, offset in enumerate(offsets):
        check(out[i * BLOCK : (i + 1) * BLOCK], want[offset : offset + BLOCK], "random read")
    return 1 / statistics.median(times)


def paired(base: Callable[[], T], filtered: Callable[[], T], flip: bool) -> tuple[T, T]:
    """The baseline's and the filter's figure, measured back to back; ``flip``
    measures the filter first."""
    if flip:
        f = filtered()
        return base(), f
    b = base()
    return b, filtered()


def read_cpu(system: System, vfs: Vfs, path: str, base: int) -> dict[str, float]:
    """Each process's run time per 1 MiB sequential read of ``path``
    (hwl.benchmarks.run_time_per; the bytes are checked by the other runs): where
    a read's time goes, with the filter and without it."""
    buf = memoryview(bytearray(MIB))
    with opened(vfs, path, vp.O_RDONLY) as fd:

        def reads() -> None:
            for i in range(CPU_READS):
                if vfs.read_into(fd, buf, base + i % SEQ_MIB * MIB) != MIB:
                    raise WrongData(f"{path}: a short read")

        pids = path_pids(system, "vfs", "filter", "at_wini")
        return run_time_per(pids, CPU_READS, reads)[0]


def filter_up(system: System, args: str) -> None:
    with contextlib.suppress(HwlError):
        system.rs.down("filter")
    system.rs.up([sys.executable, "-m", "hwl.drivers.filter", f"driver=at_wini,{args}"],
                 label="filter")  # fmt: skip


def corruption_ms(system: System, vfs: Vfs, disk: Disk) -> list[float]:
    """The time of a 4 KiB read that meets a flipped bit, each at another place."""
    rng = random.Random(21)
    times = []
    with opened(vfs, "/dev/c1d0", vp.O_RDONLY) as fd:
        for _ in range(CORRUPTIONS):
            position = FLT_READ + BLOCK * rng.randrange(SEQ_MIB * MIB // BLOCK)
            fields: dict[str, codec.Value] = {
                "action": "flip", "count": 1, "position": disk.raw_position(position + 7),
            }  # fmt: skip
            lie.tell(system.rs, "at_wini", fields)
            t0 = time.perf_counter()
            got = vfs.pread(fd, BLOCK, position)
            times.append((time.perf_counter() - t0) * 1e3)
            check(got, disk.logical(position, BLOCK), "a corrupted read, recovered")
    return times


def run(machine: Machine, runs: int) -> dict[str, float]:
    boot = [
        up_fields([sys.executable, "-m", "hwl.servers.ds"], label="ds"),
        up_fields([sys.executable, "-m", "hwl.servers.pci"], label="pci"),
        up_fields([sys.executable, "-m", "hwl.drivers.at_wini", "instance=0"], label="at_wini"),
        up_fields([sys.executable, "-m", "hwl.drivers.at_wini", "instance=1"], label="at_wini1"),
        up_fields([sys.executable, "-m", "hwl.servers.vfs", "--channel", "1=filter"], label="vfs"),
    ]
    figures: dict[str, float] = {}
    disk = Disk(machine.disks["hd0"])
    base_read: list[float] = []
    base_write: list[float] = []
    base_rand: list[float] = []
    rng = random.Random(1)
    with System.start(machine, boot, backoff_unit=0.0, timeout=60) as system:
        vfs = Vfs(system.rs.conn, timeout=120)
        for name, args in CONFIGS.items():
            filter_up(system, args)
            disk.layout = None if name == "none" else Layout(8, name.split("_")[0])
            ratios: dict[str, list[float]] = {"read": [], "write": [], "randread": []}
            for i in range(runs):
                raw_want = disk.raw(BASE_READ, SEQ_MIB * MIB)
                flt_want = disk.logical(FLT_READ, SEQ_MIB * MIB)
                flip = i % 2 == 1  # who goes first alternates: no order effect in the median
                b, f = paired(
                    partial(seq_read, vfs, "/dev/c0d0", BASE_READ, raw_want),
                    partial(seq_read, vfs, "/dev/c1d0", FLT_READ, flt_want),
                    flip,
                )
                base_read.append(b)
                ratios["read"].append(f / b)
                (b, base_data), (f, flt_data) = paired(
                    partial(seq_write, vfs, "/dev/c0d0", BASE_WRITE),
                    partial(seq_write, vfs, "/dev/c1d0", FLT_WRITE),
                    flip,
                )
                check(disk.raw(BASE_WRITE, len(base_data)), base_data, "baseline write on hd0.img")
                check(disk.logical(FLT_WRITE, len(flt_data)), flt_data, "filter write on hd0.img")
                base_write.append(b)
                ratios["write"].append(f / b)
                b, f = paired(
                    partial(rand_read, vfs, "/dev/c0d0", raw_want, rng),
                    partial(rand_read, vfs, "/dev/c1d0", flt_want, rng),
                    flip,
                )
                base_rand.append(b)
                ratios["randread"].append(f / b)
            for key, values in ratios.items():
                figures[f"filter_{name}_{key}_ratio"] = statistics.median(values)
            if name == "crc":
                figures["corruption_recovery_ms"] = statistics.median(
                    corruption_ms(system, vfs, disk)
                )
                for what, path, base in (("baseline", "/dev/c0d0", BASE_READ),
                                         ("crc", "/dev/c1d0", FLT_READ)):  # fmt: skip
                    cpu = read_cpu(system, vfs, path, base)
                    figures.update({f"{what}_read_cpu_{p}_us": us for p, us in cpu.items()})
            if name == "crc_mirror":
                figures["corruption_recovery_mirror_ms"] = statistics.median(
                    corruption_ms(system, vfs, disk)
                )
    figures["baseline_read_mb_s"] = statistics.median(base_read)
    figures["baseline_write_mb_s"] = statistics.median(base_write)
    figures["baseline_randread_iops"] = statistics.median(base_rand)
    return figures


TARGETS: Targets = {
    "filter_crc_read_ratio": (">=", 0.7),
    "corruption_recovery_ms": ("<=", 100.0),
}


def main(args: argparse.Namespace) -> int:
    runs = args.repeat or 5
    profile = args.profile if args.profile != "pc" else "filter-mirror"
    with Machine(profile, accel=args.accel) as machine:
        figures = run(machine, runs)
    figures["runs"] = runs
    report("filter", figures, TARGETS, machine.accel, args.json)
    return 0
