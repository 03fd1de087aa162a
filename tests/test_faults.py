"""hwl.faults without QEMU: Linux's trigger semantics (seeded, so reproducible),
the Fault base (events in the log, the registry, the context manager, heal once),
and the blkdebug rules a disk error asks QEMU for. The faults themselves act on
real processes in test_faults_process.py and on real QEMU in test_faults_qemu.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwl import faults
from hwl.faults import DiskError, DiskStall, Fault, FaultError, SlowDisk, Trigger
from hwl.faults.qemu import QemuHost
from hwl.system.events import append_event, read_events

# ------------------------------------------------------------------ triggers


def fires(trigger: Trigger, n: int, size: int = 1) -> list[int]:
    """The opportunities (0-based) among ``n`` at which ``trigger`` fires."""
    return [i for i in range(n) if trigger.should_fail(size)]


def test_the_default_trigger_fires_at_every_opportunity() -> None:
    assert fires(Trigger(), 50) == list(range(50))


@given(st.integers(0, 20), st.integers(0, 60))
def test_times_caps_the_failures(times: int, n: int) -> None:
    t = Trigger(times=times)
    assert fires(t, n) == list(range(min(times, n)))
    assert t.exhausted == (n >= times)


@given(st.integers(1, 10), st.integers(0, 100))
def test_interval_fails_every_nth_opportunity(interval: int, n: int) -> None:
    assert fires(Trigger(interval=interval), n) == [i for i in range(n) if (i + 1) % interval == 0]


@given(st.integers(0, 5000), st.integers(1, 700))
def test_space_holds_failures_back_until_the_budget_is_spent(space: int, size: int) -> None:
    """Linux: while ``space > size`` the opportunity spends ``size`` and passes."""
    t = Trigger(space=space)
    first = next(i for i in range(space + 2) if t.should_fail(size))
    assert first == (space - 1) // size if space > size else first == 0
    assert t.should_fail(size)  # the budget stays spent


def test_space_then_times_is_after_k_bytes_once() -> None:
    t = Trigger(space=1 << 20, times=1)
    chunk = 64 << 10
    hits = fires(t, 64, chunk)
    assert hits == [15]  # Linux: it fires once no more than one chunk is left
    assert t.fired == 1 and t.opportunities == 64


@given(st.integers(0, 2**32), st.floats(0.5, 99.5))
def test_a_seed_replays_the_same_failures(seed: int, probability: float) -> None:
    a, b = Trigger(probability=probability, seed=seed), Trigger(probability=probability, seed=seed)
    first = fires(a, 200)
    assert first == fires(b, 200)
    a.reset()
    assert fires(a, 200) == first


def test_probability_is_a_percentage_of_opportunities() -> None:
    n = 20000
    for p in (0.0, 1.0, 25.0, 80.0, 100.0):
        count = len(fires(Trigger(probability=p, seed=42), n))
        assert abs(count - n * p / 100) <= max(4 * (n * p / 100 * (1 - p / 100)) ** 0.5, 0), p


def test_interval_and_probability_combine_in_linux_order() -> None:
    """The interval counts the opportunities that got past times and space; the
    probability is drawn only for the interval's chosen ones."""
    t = Trigger(interval=3, probability=50, seed=1, space=10)
    hits = fires(t, 300)
    assert hits and all(i >= 9 for i in hits)  # space: 9 pass, then 1 is left (size 1)
    assert all((i - 8) % 3 == 0 for i in hits)  # every 3rd from there
    assert 20 <= len(hits) <= 80  # about half of the ~97 chosen


def test_pick_offers_each_item_once_in_order() -> None:
    t = Trigger(probability=10, seed=3)
    picked = t.pick(range(1000))
    assert 50 <= len(picked) <= 150 and picked == sorted(picked)
    t.reset()
    assert t.pick(range(1000)) == picked


@pytest.mark.parametrize(
    "kwargs",
    [{"probability": -1}, {"probability": 101}, {"interval": 0}, {"times": -2}, {"space": -1}],
)
def test_nonsense_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Trigger(**kwargs)


def test_describe_is_json_and_names_linux_attributes() -> None:
    d = Trigger(probability=5, interval=2, times=3, space=4, seed=9).describe()
    assert json.loads(json.dumps(d)) == {
        "probability": 5.0,
        "interval": 2,
        "times": 3,
        "space": 4,
        "seed": 9,
    }


# ---------------------------------------------------------------- the base


class Toy(Fault):
    """A fault that flips a flag: what the base class does around it."""

    kind = "toy"

    def __init__(self, run_dir: Path, fail_heal: bool = False, **kw: Any) -> None:
        super().__init__(run_dir, **kw)
        self.on = False
        self.fail_heal = fail_heal

    def target(self) -> str:
        return "toybox"

    def params(self) -> dict[str, Any]:
        return {"colour": "red"}

    def _inject(self) -> None:
        self.on = True
        self.detail["handle"] = 7

    def _heal(self) -> None:
        self.on = False
        if self.fail_heal:
            raise OSError("stuck")


