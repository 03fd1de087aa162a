"""``hwl campaign``: run a fault campaign, or replay one of its trials.

hwl campaign run (SPEC | --builtin NAME) --trials N --jobs J --seed S [--out DIR] [--json]
    [--executor local|dask --scheduler ADDR]
hwl campaign replay DIR TRIAL

``run`` prints the outcome table (as ``hwl report``) or, with ``--json``, one JSON
summary; it exits 1 if any trial broke an invariant. ``replay`` prints the
trial's line and exits 1 if it failed again. docs/campaigns.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from hwl.campaign import record, report
from hwl.campaign import spec as spec_mod
from hwl.campaign.replay import replay
from hwl.campaign.runner import Campaign
from hwl.errors import HwlError

FAILED = 1  # a trial broke an invariant


def cmd_run(args: argparse.Namespace) -> int:
    if (args.spec is None) == (args.builtin is None):
        raise HwlError("give a SPEC file or --builtin NAME (one of them)")
    spec = spec_mod.builtin(args.builtin) if args.builtin else spec_mod.load(args.spec)
    if args.trials < 1 or args.jobs < 1:
        raise HwlError("--trials and --jobs are at least 1")
    seed = args.seed if args.seed is not None else int(time.time())
    out = (
        Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix=f"hwl-campaign-{spec.name}-"))
    )
    campaign = Campaign(spec, seed, args.trials, out, args.jobs, args.executor, args.scheduler)
    if not args.json:
        print(
            f"campaign {spec.name}: {args.trials} trials, seed {seed}, {args.jobs} jobs, in {out}"
        )
        sys.stdout.flush()
    summary = campaign.run()
    if args.json:
        print(json.dumps(summary))
    else:
        print(report.text(record.read_trials(out)))
        keys = ("trials", "recovered_ratio", "isolation_breaches", "silent_corruptions",
                "recovery_p50_ms", "recovery_p99_ms", "trials_per_min")  # fmt: skip
        print("\n" + ", ".join(f"{k} {summary[k]}" for k in keys))
    return FAILED if summary["failing"] else 0


def cmd_replay(args: argparse.Namespace) -> int:
    line = replay(Path(args.dir), args.trial)
    print(json.dumps({k: v for k, v in line.items() if k != "timeline"}, indent=2))
    return 0 if line["ok"] else FAILED


def add_parser(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    campaign = top.add_parser("campaign", help="fault campaigns (docs/campaigns.md)")
    sub = campaign.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="run a campaign's trials, check their invariants")
    run.add_argument("spec", nargs="?", help="a SPEC file (TOML)")
    run.add_argument("--builtin", choices=sorted(spec_mod.BUILTINS), help="a builtin SPEC")
    run.add_argument("--trials", type=int, default=20)
    run.add_argument("--jobs", type=int, default=1, help="trials at once (machines at once)")
    run.add_argument("--seed", type=int, help="fixes the whole schedule (default: the time)")
    run.add_argument("--out", help="the campaign's directory (default: a new temporary one)")
    run.add_argument("--json", action="store_true", help="print one JSON summary")
    run.add_argument("--executor", choices=["local", "dask"], default="local")
    run.add_argument("--scheduler", help="the Dask scheduler's address (tcp://host:8786)")
    run.set_defaults(func=cmd_run)
    rp = sub.add_parser("replay", help="run one trial of a recorded campaign again")
    rp.add_argument("dir", help="the campaign's directory")
    rp.add_argument("trial", type=int, help="the trial's number")
    rp.set_defaults(func=cmd_replay)
