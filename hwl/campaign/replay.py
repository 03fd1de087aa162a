"""One trial of a recorded campaign again, from its seed: the same fault, target,
timing and workload (the plan is drawn anew from the campaign's seed and checked
against the recorded one), on a fresh system, its run directory kept.

Replaying under another hwl commit is allowed (that is how a fix is checked) and
said: the line carries both commits.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from hwl.campaign import record
from hwl.campaign import trial as trial_mod
from hwl.campaign.schedule import plan
from hwl.campaign.spec import Spec
from hwl.errors import HwlError


def replay(out: Path, index: int) -> dict[str, Any]:
    header = record.read_header(out)
    if not 0 <= index < int(header["trials"]):
        raise HwlError(f"{out}: trial {index} is not one of its {header['trials']} (0..)")
    spec = Spec.from_dict(header["spec"])
    seed = int(header["seed"])
    p = plan(spec, seed, index)
    recorded = next(
        (t for t in record.read_trials(out) if int(t["trial"]) == index), None
    ) if (out / record.TRIALS).exists() else None  # fmt: skip
    if recorded is not None and recorded.get("plan") != p.to_dict():
        raise HwlError(
            f"trial {index}: the plan drawn now differs from the recorded one "
            f"({p.to_dict()} != {recorded.get('plan')}): the schedule changed"
        )
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    run_dir = out / record.RUNS / f"replay-{index:05d}-{stamp}"
    line = {
        "schema": record.SCHEMA,
        "hwl_commit": record.hwl_commit(),
        "recorded_commit": header.get("hwl_commit"),
        "campaign_seed": seed,
        "trial": index,
        "seed": p.seed,
        "host": socket.gethostname(),
        "replay": True,
        **trial_mod.run(spec, p, run_dir, keep=True),
    }
    if recorded is not None:
        line["recorded_outcome"] = recorded.get("outcome")
    return line