class Zap(Toy):
    kind = "zap"
    instant = True


@pytest.fixture(autouse=True)
def no_fault_left() -> Any:
    yield
    left = faults.active()
    faults.heal_all()
    assert not left, f"a test left faults injected: {left}"


def fault_events(run_dir: Path) -> list[dict[str, Any]]:
    return [e for e in read_events(run_dir / "events.jsonl") if e["event"].startswith("fault-")]


def test_inject_and_heal_write_events_beside_rs_own(tmp_path: Path) -> None:
    append_event(tmp_path / "events.jsonl", "up", label="at_wini", pid=123)  # as RS would
    toy = Toy(tmp_path)
    with toy as same:
        assert same is toy and toy.on and toy.injected
        assert faults.active() == [toy]
    assert not toy.on and not toy.injected and faults.active() == []
    events = read_events(tmp_path / "events.jsonl")
    assert [e["event"] for e in events] == ["up", "fault-inject", "fault-heal"]
    inject, heal = events[1], events[2]
    assert inject["fault"] == {
        "kind": "toy",
        "id": toy.id,
        "target": "toybox",
        "colour": "red",
        "trigger": Trigger().describe(),
        "handle": 7,
    }
    assert "pid" not in inject and "label" not in inject  # RS's readers key on those
    assert events[0]["mono"] <= inject["mono"] <= heal["mono"]
    assert inject["time"] <= heal["time"]


def test_a_fault_is_injected_once_at_a_time(tmp_path: Path) -> None:
    toy = Toy(tmp_path)
    toy.inject()
    with pytest.raises(FaultError, match="injected already"):
        toy.inject()
    toy.heal()
    toy.heal()  # healed already: nothing, no second event
    assert [e["event"] for e in fault_events(tmp_path)] == ["fault-inject", "fault-heal"]


def test_an_instant_fault_is_never_active(tmp_path: Path) -> None:
    zap = Zap(tmp_path)
    with zap:
        assert zap.on and not zap.injected and faults.active() == []
    assert zap.on  # nothing undone
    assert [e["event"] for e in fault_events(tmp_path)] == ["fault-inject"]
    zap.inject()  # may strike again
    assert len(fault_events(tmp_path)) == 2


def test_heal_all_heals_newest_first_and_reports_failures(tmp_path: Path) -> None:
    a, b, c = Toy(tmp_path), Toy(tmp_path, fail_heal=True), Toy(tmp_path)
    for f in (a, b, c):
        f.inject()
    assert faults.active() == [a, b, c]
    failed = faults.heal_all()
    assert [(f, str(e)) for f, e in failed] == [(b, "stuck")]
    assert faults.active() == [] and not a.on and not c.on
    heals = [e for e in fault_events(tmp_path) if e["event"] == "fault-heal"]
    assert [e["fault"]["id"] for e in heals] == [c.id, b.id, a.id]
    assert heals[1]["error"] == "stuck" and "error" not in heals[0]


def test_offer_injects_when_the_trigger_fires(tmp_path: Path) -> None:
    toy = Toy(tmp_path, trigger=Trigger(space=100, times=1))
    assert [toy.offer(30) for _ in range(3)] == [False, False, False]  # 10 left
    assert toy.offer(30) and toy.on
    assert not toy.offer(30)  # in place already
    toy.heal()
    assert not toy.offer(30)  # times: used up
    assert [e["event"] for e in fault_events(tmp_path)] == ["fault-inject", "fault-heal"]


def test_a_missing_run_dir_loses_the_event_not_the_heal(tmp_path: Path) -> None:
    toy = Toy(tmp_path / "gone")
    toy.inject()
    toy.heal()
    assert not toy.on and faults.active() == []


# ------------------------------------------------------ disk faults, offline


class NoMachine:
    run_dir = Path("/nonexistent")
    qmp = None


HOST = cast(QemuHost, NoMachine())


def test_disk_error_rules_are_blkdebug_s() -> None:
    fault = DiskError(HOST, "hd0", range(8, 10), "any", once=True)
    assert fault.rules([8]) == [
        {"event": "read_aio", "iotype": "read", "errno": 5, "sector": 8, "once": True},
        {"event": "write_aio", "iotype": "write", "errno": 5, "sector": 8, "once": True},
    ]
    d = fault.describe()
    assert (d["kind"], d["target"], d["range"], d["op"]) == ("disk-error", "hd0", [8, 9], "any")


def test_disk_faults_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        DiskError(HOST, "hd0", [], "read")
    with pytest.raises(ValueError):
        DiskError(HOST, "hd0", range(5000), "read")
    with pytest.raises(ValueError):
        DiskError(HOST, "hd0", 1, "erase")
    with pytest.raises(ValueError):
        SlowDisk(HOST, "hd0")
    with pytest.raises(ValueError):
        DiskStall(HOST, "hd0", op="write")


def test_a_qemu_fault_on_a_stopped_machine_says_so() -> None:
    with pytest.raises(FaultError, match="not running"):
        DiskError(HOST, "hd0", 1).inject()
    assert faults.active() == []
