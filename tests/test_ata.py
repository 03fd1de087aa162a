"""ATA by raw port I/O through the link, compared byte for byte with the disk images."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from hwl import Machine
from hwl.drivers.at_wini import channel as channel_mod
from hwl.drivers.at_wini.args import Args
from hwl.hw import ata
from hwl.link import abi
from hwl.link.batch import Batch, BatchResult

pytestmark = pytest.mark.qemu


def image_bytes(path: Path, lba: int, count: int) -> bytes:
    with path.open("rb") as fh:
        fh.seek(lba * ata.SECTOR)
        return fh.read(count * ata.SECTOR)


@pytest.mark.parametrize(
    ("channel", "disk", "serial", "model"),
    [
        (ata.PRIMARY, "hd0", "HWLHD0", "HWL DISK 0"),
        (ata.SECONDARY, "hd1", "HWLHD1", "HWL DISK 1"),
    ],
)
def test_identify_matches_the_image(
    pc: Machine, channel: ata.Channel, disk: str, serial: str, model: str
) -> None:
    info = ata.identify(pc.link, channel)
    assert info.model == model
    assert info.serial == serial
    sectors = pc.disks[disk].stat().st_size // ata.SECTOR
    assert info.sectors == sectors
    assert info.sectors48 == sectors
    assert info.max_multiple >= 1


@pytest.mark.parametrize("multiple", [1, 16])
def test_pio_read_matches_the_image(pc: Machine, multiple: int) -> None:
    if multiple > 1:
        ata.set_multiple(pc.link, ata.PRIMARY, 0, multiple)
    for lba, count in [(0, 1), (12345, 7), (200_000, 256)]:
        got = ata.pio_read(pc.link, ata.PRIMARY, 0, lba, count, multiple)
        assert got == image_bytes(pc.disks["hd0"], lba, count), (lba, count)


@pytest.mark.parametrize(("lba", "count"), [(-1, 1), ((1 << 28) - 1, 2), (0, 257)])
def test_lba28_out_of_range_is_refused_before_the_drive_sees_it(
    pc: Machine, lba: int, count: int
) -> None:
    with pytest.raises(ValueError, match="out of range"):
        ata.pio_read(pc.link, ata.PRIMARY, 0, lba, count)
    with pytest.raises(ValueError, match="out of range"):
        ata.pio_write(pc.link, ata.PRIMARY, 0, lba, bytes(count * ata.SECTOR))
    assert ata.pio_read(pc.link, ata.PRIMARY, 0, 5, 1) == image_bytes(pc.disks["hd0"], 5, 1)


def test_pio_write_then_read_back_and_on_the_host(pc: Machine) -> None:
    for channel, disk, lba in [(ata.PRIMARY, "hd0", 4096), (ata.SECONDARY, "hd1", 777)]:
        data = os.urandom(9 * ata.SECTOR)
        ata.pio_write(pc.link, channel, 0, lba, data)
        assert ata.pio_read(pc.link, channel, 0, lba, 9) == data
        assert image_bytes(pc.disks[disk], lba, 9) == data  # QEMU wrote the file: flushed


def test_dma_read_matches_the_image(pc: Machine) -> None:
    link = pc.link
    primary = ata.Channel(0x1F0, 0x3F6, 14, ata.bus_master_base(link))
    secondary = ata.Channel(0x170, 0x376, 15, ata.bus_master_base(link, secondary=True))
    for channel, disk, lba, count in [
        (primary, "hd0", 0, 128),
        (primary, "hd0", 100_003, 2048),  # 1 MiB: sixteen PRD entries
        (secondary, "hd1", 5, 1),
    ]:
        got = ata.dma_read(link, channel, 0, lba, count)
        assert got == image_bytes(pc.disks[disk], lba, count), (disk, lba, count)


def test_native_dma_write_lands_on_the_image(pc: Machine) -> None:
    """The stub's native DMA write loop (the limit ``hwl bench disk`` divides by)
    writes what is in its buffer, where it was asked to, and nothing else."""
    link = pc.link
    ch = ata.Channel(0x1F0, 0x3F6, 14, ata.bus_master_base(link))
    image = pc.disks["hd0"]
    sectors, count, lba = 256, 3, 70_001  # three 128 KiB commands of two PRD entries each
    before = image_bytes(image, lba - 1, 1), image_bytes(image, lba + count * sectors, 1)
    pattern = os.urandom(sectors * ata.SECTOR)
    buf = link.alloc_dma(len(pattern), align=1 << 16)
    prd = link.alloc_dma(4096)
    try:
        buf.write(pattern)
        args = (ch.cmd, ch.ctl, ch.bm, 0, 0, lba, count, sectors, buf.phys, prd.phys, 0, 0)
        result = link.native(abi.OP_NATIVE_DMA_WRITE, args)
        assert (result.status, result.done) == (abi.ST_OK, count), result
        assert result.seconds > 0
    finally:
        link.free_dma(prd)
        link.free_dma(buf)
    for i in range(count):
        assert image_bytes(image, lba + i * sectors, sectors) == pattern, i
    after = image_bytes(image, lba - 1, 1), image_bytes(image, lba + count * sectors, 1)
    assert after == before
    assert ata.dma_read(link, ch, 0, lba + sectors, sectors) == pattern  # and reads back


class LinkAsKernel:
    """at_wini's channel talks to the kernel's vdevio; here the link runs its batches."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine

    def vdevio(self, batch: Batch) -> BatchResult:
        return self.machine.link.execute(batch)


