"""Multi-component live update through RS on real processes: ``service -q update``
queues, ``service sysctl upd_run`` prepares every queued service in order, swaps
them together, and rolls every one back on any failure, with MINIX's result codes
(testrelpol.sh's lu_test run on a batch: plain 0, prepare-only 0, init crash
ERESTART, init failure ENOSYS, init timeout and an unreachable state EINTR).

The services are ``hwl.servers.echo``: each counts the requests it answered and hands
the count to its new version, so a count that goes on proves the state moved, and
a count that goes on in the same pid proves the old version served on. The last
two tests drive RS's update code over a fake kernel, for the one failure the real
kernel cannot be made to produce on cue: a refused swap.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rs_fixtures import ECHO, RsSystem, echo_argv, pid_alive, update_under_way, wait_for

from hwl.config import load
from hwl.ipc.client import Connection, IpcError
from hwl.ipc.wire import HZ
from hwl.kernel.errno import Errno
from hwl.proto import sef as sefp
from hwl.proto.rs import RS_SYSCTL
from hwl.servers.rs.manager import Manager
from hwl.servers.rs.multiupdate import MultiUpdater
from hwl.servers.rs.table import Instance, Service, State, Waiter
from hwl.servers.rs.update import Asked, Updater
from hwl.system.events import read_events
from hwl.system.proto import LuState, UpdateFlag
from hwl.system.rs import Rs, RsError

SHORT = 30  # ticks (0.5 s): maxtime for the updates that are meant to time out
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rs() -> Iterator[RsSystem]:
    with RsSystem.running() as system:
        yield system


class Echo:
    """An echo service under a fresh label, and what a test checks after a batch."""

    def __init__(self, rs: RsSystem, stem: str, *extra: str) -> None:
        self.rs = rs
        self.label = rs.label(stem)
        self.endpoint = rs.rs.up(echo_argv("old", *extra), label=self.label)
        self.pid = rs.row(self.label).pid
        self.count = 0

    def echo(self) -> dict[str, Any]:
        answer = self.rs.echo(self.endpoint)
        self.count += 1
        assert answer["count"] == self.count, (self.label, answer, self.count)  # state kept
        return answer

    def check(self, tag: str, same: bool | None = None) -> None:
        """Up at its endpoint, no restart, answering with ``tag`` and its count; the
        same process as before if ``same`` (default: if the tag is old), else a new one."""
        row = self.rs.row(self.label)
        assert (row.state, row.endpoint, row.restarts) == ("up", self.endpoint, 0), row
        same = tag == "old" if same is None else same
        assert (row.pid == self.pid) is same, (row, self.pid)
        answer = self.echo()
        assert (answer["tag"], answer["pid"]) == (tag, row.pid), answer
        self.pid = row.pid

    def down(self) -> None:
        self.rs.down(self.label)


def services(rs: RsSystem, n: int, stem: str) -> list[Echo]:
    group = [Echo(rs, stem) for _ in range(n)]
    for svc in group:
        svc.echo()
    return group


def new_pids(rs: RsSystem) -> dict[str, int]:
    """The new versions RS runs for queued or running updates, by label."""
    return {i.label: i.pid for i in rs.rs.srv_status().instances if i.role == "new"}


def wait_gone(pid: int, what: str) -> None:
    def gone() -> bool:
        return not pid_alive(pid)

    wait_for(f"{what} (pid {pid}) to end", gone)


def run_result(rs: RsSystem) -> Errno | None:
    """``upd_run``: None for 0, else the errno it answered."""
    try:
        rs.rs.upd_run()
    except RsError as exc:
        return exc.errno
    return None


def events_since(rs: RsSystem, label: str, mark: int) -> list[str]:
    return rs.event_names(label)[mark:]


# ----------------------------------------------------------------- success


def test_a_batch_is_queued_then_swapped_together(rs: RsSystem) -> None:
    group = services(rs, 3, "mq")
    positions = [rs.rs.queue_update(s.label, echo_argv("new")) for s in group]
    assert positions == [1, 2, 3]
    # Queued, not started: the old versions serve, the new ones wait for their init.
    for svc in group:
        svc.check("old")
    status = rs.rs.upd_status()
    assert status.batch == "queued"
    assert [(u.label, u.phase, u.batch) for u in status.updates] == [
        (s.label, "queued", True) for s in group
    ]
    waiting = new_pids(rs)
    assert sorted(waiting) == sorted(s.label for s in group)
    assert all(pid_alive(pid) for pid in waiting.values())

    rs.rs.upd_run()

    for svc in group:
        old_pid = svc.pid
        svc.check("new")
        assert svc.pid == waiting[svc.label]  # the new version queued is the one serving
        wait_gone(old_pid, "the old version")
        assert rs.event_names(svc.label) == [
            "up",
            "update-queued",
            "update-prepared",
            "update-done",
        ]
        assert rs.events(svc.label)[-1]["batch"] == 3
    assert rs.rs.upd_status().updates == ()
    # In order, each prepared (and blocked) before the next was asked, and every
    # one prepared before any was swapped.
    found = [e for e in rs.events() if e.get("label") in {s.label for s in group}]
    prepared = [e for e in found if e["event"] == "update-prepared"]
    done = [e for e in found if e["event"] == "update-done"]
    assert [e["label"] for e in prepared] == [s.label for s in group]
    assert max(e["mono"] for e in prepared) <= min(e["mono"] for e in done)
    batch = [e for e in rs.events() if e["event"] == "update-batch"][-1]
    assert batch["labels"] == [s.label for s in group] and batch["result"] == "OK"
    for svc in group:
        svc.down()


def test_prepare_only_in_a_batch_is_held_then_resumed(rs: RsSystem) -> None:
    group = services(rs, 3, "mo")
    rs.rs.queue_update(group[0].label, echo_argv("new"))
    rs.rs.queue_update(group[1].label, echo_argv("new"), flags=UpdateFlag.PREPARE_ONLY)
    rs.rs.queue_update(group[2].label, echo_argv("new"))
    assert set(new_pids(rs)) == {group[0].label, group[2].label}  # none for -o
    assert run_result(rs) is None
    group[0].check("new")
    group[1].check("old")
    group[2].check("new")
    assert rs.events(group[1].label)[-1]["prepare_only"] is True
    for svc in group:
        svc.down()


# ------------------------------------------------- each flag, and rollback


CASES = [
    # flags, state, maxtime, result
    (UpdateFlag.NONE, LuState.WORK_FREE, 0, None),
    (UpdateFlag.PREPARE_ONLY, LuState.WORK_FREE, 0, None),
    (UpdateFlag.FORCE_INIT_CRASH, LuState.WORK_FREE, 0, Errno.ERESTART),
    (UpdateFlag.FORCE_INIT_FAIL, LuState.WORK_FREE, 0, Errno.ENOSYS),
    (UpdateFlag.FORCE_INIT_TIMEOUT, LuState.WORK_FREE, SHORT, Errno.EINTR),
    (UpdateFlag.NONE, LuState.UNREACHABLE, SHORT, Errno.EINTR),
]
IDS = ["plain", "prepare-only", "init-crash", "init-fail", "init-timeout", "unreachable"]


@pytest.mark.parametrize(("flags", "state", "maxtime", "result"), CASES, ids=IDS)
@pytest.mark.parametrize("which", ["middle", "all"])
def test_each_flag_in_a_batch(
    rs: RsSystem,
    which: str,
    flags: UpdateFlag,
    state: int,
    maxtime: int,
    result: Errno | None,
) -> None:
    """The flag on the middle one of three, or on all three: the batch's result is
    the flag's; on a failure every service is rolled back, its new version gone."""
    group = services(rs, 3, "mf")
    marks = [len(rs.event_names(s.label)) for s in group]
    for i, svc in enumerate(group):
        flagged = which == "all" or i == 1
        rs.rs.queue_update(
            svc.label,
            echo_argv("new"),
            state=state if flagged else LuState.WORK_FREE,
            maxtime=maxtime if flagged else 0,
            flags=flags if flagged else UpdateFlag.NONE,
        )
    waiting = new_pids(rs)
    started = time.monotonic()
    got = run_result(rs)
    took = time.monotonic() - started
    assert got is result, (got, result)
    if maxtime:
        assert SHORT / HZ - 0.05 <= took < SHORT / HZ + 2, took
    for i, svc in enumerate(group):
        flagged = which == "all" or i == 1
        updated = result is None and not (flagged and flags & UpdateFlag.PREPARE_ONLY)
        svc.check("new" if updated else "old")
        after = events_since(rs, svc.label, marks[i])
        assert after[:1] == ["update-queued"] and after[-1:] in (
            ["update-done"],
            ["update-rolled-back"],
            ["update-aborted"],
        ), after
        if result is not None:
            assert rs.events(svc.label)[-1]["errno"] == result.name
    for label, pid in waiting.items():
        if result is not None or label not in {s.label for s in group}:
            wait_gone(pid, f"the new version of {label}")
    assert new_pids(rs) == {} and rs.rs.upd_status().batch == "none"
    # Nothing was left half done: the same three update together at once.
    for svc in group:
        rs.rs.queue_update(svc.label, echo_argv("next"))
    rs.rs.upd_run()
    for svc in group:
        svc.check("next")
        svc.down()


