"""RS on real processes, with the semantics of MINIX's relpol tests (testrelpol.sh):
service up/down/refresh/restart/clone, the restart policies, heartbeats, backoff
and recovery scripts.

One kernel per module, whose root is ``python -m hwl.servers.rs``; the test attaches
as a user process (the operator). Each test uses its own labels and takes its
services down at the end.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
from rs_fixtures import (
    BACKOFF_UNIT,
    HANG,
    INIT_TIMEOUT,
    RsSystem,
    echo_argv,
    pid_alive,
    script,
    service_argv,
    wait_for,
)

from hwl.ipc import codec
from hwl.ipc.client import Connection, IpcError
from hwl.ipc.wire import HZ
from hwl.kernel.errno import Errno
from hwl.system import proto
from hwl.system.proto import Policy
from hwl.system.rs import RsError
from hwl.system.watch import kernel_log_pid

STOP_GRACE_S = 1.0  # servers/rs/manager.py: SIGTERM, then SIGKILL after this long


@pytest.fixture(scope="module")
def rs() -> Iterator[RsSystem]:
    with RsSystem.running() as system:
        yield system


def refused(call: object) -> RsError:
    """The RsError a call raises."""
    assert callable(call)
    with pytest.raises(RsError) as info:
        call()
    return info.value


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------- up, lookup


def test_up_status_lookup(rs: RsSystem) -> None:
    label = rs.label("up")
    endpoint = rs.rs.up(echo_argv("A"), label=label, period=30)
    row = rs.row(label)
    assert row.label == label
    assert row.endpoint == endpoint
    assert row.pid > 0 and pid_alive(row.pid)
    assert row.restarts == 0
    assert row.state == "up"
    assert row.period == 30
    assert row.policy == "reset"
    assert rs.rs.lookup(label) == endpoint
    answer = rs.echo(endpoint)
    assert answer["tag"] == "A" and answer["pid"] == row.pid and answer["count"] == 1
    assert [e["event"] for e in rs.events(label)] == ["up"]
    # A second service under the same label is refused; the first one is untouched.
    err = refused(lambda: rs.rs.up(echo_argv("B"), label=label))
    assert err.errno is Errno.EEXIST and label in err.detail
    assert rs.row(label).pid == row.pid
    rs.rs.down(label)


def test_up_of_a_missing_program(rs: RsSystem) -> None:
    label = rs.label("missing")
    err = refused(lambda: rs.rs.up(["/nonexistent/hwl-program"], label=label))
    assert err.errno in (Errno.ENOENT, Errno.EINVAL)
    assert "/nonexistent/hwl-program" in err.detail
    assert rs.status(label) is None
    # RS keeps serving.
    assert isinstance(rs.rs.status(), list)
    endpoint = rs.rs.up(echo_argv("after"), label=label)
    assert rs.echo(endpoint)["tag"] == "after"
    rs.rs.down(label)


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"argv": echo_argv("x")}, "label"),
        ({"label": "bad0", "argv": "python -m hwl.servers.echo"}, "argv"),
        ({"label": "bad1", "argv": []}, "argv"),
        ({"label": "bad2", "argv": echo_argv("x"), "policy": 7}, "policy"),
        ({"label": "bad3", "argv": echo_argv("x"), "period": -1}, "period"),
        ({"label": "bad4", "argv": echo_argv("x"), "conf": "service bad4 { ipc ALL "}, "bad4"),
    ],
)
def test_malformed_up_is_einval(rs: RsSystem, fields: dict[str, object], words: str) -> None:
    reply = rs.request(proto.RS_UP, fields)  # type: ignore[arg-type]
    assert reply.m_type == -Errno.EINVAL, reply
    error = reply.get("error")
    assert isinstance(error, str) and words in error
    assert all(row.label != fields.get("label") for row in rs.rs.status())
    assert rs.request(proto.RS_STATUS, {}).m_type == 0  # still serving


@pytest.mark.parametrize("m_type", [proto.RS_DOWN, proto.RS_REFRESH, proto.RS_LOOKUP])
def test_unknown_label_is_esrch(rs: RsSystem, m_type: int) -> None:
    reply = rs.request(m_type, {"label": "no-such-service"})
    assert reply.m_type == -Errno.ESRCH, reply
    assert "no-such-service" in str(reply.get("error"))
    missing = rs.request(m_type, {})
    assert missing.m_type == -Errno.EINVAL, missing


def test_unknown_request_is_refused(rs: RsSystem) -> None:
    reply = rs.request(proto.RS_BASE + 0x3F, {"label": "x"})
    assert reply.m_type == -Errno.ENOSYS
    assert rs.request(proto.RS_STATUS, {}).m_type == 0


# ------------------------------------------------------------ restart policy


def test_kill_reset_policy_gives_a_new_endpoint(rs: RsSystem) -> None:
    label = rs.label("reset")
    endpoint = rs.rs.up(echo_argv("R"), label=label, policy=Policy.RESET)
    before = rs.row(label)
    kill(before.pid)
    after = rs.wait_up(label, 1)
    assert after.restarts == 1
    assert after.pid != before.pid and not pid_alive(before.pid)
    assert after.endpoint != endpoint  # MINIX's POL_RESET: the endpoint changes
    assert rs.rs.lookup(label) == after.endpoint
    answer = rs.echo(after.endpoint)
    assert answer["restarts"] == 1 and answer["count"] == 1  # a fresh process
    # The old endpoint is dead: a message meant for it is never delivered.
    with pytest.raises(IpcError) as info:
        rs.conn.sendrec(endpoint, 1, {}, timeout=5)
    assert info.value.errno in (Errno.EDEADSRCDST, Errno.ESRCH, Errno.EDEADEPT)
    assert rs.event_names(label) == ["up", "crash", "restart"]
    crash = rs.events(label)[1]
    assert crash["pid"] == before.pid and "signal 9" in crash["how"]
    rs.rs.down(label)


def test_kill_restart_policy_keeps_the_endpoint(rs: RsSystem) -> None:
    label = rs.label("keep")
    endpoint = rs.rs.up(echo_argv("K"), label=label, policy=Policy.RESTART)
    before = rs.row(label)
    assert before.policy == "restart"
    kill(before.pid)
    after = rs.wait_up(label, 1)
    assert after.restarts == 1
    assert after.endpoint == endpoint  # MINIX's POL_RESTART: the endpoint is kept
    assert after.pid != before.pid
    assert rs.echo(endpoint)["pid"] == after.pid
    assert rs.event_names(label) == ["up", "crash", "restart"]
    rs.rs.down(label)


def test_client_loop_recovers_with_restart_policy(rs: RsSystem) -> None:
    """A client that keeps calling the endpoint across a crash: errors while the
    service is dead, then answers from the new process, at the same endpoint."""
    label = rs.label("loop")
    endpoint = rs.rs.up(echo_argv("L"), label=label, policy=Policy.RESTART)
    old_pid = rs.row(label).pid
    with Connection.attach(rs.kernel.socket_path) as client:
        assert rs.echo(endpoint, client)["pid"] == old_pid
        kill(old_pid)
        deadline = time.monotonic() + 5
        errors: list[Errno] = []
        while True:
            assert time.monotonic() < deadline, f"no answer after the crash: {errors[-5:]}"
            try:
                answer = rs.echo(endpoint, client)
            except IpcError as exc:
                errors.append(exc.errno)
                time.sleep(0.001)
                continue
            if answer["pid"] != old_pid:
                break
        assert answer["restarts"] == 1
        assert set(errors) <= {Errno.EDEADSRCDST, Errno.ESRCH, Errno.EDEADEPT}, errors
        for _ in range(20):
            assert rs.echo(endpoint, client)["pid"] == answer["pid"]
    rs.rs.down(label)


# ------------------------------------------------------------------ heartbeat


def hang(rs: RsSystem, endpoint: int) -> None:
    """Make the echo service stop answering (it takes HANG, then sleeps forever)."""
    rs.conn.senda(endpoint, HANG, {})


def test_hung_service_is_killed_and_restarted(rs: RsSystem) -> None:
    label = rs.label("hung")
    period = 6  # ticks
    period_s = period / HZ
    rs.rs.up(echo_argv("H"), label=label, period=period)
    before = rs.row(label)
    time.sleep(3 * period_s)  # it answers its pings
    assert rs.row(label).restarts == 0 and pid_alive(before.pid)
    # it answers them: an answer younger than a period comes (RS's figure is seconds
    # since the last answer it read; a single reading is at the mercy of the host)
    wait_for("a fresh ping answer", lambda: 0 <= rs.row(label).last_heartbeat < period_s)
    hung_at = time.monotonic()
    hang(rs, before.endpoint)
    after = rs.wait_up(label, 1, timeout=5)
    took = time.monotonic() - hung_at
    assert took < 5, took  # wait_up's own limit: the restart is the host's speed
    assert not pid_alive(before.pid)
    assert after.pid != before.pid
    names = rs.event_names(label)
    assert names == ["up", "heartbeat-missed", "crash", "restart"], names
    missed = rs.events(label)[1]
    found = missed["mono"] - hung_at  # RS's clock and ours are both CLOCK_MONOTONIC
    # Not before two periods after its last answer (at most a period before the hang).
    assert found >= period_s - 0.02, found
    # Missed for two pings (after the last answer, up to one period before the hang),
    # found at the next: three periods, plus 1 s for RS's timers on a loaded host
    # (each ping may come late); a detection by anything slower than the heartbeat
    # (the 5 s above, a timeout) would not fit.
    assert found < 3 * period_s + 1.0, found
    rs.rs.down(label)


def test_rs_stalled_for_periods_kills_no_healthy_service(rs: RsSystem) -> None:
    """RS stopped for five periods (an overloaded host, a debugger) and resumed:
    the service answered every ping RS sent, so nothing missed a heartbeat even
    though its last answer RS has read is old."""
    label = rs.label("stall")
    period = 6  # ticks
    period_s = period / HZ
    rs.rs.up(echo_argv("S"), label=label, period=period)
    before = rs.row(label)
    time.sleep(2 * period_s)
    rs_pid = kernel_log_pid(rs.run_dir, "rs")
    assert rs_pid is not None
    os.kill(rs_pid, signal.SIGSTOP)
    try:
        time.sleep(5 * period_s)
    finally:
        os.kill(rs_pid, signal.SIGCONT)
    time.sleep(3 * period_s)  # pings go on; a wrong kill would have come by now
    assert rs.row(label).restarts == 0 and pid_alive(before.pid)
    assert "heartbeat-missed" not in rs.event_names(label)
    rs.rs.down(label)


def test_hung_service_script_reason_no_heartbeat(rs: RsSystem) -> None:
    label = rs.label("hungscript")
    rs.rs.up(echo_argv("HS"), label=label, period=6, script=script("restart.sh"))
    before = rs.row(label)
    hang(rs, before.endpoint)
    calls = rs.wait_calls(label, 2)
    assert calls[0] == ["called", label, "no-heartbeat", "0"]
    assert calls[1] == ["result", label, "0"]
    after = rs.wait_up(label, 1)
    assert after.pid != before.pid
    assert rs.event_names(label) == ["up", "heartbeat-missed", "crash", "script", "restart"]
    rs.rs.down(label)


# -------------------------------------------------------------------- backoff


def test_backoff_doubles(rs: RsSystem) -> None:
    """MINIX: the first restart is immediate, the n-th waits 2^n units (max 30)."""
    label = rs.label("backoff")
    rs.rs.up(echo_argv("B"), label=label)
    expected_units = [0, 2, 4, 8]
    for n, _units in enumerate(expected_units):
        pid = rs.row(label).pid
        kill(pid)
        rs.wait_up(label, n + 1, timeout=5)
    events = rs.events(label)
    crashes = [e for e in events if e["event"] == "crash"]
    restarts = [e for e in events if e["event"] == "restart"]
    assert len(crashes) == len(restarts) == len(expected_units)
    # What RS scheduled, from its log: exactly 2^n units from the second restart on.
    scheduled = [
        line.split(": restart ")[1]
        for line in (rs.run_dir / "rs.log").read_text().splitlines()
        if f" {label}: restart " in line and line.endswith("(backoff)")
    ]
    assert scheduled == [
        f"{n + 1} in {units * BACKOFF_UNIT:.2f} s (backoff)"
        for n, units in enumerate(expected_units)
        if units
    ], scheduled
    # What happened: never before the backoff; the restart event comes after the new
    # incarnation's init, so spawn and init on a loaded host add up to a second.
    delays = [r["mono"] - c["mono"] for c, r in zip(crashes, restarts, strict=True)]
    for units, delay in zip(expected_units, delays, strict=True):
        want = units * BACKOFF_UNIT
        assert want - 0.005 <= delay < want + 1.0, (units, delays)
    assert [r["restarts"] for r in restarts] == [1, 2, 3, 4]
    rs.rs.down(label)


def test_max_restarts_gives_up(rs: RsSystem) -> None:
    label = rs.label("giveup")
    rs.rs.up(echo_argv("G"), label=label, restarts=1)
    kill(rs.row(label).pid)
    row = rs.wait_up(label, 1)
    kill(row.pid)
    rs.wait_event(label, "gave-up")
    row = rs.row(label)
    assert row.state == "down" and row.restarts == 1 and row.pid == -1
    with pytest.raises(RsError) as info:
        rs.rs.lookup(label)
    assert info.value.errno is Errno.ESRCH
    rs.rs.down(label)
    assert rs.status(label) is None


# ----------------------------------------------------------- recovery scripts


def test_script_gets_label_reason_repetition_and_restarts(rs: RsSystem) -> None:
    label = rs.label("script")
    endpoint = rs.rs.up(echo_argv("S"), label=label, script=script("restart.sh"))
    first = rs.row(label)
    # Outside a script, restart is refused: the service is up (MINIX: EBUSY).
    err = refused(lambda: rs.rs.restart(label))
    assert err.errno is Errno.EBUSY
    assert rs.row(label).pid == first.pid
    kill(first.pid)
    calls = rs.wait_calls(label, 2)
    assert calls == [["called", label, "terminated", "0"], ["result", label, "0"]]
    second = rs.wait_up(label, 1)
    assert second.restarts == 1 and second.pid != first.pid
    assert second.endpoint != endpoint  # reset policy
    assert rs.echo(second.endpoint)["restarts"] == 1
    # The repetition counts the restarts so far.
    kill(second.pid)
    calls = rs.wait_calls(label, 4)
    assert calls[2:] == [["called", label, "terminated", "1"], ["result", label, "0"]]
    third = rs.wait_up(label, 2)
    assert third.restarts == 2
    names = rs.event_names(label)
    assert names == ["up", "crash", "script", "restart", "crash", "script", "restart"], names
    rs.rs.down(label)


def test_script_that_calls_down(rs: RsSystem) -> None:
    label = rs.label("scriptdown")
    rs.rs.up(echo_argv("SD"), label=label, script=script("down.sh"))
    pid = rs.row(label).pid
    kill(pid)
    calls = rs.wait_calls(label, 2)
    assert calls == [["called", label, "terminated", "0"], ["result", label, "0"]]
    wait_for(f"{label} gone", lambda: rs.status(label) is None)
    assert rs.event_names(label) == ["up", "crash", "script", "down"]
    assert not pid_alive(pid)


def test_refresh(rs: RsSystem) -> None:
    label = rs.label("refresh")
    endpoint = rs.rs.up(echo_argv("F"), label=label, policy=Policy.RESTART)
    before = rs.row(label)
    rs.rs.refresh(label)  # answers once the new instance is up
    after = rs.row(label)
    assert after.state == "up"
    assert after.restarts == 1
    assert after.pid != before.pid and not pid_alive(before.pid)
    assert after.endpoint == endpoint
    assert rs.echo(endpoint)["restarts"] == 1
    # A graceful stop (SIGTERM, exit 0): an exit, not a crash.
    assert rs.event_names(label) == ["up", "exit", "restart"]
    rs.rs.down(label)


def test_refresh_runs_the_script_with_reason_restart(rs: RsSystem) -> None:
    """MINIX's restart_service runs the recovery script for a refresh too, with
    reason "restart" (run_script: RS_REFRESHING)."""
    label = rs.label("refreshscript")
    rs.rs.up(echo_argv("FS"), label=label, script=script("restart.sh"))
    before = rs.row(label)
    rs.rs.refresh(label)
    calls = rs.wait_calls(label, 2)
    assert calls == [["called", label, "restart", "0"], ["result", label, "0"]]
    after = rs.wait_up(label, 1)
    assert after.restarts == 1 and after.pid != before.pid
    rs.rs.down(label)


# ----------------------------------------------------------------------- down


def test_down(rs: RsSystem) -> None:
    label = rs.label("down")
    rs.rs.up(echo_argv("D"), label=label, period=6)
    pid = rs.row(label).pid
    rs.rs.down(label)  # answers once the process has exited
    assert not pid_alive(pid)
    assert rs.status(label) is None
    assert rs.event_names(label) == ["up", "down"]
    err = refused(lambda: rs.rs.lookup(label))
    assert err.errno is Errno.ESRCH
    err = refused(lambda: rs.rs.down(label))
    assert err.errno is Errno.ESRCH
    # The label is free again.
    rs.rs.up(echo_argv("D2"), label=label)
    rs.rs.down(label)


def test_down_kills_a_service_that_ignores_sigterm(rs: RsSystem) -> None:
    label = rs.label("stubborn")
    rs.rs.up(service_argv("--ignore-term"), label=label)
    pid = rs.row(label).pid
    started = time.monotonic()
    rs.rs.down(label)
    took = time.monotonic() - started
    assert not pid_alive(pid)
    assert rs.status(label) is None
    down = rs.wait_event(label, "down")
    assert down["how"] == "signal 9", down  # SIGTERM ignored: SIGKILL after the grace
    assert 0.8 <= took < 5, took


def test_down_of_a_graceful_service_is_sigterm(rs: RsSystem) -> None:
    label = rs.label("graceful")
    rs.rs.up(service_argv(), label=label)
    started = time.monotonic()
    rs.rs.down(label)
    took = time.monotonic() - started
    assert rs.wait_event(label, "down")["how"] == "status 0"  # SIGTERM, never SIGKILL
    # answered at its exit: waiting out RS's SIGKILL grace would take at least 1 s
    assert took < STOP_GRACE_S, took


# ----------------------------------------------------------- init failures


@pytest.mark.parametrize(
    ("init", "errno"), [("fail", Errno.ENOSYS), ("crash", Errno.ERESTART)], ids=["fail", "crash"]
)
def test_up_init_failure_is_refused(rs: RsSystem, init: str, errno: Errno) -> None:
    """An init that fails answers ENOSYS, one that crashes ERESTART; never up."""
    label = rs.label(f"init{init}")
    err = refused(lambda: rs.rs.up(service_argv("--init", init), label=label))
    assert err.errno is errno, err
    assert rs.status(label) is None
    assert "init-failed" in rs.event_names(label)
    assert "up" not in rs.event_names(label)


def test_up_init_timeout_is_eintr(rs: RsSystem) -> None:
    label = rs.label("inittimeout")
    started = time.monotonic()
    err = refused(lambda: rs.rs.up(service_argv("--init", "timeout"), label=label))
    assert err.errno is Errno.EINTR, err
    assert 1.5 < time.monotonic() - started < 5  # RS's --init-timeout is 2 s
    assert rs.status(label) is None


# ---------------------------------------------------------------------- clone


def test_clone_recovers_with_the_replica(rs: RsSystem) -> None:
    label = rs.label("clone")
    rs.rs.up(echo_argv("C"), label=label)
    first = rs.row(label)
    rs.rs.clone(label)
    clone = rs.wait_event(label, "clone")
    replica_pid = clone["pid"]
    assert replica_pid not in (first.pid, -1) and pid_alive(replica_pid)
    kill(first.pid)
    second = rs.wait_up(label, 1)
    assert second.pid == replica_pid  # the replica, started before the kill
    restart = rs.wait_event(label, "restart")
    assert restart["pid"] == replica_pid
    assert rs.echo(second.endpoint)["pid"] == replica_pid
    # RS keeps a new replica ready for the next time.
    clone2 = rs.wait_event(label, "clone", 2)
    assert clone2["pid"] not in (replica_pid, first.pid)
    rs.rs.down(label)
    assert not pid_alive(replica_pid)
    wait_for("the new replica to exit", lambda: not pid_alive(clone2["pid"]))


def test_unclone_drops_the_replica(rs: RsSystem) -> None:
    label = rs.label("unclone")
    rs.rs.up(echo_argv("U"), label=label)
    rs.rs.clone(label)
    replica_pid = rs.wait_event(label, "clone")["pid"]
    rs.rs.unclone(label)
    wait_for("the replica to exit", lambda: not pid_alive(replica_pid))
    first = rs.row(label)
    kill(first.pid)
    second = rs.wait_up(label, 1)
    assert second.pid != replica_pid
    rs.rs.down(label)


# --------------------------------------------------------------- concurrency


def test_requests_while_a_service_starts(rs: RsSystem) -> None:
    """RS never blocks on a service: status answers while an up waits for an init."""
    label = rs.label("slow")
    result: list[BaseException | int] = []

    def up() -> None:
        try:
            with Connection.attach(rs.kernel.socket_path) as client:
                reply = client.sendrec(
                    rs.endpoint,
                    proto.RS_UP,
                    {"label": label, "argv": list[codec.Value](service_argv("--init", "timeout"))},
                    timeout=10,
                )
            result.append(reply.m_type)
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=up)
    thread.start()
    try:
        row = wait_for(f"{label} starting", lambda: rs.status(label))
        assert row.state == "starting"
        started = time.monotonic()
        status = rs.request(proto.RS_STATUS, {})
        took = time.monotonic() - started
        assert status.m_type == 0
        # answered while the init is pending: the service is still starting in it
        rows = status["services"]
        assert isinstance(rows, list)
        assert [r["state"] for r in rows if isinstance(r, dict) and r["label"] == label] == [
            "starting"
        ]
        assert took < INIT_TIMEOUT, took  # RS did not wait for the init to time out
    finally:
        thread.join(10)
    assert result == [-Errno.EINTR]
