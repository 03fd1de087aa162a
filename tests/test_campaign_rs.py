"""A campaign that kills RS itself on a real machine: the kernel restarts RS, the
new RS adopts every service (none restarted: the isolation invariant), the disk
workload reads and writes through VFS on with every byte right, and the trial's
recovery ends at the new RS's ``rs-restart`` event. A stopped RS is not restarted
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
from hwl.campaign.spec import parse

pytestmark = pytest.mark.qemu

SPEC = """
name = "rs-kill"
profile = "pc"
trial_timeout = 60
recovery_bound_ms = 5000

[workload]
bytes = "8M"

[[fault]]
kind = "kill"
targets = ["rs"]
timing = ["after-bytes"]
"""


def test_killing_rs_is_recovered_with_no_service_restarted(tmp_path: Path) -> None:
    summary = Campaign(parse(tomllib.loads(SPEC), "rs-kill"), 5, 2, tmp_path / "c").run()
    assert summary["failing"] == [], summary
    for t in record.read_trials(tmp_path / "c"):
        assert t["ok"] and t["outcome"] == "recovered", t
        assert t["fault"]["target"] == "rs" and t["fault"]["pid"] > 0
        assert t["invariants"]["isolation"]["ok"]  # adopted: every service kept its pid
        assert t["marks"]["inject"] <= t["marks"]["restart"] <= t["marks"]["first_good"]
        assert t["timings"]["recovery_ms"] is not None


def test_a_stopped_rs_goes_on_at_the_heal_and_kills_no_service(tmp_path: Path) -> None:
    spec = SPEC.replace('kind = "kill"', 'kind = "stop"\nheal_after_ms = [1500, 2000]')
    summary = Campaign(parse(tomllib.loads(spec), "rs-stop"), 5, 1, tmp_path / "c").run()
    assert summary["failing"] == [], summary
    (t,) = record.read_trials(tmp_path / "c")
    assert t["ok"] and t["outcome"] == "recovered", t
    assert t["marks"]["restart"] is None and t["marks"]["heal"] is not None  # not restarted
    assert t["invariants"]["isolation"]["ok"]  # every service kept its pid


def test_service_fi_on_rs_is_refused_by_name(tmp_path: Path) -> None:
    spec = SPEC.replace('kind = "kill"', 'kind = "fi"\ntype = "crash"')
    summary = Campaign(parse(tomllib.loads(spec), "rs-fi"), 5, 1, tmp_path / "c").run()
    (t,) = record.read_trials(tmp_path / "c")
    assert t["outcome"] == "infrastructure error", t
    assert "RS, which cannot be its own target" in str(t["infra"]), t["infra"]
    assert summary["failing"] == [0]
