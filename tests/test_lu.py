"""Live update through RS on real processes, as MINIX's relpol tests do it
(testrelpol.sh, lu_test): update, update self, prepare only, forced init crash,
failure and timeout with rollback, unreachable states, and a client that keeps
calling the service while it is replaced.

The service is ``hwl.servers.echo``: it counts the requests it answered and hands the
count to the new version (``state_save``, then the new version's init), so the
count going on proves the state transfer; ``--tag`` tells the versions apart.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from rs_fixtures import RsSystem, echo_argv, pid_alive, update_under_way, wait_for

from hwl.ipc import channels
from hwl.ipc.client import Connection, IpcError
from hwl.ipc.wire import HZ
from hwl.kernel.errno import Errno
from hwl.system.proto import RS_UPDATE, LuState, Policy, UpdateFlag
from hwl.system.rs import RsError, update_fields

SHORT = 30  # ticks (0.5 s): maxtime for the updates that are meant to time out


@pytest.fixture(scope="module")
def rs() -> Iterator[RsSystem]:
    with RsSystem.running() as system:
        yield system


def update_error(rs: RsSystem, label: str, **kwargs: Any) -> RsError:
    with pytest.raises(RsError) as info:
        rs.rs.update(label, **kwargs)
    return info.value


class Service:
    """An echo service under a fresh label, with what a test checks after an update."""

    def __init__(self, rs: RsSystem, stem: str, *extra: str, tag: str = "old") -> None:
        self.rs = rs
        self.label = rs.label(stem)
        self.endpoint = rs.rs.up(echo_argv(tag, *extra), label=self.label)
        self.pid = rs.row(self.label).pid
        self.count = 0

    def echo(self) -> dict[str, Any]:
        answer = self.rs.echo(self.endpoint)
        self.count += 1
        assert answer["count"] == self.count, (answer, self.count)  # the state survived
        return answer

    def assert_unchanged(self, tag: str = "old") -> None:
        """The same process serves, at the same endpoint, with its state."""
        row = self.rs.row(self.label)
        assert row.state == "up" and row.pid == self.pid and row.endpoint == self.endpoint
        assert row.restarts == 0
        answer = self.echo()
        assert answer["pid"] == self.pid and answer["tag"] == tag

    def down(self) -> None:
        self.rs.rs.down(self.label)


# ----------------------------------------------------------------- success


def test_update_to_a_new_program(rs: RsSystem) -> None:
    svc = Service(rs, "lu")
    for _ in range(3):
        svc.echo()
    rs.rs.update(svc.label, echo_argv("new"), state=LuState.WORK_FREE)
    row = rs.row(svc.label)
    assert row.endpoint == svc.endpoint  # the new version took the old endpoint
    assert row.restarts == 0
    assert row.pid != svc.pid and pid_alive(row.pid)
    wait_for("the old version to exit", lambda: not pid_alive(svc.pid))
    answer = svc.echo()  # count 4: the state moved to the new version
    assert answer["tag"] == "new" and answer["pid"] == row.pid
    assert rs.rs.lookup(svc.label) == svc.endpoint
    names = rs.event_names(svc.label)
    assert names == ["up", "update-prepared", "update-done"], names
    done = rs.events(svc.label)[-1]
    assert done["pid"] == row.pid and done["endpoint"] == svc.endpoint
    svc.down()
    assert not pid_alive(row.pid)


def test_a_crash_after_an_update_restarts_the_new_program(rs: RsSystem) -> None:
    """MINIX: the new version replaces the old one in the service's slot, so the
    program RS restarts after a crash is the new one."""
    svc = Service(rs, "lucrash")
    rs.rs.update(svc.label, echo_argv("new"))
    new_pid = rs.row(svc.label).pid
    assert "--tag new" in rs.row(svc.label).program
    os.kill(new_pid, signal.SIGKILL)
    row = rs.wait_up(svc.label, 1)
    answer = rs.echo(row.endpoint)
    assert answer["tag"] == "new" and answer["restarts"] == 1
    svc.down()


def test_update_self(rs: RsSystem) -> None:
    svc = Service(rs, "luself")
    svc.echo()
    rs.rs.update(svc.label)  # argv empty: the same program again (MINIX's "self")
    row = rs.row(svc.label)
    assert row.endpoint == svc.endpoint and row.restarts == 0 and row.pid != svc.pid
    answer = svc.echo()
    assert answer["tag"] == "old" and answer["pid"] == row.pid
    svc.down()


def test_prepare_only(rs: RsSystem) -> None:
    svc = Service(rs, "luprep")
    svc.echo()
    rs.rs.update(svc.label, echo_argv("new"), flags=UpdateFlag.PREPARE_ONLY)
    svc.assert_unchanged()
    assert rs.event_names(svc.label) == ["up", "update-prepared", "update-done"]
    # It can still be updated for real afterwards.
    rs.rs.update(svc.label, echo_argv("new"))
    assert svc.echo()["tag"] == "new"
    svc.down()


# -------------------------------------------------------- init and rollback


@pytest.mark.parametrize(
    ("flags", "errno", "code", "maxtime"),
    [
        (UpdateFlag.FORCE_INIT_CRASH, Errno.ERESTART, 200, 0),
        (UpdateFlag.FORCE_INIT_FAIL, Errno.ENOSYS, 78, 0),
        (UpdateFlag.FORCE_INIT_TIMEOUT, Errno.EINTR, 4, SHORT),
    ],
    ids=["init-crash", "init-fail", "init-timeout"],
)
def test_failed_init_rolls_back(
    rs: RsSystem, flags: UpdateFlag, errno: Errno, code: int, maxtime: int
) -> None:
    """MINIX's service -x / -y / -z: exit status 200, 78, 4; the old version stays."""
    svc = Service(rs, "lurb")
    svc.echo()
    svc.echo()
    started = time.monotonic()
    err = update_error(rs, svc.label, argv=echo_argv("new"), flags=flags, maxtime=maxtime)
    took = time.monotonic() - started
    assert err.errno is errno and int(err.errno) == code, err
    if flags & UpdateFlag.FORCE_INIT_TIMEOUT:
        assert SHORT / HZ - 0.05 <= took < SHORT / HZ + 2, took
    svc.assert_unchanged()  # the old version serves on, count intact
    names = rs.event_names(svc.label)
    assert names == ["up", "update-prepared", "update-rolled-back"], names
    assert rs.events(svc.label)[-1]["errno"] == errno.name
    # Still updatable: the rollback left nothing half done.
    rs.rs.update(svc.label, echo_argv("new"))
    assert svc.echo()["tag"] == "new"
    svc.down()