def test_a_rollback_names_each_phase(rs: RsSystem) -> None:
    """State unreachable for the second of three: the first was prepared (and
    blocked) and is rolled back; the second and third never reached a state."""
    group = services(rs, 3, "mp")
    rs.rs.queue_update(group[0].label, echo_argv("new"))
    rs.rs.queue_update(group[1].label, echo_argv("new"), state=LuState.UNREACHABLE, maxtime=SHORT)
    rs.rs.queue_update(group[2].label, echo_argv("new"))
    assert run_result(rs) is Errno.EINTR
    assert rs.event_names(group[0].label)[-2:] == ["update-prepared", "update-rolled-back"]
    assert rs.event_names(group[1].label)[-2:] == ["update-queued", "update-aborted"]
    assert rs.event_names(group[2].label)[-2:] == ["update-queued", "update-aborted"]
    reason = rs.events(group[2].label)[-1]["reason"]
    assert f"{group[1].label}: state {int(LuState.UNREACHABLE)} not reached" in reason
    for svc in group:
        svc.check("old")
        svc.down()


def test_an_old_version_crashing_at_prepare_fails_the_batch(rs: RsSystem) -> None:
    """State 6: the second crashes while preparing: ERESTART, the first rolled
    back, the second restarted by RS as after any crash."""
    group = services(rs, 2, "mc")
    rs.rs.queue_update(group[0].label, echo_argv("new"))
    rs.rs.queue_update(group[1].label, echo_argv("new"), state=LuState.PREPARE_CRASH)
    assert run_result(rs) is Errno.ERESTART
    group[0].check("old")
    row = rs.wait_up(group[1].label, 1)
    assert row.pid != group[1].pid and rs.echo(row.endpoint)["tag"] == "old"
    assert rs.rs.upd_status().batch == "none"
    for svc in group:
        svc.down()


