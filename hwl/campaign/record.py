"""A campaign's directory: ``campaign.json`` (the header: spec, seed, trials, hwl's
commit), ``trials.jsonl`` (one JSON line per trial, in the order they ended) and
``runs/trial-NNNNN/`` (the run directory of each failing trial).

A trial's line: ``schema``, ``hwl_commit``, ``campaign_seed``, ``trial``,
``seed``, ``host``, then what :func:`hwl.campaign.invariants.judge` gives
(``plan``, ``fault``, ``outcome``, ``ok``, ``invariants``, ``timings``,
``marks``, ``client``, ``infra``, ``timeline``) and ``run_dir`` if it was kept.
"""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path
from typing import Any

from hwl.errors import HwlError

SCHEMA = 1
HEADER = "campaign.json"
TRIALS = "trials.jsonl"
RUNS = "runs"
SOURCE_TREE = Path(__file__).resolve().parents[2]


@functools.cache
def hwl_commit() -> str | None:
    """The commit of the hwl tree this process runs (None outside a git checkout),
    asked once per process: a worker is the code it loaded when it started. A
    campaign asks afresh when it starts (``hwl_commit.cache_clear()``)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(SOURCE_TREE), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_dir(out: Path, index: int) -> Path:
    return out / RUNS / f"trial-{index:05d}"


def write_header(out: Path, header: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / HEADER).write_text(json.dumps({"schema": SCHEMA, **header}, indent=2) + "\n")


def read_header(out: Path) -> dict[str, Any]:
    path = out / HEADER
    try:
        header: dict[str, Any] = json.loads(path.read_text())
    except OSError as exc:
        raise HwlError(f"{path}: not a campaign directory ({exc.strerror})") from exc
    except ValueError as exc:
        raise HwlError(f"{path}: not JSON: {exc}") from exc
    if header.get("schema") != SCHEMA:
        raise HwlError(f"{path}: schema {header.get('schema')!r}, this hwl reads {SCHEMA}")
    return header


def append(out: Path, line: dict[str, Any]) -> None:
    with (out / TRIALS).open("a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def read_trials(out: Path) -> list[dict[str, Any]]:
    """The trials' lines, by trial number; a torn last line (a campaign killed
    while writing it) is left out."""
    path = out / TRIALS
    if not path.exists():
        raise HwlError(f"{path}: no trials recorded")
    lines = []
    for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            lines.append(json.loads(text))
        except ValueError as exc:
            if n < len(path.read_text().splitlines()):
                raise HwlError(f"{path}:{n}: not JSON: {exc}") from exc
    return sorted(lines, key=lambda t: int(t["trial"]))
