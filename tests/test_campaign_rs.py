"""The ``rs`` builtin campaign on a real machine. RS killed: the kernel restarts
it, the new RS adopts every service (none restarted: the isolation invariant),
the disk workload reads and writes through VFS on with every byte right, and the
trial's recovery ends at the new RS's ``rs-restart`` event. A stopped RS is not restarted
(nothing watches RS's heartbeat): it goes on at the heal, longer than a driver's
heartbeat period later, and kills no service for the pings it did not send.
``service fi`` cannot target RS (it goes through RS): the trial says so as an
infrastructure error.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from hwl.campaign import record
from hwl.campaign.runner import Campaign
from hwl.campaign.spec import BUILTINS, builtin, parse

pytestmark = pytest.mark.qemu

SEED = 5  # its three trials reach a kill and a stop of RS (checked below)


def test_killing_and_stopping_rs_kill_no_service_and_lose_no_byte(tmp_path: Path) -> None:
    summary = Campaign(builtin("rs"), SEED, 3, tmp_path / "c").run()
    assert summary["failing"] == [], summary
    trials = record.read_trials(tmp_path / "c")
    assert {t["plan"]["kind"] for t in trials} == {"kill", "stop"}  # the seed reaches both
    for t in trials:
        assert t["ok"] and t["outcome"] == "recovered", t
        assert t["fault"]["target"] == "rs" and t["fault"]["pid"] > 0
        assert t["invariants"]["isolation"]["ok"]  # every service kept its pid
        if t["plan"]["kind"] == "kill":  # the new RS's rs-restart event, then good replies
            assert t["marks"]["inject"] <= t["marks"]["restart"] <= t["marks"]["first_good"]
            assert t["timings"]["recovery_ms"] is not None
        else:  # stopped: nobody restarts RS; it goes on at the heal
            assert t["marks"]["restart"] is None and t["marks"]["heal"] is not None


def test_service_fi_on_rs_is_refused_by_name(tmp_path: Path) -> None:
    spec = BUILTINS["rs"].replace('kind = "kill"', 'kind = "fi"\ntype = "crash"')
    spec = spec[: spec.index('kind = "stop"')].rstrip().removesuffix("[[fault]]")
    summary = Campaign(parse(tomllib.loads(spec), "rs-fi"), SEED, 1, tmp_path / "c").run()
    (t,) = record.read_trials(tmp_path / "c")
    assert t["outcome"] == "infrastructure error", t
    assert "RS, which cannot be its own target" in str(t["infra"]), t["infra"]
    assert summary["failing"] == [0]