def test_series_on_one_batch_keeps_endpoints_and_restarts(rs: RsSystem) -> None:
    """testrelpol.sh's lu_test, each step a batch of the same three services
    (update self): 0, 0, 200, 78, 4, 4; then endpoints and restarts as before."""
    group = services(rs, 3, "ms")
    for flags, state, maxtime, result in CASES:
        for svc in group:
            rs.rs.queue_update(svc.label, state=state, maxtime=maxtime, flags=flags)
        assert run_result(rs) is result, flags
        for svc in group:
            svc.echo()
    for svc in group:
        row = rs.row(svc.label)
        assert (row.endpoint, row.restarts, row.state) == (svc.endpoint, 0, "up")
        svc.down()


# ---------------------------------------------------------- clients calling


def test_clients_see_no_error_across_batches(rs: RsSystem) -> None:
    """A client per service calls it without pause through five batches that
    succeed and two that roll back: every call answered, in order, no error."""
    group = services(rs, 3, "ml")
    seen: dict[str, list[tuple[str, int]]] = {s.label: [] for s in group}
    errors: list[BaseException] = []
    stop = threading.Event()

    def client(svc: Echo) -> None:
        with Connection.attach(rs.kernel.socket_path) as conn:
            try:
                for _ in range(100_000):
                    if stop.is_set():
                        break
                    reply = conn.sendrec(svc.endpoint, ECHO, {}, timeout=10)
                    if reply.m_type != 0:
                        raise AssertionError(f"{svc.label} answered {reply.m_type}")
                    seen[svc.label].append((str(reply["tag"]), int(reply["count"])))  # type: ignore[arg-type]
            except (IpcError, AssertionError) as exc:
                errors.append(exc)

    def sees(label: str, tag: str) -> Callable[[], bool]:
        return lambda: bool(errors) or seen[label][-1][0] == tag

    threads = [threading.Thread(target=client, args=(svc,)) for svc in group]
    for thread in threads:
        thread.start()
    try:
        wait_for("every client's first answer", lambda: all(seen.values()))
        plan = [("v1", 0), ("v2", 0), ("bad", UpdateFlag.FORCE_INIT_FAIL), ("v3", 0)]
        plan += [("bad", UpdateFlag.FORCE_INIT_CRASH), ("v4", 0), ("v5", 0)]
        for tag, flags in plan:
            for i, svc in enumerate(group):
                flag = UpdateFlag(flags) if i == 2 else UpdateFlag.NONE
                rs.rs.queue_update(svc.label, echo_argv(tag), flags=flag)
            got = run_result(rs)
            failed = Errno.ENOSYS if flags & UpdateFlag.FORCE_INIT_FAIL else Errno.ERESTART
            assert got is (failed if tag == "bad" else None), (tag, got)
            if tag != "bad":
                for svc in group:
                    wait_for(f"{svc.label}'s client to see {tag}", sees(svc.label, tag))
            assert not errors, errors
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors
    for svc in group:
        counts = [count for _, count in seen[svc.label]]
        assert counts == list(range(2, len(counts) + 2))  # one echo before; none lost
        tags = [tag for tag, _ in seen[svc.label]]
        assert "bad" not in tags
        versions = [0 if tag == "old" else int(tag[1:]) for tag in tags]
        assert versions == sorted(versions) and versions[-1] == 5
        row = rs.row(svc.label)
        assert (row.endpoint, row.restarts) == (svc.endpoint, 0)
        svc.down()