def test_unknown_update_flags_are_refused_and_the_service_serves_on(rs: RsSystem) -> None:
    svc = Service(rs, "luflag")
    svc.echo()
    fields = update_fields(svc.label, echo_argv("new"))
    fields["flags"] = 0x40  # no such flag: sent raw, past the client's own check
    with pytest.raises(RsError) as info:
        rs.rs.request(RS_UPDATE, fields)
    assert info.value.errno is Errno.EINVAL and "0x40" in str(info.value), info.value
    svc.assert_unchanged()
    assert rs.event_names(svc.label) == ["up"]
    svc.down()


# --------------------------------------------------------- prepare states


@pytest.mark.parametrize(
    ("state", "extra"),
    [(LuState.REQUEST_FREE, ("--prepare", "never")), (LuState.UNREACHABLE, ())],
    ids=["request-free-never-ready", "unreachable"],
)
def test_state_not_reached_is_eintr(rs: RsSystem, state: LuState, extra: tuple[str, ...]) -> None:
    svc = Service(rs, "lunever", *extra)
    svc.echo()
    started = time.monotonic()
    err = update_error(rs, svc.label, argv=echo_argv("new"), state=state, maxtime=SHORT)
    took = time.monotonic() - started
    assert err.errno is Errno.EINTR, err
    assert SHORT / HZ - 0.05 <= took < SHORT / HZ + 2, took
    svc.assert_unchanged()
    assert rs.event_names(svc.label) == ["up", "update-aborted"]
    # The cancel reached it: a plain update works at once.
    rs.rs.update(svc.label, echo_argv("new"))
    assert svc.echo()["tag"] == "new"
    svc.down()


def test_request_free_reached_when_ready(rs: RsSystem) -> None:
    svc = Service(rs, "lureqfree", "--prepare", "always")
    svc.echo()
    rs.rs.update(svc.label, echo_argv("new"), state=LuState.REQUEST_FREE)
    assert svc.echo()["tag"] == "new"
    svc.down()


def test_prepare_crash(rs: RsSystem) -> None:
    """State 6: the old version crashes while preparing; the update fails with
    ERESTART and RS restarts the service as after any crash."""
    svc = Service(rs, "lupcrash")
    err = update_error(rs, svc.label, argv=echo_argv("new"), state=LuState.PREPARE_CRASH)
    assert err.errno is Errno.ERESTART, err
    row = rs.wait_up(svc.label, 1)
    assert row.pid != svc.pid and not pid_alive(svc.pid)
    answer = rs.echo(row.endpoint)
    assert answer["tag"] == "old" and answer["restarts"] == 1
    names = rs.event_names(svc.label)
    assert names[:2] == ["up", "update-aborted"] and names[-2:] == ["crash", "restart"], names
    svc.down()


