"""Campaigns without QEMU: the SPEC format and its errors, the schedule's
determinism, the workload and its model, the tcp workload's spec, schedule,
stream and verdicts, the invariants' verdicts, a worker's
refusal of another commit's trial, and the report's arithmetic and page on a
recorded campaign made here (tests/test_campaign_qemu.py runs real ones)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import random
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hwl.campaign import invariants, record, report, runner, tcp
from hwl.campaign.inject import REQUEST_TIMEOUT, settled
from hwl.campaign.schedule import Plan, plan, schedule
from hwl.campaign.spec import (
    BUILTINS,
    Spec,
    SpecError,
    TcpWorkload,
    Workload,
    builtin,
    load,
    parse,
    size_of,
)
from hwl.campaign.trial import Observed
from hwl.campaign.workload import Model, first_differences, operations
from hwl.cli.main import main as hwl_main
from hwl.machine.profile import Profile

# ------------------------------------------------------------------ spec


def disk(spec: Spec) -> Workload:
    """The spec's disk workload (the tcp one has no region)."""
    assert isinstance(spec.workload, Workload)
    return spec.workload


def test_builtins_parse_and_travel_as_json() -> None:
    for name in BUILTINS:
        spec = builtin(name)
        again = Spec.from_dict(json.loads(json.dumps(spec.to_dict())))
        assert again == spec
    smoke = builtin("smoke")
    assert {f.kind for f in smoke.faults} >= {"kill", "fi", "disk-error", "slow-disk", "pause"}
    assert disk(smoke).region == 8 << 20 and smoke.workload.bytes == 24 << 20


