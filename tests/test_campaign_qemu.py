"""Campaigns on real machines: the smoke campaign's invariants, its schedule run
again through a local Dask cluster, a deliberately wrong driver found out, a
replay, and the report of what was recorded.

One 20-trial campaign (seed fixed, two machines at a time) runs once for the
module; the Dask test runs its first DASK_TRIALS trials again on a local cluster of
two worker processes, which is also "a second run" of the same schedule (a trial's
plan does not depend on the number of trials, test_campaign.py). Each trial
boots and closes its own machine in a worker process; the campaign's
no_leftovers invariant checks that every process of every trial is gone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import distributed
import pytest

from hwl.campaign import record
from hwl.campaign.runner import Campaign
from hwl.campaign.spec import TIMINGS, builtin
from hwl.cli.main import main as hwl_main

pytestmark = pytest.mark.qemu

SEED = 1907
TRIALS = 20
#: the Dask run's trials: the first 6 of the seed's schedule take every timing and
#: the kinds kill, pause, disk-error and fi, 3 per worker (checked below)
DASK_TRIALS = 6
JOBS = 2
REPO = Path(__file__).resolve().parents[1]
WRONG = REPO / "tests" / "programs" / "wrong_at_wini.py"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    out = tmp_path_factory.mktemp("campaign") / "smoke"
    summary = Campaign(builtin("smoke"), SEED, TRIALS, out, jobs=JOBS).run()
    yield out, summary


def schedule_of(lines: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Per trial: the plan and what the fault was (its id and pid are the run's own)."""
    keep = ("kind", "target", "signal", "type", "op", "once", "sectors", "bps")
    return [
        (t["trial"], t["plan"], {k: v for k, v in t["fault"].items() if k in keep}) for t in lines
    ]


def test_twenty_trials_every_invariant_holds(smoke: tuple[Path, dict[str, Any]]) -> None:
    out, summary = smoke
    text = (out / record.TRIALS).read_text().splitlines()
    assert len(text) == TRIALS
    lines = record.read_trials(out)
    assert [t["trial"] for t in lines] == list(range(TRIALS))
    commit = record.hwl_commit()
    for t in lines:
        assert t["schema"] == record.SCHEMA and t["hwl_commit"] == commit
        assert t["campaign_seed"] == SEED and t["seed"] == t["plan"]["seed"]
        failed = {k: v for k, v in t["invariants"].items() if not v["ok"]}
        assert t["ok"] and not failed, f"trial {t['trial']}: {t['outcome']} {failed} {t['infra']}"
        assert set(t["invariants"]) == {
            "bytes", "isolation", "recovery", "client_errors", "no_leftovers"
        }  # fmt: skip
        assert t["fault"]["kind"] == t["plan"]["kind"]  # injected, as planned
        assert "run_dir" not in t  # kept only for failing trials
        if t["plan"]["timing"] == "after-bytes":  # between two requests
            assert t["during_request"] is False
        elif t["plan"]["timing"] == "in-command":  # the stalled request is under way
            assert t["during_request"] is True
        if t["plan"]["kind"] in ("kill",) or t["plan"]["settings"].get("type") == "crash":
            assert t["timings"]["recovery_ms"] is not None
            assert t["marks"]["inject"] <= t["marks"]["crash"] <= t["marks"]["restart"]
            assert t["marks"]["restart"] <= t["marks"]["first_good"]
    assert not list((out / record.RUNS).glob("trial-*"))
    assert summary["trials"] == TRIALS and summary["failing"] == []
    assert summary["isolation_breaches"] == summary["silent_corruptions"] == 0
    assert summary["recovered_ratio"] == 1.0
    # The seed's schedule reaches every kind and every timing (test_campaign checks
    # the schedule itself): each was injected and recovered from on a real machine.
    assert {t["plan"]["kind"] for t in lines} == {"kill", "fi", "disk-error", "slow-disk", "pause"}
    assert {t["plan"]["timing"] for t in lines} == set(TIMINGS)


