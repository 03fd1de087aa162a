"""hwl bench link: the link's costs, as ratios to the stub's own native loops.

Every figure is a median over repeated runs in one process, on one machine; the
ratios are medians of per-run ratios, native and link measured back to back:
- single_op_us: round trip of one ``inb`` (host -> stub -> device -> host);
- batch_ops_per_s: ``inb`` operations per second in full 254-op batches;
- pio_ratio: PIO sector-read throughput through the link (one batch per
  256-sector READ MULTIPLE, 32-bit transfers, data copied out to the host)
  divided by the stub's native PIO loop over the same sectors;
- dma_ratio: 64 KiB bus-master reads through the link (one batch per
  command, four commands queued in the ring, data copied out) divided by the
  native 64 KiB DMA loop.
"""

from __future__ import annotations

import argparse
import time
from collections import deque

from hwl import Machine
from hwl.benchmarks import Targets, median_of, native_seconds, paired, report
from hwl.hw import ata
from hwl.link import abi
from hwl.link.link import Link

PIO_SECTORS = 4096  # 2 MiB per run
DMA_CHUNKS = 64  # 64 x 64 KiB = 4 MiB per run
DMA_DEPTH = 4  # 64 KiB commands queued in the ring at once
SINGLE_OPS = 2000
BATCHES = 40


def single_op_us(link: Link) -> float:
    start = time.perf_counter()
    for _ in range(SINGLE_OPS):
        link.inb(0x1F7)
    return (time.perf_counter() - start) / SINGLE_OPS * 1e6


def batch_ops_per_s(link: Link) -> float:
    b = link.batch()
    for _ in range(abi.MAX_OPS):
        b.inb(0x1F7)
    start = time.perf_counter()
    for _ in range(BATCHES):
        link.execute(b)
    return BATCHES * abi.MAX_OPS / (time.perf_counter() - start)


def native_mb_s(link: Link, code: int, args: tuple[int, ...], nbytes: int) -> float:
    return nbytes / native_seconds(link, code, args) / 1e6


def link_pio_mb_s(link: Link, buf_out: bytearray, multiple: int) -> float:
    buf = link.alloc_dma(256 * ata.SECTOR)
    try:
        batches = [
            ata.pio_read_batch(ata.PRIMARY, 0, lba, 256, buf, multiple)[0]
            for lba in range(0, PIO_SECTORS, 256)
        ]
        for b in batches:
            b.packed()  # building requests is the driver's work, not the link's
        start = time.perf_counter()
        for i, b in enumerate(batches):
            link.execute(b)
            buf_out[i * 256 * ata.SECTOR : (i + 1) * 256 * ata.SECTOR] = buf.view
        return PIO_SECTORS * ata.SECTOR / (time.perf_counter() - start) / 1e6
    finally:
        link.free_dma(buf)


def link_dma_mb_s(link: Link, ch: ata.Channel, buf_out: bytearray) -> float:
    """64 KiB commands, DMA_DEPTH of them queued in the ring at a time (each with its
    own buffer and PRD table), each one's data copied out as it completes."""
    size = 128 * ata.SECTOR
    bufs = [link.alloc_dma(size, align=1 << 16) for _ in range(DMA_DEPTH)]
    prds = [link.alloc_dma(4096) for _ in range(DMA_DEPTH)]
    try:
        for buf, prd in zip(bufs, prds, strict=True):
            ata.build_prd(prd, buf, size)
        batches = [
            ata.dma_read_batch(ch, 0, i * 128, 128, prds[i % DMA_DEPTH])[0]
            for i in range(DMA_CHUNKS)
        ]
        for b in batches:
            b.packed()
        start = time.perf_counter()
        queue = deque(link.submit(b) for b in batches[:DMA_DEPTH])
        for i in range(DMA_CHUNKS):
            link.collect(queue.popleft())
            buf_out[i * size : (i + 1) * size] = bufs[i % DMA_DEPTH].view
            if i + DMA_DEPTH < DMA_CHUNKS:
                queue.append(link.submit(batches[i + DMA_DEPTH]))
        return DMA_CHUNKS * size / (time.perf_counter() - start) / 1e6
    finally:
        for buf in bufs + prds:
            link.free_dma(buf)


def run(machine: Machine, runs: int) -> dict[str, float]:
    link = machine.link
    multiple = min(16, ata.identify(link).max_multiple)
    ata.set_multiple(link, ata.PRIMARY, 0, multiple)
    ch = ata.Channel(0x1F0, 0x3F6, 14, ata.bus_master_base(link))
    big = link.alloc_dma(2 << 20, align=1 << 16)
    prd = link.alloc_dma(4096)
    out = bytearray(max(PIO_SECTORS * ata.SECTOR, DMA_CHUNKS * 128 * ata.SECTOR))
    try:
        pio_args = (ch.cmd, ch.ctl, ch.bm, 0, multiple, 0, PIO_SECTORS, 0, big.phys, prd.phys, 0, 0)
        dma_args = (ch.cmd, ch.ctl, ch.bm, 0, 0, 0, DMA_CHUNKS, 128, big.phys, prd.phys, 0, 0)
        dma1m_args = (ch.cmd, ch.ctl, ch.bm, 0, 0, 0, 4, 2048, big.phys, prd.phys, 0, 0)
        figures = {
            "single_op_us": median_of(runs, lambda: single_op_us(link)),
            "batch_ops_per_s": median_of(runs, lambda: batch_ops_per_s(link)),
        }
        (figures["native_pio_mb_s"], figures["link_pio_mb_s"], figures["pio_ratio"]) = paired(
            runs,
            lambda: native_mb_s(link, abi.OP_NATIVE_PIO, pio_args, PIO_SECTORS * ata.SECTOR),
            lambda: link_pio_mb_s(link, out, multiple),
        )
        (figures["native_dma64k_mb_s"], figures["link_dma64k_mb_s"], figures["dma_ratio"]) = paired(
            runs,
            lambda: native_mb_s(link, abi.OP_NATIVE_DMA, dma_args, DMA_CHUNKS << 16),
            lambda: link_dma_mb_s(link, ch, out),
        )
        figures["native_dma1m_mb_s"] = median_of(
            runs, lambda: native_mb_s(link, abi.OP_NATIVE_DMA, dma1m_args, 4 << 20)
        )
    finally:
        link.free_dma(prd)
        link.free_dma(big)
    return figures


TARGETS: Targets = {"single_op_us": ("<=", 5.0), "pio_ratio": (">=", 0.8), "dma_ratio": (">=", 0.5)}


def main(args: argparse.Namespace) -> int:
    runs = args.repeat or 7
    with Machine(args.profile, accel=args.accel) as machine:
        figures = run(machine, runs)
    figures["runs"] = runs
    report("link", figures, TARGETS, machine.accel, args.json)
    return 0