# -------------------------------------------------------------- the queue


def test_queue_rules(rs: RsSystem) -> None:
    """MINIX's do_update and do_sysctl checks: a service queued twice is EINVAL; an
    update without -q while a queue exists is EBUSY; upd_run and upd_stop with
    nothing queued are EINVAL; upd_stop drops the queue and its new versions."""
    for request in (rs.rs.upd_run, rs.rs.upd_stop, rs.rs.upd_start):
        with pytest.raises(RsError) as info:
            request()
        assert info.value.errno is Errno.EINVAL, info.value
    group = services(rs, 2, "mr")
    rs.rs.queue_update(group[0].label, echo_argv("new"))
    with pytest.raises(RsError) as info:
        rs.rs.queue_update(group[0].label, echo_argv("new"))
    assert info.value.errno is Errno.EINVAL and "already in the queued update" in str(info.value)
    with pytest.raises(RsError) as info:
        rs.rs.update(group[1].label, echo_argv("new"))
    assert info.value.errno is Errno.EBUSY, info.value
    with pytest.raises(RsError) as info:
        rs.rs.queue_update("no-such-service")
    assert info.value.errno is Errno.ESRCH
    rs.rs.queue_update(group[1].label, echo_argv("new"))
    waiting = new_pids(rs)
    rs.rs.upd_stop()
    for pid in waiting.values():
        wait_gone(pid, "the queued new version")
    assert rs.rs.upd_status().batch == "none"
    for svc in group:
        svc.check("old")
        assert rs.event_names(svc.label)[-1] == "update-aborted"
        assert rs.events(svc.label)[-1]["errno"] == "EINTR"
    rs.rs.update(group[1].label, echo_argv("new"))  # alone again
    group[1].check("new")
    for svc in group:
        svc.down()