def test_dask_runs_the_same_schedule_to_the_same_outcomes(
    smoke: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """A second run of the schedule's first trials, through a local Dask cluster
    (two worker processes on loopback): the same fault, target and timing per
    trial, the same outcomes."""
    first = record.read_trials(smoke[0])[:DASK_TRIALS]
    assert {t["plan"]["timing"] for t in first} == set(TIMINGS)
    assert {t["plan"]["kind"] for t in first} >= {"kill", "pause", "disk-error", "fi"}
    out = tmp_path / "dask"
    cluster = distributed.LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=JOBS, threads_per_worker=1, processes=True,
        host="127.0.0.1", dashboard_address=None,
    )  # fmt: skip
    with cluster:
        summary = Campaign(
            builtin("smoke"), SEED, DASK_TRIALS, out, JOBS, "dask", cluster.scheduler_address
        ).run()
    second = record.read_trials(out)
    assert schedule_of(second) == schedule_of(first)
    assert [t["outcome"] for t in second] == [t["outcome"] for t in first]
    assert summary["failing"] == [] and summary["trials"] == DASK_TRIALS


def write_wrong_spec(tmp_path: Path) -> Path:
    """The stock pc profile with at_wini replaced by the wrong driver, and a spec
    that kills it (so that its second incarnation serves the reads)."""
    cfg = (REPO / "qemu-configs" / "pc.cfg").read_text()
    stock = '[hwl-service "at_wini"]\n  program = "hwl.drivers.at_wini"'
    assert stock in cfg
    (tmp_path / "wrong.cfg").write_text(
        cfg.replace(stock, f'[hwl-service "at_wini"]\n  program = "{WRONG}"')
    )
    spec = tmp_path / "wrong.toml"
    spec.write_text('name = "wrong"\nprofile = "wrong.cfg"\n\n[[fault]]\nkind = "kill"\n')
    return spec


def test_a_wrong_driver_is_silent_corruption_with_a_non_zero_exit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_wrong_spec(tmp_path)
    out = tmp_path / "out"
    argv = ["campaign", "run", str(spec), "--trials", "2", "--jobs", "2", "--seed", "3"]
    code = hwl_main([*argv, "--out", str(out), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 1
    assert summary["silent_corruptions"] == 2 and summary["recovered_ratio"] == 0.0
    for t in record.read_trials(out):
        assert t["outcome"] == "silent corruption"
        assert not t["invariants"]["bytes"]["ok"] and t["client"]["corrupt_reads"]
        assert t["invariants"]["isolation"]["ok"] and t["invariants"]["recovery"]["ok"]
        assert t["marks"]["restart"] <= t["client"]["corrupt_reads"][0]["t_ms"]
        run_dir = Path(t["run_dir"])
        assert (run_dir / "events.jsonl").exists() and (run_dir / "at_wini.log").exists()
        assert not list(run_dir.glob("*.img"))


def test_replay_reruns_one_trial_from_its_seed(
    smoke: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    out = smoke[0]
    index = 5
    recorded = next(t for t in record.read_trials(out) if t["trial"] == index)
    assert hwl_main(["campaign", "replay", str(out), str(index)]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["plan"] == recorded["plan"] and line["replay"] is True
    assert line["outcome"] == recorded["outcome"] and line["ok"]
    assert schedule_of([line]) == schedule_of([recorded])
    assert Path(line["run_dir"]).is_dir()  # a replay keeps its run directory


def test_report_of_the_recorded_campaign(
    smoke: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = smoke[0]
    page = tmp_path / "report.html"
    assert hwl_main(["report", str(out), "--json", "--html", str(page)]) == 0
    got = json.loads(capsys.readouterr().out)
    lines = record.read_trials(out)
    total = next(r for r in got["table"] if r["fault"] == "all")
    assert total["trials"] == total["injected"] == TRIALS
    assert sum(total["outcomes"][o]["n"] for o in total["outcomes"]) == TRIALS
    restarts = [t["timings"]["recovery_ms"] for t in lines if t["timings"]["recovery_ms"]]
    assert total["recovery_ms"]["n"] == len(restarts)
    assert total["recovery_ms"]["max"] == round(max(restarts), 1)
    html = page.read_text()
    assert html.count("<svg") == 3 and "Worst trial" in html and "Typical trial" in html
