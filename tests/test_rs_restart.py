"""RS is no single point of failure: the kernel restarts it, and the new RS adopts
the services the old one ran (its table kept in the kernel with ``keep``).

Without QEMU (a kernel whose root is RS, tests/rs_fixtures.py): the keep call's
rules; SIGKILL of RS under a client's load: the services keep serving, a new RS
adopts them (same pids, endpoints and restart counts), a later crash is
recovered as before; a death while RS was stopped reaches the new RS; an
operator's request in flight gets an error it can retry; the restart-rate limit.
On QEMU (the pc profile): SIGKILL of RS during a VFS read loop.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rs_fixtures import RsSystem, echo_argv, pid_alive, service_argv, wait_for

from hwl.cli.up import Reader
from hwl.ipc.client import Connection, IpcError
from hwl.kernel.errno import Errno
from hwl.kernel.ipc import EVENT_EXIT
from hwl.kernel.keep import MAX_BLOB, KeepError, KeptState
from hwl.kernel.kernel import ROOT_RESTARTS, Kernel
from hwl.kernel.priv import Priv
from hwl.proto import wire
from hwl.proto.ds import DS_DRIVER_UP
from hwl.system.ds import Ds
from hwl.system.proto import Policy
from hwl.system.rs import Rs, RsError
from hwl.system.running import RunningSystem
from hwl.system.vfs import Vfs
from hwl.system.watch import kernel_log_pids, kernel_log_says, rs_pid

READ = 16 << 20
CHUNK = 256 << 10


@pytest.fixture(scope="module")
def rs() -> Iterator[RsSystem]:
    with RsSystem.running() as system:
        yield system


def rs_pids(rs: RsSystem) -> list[int]:
    return kernel_log_pids(rs.run_dir, "rs")


def answers(rs: RsSystem) -> bool:
    """Whether RS answers a status request now."""
    try:
        rs.rs.status()
    except RsError:
        return False
    return True


def kill_rs(rs: RsSystem) -> int:
    """SIGKILL the running RS; the pid of the one the kernel starts instead, once
    it has adopted its services (its rs-restart event is written)."""
    pids = rs_pids(rs)
    restarts = len([e for e in rs.events() if e["event"] == "rs-restart"])
    os.kill(pids[-1], signal.SIGKILL)
    wait_for(
        "the new RS's rs-restart event",
        lambda: len([e for e in rs.events() if e["event"] == "rs-restart"]) > restarts,
        10,
    )
    new = rs_pids(rs)
    assert len(new) == len(pids) + 1 and pid_alive(new[-1]), new
    return new[-1]


# ------------------------------------------------------------------ keep


def test_kept_state_bounds() -> None:
    kept = KeptState()
    kept.put("a", b"x" * MAX_BLOB)
    assert kept.get("a") == b"x" * MAX_BLOB
    with pytest.raises(KeepError):
        kept.put("a", b"x" * (MAX_BLOB + 1))
    assert kept.get("a") == b"x" * MAX_BLOB  # a refused put keeps the old blob
    kept.put("a", b"")
    assert kept.get("a") is None and len(kept) == 0


def test_keep_is_for_system_processes_only(rs: RsSystem) -> None:
    """The operator (a user process) may not keep anything: ECALLDENIED."""
    with pytest.raises(IpcError) as info:
        rs.conn.keep_put(b"mine")
    assert info.value.errno is Errno.ECALLDENIED


def test_the_kernel_holds_exits_while_no_root_runs(tmp_path: Path) -> None:
    """The kernel alone, in this process (its loop not running, so each step is
    taken in order): the root dies, then one of its children; the new root, at
    the same endpoint, gets that child's exit record and a SYSTEM notify. After
    ROOT_RESTARTS restarts within the window the next death is not restarted."""
    kernel = Kernel(tmp_path, None)
    life = kernel.lifecycle
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    try:
        root = life.spawn(None, sleeper, "rs", Priv.root("rs"), cold=True, root=True)
        child = life.spawn(root, sleeper, "svc", Priv.root("svc"), cold=True)
        assert child.parent == root.endpoint and child.pid is not None
        life.kill_process(root, "test: the root dies")
        entry = life.children[child.pid]
        assert entry.popen is not None
        os.kill(child.pid, signal.SIGKILL)
        life.child_exited(entry, entry.popen.wait(10))  # reaped, as the loop would
        assert [r.endpoint for r in life.held_exits] == [child.endpoint]

        new = life.restart_root()
        assert new is not None and new.endpoint == root.endpoint and new.pid != root.pid
        assert life.root_endpoint == root.endpoint
        assert [(r.endpoint, r.signal) for r in new.exits] == [(child.endpoint, 9)]
        assert new.notify_pending.get(wire.SYSTEM, 0) & EVENT_EXIT
        assert not life.held_exits

        for _ in range(ROOT_RESTARTS - 1):
            current = kernel.table.lookup(root.endpoint)
            assert current is not None
            life.kill_process(current, "test: the root dies again")
            assert life.restart_root() is not None
        current = kernel.table.lookup(root.endpoint)
        assert current is not None
        life.kill_process(current, "test: once too often")
        assert life.restart_root() is None and life.root_gave_up
        assert kernel.table.lookup(root.endpoint) is None
    finally:
        kernel.shutdown()


# ----------------------------------------------------------- RS's restart


def test_rs_killed_under_load_adopts_its_services(rs: RsSystem) -> None:
    reset, keep = rs.label("adr"), rs.label("adk")
    rs.rs.up(echo_argv("R"), label=reset, period=6)
    rs.rs.up(echo_argv("K"), label=keep, policy=Policy.RESTART, period=6)
    # One crash before, so the restart count has something to keep.
    os.kill(rs.row(keep).pid, signal.SIGKILL)
    before = {label: rs.wait_up(label, 1 if label == keep else 0) for label in (reset, keep)}
    assert before[keep].restarts == 1

    errors: list[BaseException] = []
    answers = [0]
    stop = threading.Event()

    def load() -> None:  # a client of both services the whole time
        with Connection.attach(rs.kernel.socket_path) as conn:
            while not stop.is_set():
                try:
                    for row in before.values():
                        rs.echo(row.endpoint, conn)
                    answers[0] += 1
                except BaseException as exc:
                    errors.append(exc)
                    return

    client = threading.Thread(target=load, daemon=True)
    client.start()
    try:
        wait_for("the client's first answers", lambda: answers[0] > 10, 10)
        new_rs = kill_rs(rs)
        counted = answers[0]
        wait_for("answers after RS's restart", lambda: answers[0] > counted + 10, 10)
    finally:
        stop.set()
        client.join(10)
    assert not errors, errors

    after = {label: rs.row(label) for label in (reset, keep)}
    for label, row in after.items():
        assert row.state == "up", row
        assert (row.pid, row.endpoint, row.restarts) == (
            before[label].pid,
            before[label].endpoint,
            before[label].restarts,
        ), (before[label], row)
        assert row.period == 6 and pid_alive(row.pid)
    assert after[keep].policy == "restart" and after[reset].policy == "reset"
    event = [e for e in rs.events() if e["event"] == "rs-restart"][-1]
    assert {reset, keep} <= set(event["adopted"]) and event["pid"] == new_rs
    assert "adopt" in rs.event_names(reset)

    # Recovered as before: a crash restarts it by its policy, counted on.
    os.kill(after[keep].pid, signal.SIGKILL)
    row = rs.wait_up(keep, 2)
    assert row.endpoint == before[keep].endpoint and row.pid != before[keep].pid
    os.kill(after[reset].pid, signal.SIGKILL)
    row = rs.wait_up(reset, 1)
    assert row.endpoint != before[reset].endpoint
    # ... and the heartbeat watches the adopted ones: a hang is caught.
    rs.down(reset)
    rs.down(keep)


def test_a_death_rs_did_not_read_reaches_the_new_rs(rs: RsSystem) -> None:
    """RS stopped (it reads nothing), a service killed, then RS killed: the exit the
    old RS never read (or that came while no RS ran) is handed to the new one,
    which restarts the service."""
    label = rs.label("unread")
    rs.rs.up(echo_argv("U"), label=label)
    victim = rs.row(label)
    old_rs = rs_pids(rs)[-1]
    os.kill(old_rs, signal.SIGSTOP)
    try:
        os.kill(victim.pid, signal.SIGKILL)
        # The kernel saw it die: its exit record waits for the stopped RS (or, if
        # the fork server's word on it comes after RS's death, for the next RS).
        assert "log does not say" not in kernel_log_says(rs.run_dir, label)
    finally:
        restarts = len([e for e in rs.events() if e["event"] == "rs-restart"])
        os.kill(old_rs, signal.SIGKILL)  # a stopped process dies of it too
    wait_for(
        "the new RS",
        lambda: len([e for e in rs.events() if e["event"] == "rs-restart"]) > restarts,
        10,
    )
    row = rs.wait_up(label, 1)
    assert row.pid != victim.pid
    assert "crash" in rs.event_names(label)
    rs.down(label)


def test_a_service_waiting_for_its_script_waits_on_under_the_new_rs(rs: RsSystem) -> None:
    """A crash whose recovery script (here one that decides nothing) has not yet
    restarted the service when RS dies: the new RS keeps waiting for the script,
    and service restart then brings it back with its restart count."""
    label = rs.label("script")
    rs.rs.up(echo_argv("S"), label=label, script="/bin/true")
    os.kill(rs.row(label).pid, signal.SIGKILL)
    wait_for("the script's turn", lambda: rs.row(label).state == "waiting-script")
    kill_rs(rs)
    assert rs.row(label).state == "waiting-script"
    rs.rs.restart(label)
    row = rs.wait_up(label, 1)
    assert row.restarts == 1 and pid_alive(row.pid)
    rs.down(label)


def test_a_request_in_flight_gets_an_error_it_can_retry(rs: RsSystem) -> None:
    """service up waits for an init that never comes; RS dies meanwhile: the
    operator's call ends with EDEADSRCDST (no hang), and the same up then works."""
    label = rs.label("inflight")
    outcome: list[BaseException | None] = []

    def up() -> None:  # on a connection of its own, as another operator would
        try:
            with Rs.attach(rs.run_dir, timeout=30) as other:
                other.up(service_argv("--init", "timeout"), label=label)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=up, daemon=True)
    caller.start()
    wait_for("the service to start", lambda: rs.status(label))
    kill_rs(rs)
    caller.join(10)
    assert outcome and isinstance(outcome[0], RsError), outcome
    assert outcome[0].errno is Errno.EDEADSRCDST
    assert "may be retried" in str(outcome[0])
    assert rs.status(label) is None  # a fresh up under way is dropped: retry it
    rs.rs.up(echo_argv("again"), label=label)
    assert rs.row(label).state == "up"
    rs.down(label)


