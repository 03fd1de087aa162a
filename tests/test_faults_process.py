"""hwl.faults' process faults on real processes (a kernel whose root is RS, the
echo service; no QEMU): a signal, a stop and its heal, ``service fi`` of each
type; each logged as ``fault-inject`` (and ``fault-heal``) beside RS's events."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest
from rs_fixtures import RsSystem, echo_argv, pid_alive, wait_for

from hwl import faults
from hwl.faults import FaultError, Fi, Kill, Stop, Trigger
from hwl.ipc.client import IpcError, IpcTimeout
from hwl.proto.rs import Policy
from hwl.proto.sef import FiType


@pytest.fixture(scope="module")
def rs() -> Iterator[RsSystem]:
    with RsSystem.running() as system:
        yield system


@pytest.fixture(autouse=True)
def healed() -> Iterator[None]:
    yield
    assert not faults.heal_all()


def fault_events(rs: RsSystem, fault: faults.Fault) -> list[dict[str, Any]]:
    return [
        e for e in rs.events() if e["event"].startswith("fault-") and e["fault"]["id"] == fault.id
    ]


def test_kill_with_sigkill_is_recovered_by_rs(rs: RsSystem) -> None:
    label = rs.label("kill")
    endpoint = rs.rs.up(echo_argv("K"), label=label, policy=Policy.RESTART)
    pid = rs.row(label).pid
    fault = Kill(rs, label)
    with fault:
        assert faults.active() == []  # instant
    after = rs.wait_up(label, 1)
    assert after.pid != pid and after.endpoint == endpoint
    [inject] = fault_events(rs, fault)
    assert inject["event"] == "fault-inject"
    assert inject["fault"]["pid"] == pid and inject["fault"]["signal"] == "SIGKILL"
    assert inject["fault"]["target"] == label and "label" not in inject
    crash = rs.wait_event(label, "crash")
    assert inject["mono"] <= crash["mono"] and "signal 9" in crash["how"]
    rs.down(label)


def test_kill_with_sigterm_ends_the_service_gracefully(rs: RsSystem) -> None:
    label = rs.label("term")
    rs.rs.up(echo_argv("T"), label=label, policy=Policy.RESTART)
    pid = rs.row(label).pid
    Kill(rs, label, signal.SIGTERM).inject()
    wait_for(f"{pid} to end", lambda: not pid_alive(pid))
    assert rs.wait_up(label, 1).pid != pid  # RS restarts a service that exits unasked
    rs.down(label)


def test_stop_hangs_the_service_until_healed(rs: RsSystem) -> None:
    """No heartbeat: nobody notices the stop; heal continues the same process."""
    label = rs.label("stop")
    endpoint = rs.rs.up(echo_argv("S"), label=label)
    pid = rs.row(label).pid
    stop = Stop(rs, label)
    with stop:
        assert faults.active() == [stop]
        with pytest.raises(IpcTimeout):
            rs.conn.sendrec(endpoint, 1, {}, timeout=0.5)
    assert faults.active() == []
    answer = rs.echo(endpoint)
    assert answer["pid"] == pid and answer["restarts"] == 0
    assert [e["event"] for e in fault_events(rs, stop)] == ["fault-inject", "fault-heal"]
    assert fault_events(rs, stop)[1]["fault"]["continued"] is True
    rs.down(label)


def test_stop_under_a_heartbeat_is_a_hang_rs_recovers(rs: RsSystem) -> None:
    label = rs.label("stophb")
    endpoint = rs.rs.up(echo_argv("H"), label=label, period=6, policy=Policy.RESTART)
    pid = rs.row(label).pid
    stop = Stop(rs, label)
    stop.inject()
    after = rs.wait_up(label, 1, timeout=10)
    stop.heal()
    assert after.pid != pid and after.endpoint == endpoint
    assert rs.event_names(label) == ["up", "heartbeat-missed", "crash", "restart"]
    heal = fault_events(rs, stop)[1]
    assert heal["event"] == "fault-heal" and heal["fault"]["continued"] is False
    rs.down(label)


@pytest.mark.parametrize("kind", [FiType.CRASH, FiType.HANG, FiType.EXCEPTION])
def test_fi_types_that_kill_are_restarted(rs: RsSystem, kind: FiType) -> None:
    label = rs.label(f"fi{kind.option}")
    endpoint = rs.rs.up(echo_argv("F"), label=label, period=6, policy=Policy.RESTART)
    fault = Fi(rs, label, kind)
    fault.inject()
    if kind is FiType.EXCEPTION:  # it waits for the next request
        wait_for("the fault armed", lambda: "armed" in (rs.run_dir / f"{label}.log").read_text())
        with pytest.raises(IpcError):
            rs.echo(endpoint)
    rs.wait_up(label, 1, timeout=10)
    crash = rs.wait_event(label, "crash")
    assert crash["reason"] == f"fault injection ({kind.option})"
    [inject] = fault_events(rs, fault)
    assert inject["fault"]["type"] == kind.option and inject["mono"] <= crash["mono"]
    rs.down(label)


def test_fi_drop_reply_costs_one_reply(rs: RsSystem) -> None:
    label = rs.label("fidrop")
    endpoint = rs.rs.up(echo_argv("D"), label=label)
    Fi(rs, label, FiType.DROP_REPLY).inject()
    wait_for("the fault armed", lambda: "armed" in (rs.run_dir / f"{label}.log").read_text())
    with pytest.raises(IpcTimeout):
        rs.conn.sendrec(endpoint, 1, {}, timeout=1.0)
    assert rs.echo(endpoint)["count"] == 2
    assert rs.row(label).restarts == 0
    rs.down(label)


def test_offer_fires_on_the_triggers_opportunity(rs: RsSystem) -> None:
    label = rs.label("offer")
    rs.rs.up(echo_argv("O"), label=label, policy=Policy.RESTART)
    fault = Kill(rs, label, trigger=Trigger(interval=3, times=1))
    assert [fault.offer() for _ in range(5)] == [False, False, True, False, False]
    rs.wait_up(label, 1)
    assert len(fault_events(rs, fault)) == 1
    rs.down(label)


def test_a_fault_on_an_unknown_label_is_refused(rs: RsSystem) -> None:
    for fault in (Kill(rs, "nosuch"), Stop(rs, "nosuch"), Fi(rs, "nosuch")):
        with pytest.raises(FaultError, match="no service 'nosuch'"):
            fault.inject()
        assert not fault_events(rs, fault)
    assert faults.active() == []
