"""hwl bench disk: the whole block path, as ratios to the stub's native loops.

The path is client -> VFS -> at_wini -> kernel -> stub: this process is VFS's
client (:class:`hwl.system.vfs.Vfs`, attached to the kernel as a user process),
with the raw fd calls, 1 MiB per READ / WRITE (VFS_MAX_IO). The limits are the
stub's native loops on the same disk (hd0, 128 MiB, per-run image in the run
directory): reads come from its first 64 MiB, writes go to its last 64 MiB.

"Same run" here means the same machine and the same process, native first: the
machine's link belongs to the kernel once it starts (see bench/ipc.py), so the
native loops are measured in their runs on ``machine.link``, then the system is
started on that machine (kernel, RS, ds, pci, at_wini with the stock system.conf
entry and policy restart, vfs) and the path measured in as many runs. A ratio is
the path's median over the native loop's median (the two cannot be paired). The
figures:

- dma_read_ratio: sequential reads, 16 x 1 MiB through the path (at_wini in its
  default DMA mode) over the native DMA loop reading the same 16 MiB in 1 MiB
  READ DMA EXT commands; native_dma128k_mb_s is that loop in at_wini's command
  size (256 sectors), for reference.
- dma_write_ratio: the same for writes (WRITE DMA EXT, the stub's
  OP_NATIVE_DMA_WRITE). Neither side flushes inside the timed part (QEMU's
  disk has its write cache on); the path's fd is flushed after each run and
  the image checked to hold what was written.
- pio_read_ratio: at_wini restarted with ``pio=1`` (READ MULTIPLE with
  min(16, IDENTIFY's maximum) sectors per DRQ block: one interrupt and one
  ``sdevio`` per block), 1 MiB reads, over the native PIO loop with the same
  multiple (polled, IRQ masked). native_pio1_mb_s is the native loop with one
  sector per block, for reference; pio_write_mb_s is 1 MiB PIO writes (WRITE
  MULTIPLE; no native limit).
- randread_iops: 4 KiB reads at random 4 KiB-aligned offsets in the read
  region, queue depth 1; each is one READ carrying its position (a pread).
  randread_ratio is the native random
  4 KiB latency (OP_NATIVE_RAND: READ DMA of 8 sectors; seconds / count) over
  the path's (seconds / reads).
- under_kills_ratio: 1 MiB sequential reads for ``--seconds`` (default 5) with
  no kills, and as long while a thread SIGKILLs at_wini once a second (RS's
  status gives its pid; the next kill waits until it is up with a new pid):
  the phases alternate (quiet, kills, quiet, kills, ..., quiet) and a run's
  ratio is its kills phase over the mean of the quiet phases around it (the
  host's speed drifts), median over the runs. Every MiB read in all phases is
  compared with the image: wrong bytes fail the benchmark.
  kill_to_up_ms is the median time from a kill until RS shows at_wini up;
  kill_stall_ms the median of the k longest reads of a kills phase with k
  kills, the delay a kill costs the reader (RS's restart plus VFS's recovery).
  RS runs with backoff unit 0 here: its 2^n-unit backoff (never reset, 1 s
  units by default) would otherwise dominate a kill a second from the second
  kill on, measuring the policy instead of the recovery.

- randread_cpu_{kernel,vfs,at_wini,client}_us: each process's run time per 4 KiB
  random read (/proc/PID/schedstat, CPU_READS reads), where a read's
  time goes; randread_cpu_share: their sum over the reads' wall time (near 1: the
  read is CPU-bound on the core hwl's processes share; at_wini's figure holds its
  spin while QEMU does the DMA: its command ring leaves the kernel's process off
  a 4 KiB read's path).

- path_floor_us: a request through client -> VFS -> at_wini and back that
  touches no hardware (the geometry ioctl), the IPC and the servers' own work
  every read pays. randread_floor_ratio and dma_read_floor_ratio are the best
  randread_ratio and dma_read_ratio the path could reach in this run if a
  read's hardware work and copies cost the driver no more than the native loop
  takes: native / (native + path_floor_us).

- The old path, A/B (issue 17): the path as it was before call channels,
  placement and at_wini's short path, measured before and after today's path,
  each time on a machine of its own (the mean of the two brackets the host's
  drift, which moves a figure by tens of percent within minutes here). Every
  message goes on the kernel path (``HWL_CHANNELS=0`` for the kernel, its
  processes and this client), nothing is placed, at_wini runs with
  ``OLD_AT_WINI``, and this client's requests go into and from plain memory (a
  copy in the client beside the kernel's), each through a grant
  (``Vfs.inline`` off). Today's path reads 4 KiB inline (the data in VFS's
  reply, at_wini's command ring) and reads and writes 1 MiB into and from an
  arena buffer (:meth:`hwl.system.vfs.Vfs.buffer`: the kernel's copy is the
  only one). The old path's figures are ``old_dma_read_mb_s``,
  ``old_dma_write_mb_s``, ``old_randread_iops`` and ``old_path_floor_us``; the
  figures above describe today's path; ``randread_speedup`` (IOPS after /
  before), ``dma_read_speedup``, ``dma_write_speedup`` (MB/s after / before) and
  ``path_floor_speedup`` (floor before / after) compare the two (targets 2.5,
  2.0, -, 2.5).

Each path request is timed on its own, and every path read is checked against
hd0.img (outside the timed parts, except in the kills phases); wrong bytes raise
:class:`WrongData` and the benchmark fails.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import hwl.config
from hwl import Machine
from hwl.benchmarks import (
    Targets,
    median_of,
    native_seconds,
    path_pids,
    report,
    run_time_per,
)
from hwl.errors import HwlError
from hwl.hw import ata
from hwl.ipc.arena import Buffer
from hwl.ipc.wire import ENV_CHANNELS
from hwl.link import abi
from hwl.link.link import Link
from hwl.system import vfs as vp
from hwl.system.boot import System
from hwl.system.proto import Policy
from hwl.system.rs import Rs, ServiceStatus, up_fields
from hwl.system.vfs import Vfs

MIB = 1 << 20
BLOCK = 4096
DEVICE = "/dev/c0d0"
READ_BASE = 0  # sequential and random reads: [0, 64 MiB) of hd0
READ_SPAN = 64 * MIB
WRITE_BASE = 64 * MIB  # writes: [64 MiB, 128 MiB)
SEQ_MIB = 16  # MiB per sequential DMA run
PIO_MIB = 1  # MiB per PIO run
NATIVE_RANDS = 2000
PATH_RANDS = 300
CPU_READS = 1500  # random reads for where_reads_go
FLOOR_CALLS = 300
SECONDS = 5.0  # each phase of the kills figure
KILL_OFFSET = 0.5  # the first kill, seconds into the phase; then one a second
UP_TIMEOUT = 20.0
OLD_AT_WINI = ("path=old",)  # at_wini's arguments for the path before issue 17

assert vp.VFS_MAX_IO >= MIB, "VFS moves less than 1 MiB per request"


class WrongData(HwlError):
    """The path returned bytes that are not on the disk image."""


@dataclass
class Native:
    """The native loops' medians (MB/s, µs), measured before the kernel takes the link."""

    dma_read: float = 0.0
    dma_write: float = 0.0
    dma128k: float = 0.0
    pio: float = 0.0
    pio16: float = 0.0
    rand_us: float = 0.0


