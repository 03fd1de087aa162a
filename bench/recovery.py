"""hwl bench recovery: how long a service is gone when it dies or is replaced.

A kernel runs with RS as its root (no machine: recovery is about processes,
not hardware) and the echo service (servers/echo) under it, with the restart
policy, so the endpoint a client holds stays valid across restarts. This
process is the client, attached as a user process.

- recovery: SIGKILL the service's process, then sendrec to its endpoint until a
  reply comes from the new incarnation (a failed call is retried after 0.2 ms).
  The time from the kill to that reply, over ``kills`` kills; with the fork
  server (services start from a warm interpreter) and with a cold
  ``python3`` start, measured in the same run, and their ratio.
- update downtime: a client thread does sendrec in a tight loop while RS
  live-updates the service (``service update self``, state WORK_FREE); the
  time between the last reply from the old version and the first from the new,
  over ``updates`` updates. The thread also counts failed calls (must be 0).

- heartbeat: the host CPU one ping costs (RS's notify, the service's answer,
  the kernel between them): four echo services pinged every tick (60 per second
  each) against the same four unpinged, CPU of the kernel and everything below it
  read from /proc over the same window; and what the stock profile's periods
  (qemu-configs/pc.cfg) cost at that price, in percent of one core.

RS runs with a backoff unit of 0: MINIX restarts a service's first crash at
once and backs off the later ones; here every kill is measured as a first crash.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from hwl.benchmarks import Targets, report
from hwl.ipc import wire
from hwl.ipc.client import Connection, IpcError
from hwl.kernel.launcher import KernelProcess
from hwl.machine.profile import Profile
from hwl.procs import descendants
from hwl.proto.rs import RS_LABEL
from hwl.system.boot import rs_argv
from hwl.system.durations import parse_ticks
from hwl.system.proto import Policy, UpdateFlag
from hwl.system.rs import Rs

ECHO_ARGV = [sys.executable, "-m", "hwl.servers.echo", "--tag", "bench"]
ECHO = 1  # servers/echo's request type
RETRY_S = 0.0002
PINGED = 4  # echo services in the heartbeat phase
PING_WINDOW_S = 3.0


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def echo_pid(conn: Connection, endpoint: int) -> int:
    pid = conn.sendrec(endpoint, ECHO, {})["pid"]
    assert isinstance(pid, int)
    return pid


def recovery_ms(conn: Connection, endpoint: int) -> float:
    """Kill the service once; milliseconds until its next incarnation answers."""
    old = echo_pid(conn, endpoint)
    start = time.perf_counter()
    os.kill(old, signal.SIGKILL)
    while True:
        try:
            pid = echo_pid(conn, endpoint)
        except IpcError:
            time.sleep(RETRY_S)
            continue
        if pid != old:
            return (time.perf_counter() - start) * 1000
        time.sleep(RETRY_S)  # the old one answered before it died: not yet


def recoveries(rs: Rs, conn: Connection, label: str, kills: int, cold: bool) -> list[float]:
    endpoint = rs.up(ECHO_ARGV, label=label, policy=Policy.RESTART, cold=cold)
    try:
        recovery_ms(conn, endpoint)  # warm-up
        return [recovery_ms(conn, endpoint) for _ in range(kills)]
    finally:
        rs.down(label)


class Caller(threading.Thread):
    """A client in a tight sendrec loop, noting who answered when."""

    def __init__(self, conn: Connection, endpoint: int) -> None:
        super().__init__(daemon=True)
        self.conn = conn
        self.endpoint = endpoint
        self.stop = threading.Event()
        self.answers: list[tuple[float, int]] = []  # (time, pid)
        self.errors = 0

    def run(self) -> None:
        sendrec, clock, note = self.conn.sendrec, time.perf_counter, self.answers.append
        while not self.stop.is_set():
            try:
                pid = sendrec(self.endpoint, ECHO, b"")["pid"]
            except IpcError:
                self.errors += 1
                continue
            note((clock(), int(pid)))  # type: ignore[arg-type]


def downtimes(rs: Rs, caller_conn: Connection, label: str, updates: int) -> tuple[list[float], int]:
    endpoint = rs.up(ECHO_ARGV, label=label, policy=Policy.RESTART)
    caller = Caller(caller_conn, endpoint)
    caller.start()
    try:
        for _ in range(updates + 1):
            rs.update(label, state=1, flags=UpdateFlag.NONE)
            time.sleep(0.005)  # answers from the new version after the switch
    finally:
        caller.stop.set()
        caller.join()
        rs.down(label)
    gaps = [
        (t1 - t0) * 1000
        for (t0, p0), (t1, p1) in zip(caller.answers, caller.answers[1:], strict=False)
        if p1 != p0
    ]
    return gaps[1:], caller.errors  # the first update is the warm-up


def cpu_seconds(pids: set[int]) -> float:
    """User and system time of ``pids`` so far (a process gone meanwhile counts 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def window_cpu(kernel_pid: int) -> float:
    """CPU the kernel and everything below it spend in PING_WINDOW_S."""
    pids = {kernel_pid} | descendants(kernel_pid)
    before = cpu_seconds(pids)
    time.sleep(PING_WINDOW_S)
    return cpu_seconds(pids) - before


def ping_cost_us(rs: Rs, kernel_pid: int) -> float:
    """Microseconds of host CPU per ping: PINGED services at one tick's period
    against the same services unpinged."""
    costs = {}
    for period in (0, 1):
        labels = [f"bench-ping{period}-{i}" for i in range(PINGED)]
        for label in labels:
            rs.up(ECHO_ARGV, label=label, period=period)
        try:
            time.sleep(0.5)  # past the starts
            costs[period] = window_cpu(kernel_pid)
        finally:
            for label in labels:
                rs.down(label)
    pings = PINGED * PING_WINDOW_S * wire.HZ
    return max(0.0, costs[1] - costs[0]) / pings * 1e6


def stock_pings_per_s(profile: str = "pc") -> float:
    """Pings per second RS sends under the stock profile's periods."""
    periods = [parse_ticks(s.options.get("period", "0")) for s in Profile.load(profile).services]
    return sum(wire.HZ / p for p in periods if p > 0)


def run(kills: int, updates: int) -> dict[str, float]:
    run_dir = Path(tempfile.mkdtemp(prefix="hwl-bench-rs-", dir=os.environ.get("HWL_RUN_ROOT")))
    argv = rs_argv(run_dir, "--backoff-unit", "0")
    kernel = KernelProcess.start(run_dir=run_dir, root_argv=argv, root_label=RS_LABEL)
    try:
        conn = Connection.attach(kernel.socket_path)
        caller_conn = Connection.attach(kernel.socket_path)
        try:
            rs = Rs(conn)
            fork = recoveries(rs, conn, "bench-forked", kills, cold=False)
            cold = recoveries(rs, conn, "bench-cold", kills, cold=True)
            gaps, errors = downtimes(rs, caller_conn, "bench-update", updates)
            ping_us = ping_cost_us(rs, kernel.proc.pid)
        finally:
            conn.close()
            caller_conn.close()
    finally:
        kernel.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    fork_p50 = statistics.median(fork)
    cold_p50 = statistics.median(cold)
    return {
        "recovery_p50_ms": fork_p50,
        "recovery_p95_ms": percentile(fork, 95),
        "cold_recovery_p50_ms": cold_p50,
        "cold_recovery_p95_ms": percentile(cold, 95),
        "cold_over_forked": cold_p50 / fork_p50,
        "update_downtime_p50_ms": statistics.median(gaps),
        "update_downtime_p95_ms": percentile(gaps, 95),
        "update_client_errors": errors,
        "kills": kills,
        "updates": len(gaps),
        "heartbeat_ping_cpu_us": ping_us,
        "heartbeat_stock_pings_per_s": stock_pings_per_s(),
        "heartbeat_stock_cpu_pct": ping_us * stock_pings_per_s() / 1e4,
    }


TARGETS: Targets = {
    "recovery_p50_ms": ("<=", 20.0),
    "update_downtime_p50_ms": ("<=", 20.0),
    "update_client_errors": ("<=", 0),
}


def main(args: argparse.Namespace) -> int:
    count = args.repeat or 50
    figures = run(kills=count, updates=count)
    figures["runs"] = count
    if args.json:
        print(json.dumps(figures))
    else:
        report("recovery", figures, TARGETS, None, False)
    return 0
