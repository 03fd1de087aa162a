"""The tcp workload's campaigns on real machines (profile ``inet``: the e1000 behind
INET, Linux's own TCP in the machine's namespace echoing): a short tcp-smoke
campaign where every invariant holds; a wrong NIC driver (tests/programs/
wrong_e1000.py: e1000 that swaps two words of the TCP data it receives after its
first restart, which TCP's checksum cannot see) found as silent corruption, and the
report saying which invariant broke; and a link held down longer than INET's R2,
where the connection's abort (ETIMEDOUT) is the right answer.

Each trial boots and closes its own machine; no_leftovers checks every process of
it is gone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hwl.campaign import record
from hwl.campaign.runner import Campaign
from hwl.campaign.spec import builtin
from hwl.cli.main import main as hwl_main

pytestmark = pytest.mark.qemu

SEED = 32  # its 6 plans: link-down, pause, fi crash, fi exception twice, kill
TRIALS = 6
REPO = Path(__file__).resolve().parents[1]
WRONG = REPO / "tests" / "programs" / "wrong_e1000.py"
INVARIANTS = {"bytes", "connection", "isolation", "recovery", "no_leftovers"}


def profile(tmp_path: Path, old: str, new: str) -> str:
    """The stock inet profile with one line changed; its path."""
    cfg = (REPO / "qemu-configs" / "inet.cfg").read_text()
    assert old in cfg
    path = tmp_path / "mine.cfg"
    path.write_text(cfg.replace(old, new))
    return str(path)


def test_tcp_smoke_every_invariant_holds(tmp_path: Path) -> None:
    out = tmp_path / "tcp"
    summary = Campaign(builtin("tcp-smoke"), SEED, TRIALS, out, jobs=1).run()
    lines = record.read_trials(out)
    assert [t["trial"] for t in lines] == list(range(TRIALS))
    for t in lines:
        failed = {k: v for k, v in t["invariants"].items() if not v["ok"]}
        assert t["ok"] and not failed, f"trial {t['trial']}: {t['outcome']} {failed} {t['infra']}"
        assert set(t["invariants"]) == INVARIANTS and t["outcome"] == "recovered"
        assert t["fault"]["kind"] == t["plan"]["kind"]  # injected, as planned
        tcp = t["tcp"]
        assert tcp["complete"] and tcp["to_linux_equal"] and tcp["from_linux_equal"]
        assert tcp["linux_read"] == tcp["received"] == tcp["sent"] >= 2 << 20
        assert tcp["linux_error"] is None and not any(tcp["linux_resets"].values())
        assert not t["client"]["errors"] and not t["client"]["corrupt_reads"]
        m = t["marks"]
        if t["plan"]["kind"] in ("kill", "fi"):  # the driver restarted, bytes moved after
            assert m["inject"] <= m["crash"] <= m["restart"] <= m["first_good"]
            assert t["timings"]["recovery_ms"] is not None
        else:  # a link down or a pause: bytes moved again after the heal
            assert m["inject"] <= m["heal"] <= m["first_good"]
            assert "after the heal" in t["invariants"]["recovery"]["detail"]
    assert {t["plan"]["kind"] for t in lines} == {"kill", "fi", "link-down", "pause"}
    assert summary["failing"] == [] and summary["recovered_ratio"] == 1.0
    assert not list((out / record.RUNS).glob("trial-*"))


def test_a_wrong_nic_driver_is_silent_corruption_and_the_report_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = profile(tmp_path, 'program = "hwl.drivers.e1000"', f'program = "{WRONG}"')
    spec = tmp_path / "wrong.toml"
    spec.write_text(
        f'name = "wrong-nic"\nprofile = "{cfg}"\ntrial_timeout = 30\n'
        '[workload]\nkind = "tcp"\nbytes = "1M"\n'
        '[timing]\nafter_bytes = ["256K", "256K"]\n[[fault]]\nkind = "kill"\n'
        'timing = "after-bytes"\n'
    )
    out = tmp_path / "out"
    argv = ["campaign", "run", str(spec), "--trials", "1", "--seed", "3", "--out", str(out)]
    assert hwl_main([*argv, "--json"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["silent_corruptions"] == 1 and summary["failing"] == [0]
    (t,) = record.read_trials(out)
    assert t["outcome"] == "silent corruption" and not t["ok"]
    assert not t["invariants"]["bytes"]["ok"] and t["client"]["corrupt_reads"]
    assert t["invariants"]["isolation"]["ok"] and t["invariants"]["connection"]["ok"]
    assert t["marks"]["restart"] <= t["client"]["corrupt_reads"][0]["t_ms"]
    assert (Path(t["run_dir"]) / "e1000.log").exists()  # kept, as evidence
    assert hwl_main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    assert "0: silent corruption (kill): bytes:" in text and "came back wrong" in text