# ------------------------------------------------------------------ native
def native_figures(link: Link, runs: int) -> Native:
    ch = ata.Channel(0x1F0, 0x3F6, 14, ata.bus_master_base(link))
    multiple = min(16, ata.identify(link).max_multiple)
    buf = link.alloc_dma(MIB, align=1 << 16)
    prd = link.alloc_dma(4096)
    read_lba, write_lba = READ_BASE // ata.SECTOR, WRITE_BASE // ata.SECTOR

    def mb_s(
        code: int, megabytes: float, lba: int, count: int, sectors: int, mult: int = 0
    ) -> float:
        # struct hwl_native: cmd, ctl, bm, drive, multiple, lba, count, sectors, buf, prd,
        # span, seed
        args = (ch.cmd, ch.ctl, ch.bm, 0, mult, lba, count, sectors, buf.phys, prd.phys, 0, 0)
        return megabytes / native_seconds(link, code, args)

    seeds = iter(range(1, 1 << 30))

    def rand_us() -> float:
        span = READ_SPAN // BLOCK  # 4 KiB blocks
        args = (ch.cmd, ch.ctl, ch.bm, 0, 0, read_lba, NATIVE_RANDS, 0, buf.phys, prd.phys,
                span, next(seeds))  # fmt: skip
        return native_seconds(link, abi.OP_NATIVE_RAND, args) / NATIVE_RANDS * 1e6

    seq, pio = SEQ_MIB * MIB / 1e6, PIO_MIB * MIB / 1e6  # MB per run
    pio_sectors = PIO_MIB * MIB // ata.SECTOR
    try:
        buf.write(os.urandom(MIB))  # what the native write loop writes
        return Native(
            dma_read=median_of(runs, lambda: mb_s(abi.OP_NATIVE_DMA, seq, read_lba, SEQ_MIB, 2048)),
            dma_write=median_of(
                runs, lambda: mb_s(abi.OP_NATIVE_DMA_WRITE, seq, write_lba, SEQ_MIB, 2048)
            ),
            dma128k=median_of(
                runs, lambda: mb_s(abi.OP_NATIVE_DMA, seq, read_lba, SEQ_MIB * 8, 256)
            ),
            pio=median_of(runs, lambda: mb_s(abi.OP_NATIVE_PIO, pio, read_lba, pio_sectors, 0, 1)),
            pio16=median_of(
                runs, lambda: mb_s(abi.OP_NATIVE_PIO, pio, read_lba, pio_sectors, 0, multiple)
            ),
            rand_us=median_of(runs, rand_us),
        )
    finally:
        link.free_dma(prd)
        link.free_dma(buf)