def test_a_spec_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        'profile = "my.cfg"\nrecovery_bound_ms = 900\n'
        '[workload]\nregion = "1M"\nbytes = "4M"\nmix = { rand-write = 1 }\n'
        "[timing]\nat_ms = [10, 20]\n"
        '[[fault]]\nkind = "fi"\ntype = "exception"\nweight = 2.5\ntargets = ["vfs"]\n'
    )
    spec = load(path)
    assert spec.name == "mine" and spec.profile == str(tmp_path / "my.cfg")
    assert spec.recovery_bound_ms == 900 and disk(spec).mix == {"rand-write": 1.0}
    assert disk(spec).region == 1 << 20 and spec.timing.at_ms == (10, 20)
    (fault,) = spec.faults
    assert (fault.kind, fault.weight, fault.targets) == ("fi", 2.5, ("vfs",))
    assert fault.settings == {"type": "exception"}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "no [[fault]]"),
        ('[[fault]]\nkind = "explode"\n', "fault[0].kind: 'explode' is not one of"),
        ('[[fault]]\nkind = "kill"\ncolour = 1\n', "fault[0]: unknown key 'colour'"),
        ('[[fault]]\nkind = "fi"\ntype = "melt"\n', "fault[0].type: 'melt' is not one of"),
        ('[[fault]]\nkind = "kill"\nweight = 0\n', "fault[0].weight: must be more than 0"),
        ('[[fault]]\nkind = "pause"\ntiming = "in-command"\n', "in-command is for process"),
        ('[[fault]]\nkind = "kill"\ntiming = "soon"\n', "'soon' is not one of"),
        ('[[fault]]\nkind = "kill"\nheal_after_ms = [5, 1]\n', "heal_after_ms: 5 > 1"),
        ('speed = 1\n[[fault]]\nkind = "kill"\n', "unknown key 'speed'"),
        ('[workload]\nbytes = "lots"\n[[fault]]\nkind = "kill"\n', "workload.bytes: 'lots'"),
        ('[workload]\noffset = 100\n[[fault]]\nkind = "kill"\n', "whole sectors"),
        ('[workload]\nmix = { dance = 1 }\n[[fault]]\nkind = "kill"\n', "unknown key 'dance'"),
        ('[[fault]]\nkind = "kill"\nsignal = 9\n', "a signal's name"),
        ("[[fault]\n", "not TOML"),
        ('[workload]\nkind = "ftp"\n[[fault]]\nkind = "kill"\n', "workload.kind: 'ftp'"),
        (
            '[workload]\nkind = "tcp"\ndevice = "x"\n[[fault]]\nkind = "kill"\n',
            "unknown key 'device'",
        ),
        ('[workload]\nkind = "tcp"\nchunk = "1M"\n[[fault]]\nkind = "kill"\n', "at most 65536"),
        (
            '[workload]\nkind = "tcp"\n[[fault]]\nkind = "disk-error"\n',
            "disk-error is not a fault of the tcp workload",
        ),
        ('[[fault]]\nkind = "link-down"\n', "link-down is not a fault of the disk workload"),
        (
            '[workload]\nkind = "tcp"\n[[fault]]\nkind = "kill"\ntiming = "in-command"\n',
            "disk only",
        ),
    ],
)
def test_spec_errors_name_the_file_and_the_key(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load(path)
    assert says in str(info.value) and str(path) in str(info.value)


def test_a_tcp_spec_aims_its_faults_at_the_nic() -> None:
    spec = parse(
        {"profile": "inet-nics", "workload": {"kind": "tcp", "nic": "rtl8139", "bytes": "1M"},
         "fault": [{"kind": "kill"}, {"kind": "link-down"}, {"kind": "fi", "type": "hang"}]},
        "t.toml",
    )  # fmt: skip
    assert spec.workload == TcpWorkload(nic="rtl8139", bytes=1 << 20)
    # process faults hit the driver, a link down its card's [hwl-net] (set_link's name)
    assert [f.targets for f in spec.faults] == [("rtl8139",), ("rtl8139-net",), ("rtl8139",)]
    assert Spec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert builtin("smoke").to_dict()["workload"]["kind"] == "disk"
    old = builtin("smoke").to_dict()
    del old["workload"]["kind"]  # a record from before the tcp workload
    assert Spec.from_dict(old) == builtin("smoke")


def test_sizes() -> None:
    assert [size_of(v, "x") for v in (512, "4K", "16M", "1GiB", "2 MB")] == [
        512, 4096, 16 << 20, 1 << 30, 2 << 20
    ]  # fmt: skip
    for bad in (-1, "4X", True, 1.5):
        with pytest.raises(SpecError):
            size_of(bad, "x")
    with pytest.raises(SpecError, match="no builtin spec 'nope'"):
        builtin("nope")


# -------------------------------------------------------------- schedule


def test_the_seed_fixes_the_schedule() -> None:
    spec = builtin("smoke")
    first = schedule(spec, 42, 50)
    assert schedule(spec, 42, 50) == first  # the same seed, the same plans
    assert schedule(spec, 42, 10) == first[:10]  # a trial's plan does not depend on N
    assert plan(spec, 42, 37) == first[37]  # nor on the order trials are drawn
    assert schedule(spec, 43, 50) != first
    assert [p.index for p in first] == list(range(50))
    assert len({p.seed for p in first}) == 50  # each trial its own workload
    assert all(Plan.from_dict(json.loads(json.dumps(p.to_dict()))) == p for p in first)


def test_the_mix_follows_its_weights() -> None:
    spec = builtin("smoke")
    kinds = Counter(p.kind for p in schedule(spec, 7, 3000))
    total = sum(f.weight for f in spec.faults)
    for kind in ("kill", "fi", "disk-error", "slow-disk", "pause"):
        weight = sum(f.weight for f in spec.faults if f.kind == kind)
        expected = 3000 * weight / total
        assert abs(kinds[kind] - expected) < 5 * expected**0.5, (kind, kinds)


def test_timings_are_drawn_within_their_ranges() -> None:
    spec = builtin("smoke")
    w = disk(spec)
    for p in schedule(spec, 11, 400):
        if p.timing == "after-bytes":
            assert p.after_bytes is not None
            assert spec.timing.after_bytes[0] <= p.after_bytes <= spec.timing.after_bytes[1]
        elif p.timing == "at-random":
            assert p.at_ms is not None and spec.timing.at_ms[0] <= p.at_ms <= spec.timing.at_ms[1]
        else:
            assert p.kind == "kill" and p.hold_ms == spec.timing.hold_ms and p.at_ms is not None
        if p.kind == "disk-error":
            assert w.offset <= p.settings["sector"] * 512 < w.offset + w.region
        if p.kind in ("slow-disk", "pause", "disk-error"):
            assert p.heal_after_ms is not None
        elif p.kind in ("kill", "fi"):
            assert p.heal_after_ms is None


def test_the_tcp_schedule() -> None:
    """tcp-smoke: the NIC driver's faults and its link's, timed by the bytes echoed
    or the clock, never in a disk command; a link down carries how long it stays."""
    spec = builtin("tcp-smoke")
    assert isinstance(spec.workload, TcpWorkload) and spec.profile == "inet"
    plans = schedule(spec, 5, 400)
    assert plans == schedule(spec, 5, 400) and plans[:7] == schedule(spec, 5, 7)
    assert {p.kind for p in plans} == {"kill", "fi", "link-down", "pause"}
    for p in plans:
        assert p.timing in ("after-bytes", "at-random")
        if p.timing == "after-bytes":
            assert p.after_bytes is not None
            assert spec.timing.after_bytes[0] <= p.after_bytes <= spec.timing.after_bytes[1]
        want = {"kill": "e1000", "fi": "e1000", "link-down": "e1000-net", "pause": "machine"}
        assert p.target == want[p.kind]
        if p.kind == "link-down":
            assert p.heal_after_ms is not None and 100 <= p.heal_after_ms <= 1000
        else:
            assert (p.heal_after_ms is None) == (p.kind != "pause")
    kinds = Counter(p.kind for p in schedule(spec, 8, 3000))
    total = sum(f.weight for f in spec.faults)
    expected = 3000 * 2 / total  # link-down's weight
    assert abs(kinds["link-down"] - expected) < 5 * expected**0.5


def test_the_tcp_stream_is_seeded_and_its_prefix_digest_is_sha256() -> None:
    a, b = tcp.stream(3, 1000), tcp.stream(3, 1000)
    rounds = [next(a) for _ in range(5)]
    assert rounds == [next(b) for _ in range(5)] and all(len(r) == 1000 for r in rounds)
    assert next(tcp.stream(4, 1000)) != rounds[0]
    whole = b"".join(rounds)
    for size in (0, 1, 999, 1000, 2500, 5000):
        assert tcp.prefix_digest(3, 1000, size) == hashlib.sha256(whole[:size]).hexdigest()


def test_r2_comes_from_the_profile_and_stretches_the_client_timeout(tmp_path: Path) -> None:
    stock = Profile.load("inet")
    assert tcp.r2_of(stock) == 100.0  # INET's default (RFC 1122: at least 100 s)
    old = 'args = "if=e1000:10.0.2.15/24,gw=10.0.2.2"'
    cfg = stock.path.read_text()
    assert old in cfg
    (tmp_path / "r2.cfg").write_text(cfg.replace(old, old[:-1] + ' --tcp-r2=2.5"'))
    assert tcp.r2_of(Profile.load(tmp_path / "r2.cfg")) == 2.5
    link = Plan(0, 1, "link-down", "e1000-net", "at-random", {}, at_ms=5, heal_after_ms=3000)
    assert tcp.request_timeout(link, 2.5) == 2.5 + REQUEST_TIMEOUT  # the abort comes first
    assert tcp.request_timeout(link, 100.0) == REQUEST_TIMEOUT
    kill = Plan(0, 1, "kill", "e1000", "at-random", {}, at_ms=5)
    assert tcp.request_timeout(kill, 2.5) == REQUEST_TIMEOUT


# -------------------------------------------------------------- workload


def test_operations_are_seeded_aligned_and_inside_the_region() -> None:
    w = disk(builtin("smoke"))
    a = operations(w, 5)
    b = operations(w, 5)
    ops = [next(a) for _ in range(500)]
    assert ops == [next(b) for _ in range(500)]
    for op, data in ops:
        assert op.position % 512 == 0 and op.size % 512 == 0 and op.size > 0
        assert w.offset <= op.position and op.position + op.size <= w.offset + w.region
        assert len(data) == (op.size if op.write else 0)
    assert {op.name for op, _ in ops} == {"seq-read", "rand-read", "rand-write"}
    seq = [op.position for op, _ in ops if op.sequential]
    assert seq[:3] == [w.offset, w.offset + w.chunk, w.offset + 2 * w.chunk]


def test_the_model_follows_writes_and_finds_differences(tmp_path: Path) -> None:
    image = tmp_path / "hd.img"
    image.write_bytes(random.Random(1).randbytes(64 << 10))
    model = Model(image, 8192, 16384)
    assert model.expect(8192, 512) == image.read_bytes()[8192 : 8192 + 512]
    model.write(9216, b"\xff" * 512)
    assert model.expect(9216, 512) == b"\xff" * 512
    assert model.mismatches(image) == [9216]  # the image did not get the write
    with image.open("r+b") as f:
        f.seek(9216)
        f.write(b"\xff" * 512)
    assert model.mismatches(image) == []
    assert first_differences(0, b"a" * 1024, b"a" * 512) == [512]  # short counts as different


# ------------------------------------------------------------ invariants


def observed(kind: str = "kill", **changes: Any) -> Observed:
    settings = {"once": False, "op": "read", "sector": 100} if kind == "disk-error" else {}
    p = Plan(0, 1, kind, "at_wini" if kind == "kill" else "hd0", "at-random", settings, at_ms=5)
    obs = Observed(p, kind == "kill", start_mono=100.0)
    obs.model = Model.__new__(Model)
    obs.ops, obs.moved = 10, 4096
    obs.fault = {"kind": kind, "id": 7}
    table = {"at_wini": (10, 0), "vfs": (11, 0)}
    obs.before, obs.after = dict(table), dict(table)
    inject = {"event": "fault-inject", "mono": 100.010, "fault": {"id": 7}}
    obs.events = [inject]
    if kind == "kill":
        obs.after["at_wini"] = (12, 1)
        obs.events += [
            {"event": "crash", "label": "at_wini", "mono": 100.012},
            {"event": "restart", "label": "at_wini", "mono": 100.050},
        ]
    else:
        obs.events.append({"event": "fault-heal", "mono": 100.200, "fault": {"id": 7}})
    obs.timeline = [[5.0, 512, 1], [55.0, 512, 1], [60.0, 512, 1], [300.0, 512, 1]]
    for key, value in changes.items():
        setattr(obs, key, value)
    return obs


def test_a_clean_kill_is_recovered_and_timed() -> None:
    result = invariants.judge(builtin("smoke"), observed())
    assert result["outcome"] == "recovered" and result["ok"]
    assert result["marks"]["inject"] == pytest.approx(10.0)
    assert result["marks"]["restart"] == pytest.approx(50.0)
    assert result["marks"]["first_good"] == 55.0
    assert result["timings"]["recovery_ms"] == pytest.approx(45.0)


def test_a_restart_counts_as_settled_only_after_good_replies_that_followed_it() -> None:
    """RS is on no request's path: requests go on being answered while it restarts.
    The trial may end only after AFTER_OPS good replies that came after the restart
    event, or the recovery has no first good reply to time."""
    obs = observed()
    obs.events = obs.events[:2]  # injected, crashed, not yet back
    obs.timeline = [[20.0, 512, 1], [30.0, 512, 1], [40.0, 512, 1]]
    system = SimpleNamespace(events=lambda: obs.events)
    inj = SimpleNamespace(done=True, error=None, inject_mono=100.010, plan=obs.plan)
    assert not settled(inj, system, obs, good_after=3)  # type: ignore[arg-type]
    obs.events.append({"event": "restart", "label": "at_wini", "mono": 100.045})
    assert not settled(inj, system, obs, good_after=3)  # type: ignore[arg-type]
    obs.timeline += [[50.0, 512, 1], [52.0, 512, 0]]
    assert not settled(inj, system, obs, good_after=4)  # type: ignore[arg-type]
    obs.timeline.append([55.0, 512, 1])
    assert settled(inj, system, obs, good_after=5)  # type: ignore[arg-type]
    assert invariants.judge(builtin("smoke"), obs)["marks"]["first_good"] == 50.0


def test_outcomes_worst_first() -> None:
    spec = builtin("smoke")
    bad_read = [{"position": 0, "size": 512, "sectors": [0], "t_ms": 1}]
    cases = [
        (observed(infra="boot failed"), "infrastructure error"),
        (observed(core_death="RS died", corrupt_reads=bad_read), "isolation breach"),
        (observed(leftovers=[123]), "isolation breach"),
        (
            observed(core_restarts=["RS (pid 9) died: ...; the kernel restarted it: pid 10"]),
            "isolation breach",
        ),
        (observed(corrupt_reads=bad_read), "silent corruption"),
        (observed(image_mismatches=[4096]), "silent corruption"),
        (observed(timed_out="vfs read: timeout"), "hang"),
    ]
    for obs, want in cases:
        result = invariants.judge(spec, obs)
        assert (result["outcome"], result["ok"]) == (want, False), (want, result["invariants"])
    other = observed()
    other.after["vfs"] = (13, 1)  # not the target, yet restarted
    assert invariants.judge(spec, other)["outcome"] == "isolation breach"
    slow = invariants.judge(dataclasses.replace(spec, recovery_bound_ms=20), observed())
    assert slow["outcome"] == "hang" and "bound 20" in slow["invariants"]["recovery"]["detail"]
    lost = observed()
    lost.events = lost.events[:2]  # crashed, never restarted
    assert "not restarted" in invariants.judge(spec, lost)["invariants"]["recovery"]["detail"]


def test_client_errors_only_where_the_fault_makes_them_right() -> None:
    spec = builtin("smoke")
    right = {"op": "rand-read", "position": 100 * 512 - 512, "size": 1024, "errno": "EIO",
             "start_ms": 50.0, "t_ms": 60.0}  # fmt: skip
    result = invariants.judge(spec, observed("disk-error", errors=[right]))
    assert (result["outcome"], result["ok"]) == ("degraded", True)
    wrong = [
        {**right, "position": 200 * 512},  # does not touch the bad sector
        {**right, "errno": "EINVAL"},
        {**right, "op": "rand-write"},  # the error is on reads
        {**right, "start_ms": 250.0, "t_ms": 260.0},  # after the heal
    ]
    for error in wrong:
        result = invariants.judge(spec, observed("disk-error", errors=[error]))
        assert (result["outcome"], result["ok"]) == ("degraded", False), error
    kill = invariants.judge(spec, observed(errors=[right]))
    assert not kill["invariants"]["client_errors"]["ok"]  # a kill must cost no error


def tcp_observed(kind: str = "kill", held_ms: int = 500, **tcp_changes: Any) -> Observed:
    """A tcp trial that went right: its fault on the e1000 driver (or its link)."""
    target = {"kill": "e1000", "link-down": "e1000-net"}[kind]
    p = Plan(0, 1, kind, target, "at-random", {}, at_ms=5,
             heal_after_ms=held_ms if kind == "link-down" else None)  # fmt: skip
    obs = Observed(p, kind == "kill", start_mono=100.0)
    obs.ops, obs.moved = 64, 2 << 20
    obs.fault = {"kind": kind, "id": 7}
    table = {"e1000": (10, 0), "inet": (11, 0)}
    obs.before, obs.after = dict(table), dict(table)
    obs.events = [{"event": "fault-inject", "mono": 100.010, "fault": {"id": 7}}]
    if kind == "kill":
        obs.after["e1000"] = (12, 1)
        obs.events += [
            {"event": "crash", "label": "e1000", "mono": 100.012},
            {"event": "restart", "label": "e1000", "mono": 100.050},
        ]
    else:
        heal = 100.010 + held_ms / 1000
        obs.events.append({"event": "fault-heal", "mono": heal, "fault": {"id": 7}})
    obs.timeline = [[5.0, 7680, 1], [1300.0, 7680, 1], [1400.0, 7680, 1]]
    obs.tcp = {"sent": 2 << 20, "received": 2 << 20, "linux_read": 2 << 20,
               "to_linux_equal": True, "from_linux_equal": True, "complete": True,
               "linux_error": None, "linux_resets": dict.fromkeys(tcp.RESETS, 0),
               "r2_s": 100.0, **tcp_changes}  # fmt: skip
    return obs


def test_tcp_invariants() -> None:
    spec = builtin("tcp-smoke")
    good = invariants.judge(spec, tcp_observed())
    assert (good["outcome"], good["ok"]) == ("recovered", True), good["invariants"]
    assert set(good["invariants"]) == {"bytes", "connection", "isolation", "recovery",
                                       "no_leftovers"}  # fmt: skip
    assert "SHA-256 equal both ways" in good["invariants"]["bytes"]["detail"]
    assert good["timings"]["recovery_ms"] == pytest.approx(1290.0)  # inject -> first byte
    assert good["tcp"]["r2_s"] == 100.0
    link = invariants.judge(spec, tcp_observed("link-down"))
    assert link["ok"], link["invariants"]
    assert "after the heal" in link["invariants"]["recovery"]["detail"]
    cases = [
        (tcp_observed(to_linux_equal=False), "silent corruption", "bytes"),
        (tcp_observed(from_linux_equal=False), "silent corruption", "bytes"),
        (tcp_observed(complete=False, linux_read=1 << 20), "silent corruption", "bytes"),
        (tcp_observed(linux_error="ConnectionResetError: reset"), "degraded", "connection"),
        (tcp_observed(linux_resets={"TcpEstabResets": 1}), "degraded", "connection"),
    ]
    for obs, outcome, broken in cases:
        result = invariants.judge(spec, obs)
        assert (result["outcome"], result["ok"]) == (outcome, False), result["invariants"]
        assert not result["invariants"][broken]["ok"]
    wrong = tcp_observed()
    wrong.corrupt_reads = [{"position": 0, "size": 7680, "first": 12, "t_ms": 1350.0}]
    result = invariants.judge(spec, wrong)
    assert result["outcome"] == "silent corruption"
    assert "differs at byte 12" in result["invariants"]["bytes"]["detail"]
    slow = tcp_observed("link-down")
    slow.timeline = [[5.0, 7680, 1], [6000.0, 7680, 1]]  # 5.5 s after the heal, bound 5
    assert invariants.judge(spec, slow)["outcome"] == "hang"


def test_an_abort_is_right_only_after_a_link_down_as_long_as_r2() -> None:
    """ETIMEDOUT ends the connection rightly when the link stayed down at least R2
    (nothing could move for that long); after a shorter one, or a kill, it is wrong."""
    spec = builtin("tcp-smoke")
    abort = {"op": "recv", "position": 1 << 20, "size": 32768, "errno": "ETIMEDOUT",
             "start_ms": 100.0, "t_ms": 2100.0}  # fmt: skip
    ended: dict[str, Any] = {"complete": False, "linux_read": 1 << 20, "received": 1 << 20,
             "linux_error": "ConnectionResetError: reset",
             "linux_resets": {"TcpEstabResets": 1}}  # fmt: skip
    right = tcp_observed("link-down", held_ms=3000, r2_s=2.0, **ended)
    right.errors = [abort]
    result = invariants.judge(spec, right)
    assert (result["outcome"], result["ok"]) == ("degraded", True), result["invariants"]
    assert "a prefix of the stream" in result["invariants"]["bytes"]["detail"]
    short = tcp_observed("link-down", held_ms=1000, r2_s=2.0, **ended)
    reset = tcp_observed("link-down", held_ms=3000, r2_s=2.0, **ended)
    kill = tcp_observed(r2_s=2.0, **ended)
    for obs, error in ((short, abort), (reset, {**abort, "errno": "ECONNRESET"}), (kill, abort)):
        obs.errors = [error]
        result = invariants.judge(spec, obs)
        assert (result["outcome"], result["ok"]) == ("degraded", False), result["invariants"]
        assert "no fault explains" in result["invariants"]["connection"]["detail"]


def test_a_worker_refuses_a_trial_from_another_commit(tmp_path: Path) -> None:
    spec = builtin("smoke")
    p = plan(spec, 1, 3)
    line = runner.run_task(spec.to_dict(), p.to_dict(), str(tmp_path / "r"), "0" * 40, 1)
    assert line["outcome"] == "infrastructure error" and not line["ok"]
    assert "refused" in line["infra"] and "0" * 40 in line["infra"]
    assert line["trial"] == 3 and not (tmp_path / "r").exists()  # nothing was booted


# ---------------------------------------------------------------- report


def test_wilson_and_percentiles() -> None:
    lo, hi = report.wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = report.wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert report.wilson(20, 20)[1] == 1.0 and report.wilson(20, 20)[0] == pytest.approx(
        0.8389, abs=1e-4
    )
    values = [float(v) for v in range(1, 101)]
    assert report.percentile(values, 50) == 50.5
    assert report.percentile(values, 99) == pytest.approx(99.01)
    assert report.percentile([3.0], 99) == 3.0 and report.percentile([], 50) is None


def recorded(tmp_path: Path) -> Path:
    """A campaign directory as a run leaves it: 10 trials of known outcomes."""
    out = tmp_path / "rec"
    spec = builtin("smoke")
    record.write_header(out, {"spec": spec.to_dict(), "seed": 9, "trials": 10,
                              "hwl_commit": "abc", "started": "now"})  # fmt: skip
    rows: list[tuple[str, dict[str, Any], str, float | None]] = [
        ("kill", {}, "recovered", 40.0),
        ("kill", {}, "recovered", 60.0),
        ("kill", {}, "recovered", 50.0),
        ("kill", {}, "hang", None),
        ("fi", {"type": "crash"}, "recovered", 30.0),
        ("fi", {"type": "crash"}, "silent corruption", 70.0),
        ("disk-error", {"once": False}, "degraded", None),
        ("disk-error", {"once": True}, "recovered", None),
        ("pause", {}, "recovered", None),
        ("pause", {}, "isolation breach", None),
    ]
    for i, (kind, settings, outcome, ms) in enumerate(rows):
        ok = outcome in ("recovered", "degraded")
        line = {
            "schema": 1, "trial": i, "plan": {"kind": kind, "settings": settings},
            "fault": {"kind": kind}, "outcome": outcome, "ok": ok,
            "invariants": {"bytes": {"ok": ok, "detail": "x"}},
            "timings": {"recovery_ms": ms},
            "marks": {"inject": 10.0, "crash": 12.0, "restart": 40.0, "driver_up": 40.0,
                      "first_good": 10.0 + (ms or 0), "heal": None},
            "timeline": [[float(t), 65536, 1] for t in range(0, 200, 5)],
        }  # fmt: skip
        record.append(out, line)
    return out


def test_report_numbers_on_a_recorded_campaign(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = recorded(tmp_path)
    page = tmp_path / "r.html"
    assert hwl_main(["report", str(out), "--json", "--html", str(page)]) == 0
    got = json.loads(capsys.readouterr().out)
    s = got["summary"]
    assert s["trials"] == 10 and s["ok"] == 7 and s["recovered_ratio"] == 0.7
    assert (s["silent_corruptions"], s["isolation_breaches"], s["hangs"]) == (1, 1, 1)
    assert s["failing"] == [3, 5, 9]
    assert s["recovery_p50_ms"] == 50.0 and s["recovery_max_ms"] == 70.0
    assert s["recovery_p99_ms"] == pytest.approx(69.6)  # 60 + 0.96 * 10
    rows = {r["fault"]: r for r in got["table"]}
    assert set(rows) == {"kill", "fi crash", "disk-error persistent", "disk-error once",
                         "pause", "all"}  # fmt: skip
    kill = rows["kill"]
    assert kill["trials"] == kill["injected"] == 4
    assert kill["outcomes"]["recovered"]["n"] == 3 and kill["outcomes"]["hang"]["n"] == 1
    assert kill["outcomes"]["recovered"]["ci95"] == list(report.wilson(3, 4))
    assert kill["recovery_ms"] == {"n": 3, "p50": 50.0, "p95": 59.0, "p99": 59.8, "max": 60.0}
    assert rows["all"]["outcomes"]["silent corruption"]["n"] == 1
    html = page.read_text()
    assert html.count("<svg") == 3  # the distribution and two timelines
    assert "Worst trial: trial 3" in html  # the first failing one
    assert "Typical trial: trial 2" in html  # recovery 50 ms, the median


def test_report_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = recorded(tmp_path)
    assert hwl_main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    assert "kill" in text and "3 [30-95%]" in text  # 3 of 4 recovered, Wilson in %
    assert "failing trials" in text and "  5: silent corruption (fi crash)" in text


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_only_on_a_terminal() -> None:
    term = Terminal()
    bar = runner.Progress(4, term)
    for ok in (True, False, True, True):
        bar.update(ok)
    lines = term.getvalue().split("\r")[1:]
    assert len(lines) == 4 and lines[0].startswith("[" + "#" * 7 + ".")
    assert "2/4 trials, 1 failing" in lines[1] and lines[3].endswith("\n")
    plain = io.StringIO()
    quiet = runner.Progress(2, plain)
    quiet.update(True)
    assert plain.getvalue() == "" and quiet.done == 1
