"""``service fi``: RS asks a service to inject a fault into itself (MINIX's RS_FI),
and the recovery that follows, on real processes (a kernel whose root is RS; no
QEMU). MINIX's crash, then hwl's hang, exception, dropped and corrupted reply.

Each test checks the event RS writes (a crash with the reason "fault
injection"), what the policy decides (restart: the same endpoint; reset: a new
one), and that the service answers afterwards.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from rs_fixtures import PROGRAMS, RsSystem, echo_argv, wait_for

from hwl.ipc import codec
from hwl.ipc.client import IpcError, IpcTimeout
from hwl.ipc.wire import HZ
from hwl.kernel.errno import Errno
from hwl.proto.rs import RS_FI, Policy
from hwl.proto.sef import FI_CRASH_STATUS, FiType
from hwl.system.rs import RsError

MINIX_SERVICE = Path(sys.executable).parent / "minix-service"
FORWARD = 1  # tests/programs/fi_caller.py


@pytest.fixture(scope="module")
def rs() -> Iterator[RsSystem]:
    with RsSystem.running() as system:
        yield system


def minix_service(rs: RsSystem, *argv: str) -> subprocess.CompletedProcess[str]:
    """The installed command, run as a person would, against this RS."""
    return subprocess.run(
        [str(MINIX_SERVICE), "--run-dir", str(rs.run_dir), *argv],
        capture_output=True,
        text=True,
        timeout=30,
    )


def armed(rs: RsSystem, label: str, kind: FiType) -> None:
    """Wait until the service took RS's request. It is asynchronous, as in MINIX:
    the kernel hands a receiver its callers before asynchronous messages, so a
    call sent at once could be served before the fault is armed."""
    line = f"fault injection: {kind.option} armed (service fi)"
    log = rs.run_dir / f"{label}.log"
    wait_for(f"{label} to arm {kind.option}", lambda: line in log.read_text())


def crash_of(rs: RsSystem, label: str) -> dict[str, object]:
    event: dict[str, object] = rs.wait_event(label, "crash")
    return event


# ------------------------------------------------------------ MINIX's crash


def test_fi_of_a_restart_policy_service_keeps_its_endpoint(rs: RsSystem) -> None:
    label = rs.label("fir")
    endpoint = rs.rs.up(echo_argv("R"), label=label, policy=Policy.RESTART)
    before = rs.row(label)
    assert (before.policy, before.restarts) == ("restart", 0)
    out = minix_service(rs, "fi", label)
    assert out.returncode == 0, out.stderr
    after = rs.wait_up(label, 1)
    assert after.restarts == 1 and after.endpoint == endpoint and after.pid != before.pid
    crash = crash_of(rs, label)
    assert crash["reason"] == "fault injection (crash)"
    assert crash["how"] == f"status {FI_CRASH_STATUS}"
    assert rs.event_names(label) == ["up", "fi", "crash", "restart"]
    log = (rs.run_dir / f"{label}.log").read_text()
    assert "fault injection: crashing on RS's request (service fi)" in log
    assert rs.echo(endpoint)["restarts"] == 1  # the new incarnation, same endpoint
    rs.down(label)


def test_fi_of_a_reset_policy_service_gives_a_new_endpoint(rs: RsSystem) -> None:
    label = rs.label("fis")
    endpoint = rs.rs.up(echo_argv("S"), label=label, policy=Policy.RESET)
    rs.rs.fi(label)
    after = rs.wait_up(label, 1)
    assert after.restarts == 1 and after.endpoint != endpoint
    assert crash_of(rs, label)["reason"] == "fault injection (crash)"
    assert rs.echo(after.endpoint)["restarts"] == 1
    with pytest.raises(IpcError):
        rs.echo(endpoint)  # the old endpoint is dead
    rs.down(label)


def test_fi_of_an_unknown_label_exits_esrch(rs: RsSystem) -> None:
    out = minix_service(rs, "fi", "nosuch")
    assert out.returncode == Errno.ESRCH, out
    assert "fi failed: ESRCH: no service with label 'nosuch'" in out.stderr


def test_fi_from_an_unprivileged_service_is_eperm(rs: RsSystem) -> None:
    target, caller = rs.label("fitarget"), rs.label("ficaller")
    endpoint = rs.rs.up(echo_argv("T"), label=target)
    forwarder = rs.rs.up([sys.executable, str(PROGRAMS / "fi_caller.py")], label=caller)
    fields: dict[str, codec.Value] = {"label": target, "type": int(FiType.CRASH)}
    answer = rs.conn.sendrec(
        forwarder, FORWARD, {"m_type": RS_FI, "fields": fields}, timeout=10
    ).fields
    assert answer["status"] == -Errno.EPERM, answer
    assert f"may not inject a fault into '{target}'" in str(answer["error"])
    assert rs.row(target).restarts == 0 and rs.echo(endpoint)["restarts"] == 0
    assert "fi" not in rs.event_names(target)
    rs.down(caller)
    rs.down(target)


def test_fi_type_is_checked(rs: RsSystem) -> None:
    label = rs.label("fibad")
    rs.rs.up(echo_argv("B"), label=label)
    reply = rs.request(RS_FI, {"label": label, "type": 99})
    assert reply.m_type == -Errno.EINVAL, reply
    out = minix_service(rs, "fi", label, "-type", "meltdown")
    assert out.returncode == Errno.EINVAL and "bad fault type 'meltdown'" in out.stderr
    assert rs.row(label).restarts == 0
    rs.down(label)


# ------------------------------------------------------- hwl's fault types


def test_fi_hang_is_caught_by_the_heartbeat(rs: RsSystem) -> None:
    label = rs.label("fihang")
    period = 6  # ticks: 0.1 s
    endpoint = rs.rs.up(echo_argv("H"), label=label, period=period, policy=Policy.RESTART)
    out = minix_service(rs, "fi", label, "-type", "hang")
    assert out.returncode == 0, out.stderr
    after = rs.wait_up(label, 1, timeout=3 * period / HZ + 5)
    assert after.endpoint == endpoint
    names = rs.event_names(label)
    assert names == ["up", "fi", "heartbeat-missed", "crash", "restart"], names
    assert crash_of(rs, label)["reason"] == "fault injection (hang)"
    assert rs.echo(endpoint)["restarts"] == 1
    rs.down(label)


def test_fi_exception_crashes_inside_the_next_request(rs: RsSystem) -> None:
    label = rs.label("fiexc")
    endpoint = rs.rs.up(echo_argv("E"), label=label, policy=Policy.RESTART)
    assert rs.echo(endpoint)["count"] == 1
    rs.rs.fi(label, FiType.EXCEPTION)
    armed(rs, label, FiType.EXCEPTION)
    assert rs.row(label).state == "up"  # armed: nothing happens until a request comes
    with pytest.raises(IpcError) as info:
        rs.echo(endpoint)  # the next request meets the exception
    assert info.value.errno == Errno.EDEADSRCDST, info.value
    rs.wait_up(label, 1)
    crash = crash_of(rs, label)
    assert crash["reason"] == "fault injection (exception)" and crash["how"] == "status 1"
    log = (rs.run_dir / f"{label}.log").read_text()
    assert "Traceback" in log and "FaultInjected: fault injection (service fi)" in log
    assert rs.echo(endpoint)["restarts"] == 1
    rs.down(label)


def test_fi_drop_reply_times_the_call_out_then_answers(rs: RsSystem) -> None:
    label = rs.label("fidrop")
    endpoint = rs.rs.up(echo_argv("D"), label=label)
    rs.rs.fi(label, FiType.DROP_REPLY)
    armed(rs, label, FiType.DROP_REPLY)
    with pytest.raises(IpcTimeout):
        rs.conn.sendrec(endpoint, 1, {}, timeout=1.0)
    answer = rs.echo(endpoint)
    assert answer["count"] == 2  # the dropped call was served, its reply not sent
    row = rs.row(label)
    assert row.restarts == 0 and row.state == "up" and row.endpoint == endpoint
    assert rs.event_names(label) == ["up", "fi"]
    rs.down(label)


def test_fi_corrupt_reply_is_a_clear_decode_error_then_answers(rs: RsSystem) -> None:
    label = rs.label("ficor")
    endpoint = rs.rs.up(echo_argv("C"), label=label)
    out = minix_service(rs, "fi", label, "-type", "corrupt-reply")
    assert out.returncode == 0, out.stderr
    armed(rs, label, FiType.CORRUPT_REPLY)
    reply = rs.conn.sendrec(endpoint, 1, {}, timeout=10)
    with pytest.raises(codec.CodecError, match="65535 entries declared"):
        _ = reply.fields
    assert rs.echo(endpoint)["count"] == 2
    assert rs.row(label).restarts == 0
    rs.down(label)


def test_fi_refuses_a_service_that_is_not_up(rs: RsSystem) -> None:
    label = rs.label("fidown")
    rs.rs.up(echo_argv("N"), label=label, script="/bin/true")  # its script never restarts it
    rs.rs.fi(label)
    rs.wait_event(label, "script")
    with pytest.raises(RsError) as info:
        rs.rs.fi(label)
    error = info.value
    assert error.errno == Errno.EBUSY and "waiting-script, not up" in error.detail
    rs.down(label)


# ------------------------------------------------------- service run, status


def test_service_run_is_never_restarted(rs: RsSystem) -> None:
    label = rs.label("run")
    program = str(PROGRAMS / "rs_service.py")
    out = minix_service(rs, "run", program, "-label", label, "-policy", "restart")
    assert out.returncode == 0, out.stderr
    row = rs.row(label)
    assert (row.state, row.policy, row.flags) == ("up", "restart", "run")
    status = minix_service(rs, "status")
    line = next(x for x in status.stdout.splitlines() if x.startswith(label + " "))
    assert line.split()[-2:] == ["restart", "run"], line
    assert status.stdout.splitlines()[0].split()[-2:] == ["POLICY", "FLAGS"]
    rs.rs.fi(label)
    down = rs.wait_event(label, "down")
    assert down["reason"] == "not restarted"
    assert rs.status(label) is None
    assert rs.event_names(label) == ["up", "fi", "crash", "down"]


def test_status_shows_the_policy_and_flags(rs: RsSystem) -> None:
    label = rs.label("flags")
    rs.rs.up(echo_argv("F"), label=label, script="/bin/true", cold=True)
    row = rs.row(label)
    assert (row.policy, row.flags) == ("reset", "cold,script")
    rs.down(label)