# ------------------------------------------------------------------ system
def at_wini_up(system: System, *args: str) -> None:
    stock = hwl.config.load().get("at_wini")
    if stock is None:
        raise HwlError("system.conf has no at_wini entry")
    system.rs.up(
        [sys.executable, "-m", "hwl.drivers.at_wini", "instance=0", *args],
        label="at_wini",
        conf=stock.to_text(),
        policy=Policy.RESTART,
    )


@contextlib.contextmanager
def kernel_path_only() -> Iterator[None]:
    """Every message on the kernel path for what starts inside: the kernel, its
    processes and this process's connections read ``HWL_CHANNELS`` when made."""
    old = os.environ.get(ENV_CHANNELS)
    os.environ[ENV_CHANNELS] = "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ[ENV_CHANNELS]
        else:
            os.environ[ENV_CHANNELS] = old


@contextlib.contextmanager
def started(machine: Machine, *at_wini_args: str) -> Iterator[tuple[System, Vfs]]:
    boot = [
        up_fields([sys.executable, "-m", "hwl.servers.ds"], label="ds"),
        up_fields([sys.executable, "-m", "hwl.servers.pci"], label="pci"),
    ]
    system = System.start(machine, boot, backoff_unit=0.0)
    try:
        at_wini_up(system, *at_wini_args)
        system.rs.up([sys.executable, "-m", "hwl.servers.vfs"], label="vfs")
        with Vfs.attach(machine.run_dir, timeout=60) as vfs:
            yield system, vfs
    finally:
        system.stop()


@contextlib.contextmanager
def opened(vfs: Vfs, flags: int) -> Iterator[int]:
    """An fd on DEVICE; closed on the way out (quietly if something failed)."""
    fd = vfs.open_fd(DEVICE, flags)
    try:
        yield fd
    except BaseException:
        with contextlib.suppress(HwlError):
            vfs.close_fd(fd)
        raise
    vfs.close_fd(fd)