@pytest.mark.parametrize("state", [LuState.EVAL, 9], ids=["eval", "custom-9"])
def test_invalid_state_is_einval(rs: RsSystem, state: int) -> None:
    svc = Service(rs, "luinval")
    svc.echo()
    err = update_error(rs, svc.label, argv=echo_argv("new"), state=state)
    assert err.errno is Errno.EINVAL, err
    svc.assert_unchanged()
    assert rs.event_names(svc.label) == ["up", "update-aborted"]
    svc.down()


def test_update_refusals(rs: RsSystem) -> None:
    err = update_error(rs, "no-such-service")
    assert err.errno is Errno.ESRCH
    svc = Service(rs, "lubusy", "--prepare", "never")
    with update_under_way(rs, svc.label, SHORT) as results:
        err = update_error(rs, svc.label)
        assert err.errno is Errno.EBUSY, err
    assert results == [Errno.EINTR]
    svc.assert_unchanged()
    svc.down()


def test_relpol_lu_series_keeps_endpoint_and_restarts(rs: RsSystem) -> None:
    """testrelpol.sh's lu_test on one service: self, -o, -x, -y, -z, state 5; then
    the endpoint and the restart count are what they were."""
    svc = Service(rs, "luseries")
    steps: list[tuple[UpdateFlag, int, int, int]] = [
        (UpdateFlag.NONE, LuState.WORK_FREE, 0, 0),
        (UpdateFlag.PREPARE_ONLY, LuState.WORK_FREE, 0, 0),
        (UpdateFlag.FORCE_INIT_CRASH, LuState.WORK_FREE, 0, 200),
        (UpdateFlag.FORCE_INIT_FAIL, LuState.WORK_FREE, 0, 78),
        (UpdateFlag.FORCE_INIT_TIMEOUT, LuState.WORK_FREE, 1 * HZ, 4),
        (UpdateFlag.NONE, LuState.UNREACHABLE, 1 * HZ, 4),
    ]
    for flags, state, maxtime, want in steps:
        try:
            rs.rs.update(svc.label, state=state, maxtime=maxtime, flags=flags)
            got = 0
        except RsError as exc:
            got = int(exc.errno)
        assert got == want, (flags, state, got)
        svc.echo()
    row = rs.row(svc.label)
    assert row.endpoint == svc.endpoint and row.restarts == 0 and row.state == "up"
    svc.down()


# ------------------------------------------------------ a client keeps calling


def test_client_sees_no_error_across_updates(rs: RsSystem) -> None:
    label = rs.label("luloop")
    endpoint = rs.rs.up(echo_argv("v0"), label=label, policy=Policy.RESTART, period=6)
    seen: list[tuple[str, int]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    on_channel: list[bool] = []

    def client() -> None:
        with Connection.attach(rs.kernel.socket_path) as conn:
            try:
                while not stop.is_set():
                    reply = conn.sendrec(endpoint, 1, {}, timeout=10)
                    if reply.m_type != 0:
                        raise AssertionError(f"the service answered {reply.m_type}")
                    seen.append((str(reply["tag"]), int(reply["count"])))  # type: ignore[arg-type]
                    on_channel.append(conn.channel_to(endpoint) is not None)
            except (IpcError, AssertionError) as exc:
                errors.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        wait_for("the client's first answer", lambda: len(seen) > 0)
        if channels.enabled():  # its calls go on a channel before the first update
            wait_for("the client's channel", lambda: bool(on_channel) and on_channel[-1])
        for version in range(1, 11):
            rs.rs.update(label, echo_argv(f"v{version}"))
            tag = f"v{version}"

            def switched(tag: str = tag) -> bool:
                return bool(errors) or seen[-1][0] == tag

            wait_for(f"the client to see {tag}", switched)
            assert not errors, errors
    finally:
        stop.set()
        thread.join(15)
    assert not thread.is_alive()
    assert not errors, errors
    counts = [count for _, count in seen]
    assert counts == list(range(1, len(counts) + 1))  # no answer lost, state carried
    versions = [int(tag[1:]) for tag, _ in seen]
    assert versions == sorted(versions)  # never an old version after a new one
    assert sorted(set(versions)) == list(range(11))  # every version served the client
    # with call channels on, the channel made before the updates served them all
    # (each new version inherits it)
    assert all(on_channel[on_channel.index(True) :]) if channels.enabled() else not any(on_channel)
    row = rs.row(label)
    assert row.endpoint == endpoint and row.restarts == 0
    assert rs.event_names(label).count("update-done") == 10
    rs.rs.down(label)