HOG_S = 60  # a busy loop's longest life, should the test's process die first


@contextmanager
def short_of_cpu(machine: Machine, hogs: int = 3) -> Iterator[None]:
    """Every QEMU thread on one CPU, shared with ``hogs`` busy loops (each ends by
    itself after HOG_S): QEMU's main loop then runs late, as on a loaded host."""
    assert machine.pid is not None
    tasks = [int(t) for t in os.listdir(f"/proc/{machine.pid}/task")]
    before = {t: os.sched_getaffinity(t) for t in tasks}
    cpu = max(os.sched_getaffinity(machine.pid))
    loop = (
        f"import os, time\nos.sched_setaffinity(0, {{{cpu}}})\n"
        f"end = time.monotonic() + {HOG_S}\nwhile time.monotonic() < end: pass"
    )
    procs = [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(hogs)]
    try:
        for t in tasks:
            os.sched_setaffinity(t, {cpu})
        time.sleep(0.3)  # the hogs running
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        for t, cpus in before.items():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(t, cpus)


def test_a_reset_with_absent_drive_1_selected_finds_drive_0_on_a_busy_host(
    pc: Machine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start-up flake, made likely: drive 1 (absent) selected, as the firmware
    and every IDENTIFY of drive 1 leave a channel, QEMU short of CPU, and no settle
    time after SRST. QEMU resets the drives later, in its main loop, and ignores a
    drive select until then; at_wini's reset must wait for that on drive 0 (an
    absent drive's status reads 0, never busy). Before the fix all 20 failed."""
    monkeypatch.setattr(channel_mod, "SRST_SETTLE_US", 0)
    ch = channel_mod.Channel(Args(instance=1))  # hd1 on ide.1, no drive 1 there
    ch.conn = LinkAsKernel(pc)  # type: ignore[assignment]
    select_1 = Batch()
    select_1.outb(ata.SECONDARY.cmd + ata.REG_DEVICE, ata.DEV_OBS | ata.DEV_DRIVE1)
    found = []
    with short_of_cpu(pc):
        for _ in range(20):
            pc.link.execute(select_1)
            ch.reset()
            drive = ch.identify(0)
            found.append(drive.model if drive is not None else None)
    assert found == ["HWL DISK 1"] * 20