@dataclass
class Image:
    """hd0.img on the host: what every path read is compared with."""

    path: Path
    reads: bytes = b""  # the read region, never written by the benchmark

    def load(self) -> None:
        self.reads = self.at(READ_BASE, READ_SPAN)

    def at(self, position: int, count: int) -> bytes:
        with self.path.open("rb") as f:
            f.seek(position)
            return f.read(count)

    def check(self, position: int, data: bytes | bytearray, what: str) -> None:
        if position >= READ_BASE and position + len(data) <= READ_BASE + READ_SPAN:
            want = self.reads[position - READ_BASE : position - READ_BASE + len(data)]
        else:
            want = self.at(position, len(data))
        if data != want:  # bytes and bytearray compare with memcmp
            bad = next(
                (i for i, (a, b) in enumerate(zip(data, want, strict=False)) if a != b),
                min(len(data), len(want)),
            )
            raise WrongData(
                f"{what}: {len(data)} bytes at {position} differ from hd0.img "
                f"(first at byte {position + bad})"
            )


# ------------------------------------------------------------------ path
@contextlib.contextmanager
def arena_buffer(vfs: Vfs, size: int, direct: bool) -> Iterator[Buffer | None]:
    """With ``direct``, an arena buffer of ``size`` bytes that the path's requests
    use (one copy between at_wini's DMA buffer and it); else None: requests into
    and from plain memory (the client's copy as well, as before issue 17)."""
    if not direct:
        yield None
        return
    buf = vfs.buffer(size)
    try:
        yield buf
    finally:
        vfs.free_buffer(buf)


def seq_read_mb_s(vfs: Vfs, fd: int, image: Image, mib: int, direct: bool) -> float:
    """1 MiB READs, each timed on its own; with ``direct`` into an arena buffer, each
    MiB copied out after its clock stopped."""
    out = bytearray(mib * MIB)
    view = memoryview(out)
    vfs.lseek(fd, READ_BASE)
    seconds = 0.0
    with arena_buffer(vfs, MIB, direct) as buf:
        for i in range(mib):
            part = view[i * MIB : (i + 1) * MIB]
            start = time.perf_counter()
            n = vfs.read_into(fd, part if buf is None else buf)
            seconds += time.perf_counter() - start
            if n != MIB:
                raise WrongData(f"read {i}: {n} bytes, not {MIB}")
            if buf is not None:
                part[:] = buf.view
    image.check(READ_BASE, out, "sequential read")
    return mib * MIB / seconds / 1e6


def seq_write_mb_s(vfs: Vfs, fd: int, image: Image, mib: int, direct: bool) -> float:
    """1 MiB WRITEs, each timed on its own; with ``direct`` from an arena buffer
    filled before its clock starts."""
    data = os.urandom(mib * MIB)
    view = memoryview(data)
    vfs.lseek(fd, WRITE_BASE)
    seconds = 0.0
    with arena_buffer(vfs, MIB, direct) as buf:
        for i in range(mib):
            part = view[i * MIB : (i + 1) * MIB]
            if buf is not None:
                buf.view[:] = part
            start = time.perf_counter()
            n = vfs.write_from(fd, part if buf is None else buf)
            seconds += time.perf_counter() - start
            if n != MIB:
                raise WrongData(f"write {i}: {n} bytes, not {MIB}")
    vfs.ioctl(fd, "flush")
    image.check(WRITE_BASE, data, "sequential write (read back from hd0.img)")
    return mib * MIB / seconds / 1e6


