"""RS's privilege checks (servers/rs/request.py), asked by services, not the operator.

Every other RS test asks as the operator, who may do anything. Here the requests
come from tests/programs/fi_caller.py, a SEF service that forwards what the test
gives it to RS on its own account, in two roles:

- an *outsider*: a service with no ``control`` line at all;
- a *filter*: started under the label ``filter``, whose stock system.conf entry has
  ``control at_wini at_wini1``: it may control a service labelled ``at_wini`` (shown
  first, so the refusals below are about the target, not about services in general)
  and nothing else.

Each refusal is EPERM with RS's reason, and nothing changed: the service table
(endpoints, pids, states, restarts, periods), every process behind it, the update
queue and the event log are what they were before the request.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest
from rs_fixtures import PROGRAMS, RsSystem, echo_argv

from hwl.ipc import codec
from hwl.kernel.errno import Errno
from hwl.proto import rs as rsp
from hwl.proto.rs import SysctlType, UpdateFlag
from hwl.proto.sef import FiType
from hwl.system.rs import SrvStatus, UpdateStatus, edit_fields, up_fields, update_fields

FORWARD = 1  # tests/programs/fi_caller.py
FI_CALLER = [sys.executable, str(PROGRAMS / "fi_caller.py")]
Fields = dict[str, codec.Value]


@dataclass(frozen=True)
class World:
    """The running services of this module."""

    rs: RsSystem
    outsider: int  # endpoint of the fi_caller without control
    filter: int  # endpoint of the fi_caller labelled filter (control at_wini at_wini1)
    target: str  # an echo service nobody but the operator controls
    controlled: str  # an echo service labelled at_wini


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with RsSystem.running() as rs:
        target = rs.label("target")
        rs.rs.up(echo_argv("T"), label=target)
        rs.rs.up(echo_argv("W"), label="at_wini", conf="service at_wini { };")
        outsider = rs.rs.up(FI_CALLER, label=rs.label("outsider"))
        filt = rs.rs.up(FI_CALLER, label="filter")
        yield World(rs, outsider, filt, target, "at_wini")


def forward(w: World, caller: int, m_type: int, fields: Fields) -> tuple[int, str]:
    """RS's answer to ``m_type`` asked by ``caller``: (m_type, error text)."""
    answer = w.rs.conn.sendrec(
        caller, FORWARD, {"m_type": m_type, "fields": fields}, timeout=15
    ).fields
    assert isinstance(answer["status"], int) and isinstance(answer["error"], str), answer
    return answer["status"], answer["error"]


@dataclass(frozen=True)
class Snapshot:
    """What a refused request must leave as it was."""

    srv: SrvStatus
    updates: UpdateStatus
    events: int

    @classmethod
    def take(cls, rs: RsSystem) -> Snapshot:
        srv = rs.rs.srv_status()
        # last_heartbeat moves by itself; everything else must stay
        rows = tuple(replace(row, last_heartbeat=0.0) for row in srv.services)
        return cls(SrvStatus(rows, srv.instances), rs.rs.upd_status(), len(rs.events()))


def assert_refused(w: World, caller: int, m_type: int, fields: Fields, reason: str) -> None:
    before = Snapshot.take(w.rs)
    status, error = forward(w, caller, m_type, fields)
    assert status == -Errno.EPERM and reason in error, (status, error)
    assert Snapshot.take(w.rs) == before


def label_requests(label: str) -> list[tuple[str, int, Fields, str]]:
    """Every request on one running service: (name, m_type, fields, RS's verb)."""
    plain: Fields = {"label": label}
    return [
        ("down", rsp.RS_DOWN, plain, "stop"),
        ("refresh", rsp.RS_REFRESH, plain, "refresh"),
        ("restart", rsp.RS_RESTART, plain, "restart"),
        ("update", rsp.RS_UPDATE, update_fields(label), "update"),
        ("queue update", rsp.RS_UPDATE, update_fields(label, flags=UpdateFlag.BATCH), "update"),
        ("clone", rsp.RS_CLONE, plain, "clone"),
        ("unclone", rsp.RS_UNCLONE, plain, "unclone"),
        ("edit", rsp.RS_EDIT, edit_fields(label, period=6), "edit"),
        ("fi", rsp.RS_FI, {**plain, "type": int(FiType.CRASH)}, "inject a fault into"),
    ]


NAMES = [name for name, *_ in label_requests("x")]


@pytest.mark.parametrize("name", NAMES)
def test_an_outsider_may_not_touch_a_service(world: World, name: str) -> None:
    _, m_type, fields, verb = next(r for r in label_requests(world.target) if r[0] == name)
    assert_refused(world, world.outsider, m_type, fields, f"may not {verb} '{world.target}'")


