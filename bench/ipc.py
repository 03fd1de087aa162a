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
  back in each run: what a call costs over the bare socket. sendrec_us is the
  call as processes make it: on a call channel (the echo server serves them);
- sendrec_channel_us, sendrec_kernel_us, channel_speedup: the same call on the
  channel and on the kernel path (root -> kernel -> echo -> kernel -> root, the
  channels off for the root), paired in each run, and kernel / channel;
- relay_us, relay_ratio: the same frame through a do-nothing relay in C
  (bench/_relay.c, built with the host's cc) to the same kind of echo child, and
  its ratio to raw_us: the two extra hops of any kernel in the middle, with no
  kernel work. The floor under sendrec_ratio on this host (left out, with a
  line on stderr, where there is no C compiler);
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
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from hwl import Machine, ipc
from hwl.benchmarks import Targets, median_of, paired, report
from hwl.ipc import channels, wire
from hwl.kernel.launcher import KernelProcess
from hwl.link.batch import Batch
from hwl.link.link import Link

ECHO = str(Path(__file__).resolve().with_name("_ipc_echo.py"))
RELAY_SOURCE = Path(__file__).resolve().with_name("_relay.c")
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


def kernel_path_us(root: ipc.Connection, echo: int) -> float:
    """sendrec_us with the root's calls on the kernel path."""
    root.use_channels(False)
    try:
        return sendrec_us(root, echo)
    finally:
        root.use_channels(True)


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


@contextlib.contextmanager
def child_on(argv: list[str], fds: tuple[int, ...]) -> Iterator[None]:
    """A child that inherits ``fds``; the caller closes its ends to end it."""
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, pass_fds=fds)
    try:
        yield
    finally:
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.terminate()
            child.wait()


@contextlib.contextmanager
def raw_echo() -> Iterator[socket.socket]:
    """A child echoing frames on a socketpair: the floor for a round trip."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with (
        ours,
        theirs,
        child_on([sys.executable, ECHO, "--raw", str(theirs.fileno())], (theirs.fileno(),)),
    ):
        theirs.close()
        try:
            yield ours
        finally:
            ours.close()  # the child sees the end of its socket and leaves


def build_relay(directory: str) -> str | None:
    """bench/_relay.c built into ``directory``, or None without a C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        print("hwl bench ipc: no C compiler; relay figures left out", file=sys.stderr)
        return None
    program = os.path.join(directory, "relay")
    subprocess.run([cc, "-O2", "-o", program, str(RELAY_SOURCE)], check=True)
    return program


@contextlib.contextmanager
def relayed_echo(relay: str) -> Iterator[socket.socket]:
    """The raw echo child behind the relay: ours -> relay -> echo and back."""
    with raw_echo() as echo_side:
        ours, relay_side = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fds = (relay_side.fileno(), echo_side.fileno())
        with ours, relay_side, child_on([relay, *map(str, fds)], fds):
            relay_side.close()
            try:
                yield ours
            finally:
                ours.close()  # the relay sees the end and leaves


def ipc_figures(root: ipc.Connection, runs: int) -> dict[str, float]:
    echo, _pid = root.spawn([sys.executable, ECHO], "echo", conf=ECHO_CONF)
    deadline = time.monotonic() + 10
    while channels.enabled() and root.channel_to(echo) is None and time.monotonic() < deadline:
        root.sendrec(echo, M_TYPE, PAYLOAD)
        time.sleep(0.05)
    frame = wire.REQUEST.pack(wire.Op.SENDREC, 0, 0, echo, M_TYPE) + PAYLOAD
    figures: dict[str, float] = {}
    with raw_echo() as sock:
        (figures["raw_us"], figures["sendrec_us"], figures["sendrec_ratio"]) = paired(
            runs, lambda: raw_us(sock, frame), lambda: sendrec_us(root, echo)
        )
        figures["sendrec_channel_us"] = figures["sendrec_us"]
        _ch, figures["sendrec_kernel_us"], figures["channel_speedup"] = paired(
            runs, lambda: sendrec_us(root, echo), lambda: kernel_path_us(root, echo)
        )
        with tempfile.TemporaryDirectory(prefix="hwl-relay-") as directory:
            relay = build_relay(directory)
            if relay is not None:
                with relayed_echo(relay) as relayed:
                    _raw, figures["relay_us"], figures["relay_ratio"] = paired(
                        runs, lambda: raw_us(sock, frame), lambda: raw_us(relayed, frame)
                    )
    figures["notify_per_s"] = median_of(runs, lambda: notify_per_s(root, echo))
    return figures


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


TARGETS: Targets = {"sendrec_ratio": ("<=", 2.0), "vdevio_ratio": ("<=", 2.0)}


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