def rand_read_us(vfs: Vfs, fd: int, image: Image, rng: random.Random, direct: bool) -> float:
    """Mean latency of a 4 KiB random read (a READ with its position: pread) at
    queue depth 1, each timed on its own."""
    offsets = [READ_BASE + BLOCK * rng.randrange(READ_SPAN // BLOCK) for _ in range(PATH_RANDS)]
    out = bytearray(PATH_RANDS * BLOCK)
    view = memoryview(out)
    read_into = vfs.read_into
    seconds = 0.0
    with arena_buffer(vfs, BLOCK, direct) as buf:
        for i, offset in enumerate(offsets):
            part = view[i * BLOCK : (i + 1) * BLOCK]
            start = time.perf_counter()
            n = read_into(fd, part if buf is None else buf, offset)
            seconds += time.perf_counter() - start
            if n != BLOCK:
                raise WrongData(f"random read at {offset}: short")
            if buf is not None:
                part[:] = buf.view
    for i, offset in enumerate(offsets):
        image.check(offset, out[i * BLOCK : (i + 1) * BLOCK], "random read")
    return seconds / PATH_RANDS * 1e6


# ------------------------------------------------------------------ kills
@dataclass
class Killer:
    """A thread that SIGKILLs at_wini once a second, each time after RS shows it
    up again with a new pid; its own connection to RS."""

    run_dir: Path
    start: float = 0.0  # the phase's start (time.monotonic)
    stop: threading.Event = field(default_factory=threading.Event)
    kill_to_up: list[float] = field(default_factory=list)
    error: BaseException | None = None

    def run(self) -> None:
        try:
            with Rs.attach(self.run_dir, timeout=10) as rs:
                pid = wait_up(rs).pid
                k = 0
                while not self.stop.wait(max(0.0, self.start + KILL_OFFSET + k - time.monotonic())):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:  # gone on its own: kill its successor
                        pid = wait_up(rs, not_pid=pid).pid
                        continue
                    killed = time.monotonic()
                    pid = wait_up(rs, not_pid=pid).pid
                    self.kill_to_up.append(time.monotonic() - killed)
                    k += 1
        except BaseException as exc:  # reported by the reader
            self.error = exc


def wait_up(rs: Rs, not_pid: int = -1) -> ServiceStatus:
    """at_wini's status row once it is up with a pid other than ``not_pid``."""
    deadline = time.monotonic() + UP_TIMEOUT
    while True:
        row = next((r for r in rs.status() if r.label == "at_wini"), None)
        if row is not None and row.state == "up" and row.pid > 0 and row.pid != not_pid:
            return row
        if time.monotonic() > deadline:
            raise HwlError(f"at_wini not up again within {UP_TIMEOUT} s: {row}")
        time.sleep(0.02)


def read_for(
    vfs: Vfs, fd: int, image: Image, seconds: float, killer: Killer | None
) -> tuple[float, list[float]]:
    """MB/s of 1 MiB sequential reads for ``seconds``, every MiB checked, and
    the seconds each read took."""
    buf = bytearray(MIB)
    view = memoryview(buf)
    position = READ_BASE
    vfs.lseek(fd, position)
    took: list[float] = []
    start = time.monotonic()
    end = start + seconds
    thread = None
    if killer is not None:
        killer.start = start
        thread = threading.Thread(target=killer.run, name="killer", daemon=True)
        thread.start()
    try:
        while time.monotonic() < end:
            if position + MIB > READ_BASE + READ_SPAN:
                position = READ_BASE
                vfs.lseek(fd, position)
            t = time.monotonic()
            n = vfs.read_into(fd, view)
            took.append(time.monotonic() - t)
            if n != MIB:
                raise WrongData(f"read at {position}: {n} bytes, not {MIB}")
            image.check(position, buf, "read under kills" if killer else "sequential read")
            position += MIB
        elapsed = time.monotonic() - start
    finally:
        if killer is not None and thread is not None:
            killer.stop.set()
            thread.join(UP_TIMEOUT + 5)
    if killer is not None and killer.error is not None:
        raise HwlError(f"the killer thread failed: {killer.error}") from killer.error
    return len(took) * MIB / elapsed / 1e6, took


# ------------------------------------------------------------------ run
def floor_us(vfs: Vfs, fd: int) -> float:
    """Mean time of a request that goes client -> VFS -> at_wini and back and
    touches no hardware (the geometry ioctl): what every read pays on top of its
    hardware work."""
    start = time.perf_counter()
    for _ in range(FLOOR_CALLS):
        vfs.ioctl(fd, "geometry")
    return (time.perf_counter() - start) / FLOOR_CALLS * 1e6


def dma_figures(vfs: Vfs, image: Image, runs: int, native: Native) -> dict[str, float]:
    path = path_figures(vfs, image, runs, direct=True)
    read, write, floor = path["dma_read_mb_s"], path["dma_write_mb_s"], path["path_floor_us"]
    rand_us = 1e6 / path["randread_iops"]
    native_mib_us = MIB / native.dma_read  # MB/s is bytes per µs
    return {
        **path,
        "randread_floor_ratio": native.rand_us / (native.rand_us + floor),
        "dma_read_floor_ratio": native_mib_us / (native_mib_us + floor),
        "native_dma_read_mb_s": native.dma_read,
        "dma_read_ratio": read / native.dma_read,
        "native_dma_write_mb_s": native.dma_write,
        "dma_write_ratio": write / native.dma_write,
        "native_dma128k_mb_s": native.dma128k,
        "native_randread_us": native.rand_us,
        "randread_us": rand_us,
        "randread_ratio": native.rand_us / rand_us,
    }


def where_reads_go(system: System, vfs: Vfs) -> dict[str, float]:
    """Where a 4 KiB random read's time goes: each process's run time per read on
    today's path (into an arena buffer; the bytes are checked by the other runs),
    and their sum's share of the reads' wall time (near 1: the path is CPU-bound
    on the cores its processes share; the kernel's includes its spin while QEMU
    does the DMA)."""
    rng = random.Random(2)
    offsets = [READ_BASE + BLOCK * rng.randrange(READ_SPAN // BLOCK) for _ in range(CPU_READS)]
    with opened(vfs, vp.O_RDONLY) as fd, arena_buffer(vfs, BLOCK, direct=True) as buf:
        assert buf is not None

        def reads() -> None:
            for offset in offsets:
                if vfs.read_into(fd, buf, offset) != BLOCK:
                    raise WrongData(f"random read at {offset}: short")

        cpu, wall = run_time_per(path_pids(system, "vfs", "at_wini"), CPU_READS, reads)
    figures = {f"randread_cpu_{name}_us": us for name, us in cpu.items()}
    figures["randread_cpu_share"] = sum(cpu.values()) / wall
    return figures


def kills_figures(
    vfs: Vfs, image: Image, runs: int, seconds: float, run_dir: Path
) -> dict[str, float]:
    quiet: list[float] = []
    loud: list[float] = []
    ratios: list[float] = []
    kill_to_up: list[float] = []
    stalls: list[float] = []
    with opened(vfs, vp.O_RDONLY) as fd:
        read_for(vfs, fd, image, min(1.0, seconds), None)  # warm-up
        quiet.append(read_for(vfs, fd, image, seconds, None)[0])
        for _ in range(runs):
            killer = Killer(run_dir)
            killed, took = read_for(vfs, fd, image, seconds, killer)
            with Rs.attach(run_dir, timeout=10) as rs:
                wait_up(rs)  # the next phase starts with at_wini up
            quiet.append(read_for(vfs, fd, image, seconds, None)[0])
            loud.append(killed)
            ratios.append(killed / statistics.mean(quiet[-2:]))
            kill_to_up += killer.kill_to_up
            stalls += sorted(took)[len(took) - len(killer.kill_to_up) :]
    return {
        "seq_mb_s": statistics.median(quiet),
        "under_kills_mb_s": statistics.median(loud),
        "under_kills_ratio": statistics.median(ratios),
        "kills": len(kill_to_up),
        "kill_to_up_ms": statistics.median(kill_to_up) * 1e3 if kill_to_up else 0.0,
        "kill_stall_ms": statistics.median(stalls) * 1e3 if stalls else 0.0,
        "seconds": seconds,
    }


def pio_figures(vfs: Vfs, image: Image, runs: int, native: Native) -> dict[str, float]:
    with opened(vfs, vp.O_RDWR) as fd:
        read = median_of(runs, lambda: seq_read_mb_s(vfs, fd, image, PIO_MIB, direct=True))
        write = median_of(runs, lambda: seq_write_mb_s(vfs, fd, image, PIO_MIB, direct=True))
    return {
        "native_pio_mb_s": native.pio16,
        "pio_read_mb_s": read,
        "pio_read_ratio": read / native.pio16,
        "native_pio1_mb_s": native.pio,
        "pio_write_mb_s": write,
    }


def path_figures(vfs: Vfs, image: Image, runs: int, direct: bool) -> dict[str, float]:
    """The path's own figures, without the native ratios (the old path's A side
    with ``direct`` False)."""
    with opened(vfs, vp.O_RDWR) as fd:
        read = median_of(runs, lambda: seq_read_mb_s(vfs, fd, image, SEQ_MIB, direct))
        write = median_of(runs, lambda: seq_write_mb_s(vfs, fd, image, SEQ_MIB, direct))
        rng = random.Random(1)
        rand_us = median_of(runs, lambda: rand_read_us(vfs, fd, image, rng, direct))
        floor = median_of(runs, lambda: floor_us(vfs, fd))
    return {"dma_read_mb_s": read, "dma_write_mb_s": write, "randread_iops": 1e6 / rand_us,
            "path_floor_us": floor}  # fmt: skip


def old_path(profile: str, accel: str, runs: int) -> dict[str, float]:
    """The A side: the path before issue 17, on a machine of its own."""
    with (
        kernel_path_only(),
        Machine(profile, accel=accel, placement="off") as machine,
        started(machine, *OLD_AT_WINI) as (_system, vfs),
    ):
        image = Image(machine.disks["hd0"])
        image.load()
        vfs.inline = False  # every read through a grant, as before
        return path_figures(vfs, image, runs, direct=False)


def speedups(old: dict[str, float], new: dict[str, float]) -> dict[str, float]:
    return {
        **{f"old_{k}": v for k, v in old.items()},
        "randread_speedup": new["randread_iops"] / old["randread_iops"],
        "dma_read_speedup": new["dma_read_mb_s"] / old["dma_read_mb_s"],
        "dma_write_speedup": new["dma_write_mb_s"] / old["dma_write_mb_s"],
        "path_floor_speedup": old["path_floor_us"] / new["path_floor_us"],
    }


def run(machine: Machine, runs: int, seconds: float) -> dict[str, float]:
    native = native_figures(machine.link, runs)  # the link is the kernel's after this
    image = Image(machine.disks["hd0"])
    image.load()
    with started(machine) as (system, vfs):
        dma = dma_figures(vfs, image, runs, native)
        dma.update(where_reads_go(system, vfs))
        kills = kills_figures(vfs, image, runs, seconds, machine.run_dir)
        system.rs.down("at_wini")  # the same driver again, in PIO mode
        at_wini_up(system, "pio=1")
        pio = pio_figures(vfs, image, runs, native)
    return {**dma, **pio, **kills}


TARGETS: Targets = {
    "dma_read_ratio": (">=", 0.5),
    "dma_write_ratio": (">=", 0.5),
    "pio_read_ratio": (">=", 0.7),
    "randread_ratio": (">=", 0.25),
    "under_kills_ratio": (">=", 0.8),
    "randread_speedup": (">=", 2.5),
    "dma_read_speedup": (">=", 2.0),
    "path_floor_speedup": (">=", 2.5),
}


def main(args: argparse.Namespace) -> int:
    runs = args.repeat or 3
    seconds = getattr(args, "seconds", 0) or SECONDS
    before = old_path(args.profile, args.accel, runs)
    with Machine(args.profile, accel=args.accel) as machine:
        figures = run(machine, runs, seconds)
    after = old_path(args.profile, args.accel, runs)
    old = {k: (before[k] + after[k]) / 2 for k in before}  # brackets the host's drift
    figures.update(speedups(old, figures))
    figures["runs"] = runs
    report("disk", figures, TARGETS, machine.accel, args.json)
    return 0
