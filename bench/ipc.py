"""hwl bench ipc: the kernel process's costs, as ratios to what it stands between.

Every figure is a median over repeated runs in one process; the root is this
process (``KernelProcess.start`` without a root program), the peer an echo server
the kernel started (bench/_ipc_echo.py):
- sendrec_us: one ``sendrec`` round trip with a 16-byte payload, root -> kernel
  -> echo -> kernel -> root, the call every driver request is made of;
- raw_us: the same frame (12-byte request header + payload) echoed by a child
  process over a bare ``SOCK_SEQPACKET`` socketpair: two processes and one
  socket, the floor any round trip through another process stands on;
- sendrec_ratio: median of per-run sendrec_us / raw_us, the two measured back to
  back in each run: what the kernel in the middle costs;
- notify_per_s: notifies per second from root to the echo server, each one
  returning once the kernel has taken it (the interrupt path's fan-out);
- link_batch_us: a 64-op batch of ``inb`` run in-process by ``Link.execute``;
- vdevio_us: the same batch as a ``vdevio`` kernel call, the kernel driving the
  link for the caller;
- vdevio_ratio: vdevio_us / link_batch_us. The machine's link cannot be used
  after it is handed to the kernel, so the two are not paired: link_batch_us is
  measured in its runs first, then the kernel started on that machine and
  vdevio_us measured in as many runs; the ratio is that of the two medians.

The IPC figures are measured through the machine's kernel (with QEMU running), or,
with ``--no-machine`` (or ``HWL_BENCH_NO_MACHINE=1``), through a kernel with no
hardware and without the vdevio figures.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from hwl import Machine, ipc
from hwl.benchmarks import Targets, median_of, paired, report
from hwl.ipc import wire
from hwl.kernel.launcher import KernelProcess
from hwl.link.batch import Batch
from hwl.link.link import Link

ECHO = str(Path(__file__).resolve().with_name("_ipc_echo.py"))
ECHO_CONF = "service echo { ipc ALL; };"
PAYLOAD = bytes(range(16))
M_TYPE = 0x4242
ROUND_TRIPS = 3000
NOTIFIES = 5000
BATCH_OPS = 64
BATCHES = 200


def sendrec_us(root: ipc.Connection, echo: int) -> float:
    sendrec = root.sendrec
    start = time.perf_counter()
    for _ in range(ROUND_TRIPS):
        sendrec(echo, M_TYPE, PAYLOAD)
    return (time.perf_counter() - start) / ROUND_TRIPS * 1e6


def raw_us(sock: socket.socket, frame: bytes) -> float:
    send, recv = sock.send, sock.recv
    size = wire.MAX_RESPONSE
    start = time.perf_counter()
    for _ in range(ROUND_TRIPS):
        send(frame)
        recv(size)
    return (time.perf_counter() - start) / ROUND_TRIPS * 1e6


def notify_per_s(root: ipc.Connection, echo: int) -> float:
    notify = root.notify
    start = time.perf_counter()
    for _ in range(NOTIFIES):
        notify(echo)
    return NOTIFIES / (time.perf_counter() - start)


def inb_batch() -> Batch:
    b = Batch()
    for _ in range(BATCH_OPS):
        b.inb(0x1F7)
    b.packed()  # packed once, as a driver's repeated batch is
    return b


def link_batch_us(link: Link, batch: Batch) -> float:
    start = time.perf_counter()
    for _ in range(BATCHES):
        link.execute(batch)
    return (time.perf_counter() - start) / BATCHES * 1e6


def vdevio_us(root: ipc.Connection, batch: Batch) -> float:
    start = time.perf_counter()
    for _ in range(BATCHES):
        root.vdevio(batch)
    return (time.perf_counter() - start) / BATCHES * 1e6


def raw_echo() -> tuple[socket.socket, subprocess.Popen[bytes]]:
    """A child echoing frames on a socketpair: the floor for a round trip."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        child = subprocess.Popen(
            [sys.executable, ECHO, "--raw", str(theirs.fileno())],
            stdin=subprocess.DEVNULL,
            pass_fds=(theirs.fileno(),),
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return ours, child


def ipc_figures(root: ipc.Connection, runs: int) -> dict[str, float]:
    echo, _pid = root.spawn([sys.executable, ECHO], "echo", conf=ECHO_CONF)
    frame = wire.REQUEST.pack(wire.Op.SENDREC, 0, 0, echo, M_TYPE) + PAYLOAD
    sock, child = raw_echo()
    try:
        figures: dict[str, float] = {}
        (figures["raw_us"], figures["sendrec_us"], figures["sendrec_ratio"]) = paired(
            runs, lambda: raw_us(sock, frame), lambda: sendrec_us(root, echo)
        )
        figures["notify_per_s"] = median_of(runs, lambda: notify_per_s(root, echo))
        return figures
    finally:
        sock.close()  # the child sees the end of its socket and leaves
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.terminate()
            child.wait()


def run(machine: Machine | None, runs: int) -> dict[str, float]:
    if machine is None:
        kernel = KernelProcess.start()
        try:
            assert kernel.root is not None
            return ipc_figures(kernel.root, runs)
        finally:
            kernel.stop()
    batch = inb_batch()
    link = machine.link
    link_us = median_of(runs, lambda: link_batch_us(link, batch))
    kernel = KernelProcess.start(machine)  # the link is the kernel's from here on
    try:
        root = kernel.root
        assert root is not None
        figures = ipc_figures(root, runs)
        figures["link_batch_us"] = link_us
        figures["vdevio_us"] = median_of(runs, lambda: vdevio_us(root, batch))
    finally:
        kernel.stop()
    figures["vdevio_ratio"] = figures["vdevio_us"] / figures["link_batch_us"]
    return figures


TARGETS: Targets = {"sendrec_ratio": ("<=", 2.5), "vdevio_ratio": ("<=", 2.0)}


def main(args: argparse.Namespace) -> int:
    runs = args.repeat or 7
    accel: str | None = None
    if args.no_machine or os.environ.get("HWL_BENCH_NO_MACHINE"):
        figures = run(None, runs)
    else:
        with Machine(args.profile, accel=args.accel) as machine:
            accel = machine.accel
            figures = run(machine, runs)
    figures["runs"] = runs
    report("ipc", figures, TARGETS, accel, args.json)
    return 0