def test_upd_start_then_stop_aborts_the_running_batch(rs: RsSystem) -> None:
    """upd_start answers at once; while it runs, -q is EBUSY; upd_stop rolls it
    back (EINTR in the event log) and the services serve on."""
    first = Echo(rs, "mx")
    never = Echo(rs, "mx", "--prepare", "never")
    rs.rs.queue_update(first.label, echo_argv("new"))
    rs.rs.queue_update(never.label, echo_argv("new"), state=LuState.REQUEST_FREE, maxtime=-1)
    other = Echo(rs, "mx")
    rs.rs.upd_start()

    def preparing() -> bool:
        phases = [u.phase for u in rs.rs.upd_status().updates]
        return phases == ["prepared", "preparing"]

    wait_for("the second to be asked for its state", preparing)
    assert rs.rs.upd_status().batch == "running"
    assert rs.row(first.label).state == "updating"
    with pytest.raises(RsError) as info:
        rs.rs.queue_update(other.label, echo_argv("new"))
    assert info.value.errno is Errno.EBUSY, info.value
    with pytest.raises(RsError) as info:
        rs.rs.upd_run()
    assert info.value.errno is Errno.EBUSY, info.value
    rs.rs.upd_stop()
    batch = [e for e in rs.events() if e["event"] == "update-batch"][-1]
    assert batch["result"] == "EINTR" and "upd_stop" in batch["reason"]
    first.check("old")
    never.check("old")
    # The cancel reached the second: a plain update of it works at once.
    rs.rs.update(never.label, echo_argv("new"))
    never.check("new")
    for svc in (first, never, other):
        svc.down()


def test_q_while_a_single_update_is_under_way_is_ebusy(rs: RsSystem) -> None:
    """MINIX: no update is queued while one is in progress."""
    held = Echo(rs, "mu", "--prepare", "never")
    other = Echo(rs, "mu")
    with update_under_way(rs, held.label, SHORT) as results:
        with pytest.raises(RsError) as info:
            rs.rs.queue_update(other.label, echo_argv("new"))
        assert info.value.errno is Errno.EBUSY and held.label in str(info.value), info.value
        status = rs.rs.upd_status()
        assert [(u.label, u.batch) for u in status.updates] == [(held.label, False)]
        assert status.batch == "none"
    assert results == [Errno.EINTR]
    held.check("old")
    other.check("old")
    assert new_pids(rs) == {}
    for svc in (held, other):
        svc.down()


def test_a_queued_service_restarted_before_the_run(rs: RsSystem) -> None:
    """The queue was made for processes that are gone: the run is ESRCH and the
    queue is dropped; the other service serves on unchanged."""
    group = services(rs, 2, "mk")
    for svc in group:
        rs.rs.queue_update(svc.label, echo_argv("new"))
    waiting = new_pids(rs)
    os.kill(group[1].pid, signal.SIGKILL)
    rs.wait_up(group[1].label, 1)
    assert run_result(rs) is Errno.ESRCH
    for pid in waiting.values():
        wait_gone(pid, "the queued new version")
    group[0].check("old")
    assert rs.rs.upd_status().batch == "none"
    for svc in group:
        svc.down()


def test_a_queued_new_version_that_dies_fails_the_run(rs: RsSystem) -> None:
    group = services(rs, 2, "md")
    for svc in group:
        rs.rs.queue_update(svc.label, echo_argv("new"))
    waiting = new_pids(rs)
    os.kill(waiting[group[0].label], signal.SIGKILL)
    assert run_result(rs) is Errno.ERESTART
    for svc in group:
        svc.check("old")
    for pid in waiting.values():
        wait_gone(pid, "a queued new version")
    for svc in group:
        svc.down()


# ----------------------------------------------------- the service command