def test_rs_that_keeps_dying_is_given_up() -> None:
    """More than ROOT_RESTARTS deaths within the window: the kernel says so in its
    log and leaves RS dead; the services it ran keep running."""
    with RsSystem.running() as rs:
        label = rs.label("orphan")
        rs.rs.up(echo_argv("O"), label=label)
        svc = rs.row(label)
        for n in range(ROOT_RESTARTS + 1):
            wait_for(f"RS #{n + 1}", lambda: answers(rs))
            pids = rs_pids(rs)
            assert len(pids) == n + 1, pids
            os.kill(pids[-1], signal.SIGKILL)
        log = rs.run_dir / "kernel.log"
        wait_for("the kernel to give up", lambda: "not restarted again" in log.read_text())
        assert len(rs_pids(rs)) == ROOT_RESTARTS + 1  # the last death: no RS started
        assert pid_alive(svc.pid)
        with pytest.raises(RsError) as info:
            rs.rs.status()
        assert info.value.errno is Errno.EDEADSRCDST


# ------------------------------------------------------------------ QEMU


@pytest.mark.qemu
def test_rs_killed_during_a_vfs_read_loop(hwl_system: RunningSystem) -> None:
    """The pc profile: SIGKILL of RS while a client reads the disk through VFS: no
    client error and every byte right, no service restarted (same pids), the new
    RS adopted them, and a later SIGKILL of at_wini is recovered as before."""
    before = {r.label: r for r in hwl_system.rs.status()}
    reader = Reader(hwl_system.run_dir, "/dev/c0d0", at=0, size=READ)
    reader.start()
    assert reader.started.wait(30)
    old_rs = rs_pid(hwl_system.run_dir)
    os.kill(old_rs, signal.SIGKILL)
    adopted = hwl_system.system.wait_event(lambda e: e["event"] == "rs-restart", timeout=20)
    reader.join(120)
    assert not reader.is_alive(), "the reader hangs"
    assert reader.error is None, reader.error
    image = hwl_system.machine.disks["hd0"].read_bytes()[:READ]
    assert reader.digest == hashlib.sha256(image).hexdigest()

    new_rs = rs_pid(hwl_system.run_dir)
    assert new_rs != old_rs and adopted["pid"] == new_rs
    assert set(before) <= set(adopted["adopted"]), adopted
    after = {r.label: r for r in hwl_system.rs.status()}
    for label, row in before.items():
        assert (after[label].pid, after[label].endpoint, after[label].restarts) == (
            row.pid,
            row.endpoint,
            row.restarts,
        ), label
    assert hwl_system.death() is None
    assert [(r.pid, r.new_pid) for r in hwl_system.restarts()] == [(old_rs, new_rs)]

    killed_at = time.monotonic()
    os.kill(after["at_wini"].pid, signal.SIGKILL)
    hwl_system.system.wait_event(
        lambda e: e["event"] == "restart" and e["label"] == "at_wini" and e["mono"] > killed_at,
        timeout=20,
    )
    now = {r.label: r for r in hwl_system.rs.status()}
    assert now["at_wini"].pid != after["at_wini"].pid
    assert now["at_wini"].restarts == after["at_wini"].restarts + 1
    with Vfs.attach(hwl_system.run_dir) as vfs, vfs.open("/dev/c0d0", "rb") as disk:
        assert disk.read(CHUNK) == image[:CHUNK]