@pytest.mark.parametrize("name", NAMES)
def test_control_over_one_service_is_not_control_over_another(world: World, name: str) -> None:
    _, m_type, fields, verb = next(r for r in label_requests(world.target) if r[0] == name)
    assert_refused(world, world.filter, m_type, fields, f"may not {verb} '{world.target}'")


def test_a_service_may_not_start_one(world: World) -> None:
    label = world.rs.label("intruder")
    fields = up_fields(echo_argv("I"), label=label)
    for caller in (world.outsider, world.filter):
        assert_refused(world, caller, rsp.RS_UP, fields, f"may not start '{label}'")
    assert world.rs.status(label) is None


def test_a_service_may_not_shut_the_system_down(world: World) -> None:
    for caller in (world.outsider, world.filter):
        assert_refused(world, caller, rsp.RS_SHUTDOWN, {}, "only the operator may shut")
    # RS still starts services: it is not shutting down
    label = world.rs.label("after")
    world.rs.rs.up(echo_argv("A"), label=label)
    world.rs.rs.down(label)


@pytest.mark.parametrize("kind", [SysctlType.UPD_RUN, SysctlType.UPD_START, SysctlType.UPD_STOP])
def test_a_service_may_not_run_or_stop_an_update_queue_it_does_not_control(
    world: World, kind: SysctlType
) -> None:
    rs = world.rs.rs
    rs.queue_update(world.target)
    try:
        queued = rs.upd_status()
        assert queued.batch == "queued" and [u.label for u in queued.updates] == [world.target]
        for caller in (world.outsider, world.filter):
            assert_refused(
                world,
                caller,
                rsp.RS_SYSCTL,
                {"subtype": int(kind)},
                f"may not sysctl {kind.option} '{world.target}'",
            )
    finally:
        rs.upd_stop()
    assert rs.upd_status().batch == "none"


def test_reports_are_open_to_services(world: World) -> None:
    """The checks refuse by right, not every service request: lookup, status and
    the sysctl reports answer a service without control."""
    endpoint = world.rs.rs.lookup(world.target)
    asked: list[tuple[int, Fields]] = [
        (rsp.RS_LOOKUP, {"label": world.target}),
        (rsp.RS_STATUS, {}),
        (rsp.RS_SYSCTL, {"subtype": int(SysctlType.SRV_STATUS)}),
        (rsp.RS_SYSCTL, {"subtype": int(SysctlType.UPD_STATUS)}),
    ]
    for m_type, fields in asked:
        assert forward(world, world.outsider, m_type, fields) == (0, ""), (m_type, fields)
    assert world.rs.rs.lookup(world.target) == endpoint


def test_control_grants_what_it_names(world: World) -> None:
    """The filter may refresh and edit its at_wini (the refusals above are about the
    target), and the operator sees the effect."""
    rs = world.rs
    before = rs.row(world.controlled)
    assert forward(world, world.filter, rsp.RS_REFRESH, {"label": world.controlled}) == (0, "")
    after = rs.wait_up(world.controlled, before.restarts + 1)
    assert after.pid != before.pid
    edit = edit_fields(world.controlled, period=30)
    assert forward(world, world.filter, rsp.RS_EDIT, edit) == (0, "")
    assert rs.row(world.controlled).period == 30
    # the outsider may not do the same to it
    refresh: Fields = {"label": world.controlled}
    assert_refused(world, world.outsider, rsp.RS_REFRESH, refresh, "may not refresh 'at_wini'")


def test_rights_come_from_the_conf_a_service_was_started_with(world: World) -> None:
    """``control`` is read from the entry the caller runs with, not from the stock
    file's entry for its label: a conf given at up grants what it names, and the
    stock label ``filter`` lends nothing to a conf without the line."""
    rs = world.rs
    granted = rs.label("granted")
    conf = f"service {granted} {{ ipc ALL_SYS; control {world.target}; }};"
    given = rs.rs.up(FI_CALLER, label=granted, conf=conf)
    try:
        before = rs.row(world.target)
        assert forward(world, given, rsp.RS_REFRESH, {"label": world.target}) == (0, "")
        assert rs.wait_up(world.target, before.restarts + 1).pid != before.pid
    finally:
        rs.rs.down(granted)
    with RsSystem.running() as other:  # its own RS: this module's filter stays as it is
        other.rs.up(echo_argv("W2"), label="at_wini", conf="service at_wini { };")
        bare = other.rs.up(FI_CALLER, label="filter", conf="service filter { ipc ALL_SYS; };")
        elsewhere = replace(world, rs=other)
        refresh: Fields = {"label": "at_wini"}
        assert_refused(elsewhere, bare, rsp.RS_REFRESH, refresh, "may not refresh 'at_wini'")
