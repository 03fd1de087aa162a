"""What the benchmarks in bench/ share: medians, paired runs and the report.

A figure is the median over repeated runs; a ratio is the median of per-run
ratios, the limit and the subject measured back to back in each run so that both
see the same host.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from typing import TYPE_CHECKING

from hwl.errors import HwlError
from hwl.link import abi

if TYPE_CHECKING:
    from hwl.link.link import Link

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
    CPU, system calls included): what the benchmarks' "where the time goes"
    figures count per request."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e3


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