def service(rs: RsSystem, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HWL_RUN_DIR": str(rs.run_dir)}
    return subprocess.run(
        [sys.executable, "-m", "hwl.cli.service", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )


def test_the_service_command_queues_runs_and_reports(rs: RsSystem) -> None:
    """minix-service -q update ...; sysctl upd_status, srv_status, upd_run: the
    exit status is the errno, 0 on success."""
    group = services(rs, 2, "mcli")
    for svc in group:
        done = service(rs, "-q", "update", "self", "-label", svc.label)
        assert (done.returncode, done.stdout) == (0, ""), done.stderr
    shown = service(rs, "sysctl", "upd_status")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "A 2-service update is queued (sysctl upd_run runs it):"
    assert [line.split()[:3] for line in lines[2:]] == [
        ["1", group[0].label, "queued"],
        ["2", group[1].label, "queued"],
    ]
    shown = service(rs, "sysctl", "srv_status")
    assert shown.returncode == 0, shown.stderr
    roles = {tuple(line.split()[:2]) for line in shown.stdout.splitlines()}
    for svc in group:
        assert (svc.label, "current") in roles and (svc.label, "new") in roles
    assert "service instances, of which" in shown.stdout.splitlines()[-1]
    done = service(rs, "sysctl", "upd_run")
    assert done.returncode == 0, done.stderr
    for svc in group:
        svc.check("old", same=False)  # update self: the same program, a new process
    # A failing batch: its errno is the exit status (ENOSYS, 78).
    service(rs, "-q", "update", "self", "-label", group[0].label).check_returncode()
    service(rs, "-qy", "update", "self", "-label", group[1].label).check_returncode()
    pids = [svc.pid for svc in group]
    done = service(rs, "sysctl", "upd_run")
    assert done.returncode == Errno.ENOSYS and int(Errno.ENOSYS) == 78, done.stderr
    assert "failed its init" in done.stderr
    assert [rs.row(svc.label).pid for svc in group] == pids
    done = service(rs, "sysctl", "upd_run")  # nothing queued
    assert done.returncode == Errno.EINVAL, done.stderr
    assert service(rs, "sysctl", "upd_status").stdout == "No update is in progress or queued\n"
    for svc in group:
        svc.down()


def test_srv_status_lists_every_instance_and_bad_types_are_einval(rs: RsSystem) -> None:
    """srv_status: each service's current process, and its new version while an
    update of it is queued; the table is RS_STATUS's. An unknown type is EINVAL."""
    svc = Echo(rs, "mi")
    with Connection.attach(rs.kernel.socket_path) as conn:
        other = Rs(conn, timeout=10)  # another operator connection
        rs.rs.queue_update(svc.label, echo_argv("new"))
        status = other.srv_status()
        mine = [(i.role, i.endpoint, i.state) for i in status.instances if i.label == svc.label]
        assert mine[0] == ("current", svc.endpoint, "up")
        assert mine[1][0] == "new" and mine[1][1] != svc.endpoint and mine[1][2] == "queued"
        assert [r.label for r in status.services] == [r.label for r in other.status()]
        other.upd_stop()
    reply = rs.request(RS_SYSCTL, {"subtype": 9})
    assert reply.m_type == -Errno.EINVAL and "bad sysctl type 9" in str(reply["error"])
    svc.check("old")
    svc.down()


# ------------------------------------- a swap the kernel refuses (fake kernel)


class FakeKernel:
    """The kernel calls RS's update code makes, recorded, with a swap refused on
    demand: the real kernel refuses a swap only of a process caught in a call or
    dying, a moment no test can choose."""

    def __init__(self, refuse: dict[int, list[Errno]]) -> None:
        self.refuse = refuse  # old endpoint -> the errnos its next swaps get
        self.endpoints = iter(range(0x9000, 0x9100))
        self.pids = iter(range(70000, 70100))
        self.swaps: list[tuple[int, int]] = []
        self.sent: list[tuple[int, int, dict[str, Any]]] = []  # dest, m_type, fields
        self.killed: list[int] = []
        self.notified: list[int] = []

    def spawn(self, argv: list[str], label: str, **_: Any) -> tuple[int, int]:
        return next(self.endpoints), next(self.pids)

    def senda(self, dest: int, m_type: int, fields: dict[str, Any]) -> None:
        self.sent.append((dest, m_type, dict(fields)))

    def sendnb(self, dest: int, m_type: int, fields: dict[str, Any]) -> None:
        self.sent.append((dest, m_type, dict(fields)))

    def notify(self, dest: int) -> None:
        self.notified.append(dest)

    def update(self, src: int, dst: int) -> None:
        errnos = self.refuse.get(src)
        if errnos:
            raise IpcError(errnos.pop(0), "update", "refused by the test")
        self.swaps.append((src, dst))

    def kill(self, endpoint: int, signo: int = signal.SIGKILL) -> None:
        self.killed.append(endpoint)

    def proctab(self) -> list[dict[str, Any]]:
        return []  # nobody listed: a new version counts as waiting for its init

    def setalarm(self, *, seconds: float | None = None, ticks: int | None = None) -> float:
        return 0.0


Batch = tuple[Manager, FakeKernel, list[Service], dict[str, int]]


def fake_batch(tmp_path: Path, refuse: dict[int, list[Errno]]) -> Batch:
    """RS's manager and updaters over a FakeKernel, with three services up and
    queued, run with ``upd_run`` and driven to the swap."""
    kernel = FakeKernel(refuse)
    m = Manager(kernel, tmp_path, load())  # type: ignore[arg-type]
    up = Updater(m)
    multi = MultiUpdater(up)
    group = []
    for i in range(3):
        svc = Service(label=f"f{i}", argv=["x"], conf="")
        svc.state, svc.current = State.UP, Instance(0x8000 + i, 60000 + i)
        m.table.add(svc)
        group.append(svc)
        multi.queue(svc, Asked(argv=None, conf=None, state=1, maxtime=3.0, flags=UpdateFlag.BATCH))
    news = {u.svc.label: u.new.endpoint for u in up.updates.values() if u.new}
    multi.run(Waiter(0x7777, "sysctl upd_run"))
    for svc in group:  # each asked in order, only once the one before is prepared
        asked = [dest for dest, m_type, f in kernel.sent if m_type == sefp.SEF_LU_PREPARE]
        assert asked[-1] == svc.endpoint, (asked, svc.label)
        up.prepared(svc.endpoint, {"result": 0, "saved": b"state"})
    inits = [dest for dest, m_type, _ in kernel.sent if m_type == sefp.SEF_INIT]
    assert inits == [news[svc.label] for svc in group]
    for svc in group:
        assert up.on_init(news[svc.label], 0)
    return m, kernel, group, news


def reply_to_run(kernel: FakeKernel) -> tuple[int, dict[str, Any]]:
    return next((m_type, f) for dest, m_type, f in reversed(kernel.sent) if dest == 0x7777)


def test_a_refused_swap_swaps_back_and_rolls_all_back(tmp_path: Path) -> None:
    m, kernel, group, news = fake_batch(tmp_path, {0x8001: [Errno.EPERM]})
    m.events.close()
    first = (group[0].endpoint, news[group[0].label])
    assert kernel.swaps == [first, first]  # swapped, then swapped back
    status, fields = reply_to_run(kernel)
    assert status == -Errno.EPERM and "refused the swap of f1" in fields["error"]
    for i, svc in enumerate(group):
        assert svc.state is State.UP and svc.current == Instance(0x8000 + i, 60000 + i)
        resumed = [t for d, t, _ in kernel.sent if d == svc.endpoint and t == -Errno.EINTR]
        assert resumed == [-Errno.EINTR]  # answered: it serves on
    assert sorted(kernel.killed) == sorted(news.values())  # only the new versions
    assert kernel.notified == []  # no new version was let serve
    found = read_events(tmp_path / "events.jsonl")
    assert [e["event"] for e in found if e.get("label") == "f0"][-1] == "update-rolled-back"


def test_a_busy_swap_is_retried(tmp_path: Path) -> None:
    """EBUSY (a process in a call for a moment): RS tries again; the batch succeeds."""
    m, kernel, group, news = fake_batch(tmp_path, {0x8002: [Errno.EBUSY, Errno.EBUSY]})
    assert len(kernel.swaps) == 2  # the third waits for its retry
    deadline = time.monotonic() + 5
    while len(kernel.swaps) < 3 and time.monotonic() < deadline:
        time.sleep(0.002)
        m.timers.run_due()
    assert kernel.swaps == [(svc.endpoint, news[svc.label]) for svc in group]
    assert reply_to_run(kernel)[0] == 0
    assert kernel.notified == [svc.endpoint for svc in group]  # all go-aheads after all swaps
    for svc in group:
        assert svc.state is State.UP and svc.pid != 60000 + int(svc.label[1])
    m.events.close()
