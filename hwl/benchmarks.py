"""What the benchmarks in bench/ share: medians, paired runs and the report.

A figure is the median over repeated runs; a ratio is the median of per-run
ratios, the limit and the subject measured back to back in each run so that both
see the same host.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from hwl.errors import HwlError
from hwl.link import abi

if TYPE_CHECKING:
    from hwl.link.link import Link
    from hwl.system.boot import System

# A target: the comparison a figure must pass, and the bound.
Targets = dict[str, tuple[str, float]]


def median_of(runs: int, measure: Callable[[], float]) -> float:
    measure()  # warm-up: first-touch of buffers, a spinning stub, peers scheduled in
    return statistics.median(measure() for _ in range(runs))


def paired(
    runs: int, limit: Callable[[], float], subject: Callable[[], float]
) -> tuple[float, float, float]:
    """Medians of the limit, of the subject and of the per-run ratios subject / limit."""
    limit()
    subject()
    pairs = [(limit(), subject()) for _ in range(runs)]
    return (
        statistics.median(lm for lm, _ in pairs),
        statistics.median(s for _, s in pairs),
        statistics.median(s / lm for lm, s in pairs),
    )


def run_time_us(pid: int) -> float:
    """A process's run time so far, µs (/proc/PID/schedstat: its main thread on a
    CPU, system calls included)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e3


def path_pids(system: System, *labels: str) -> dict[str, int]:
    """The pids of a request's path: the kernel, the services ``labels`` (RS's
    table) and this process, the client."""
    rows = {row.label: row.pid for row in system.rs.status()}
    return {"kernel": system.kernel.pid, **{label: rows[label] for label in labels},
            "client": os.getpid()}  # fmt: skip


def run_time_per(
    pids: dict[str, int], count: int, work: Callable[[], None]
) -> tuple[dict[str, float], float]:
    """Where a request's time goes: each process's run time per request while
    ``work`` makes ``count`` requests, µs, and the wall time per request."""
    before = {name: run_time_us(pid) for name, pid in pids.items()}
    start = time.perf_counter()
    work()
    wall = (time.perf_counter() - start) * 1e6 / count
    after = {name: run_time_us(pid) for name, pid in pids.items()}
    return {name: (after[name] - before[name]) / count for name in pids}, wall


def native_seconds(link: Link, code: int, args: tuple[int, ...]) -> float:
    """Seconds of one of the stub's native loops; HwlError if the loop failed."""
    r = link.native(code, args)
    if r.status != abi.ST_OK:
        name = abi.STATUS_NAMES.get(r.status, str(r.status))
        raise HwlError(f"native loop {code} failed: {name}, ATA {r.ata_status:#x}")
    return r.seconds


def report(
    name: str, figures: dict[str, float], targets: Targets, accel: str | None, as_json: bool
) -> None:
    """One JSON object, or a table that says of each target whether it was met."""
    if as_json:
        print(json.dumps({**figures, "accel": accel}))
        return
    runs = int(figures.get("runs", 0))
    print(f"hwl bench {name} ({accel or 'no machine'}, median of {runs} runs)")
    width = max(map(len, figures), default=0)
    for key, value in figures.items():
        target = targets.get(key)
        note = ""
        if target:
            ok = value <= target[1] if target[0] == "<=" else value >= target[1]
            note = f"   target {target[0]} {target[1]}: {'met' if ok else 'MISSED'}"
        print(f"  {key:{width}} {value:14.3f}{note}")
