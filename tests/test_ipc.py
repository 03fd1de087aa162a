"""IPC through the kernel between real processes: every primitive and every error.

The test process is the kernel's root; agents (tests/programs/agent.py) are
processes the kernel starts, each running the steps the test asks for.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

import pytest
from agents import AGENT, CMD, Agent, conf, spawn_agent, wait_state

from hwl import ipc
from hwl.ipc import wire
from hwl.kernel.errno import Errno
from hwl.kernel.launcher import KernelProcess

HELPER_ERROR = 1000  # tests/programs/helper_error.py


@pytest.fixture(scope="module")
def pair(kernel: KernelProcess) -> tuple[Agent, Agent]:
    assert kernel.root is not None
    return spawn_agent(kernel.root, "alpha"), spawn_agent(kernel.root, "beta")


def test_hello_gives_each_process_its_endpoint(
    root: ipc.Connection, pair: tuple[Agent, Agent]
) -> None:
    a, b = pair
    who = a.cmd("whoami")
    assert (who["endpoint"], who["label"], who["pid"]) == (a.ep, "alpha", a.pid)
    assert a.ep != b.ep != root.endpoint
    assert wire.endpoint_slot(a.ep) != wire.endpoint_slot(b.ep)


def test_sendrec_between_two_agents(pair: tuple[Agent, Agent]) -> None:
    a, b = pair
    b.start("receive")
    wait_state(a.root, b.ep, "receiving")
    a.start("sendrec", dest=b.ep, m_type=77, data=b"ping")
    # b got a's message; b's RESULT tells what it saw.
    seen = b.result()
    assert (seen["source"], seen["m_type"], seen["payload"]) == (a.ep, 77, b"ping")
    # a is now blocked waiting for b's reply; make b send it.
    wait_state(a.root, a.ep, "receiving")
    assert b.cmd("send", dest=a.ep, m_type=78, data=b"pong")["status"] == 0
    got = a.result()
    assert (got["status"], got["source"], got["m_type"], got["payload"]) == (0, b.ep, 78, b"pong")


def test_send_completes_only_when_the_receiver_takes_the_message(
    root: ipc.Connection, kernel: KernelProcess, pair: tuple[Agent, Agent]
) -> None:
    a, b = pair
    a.start("receive", source=b.ep)  # a receives from b only: not the user's send
    wait_state(root, a.ep, "receiving", on=b.ep)
    with kernel.attach() as user:
        outcome: dict[str, object] = {}

        def send() -> None:
            try:
                user.send(a.ep, 99, b"late")
                outcome["sent"] = True
            except BaseException as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=send)
        thread.start()
        wait_state(root, user.endpoint, "sending", on=a.ep)
        assert thread.is_alive() and not outcome  # the kernel holds the send
        assert b.cmd("send", dest=a.ep, m_type=5)["status"] == 0
        assert a.result()["source"] == b.ep  # a took b's message, then receives again
        thread.join(10)
        assert outcome == {"sent": True}
        inbox = a.cmd("inbox")["messages"]
    assert inbox == [{"source": user.endpoint, "m_type": 99, "payload": b"late"}]


def test_receive_from_one_endpoint_leaves_others_queued(
    root: ipc.Connection, pair: tuple[Agent, Agent]
) -> None:
    a, b = pair
    a.start("send", dest=root.endpoint, m_type=1001, data=b"from a")
    b.start("send", dest=root.endpoint, m_type=1002, data=b"from b")
    wait_state(root, a.ep, "sending")
    wait_state(root, b.ep, "sending")
    first = root.receive(b.ep, timeout=5)
    assert (first.source, first.m_type) == (b.ep, 1002)
    assert b.result()["status"] == 0
    second = root.receive(timeout=5)
    assert (second.source, second.m_type, second.payload) == (a.ep, 1001, b"from a")
    assert a.result()["status"] == 0


def test_notify_is_nonblocking_and_coalesced_per_source(
    root: ipc.Connection, pair: tuple[Agent, Agent]
) -> None:
    a, _ = pair
    for _ in range(3):
        assert a.cmd("notify", dest=root.endpoint)["status"] == 0
    note = root.receive(timeout=5)
    assert note.is_notify and note.source == a.ep
    assert isinstance(note["timestamp"], int)
    with pytest.raises(ipc.IpcTimeout):
        root.receive(a.ep, timeout=0.2)  # three notifies, one delivery


def test_notifications_come_before_queued_messages(
    root: ipc.Connection, pair: tuple[Agent, Agent]
) -> None:
    a, b = pair
    b.start("send", dest=root.endpoint, m_type=5, data=b"")
    wait_state(root, b.ep, "sending")
    assert a.cmd("notify", dest=root.endpoint)["status"] == 0
    assert root.receive(timeout=5).is_notify
    assert root.receive(timeout=5).source == b.ep
    assert b.result()["status"] == 0


def test_sendnb_to_a_process_not_receiving_is_enotready(
    root: ipc.Connection, pair: tuple[Agent, Agent]
) -> None:
    a, _ = pair
    a.start("sleep", seconds=0.3)
    with pytest.raises(ipc.IpcError) as err:
        root.sendnb(a.ep, 5, b"")
    assert err.value.errno is Errno.ENOTREADY
    a.result()


def test_senda_queues_and_reports_delivery(root: ipc.Connection, pair: tuple[Agent, Agent]) -> None:
    a, _ = pair
    a.start("sleep", seconds=0.3)
    ident = root.senda(a.ep, 42, {"n": 1})  # returns at once
    assert root.async_status(ident) is Errno.EINPROGRESS
    a.result()  # after its sleep the agent receives again and takes the async message
    deadline = time.monotonic() + 5
    while (status := root.async_status(ident)) is Errno.EINPROGRESS:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert status is None
    inbox = a.cmd("inbox")["messages"]
    assert [(m["source"], m["m_type"]) for m in inbox] == [(root.endpoint, 42)]
    with pytest.raises(ipc.IpcError):
        root.async_status(ident)  # a finished status is read once


def test_senda_to_a_process_that_dies_reports_edeadsrcdst(root: ipc.Connection) -> None:
    c = spawn_agent(root, "gamma")
    c.start("sleep", seconds=5)
    ident = root.senda(c.ep, 42, b"")
    root.kill(c.ep)
    deadline = time.monotonic() + 5
    while (status := root.async_status(ident)) is Errno.EINPROGRESS:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert status is Errno.EDEADSRCDST


def test_send_cycle_is_elocked(root: ipc.Connection, pair: tuple[Agent, Agent]) -> None:
    a, _ = pair
    a.start("send", dest=root.endpoint, m_type=7, data=b"")
    wait_state(root, a.ep, "sending")
    with pytest.raises(ipc.IpcError) as err:
        root.send(a.ep, 8, b"")  # a sends to root, root to a: deadlock
    assert err.value.errno is Errno.ELOCKED
    assert root.receive(a.ep, timeout=5).m_type == 7
    assert a.result()["status"] == 0


def test_three_process_cycle_is_elocked(root: ipc.Connection, pair: tuple[Agent, Agent]) -> None:
    a, b = pair
    a.start("send", dest=b.ep, m_type=11, data=b"")  # a -> b (b not receiving: a blocks)
    wait_state(root, a.ep, "sending")
    b.start("send", dest=root.endpoint, m_type=2, data=b"")  # b -> root... b is busy; see below
    # b took the CMD first, so b now sends to root and blocks; a still waits on b.
    wait_state(root, b.ep, "sending")
    with pytest.raises(ipc.IpcError) as err:
        root.send(a.ep, 3, b"")  # root -> a -> b -> root
    assert err.value.errno is Errno.ELOCKED
    assert root.receive(b.ep, timeout=5).m_type == 2
    assert b.result()["status"] == 0
    # b is back in its loop and takes a's message; a finishes.
    assert a.result()["status"] == 0
    assert [m["m_type"] for m in b.cmd("inbox")["messages"]] == [11]


def test_send_to_self_is_elocked(root: ipc.Connection) -> None:
    with pytest.raises(ipc.IpcError) as err:
        root.send(root.endpoint, 1, b"")
    assert err.value.errno is Errno.ELOCKED


def _sendrec_in_thread(
    conn: ipc.Connection, dest: int
) -> tuple[threading.Thread, dict[str, object]]:
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["reply"] = conn.sendrec(dest, 9, b"", timeout=20)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_sendrec_blocked_in_send_gets_edeadsrcdst_when_peer_is_sigkilled(
    root: ipc.Connection, kernel: KernelProcess
) -> None:
    victim = spawn_agent(root, "victim1")
    victim.start("sleep", seconds=30)  # takes the CMD, then never receives again
    with kernel.attach() as user:
        thread, outcome = _sendrec_in_thread(user, victim.ep)
        # the kernel's table shows the user blocked in the send half of its sendrec
        wait_state(root, user.endpoint, "sending", on=victim.ep)
        os.kill(victim.pid, signal.SIGKILL)
        thread.join(timeout=10)
    assert not thread.is_alive()
    error = outcome.get("error")
    assert isinstance(error, ipc.IpcError) and error.errno is Errno.EDEADSRCDST, outcome


def test_sendrec_waiting_for_the_reply_gets_edeadsrcdst_when_peer_is_sigkilled(
    root: ipc.Connection, kernel: KernelProcess
) -> None:
    victim = spawn_agent(root, "victim2")
    victim.start("receive")  # takes the next message, then reports to root (which is not listening)
    wait_state(root, victim.ep, "receiving")
    with kernel.attach() as user:
        thread, outcome = _sendrec_in_thread(user, victim.ep)
        wait_state(root, victim.ep, "sending")  # the victim took the message, user awaits a reply
        wait_state(root, user.endpoint, "receiving")
        os.kill(victim.pid, signal.SIGKILL)
        thread.join(timeout=10)
    error = outcome.get("error")
    assert isinstance(error, ipc.IpcError) and error.errno is Errno.EDEADSRCDST, outcome


def test_send_and_receive_name_a_dead_endpoint(root: ipc.Connection) -> None:
    dead = spawn_agent(root, "shortlived")
    root.kill(dead.ep)
    deadline = time.monotonic() + 5
    while any(p["endpoint"] == dead.ep for p in root.proctab()):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    for call in (
        lambda: root.send(dead.ep, 1, b""),
        lambda: root.notify(dead.ep),
        lambda: root.receive(dead.ep, timeout=1),
        lambda: root.sendrec(dead.ep, 1, b"", timeout=1),
    ):
        with pytest.raises(ipc.IpcError) as err:
            call()
        assert err.value.errno is Errno.EDEADSRCDST


def test_stale_endpoint_never_reaches_the_slots_next_process(
    root: ipc.Connection, kernel: KernelProcess
) -> None:
    old = spawn_agent(root, "stale")
    slot = wire.endpoint_slot(old.ep)
    root.kill(old.ep)
    reused: ipc.Connection | None = None
    for _ in range(3 * wire.NR_SLOTS):  # slots are handed out round robin
        conn = kernel.attach()
        if wire.endpoint_slot(conn.endpoint) == slot:
            reused = conn
            break
        conn.close()
    assert reused is not None, "the slot was never reused"
    try:
        assert reused.endpoint != old.ep
        assert wire.endpoint_generation(reused.endpoint) != wire.endpoint_generation(old.ep)
        with pytest.raises(ipc.IpcError) as err:
            root.notify(old.ep)
        assert err.value.errno is Errno.EDEADSRCDST
        with pytest.raises(ipc.IpcTimeout):
            reused.receive(timeout=0.2)  # nothing meant for the old process arrives
    finally:
        reused.close()


def test_ipc_line_forbids_targets_with_ecalldenied(
    root: ipc.Connection, kernel: KernelProcess, pair: tuple[Agent, Agent]
) -> None:
    a, _ = pair
    lonely = spawn_agent(root, "lonely", "ipc beta;")  # may send to beta only (and reply)
    result = lonely.cmd("notify", dest=a.ep)
    assert Errno(result["status"]) is Errno.ECALLDENIED
    result = lonely.cmd("send", dest=a.ep, m_type=1)
    assert Errno(result["status"]) is Errno.ECALLDENIED
    log = (kernel.run_dir / "kernel.log").read_text()
    assert "ECALLDENIED: lonely" in log
    root.kill(lonely.ep)


def test_user_processes_may_not_make_kernel_calls_or_reach_other_users(
    kernel: KernelProcess,
) -> None:
    with kernel.attach() as one, kernel.attach() as two:
        assert not one.system
        with pytest.raises(ipc.IpcError) as err:
            one.uptime()
        assert err.value.errno is Errno.ECALLDENIED
        with pytest.raises(ipc.IpcError) as err:
            one.notify(two.endpoint)
        assert err.value.errno is Errno.ECALLDENIED


def test_spawn_of_a_missing_program_is_enoent_and_names_it(root: ipc.Connection) -> None:
    with pytest.raises(ipc.IpcError) as err:
        root.spawn(["/nonexistent/driver"], "ghost")
    assert err.value.errno is Errno.ENOENT
    assert "/nonexistent/driver" in str(err.value)


def test_spawn_with_a_bad_conf_is_einval_with_the_parse_error(root: ipc.Connection) -> None:
    with pytest.raises(ipc.IpcError) as err:
        root.spawn(["/bin/true"], "bad", conf="service bad { io zz; };")
    assert err.value.errno is Errno.EINVAL
    assert "io" in str(err.value)


def test_exit_is_reported_to_the_parent_with_a_system_notify(root: ipc.Connection) -> None:
    quitter = spawn_agent(root, "quitter")
    root.exits()  # drain older records
    quitter.start("exit", code=3)
    records: list[ipc.ExitInfo] = []
    while not records:  # older exits may still be reported (their notify pending): skip them
        note = root.receive(wire.SYSTEM, timeout=10)
        assert note.is_notify and note["events"] == 1
        records = [r for r in root.exits() if r.endpoint == quitter.ep]
    assert [(r.endpoint, r.label, r.status) for r in records] == [(quitter.ep, "quitter", 3)]


def test_an_agents_own_error_is_no_errno(
    root: ipc.Connection, kernel: KernelProcess, pair: tuple[Agent, Agent]
) -> None:
    """tests/programs/helper_error.py: the agent's own exception answers a status no
    errno has, with its traceback (also in its log), while the kernel's EINVAL
    still arrives as EINVAL; the agent keeps serving."""
    a, _ = pair
    own = root.sendrec(a.ep, CMD, {"op": "no such op"}, timeout=10).fields
    assert own["status"] == HELPER_ERROR and own["status"] not in {int(e) for e in Errno}
    assert "ValueError: unknown op 'no such op'" in str(own["traceback"])
    log = kernel.run_dir / "alpha.log"
    assert "ValueError: unknown op 'no such op'" in log.read_text()
    kernel_says = a.cmd("copyfrom", endpoint=root.endpoint, grant=12345, length=4)
    assert Errno(kernel_says["status"]) is Errno.EINVAL and "traceback" not in kernel_says
    assert a.cmd("whoami")["endpoint"] == a.ep


# --- grants ---------------------------------------------------------------------


def test_grants_let_exactly_the_grantee_copy_exactly_the_range(
    root: ipc.Connection, pair: tuple[Agent, Agent]
) -> None:
    a, b = pair
    buf = root.arena.alloc(64)
    buf.write(bytes(range(64)))
    gid = root.arena.grant(a.ep, buf.offset + 8, 32, read=True)
    try:
        got = a.cmd("copyfrom", endpoint=root.endpoint, grant=gid, offset=4, length=8)
        assert got["status"] == 0 and got["data"] == bytes(range(12, 20))
        beyond = a.cmd("copyfrom", endpoint=root.endpoint, grant=gid, offset=30, length=4)
        assert Errno(beyond["status"]) is Errno.EPERM and "outside grant" in beyond["error"]
        other = b.cmd("copyfrom", endpoint=root.endpoint, grant=gid, offset=0, length=4)
        assert Errno(other["status"]) is Errno.EPERM
        write = a.cmd("copyto", endpoint=root.endpoint, grant=gid, data=b"xx")
        assert Errno(write["status"]) is Errno.EPERM and "writing" in write["error"]
        assert buf.read() == bytes(range(64))  # nothing was written
    finally:
        root.arena.revoke(gid)
    revoked = a.cmd("copyfrom", endpoint=root.endpoint, grant=gid, offset=0, length=4)
    assert Errno(revoked["status"]) is Errno.EINVAL
    root.arena.free(buf)


def test_a_write_grant_receives_the_grantees_bytes(
    root: ipc.Connection, pair: tuple[Agent, Agent]
) -> None:
    a, _ = pair
    buf = root.arena.alloc(16)
    buf.write(bytes(16))
    gid = root.arena.grant(a.ep, buf.offset, 16, read=False, write=True)
    try:
        assert (
            a.cmd("copyto", endpoint=root.endpoint, grant=gid, offset=3, data=b"abc")["status"] == 0
        )
        assert buf.read() == bytes(3) + b"abc" + bytes(10)
        denied = a.cmd("copyfrom", endpoint=root.endpoint, grant=gid, offset=0, length=4)
        assert Errno(denied["status"]) is Errno.EPERM
    finally:
        root.arena.revoke(gid)
        root.arena.free(buf)


def test_an_indirect_grant_passes_a_narrowed_range_on(
    root: ipc.Connection, pair: tuple[Agent, Agent]
) -> None:
    a, b = pair
    buf = root.arena.alloc(32)
    buf.write(b"0123456789abcdefghijklmnopqrstuv")
    gid = root.arena.grant(a.ep, buf.offset, 32, read=True)
    try:
        onward = a.cmd(
            "grant_indirect",
            grantee=b.ep,
            owner=root.endpoint,
            owner_grant=gid,
            offset=10,
            length=6,
        )["grant"]
        got = b.cmd("copyfrom", endpoint=a.ep, grant=onward, offset=0, length=6)
        assert got["status"] == 0 and got["data"] == b"abcdef"
        past = b.cmd("copyfrom", endpoint=a.ep, grant=onward, offset=4, length=4)
        assert Errno(past["status"]) is Errno.EPERM
        root.arena.revoke(gid)  # revoking the original cuts the chain
        cut = b.cmd("copyfrom", endpoint=a.ep, grant=onward, offset=0, length=6)
        assert Errno(cut["status"]) is Errno.EINVAL
    finally:
        root.arena.free(buf)


def test_copies_to_the_callers_own_arena_stay_inside_its_data_area(root: ipc.Connection) -> None:
    buf = root.arena.alloc(8)
    gid = root.arena.grant(root.endpoint, buf.offset, 8, read=True)
    try:
        with pytest.raises(ipc.IpcError) as err:
            root.safecopyfrom(root.endpoint, gid, 0, 0, 8)  # local offset 0: the grant table
        assert err.value.errno is Errno.EFAULT
        with pytest.raises(ipc.IpcError) as err:
            root.safecopyfrom(root.endpoint, gid, 0, root.arena.size - 4, 8)
        assert err.value.errno is Errno.EFAULT
    finally:
        root.arena.revoke(gid)
        root.arena.free(buf)


def test_reply_receive_answers_and_waits_for_the_next_request(
    root: ipc.Connection, kernel: KernelProcess
) -> None:
    """A server loop in one request per message; a failed reply is reported, not raised."""
    # A server of its own: root also hears of its children's exits (SYSTEM notifies).
    with kernel.attach() as client, kernel.attach() as server:
        root.privctl_set(client.endpoint, "service client { ipc ALL; };")
        root.privctl_set(server.endpoint, "service server { ipc ALL; };")
        outcome: dict[str, object] = {}

        def ask() -> None:
            outcome["reply"] = client.sendrec(server.endpoint, 31, {"q": 1}, timeout=10)

        thread = threading.Thread(target=ask)
        thread.start()
        request = server.receive(client.endpoint, timeout=5)

        def ask_again() -> None:
            thread.join()  # the client has its reply: now it notifies
            client.notify(server.endpoint)

        helper = threading.Thread(target=ask_again)
        helper.start()
        nxt = server.reply_receive(request.source, 32, {"a": 2})  # reply, then take the notify
        helper.join(timeout=10)
        reply = outcome["reply"]
        assert isinstance(reply, ipc.Message) and (reply.m_type, reply["a"]) == (32, 2)
        assert nxt.reply_errno is None and nxt.is_notify and nxt.source == client.endpoint

        # The client is not waiting now: the reply fails with ENOTREADY, the receive goes on.
        client.notify(server.endpoint)
        late = server.reply_receive(client.endpoint, 33, b"")
        assert late.reply_errno is Errno.ENOTREADY and late.is_notify


def test_setalarm_arrives_as_a_clock_notify(root: ipc.Connection) -> None:
    begin = root.uptime()
    assert root.setalarm(seconds=0.2) == 0.0
    note = root.receive(wire.CLOCK, timeout=5)
    assert note.is_notify and note.source == wire.CLOCK
    assert root.uptime() - begin >= 0.19
    root.setalarm(seconds=5)
    left = root.setalarm(seconds=0)  # cancel: returns what was left
    assert 4 < left <= 5
    with pytest.raises(ipc.IpcTimeout):
        root.receive(wire.CLOCK, timeout=0.3)


def test_statectl_clear_ipc_refs_fails_the_callers_blocked_on_it(
    root: ipc.Connection, pair: tuple[Agent, Agent]
) -> None:
    a, _ = pair
    a.start("send", dest=root.endpoint, m_type=50, data=b"")  # a waits on root
    wait_state(root, a.ep, "sending")
    root.statectl_clear_ipc_refs()  # as a restarted driver does before serving again
    result = a.result()
    assert Errno(result["status"]) is Errno.EDEADSRCDST


@pytest.mark.parametrize("cold", [False, True])
def test_spawned_processes_report_their_exit_codes_forked_or_cold(
    root: ipc.Connection, kernel: KernelProcess, cold: bool
) -> None:
    """Python programs fork from the warm fork server unless cold; others are exec'd."""
    label = "exiter-cold" if cold else "exiter-forked"
    script_ep, _ = root.spawn([sys.executable, AGENT], label, conf=conf(label), cold=cold)
    shell_ep, _ = root.spawn(["/bin/sh", "-c", "exit 4"], f"{label}-sh", cold=cold)
    Agent(root, script_ep, 0, label).start("exit", code=5)
    seen: dict[int, int | None] = {}
    deadline = time.monotonic() + 10
    while len(seen) < 2:
        assert time.monotonic() < deadline, f"exits seen: {seen}"
        with contextlib.suppress(ipc.IpcTimeout):
            root.receive(wire.SYSTEM, timeout=1)
        seen.update(
            {r.endpoint: r.status for r in root.exits() if r.endpoint in (script_ep, shell_ep)}
        )
    assert seen == {script_ep: 5, shell_ep: 4}
    how = "cold" if cold else "forked"
    assert f"spawned {label} ({how})" in (kernel.run_dir / "kernel.log").read_text()
