"""Running a campaign's trials on a pool and collecting their lines.

The pool is a ``concurrent.futures.Executor``: local processes by default
(``--jobs J``: each trial boots its own machine, so J is how many machines run
at once), or an existing Dask cluster (``--executor dask --scheduler ADDR``)
through ``distributed.Client.get_executor()``, so a campaign spreads over many
hosts. What travels is plain JSON (the spec, the plan, hwl's commit), and each
worker refuses a trial planned at another commit: its line then says so, as an
infrastructure error, and no machine is booted.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from hwl.campaign import record, report
from hwl.campaign import trial as trial_mod
from hwl.campaign.schedule import Plan, schedule
from hwl.campaign.spec import Spec
from hwl.errors import HwlError


def run_task(
    spec: dict[str, Any], plan: dict[str, Any], run_dir: str, commit: str | None, seed: int
) -> dict[str, Any]:
    """One trial on a worker: its line, or a refusal if this worker's hwl differs."""
    p = Plan.from_dict(plan)
    mine = record.hwl_commit()
    head = {
        "schema": record.SCHEMA,
        "hwl_commit": mine,
        "campaign_seed": seed,
        "trial": p.index,
        "seed": p.seed,
        "host": socket.gethostname(),
    }
    if commit != mine:
        why = f"refused: the trial is from hwl {commit}, this worker runs {mine}"
        return {**head, "plan": plan, "fault": {}, "outcome": "infrastructure error",
                "ok": False, "infra": why, "invariants": {}, "timings": {}, "marks": {},
                "client": {}, "timeline": []}  # fmt: skip
    return {**head, **trial_mod.run(Spec.from_dict(spec), p, Path(run_dir))}


@dataclass
class Progress:
    """A one-line progress bar on a terminal (nothing when not a terminal)."""

    total: int
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    done: int = 0
    failing: int = 0
    start: float = field(default_factory=time.monotonic)

    @property
    def live(self) -> bool:
        return self.stream.isatty()

    def update(self, ok: bool) -> None:
        self.done += 1
        self.failing += 0 if ok else 1
        if not self.live:
            return
        width = 30
        filled = width * self.done // max(1, self.total)
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} trials,"
            f" {self.failing} failing, {elapsed:.0f} s, about {eta:.0f} s left "
        )
        if self.done == self.total:
            self.stream.write("\n")
        self.stream.flush()


@contextmanager
def executor(kind: str, jobs: int, scheduler: str | None) -> Iterator[cf.Executor]:
    if kind == "local":
        ctx = multiprocessing.get_context("forkserver")  # no fork of a threaded parent
        with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            yield pool
        return
    if kind != "dask":
        raise HwlError(f"executor {kind!r}: local or dask")
    if not scheduler:
        raise HwlError("--executor dask needs --scheduler ADDRESS (tcp://host:8786)")
    try:
        from distributed import Client
    except ImportError as exc:
        raise HwlError("the dask executor needs hwl's campaign-dask extra installed") from exc
    with Client(scheduler) as client:  # type: ignore[no-untyped-call]
        yield client.get_executor(pure=False)


@dataclass
class Campaign:
    spec: Spec
    seed: int
    trials: int
    out: Path
    jobs: int = 1
    executor: str = "local"
    scheduler: str | None = None

    def header(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(),
            "seed": self.seed,
            "trials": self.trials,
            "jobs": self.jobs,
            "executor": self.executor,
            "hwl_commit": record.hwl_commit(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def run(self, on_line: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Every trial, each line appended as it ends; the summary."""
        if (self.out / record.TRIALS).exists():
            raise HwlError(f"{self.out} holds a campaign already: give another --out")
        record.hwl_commit.cache_clear()  # the tree as it is now, not at import
        record.write_header(self.out, self.header())
        (self.out / record.TRIALS).touch()
        plans = schedule(self.spec, self.seed, self.trials)
        commit = record.hwl_commit()
        spec = self.spec.to_dict()
        progress = Progress(self.trials)
        start = time.monotonic()
        lines: list[dict[str, Any]] = []
        with executor(self.executor, self.jobs, self.scheduler) as pool:
            futures = [
                pool.submit(
                    run_task,
                    spec,
                    p.to_dict(),
                    str(record.run_dir(self.out, p.index).resolve()),
                    commit,
                    self.seed,
                )
                for p in plans
            ]
            try:
                for future in cf.as_completed(futures):
                    line = future.result()
                    record.append(self.out, line)
                    lines.append(line)
                    progress.update(bool(line["ok"]))
                    if on_line is not None:
                        on_line(line)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        elapsed = time.monotonic() - start
        summary = report.summary(lines)
        summary.update(
            elapsed_s=round(elapsed, 1),
            trials_per_min=round(len(lines) / elapsed * 60, 2) if elapsed > 0 else 0.0,
            jobs=self.jobs,
            seed=self.seed,
            out=str(self.out),
            cpus=os.cpu_count(),
        )
        return summary