@pytest.mark.qemu
def test_ds_killed_keeps_its_store_and_vfs_its_subscription(hwl_system: RunningSystem) -> None:
    """The pc profile: SIGKILL of DS; RS restarts it and the new DS has the drivers'
    keys and labels without their announcing again, and the subscriptions (VFS's
    drv.blk one); a read through VFS across a crash of at_wini after that gets
    every byte."""
    before = {r.label: r for r in hwl_system.rs.status()}
    killed_at = time.monotonic()
    os.kill(before["ds"].pid, signal.SIGKILL)
    hwl_system.system.wait_event(
        lambda e: e["event"] == "restart" and e["label"] == "ds" and e["mono"] > killed_at,
        timeout=20,
    )
    ds = Ds.find(hwl_system.rs.conn, timeout=10)
    after = {r.label: r for r in hwl_system.rs.status()}
    assert ds.endpoint == after["ds"].endpoint and after["ds"].pid != before["ds"].pid
    assert ds.retrieve_u32("drv.blk.at_wini") == DS_DRIVER_UP
    assert ds.retrieve_label("at_wini") == after["at_wini"].endpoint
    for label in ("at_wini", "at_wini1", "vfs", "pci"):  # nobody had to start over
        assert after[label].pid == before[label].pid, label
    ds_log = (hwl_system.run_dir / "ds.log").read_text()
    kept = re.search(r"restart: (\d+) entries and (\d+) subscriptions kept", ds_log)
    assert kept is not None, ds_log
    # labels and driver-up keys (the dead DS's own label dropped); VFS's subscription
    assert int(kept.group(1)) >= 6 and int(kept.group(2)) >= 1, kept.group(0)

    image = hwl_system.machine.disks["hd0"].read_bytes()[:READ]
    killed_at = time.monotonic()
    with Vfs.attach(hwl_system.run_dir) as vfs, vfs.open("/dev/c0d0", "rb") as disk:
        first = disk.read(CHUNK)
        os.kill(after["at_wini"].pid, signal.SIGKILL)
        rest = disk.read(READ - CHUNK)
    assert first + rest == image
    hwl_system.system.wait_event(
        lambda e: e["event"] == "restart" and e["label"] == "at_wini" and e["mono"] > killed_at,
        timeout=20,
    )
