"""Kernel call ``update`` (MINIX's SYS_UPDATE) and the hello's ``root`` field.

``update(src, dst)`` swaps the OS processes behind two endpoints: the program that
ran at ``dst`` answers at ``src``, and callers queued on ``src`` are served by it.
The test process is the kernel's root and the parent of the servers it spawns
(tests/programs/lu_echo.py, which answer with a tag naming the program).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from agents import Agent, conf, spawn_agent, wait_state

from hwl import ipc
from hwl.ipc import codec
from hwl.kernel.errno import Errno
from hwl.kernel.launcher import KernelProcess
from hwl.kernel.priv import Priv
from hwl.kernel.proc import Proc

LU_ECHO = str(Path(__file__).parent / "programs" / "lu_echo.py")
ECHO, HOLD, READY, WHOAMI, READY_MSG, HELD_ANSWER = 1, 10, 11, 12, 13, 14

Spawn = Callable[[str], tuple[int, int]]


@pytest.fixture
def spawn(root: ipc.Connection) -> Iterator[Spawn]:
    """Start lu_echo servers tagged as asked; every endpoint they held is killed after."""
    endpoints: list[int] = []

    def start(tag: str) -> tuple[int, int]:
        ep, pid = root.spawn([sys.executable, LU_ECHO, tag], f"lu-{tag}", conf=conf(f"lu-{tag}"))
        endpoints.append(ep)
        return ep, pid

    yield start
    for ep in endpoints:
        with contextlib.suppress(ipc.IpcError):
            root.kill(ep)


def ask(root: ipc.Connection, ep: int, m_type: int = ECHO) -> dict[str, Any]:
    reply = root.sendrec(ep, m_type, {}, timeout=5)
    assert (reply.source, reply.m_type) == (ep, m_type)
    return dict(reply.fields)


def test_update_swaps_the_program_behind_an_endpoint_and_back(
    root: ipc.Connection, spawn: Spawn
) -> None:
    a_ep, a_pid = spawn("A")
    b_ep, b_pid = spawn("B")
    assert (ask(root, a_ep)["tag"], ask(root, b_ep)["tag"]) == ("A", "B")
    root.update(a_ep, b_ep)
    new, old = ask(root, a_ep), ask(root, b_ep)
    assert (new["tag"], new["pid"], old["tag"], old["pid"]) == ("B", b_pid, "A", a_pid)
    table = {p["endpoint"]: p for p in root.proctab()}
    assert (table[a_ep]["pid"], table[a_ep]["label"]) == (b_pid, "lu-B")
    assert (table[b_ep]["pid"], table[b_ep]["label"]) == (a_pid, "lu-A")
    # The new program learns its endpoint from the kernel.
    who = ask(root, a_ep, WHOAMI)
    assert (who["hello_endpoint"], who["whoami"], who["endpoint"]) == (b_ep, a_ep, a_ep)
    root.update(a_ep, b_ep)  # rollback
    assert (ask(root, a_ep)["tag"], ask(root, b_ep)["tag"]) == ("A", "B")


def test_the_update_handshake_of_a_live_update(root: ipc.Connection, spawn: Spawn) -> None:
    """RS's case: the old program waits in sendrec(RS) for the answer to its
    "ready", the new one waits in receive(RS) for its init message."""
    a_ep, a_pid = spawn("A")
    b_ep, _ = spawn("B")
    ask(root, a_ep, READY)
    ready = root.receive(a_ep, timeout=5)  # A is now waiting for the reply
    assert (ready.m_type, ready["tag"]) == (READY_MSG, "A")
    wait_state(root, a_ep, "receiving", timeout=5, on=root.endpoint)
    ask(root, b_ep, HOLD)
    wait_state(root, b_ep, "receiving", timeout=5, on=root.endpoint)
    root.update(a_ep, b_ep)
    # The new program's pending receive takes an asynchronous init sent to a_ep.
    root.senda(a_ep, 77, {"init": True})
    init = root.receive(a_ep, timeout=5)
    assert (init.m_type, init["tag"], init["m_type"]) == (HELD_ANSWER, "B", 77)
    # The old program, now at b_ep, still gets the reply to its sendrec.
    root.sendnb(b_ep, 78, {"verdict": "done"})
    old = ask(root, b_ep)
    assert (old["tag"], old["pid"]) == ("A", a_pid)
    assert old["last"] == {"m_type": 78, "source": root.endpoint, "verdict": "done"}
    assert ask(root, a_ep)["tag"] == "B"


def test_a_caller_queued_on_the_endpoint_is_served_by_the_new_program(
    root: ipc.Connection, spawn: Spawn
) -> None:
    a_ep, _ = spawn("A")
    b_ep, _ = spawn("B")
    client = spawn_agent(root, "lu-client")
    try:
        ask(root, a_ep, HOLD)  # A now takes messages only from the root
        wait_state(root, a_ep, "receiving", timeout=5, on=root.endpoint)
        client.start("sendrec", dest=a_ep, m_type=ECHO)
        wait_state(root, client.ep, "sending")
        root.update(a_ep, b_ep)
        got = client.result()
        assert (got["status"], got["source"]) == (0, a_ep)
        assert codec.decode(got["payload"])["tag"] == "B"
        # The held old program, now at b_ep, still takes the root's next message.
        root.send(b_ep, ECHO, {})
        held = root.receive(b_ep, timeout=5)
        assert (held.m_type, held["tag"]) == (HELD_ANSWER, "A")
    finally:
        root.kill(client.ep)


def test_a_wait_of_one_on_the_other_follows_the_program(root: ipc.Connection) -> None:
    x = spawn_agent(root, "lu-x")
    y = spawn_agent(root, "lu-y")
    try:
        x.start("receive", source=y.ep)  # x waits for a message from y's program
        wait_state(root, x.ep, "receiving", timeout=5, on=y.ep)
        root.update(x.ep, y.ep)
        wait_state(root, y.ep, "receiving", timeout=5, on=x.ep)  # still y's program
        moved_x, moved_y = Agent(root, y.ep, x.pid, "lu-x"), Agent(root, x.ep, y.pid, "lu-y")
        assert moved_y.cmd("send", dest=y.ep, m_type=9, data=b"hi")["status"] == 0
        got = moved_x.result()
        assert (got["status"], got["source"], got["payload"]) == (0, x.ep, b"hi")
        assert moved_x.cmd("whoami")["pid"] == x.pid
    finally:
        root.kill(x.ep)
        root.kill(y.ep)


def drain_system_notifies(root: ipc.Connection) -> None:
    root.exits()
    with contextlib.suppress(ipc.IpcTimeout):
        root.receive(ipc.SYSTEM, timeout=0.05)
    root.exits()


def test_the_death_of_the_old_program_kills_the_endpoint_it_holds(
    root: ipc.Connection, spawn: Spawn
) -> None:
    a_ep, a_pid = spawn("A")
    b_ep, b_pid = spawn("B")
    root.update(a_ep, b_ep)
    drain_system_notifies(root)
    os.kill(a_pid, signal.SIGKILL)
    note = root.receive(ipc.SYSTEM, timeout=5)
    assert note.is_notify and note["events"] == 1
    exits = [e for e in root.exits() if e.pid == a_pid]
    assert [(e.endpoint, e.label, e.signal) for e in exits] == [(b_ep, "lu-A", signal.SIGKILL)]
    with pytest.raises(ipc.IpcError) as info:
        root.sendrec(b_ep, ECHO, {}, timeout=5)
    assert info.value.errno is Errno.EDEADSRCDST
    new = ask(root, a_ep)
    assert (new["tag"], new["pid"]) == ("B", b_pid)
    # Killing by endpoint now reaches the program behind it.
    drain_system_notifies(root)
    root.kill(a_ep)
    root.receive(ipc.SYSTEM, timeout=5)
    assert [(e.endpoint, e.pid) for e in root.exits()] == [(a_ep, b_pid)]


def test_update_refuses_a_sending_process_and_bad_endpoints(
    root: ipc.Connection, spawn: Spawn
) -> None:
    b_ep, _ = spawn("B")
    agent = spawn_agent(root, "lu-sender")
    try:
        agent.start("send", dest=root.endpoint, m_type=5)
        wait_state(root, agent.ep, "sending")
        for pair in ((agent.ep, b_ep), (b_ep, agent.ep)):
            with pytest.raises(ipc.IpcError) as info:
                root.update(*pair)
            assert info.value.errno is Errno.EBUSY
            assert "sending" in info.value.detail
        assert root.receive(agent.ep, timeout=5).m_type == 5
        assert agent.result()["status"] == 0
        for src, dst, errno in [
            (b_ep, b_ep, Errno.EINVAL),
            (root.endpoint, b_ep, Errno.EINVAL),
            (b_ep, 0x7FFF0, Errno.EDEADSRCDST),
        ]:
            with pytest.raises(ipc.IpcError) as info:
                root.update(src, dst)
            assert info.value.errno is errno
        assert ask(root, b_ep)["tag"] == "B"
    finally:
        root.kill(agent.ep)


def test_update_needs_the_privilege_and_control_of_both(root: ipc.Connection, spawn: Spawn) -> None:
    a_ep, _ = spawn("A")
    b_ep, _ = spawn("B")
    plain = spawn_agent(root, "lu-plain")
    stranger = spawn_agent(root, "lu-stranger", "ipc ALL; system update;")
    parent = spawn_agent(root, "lu-parent", "ipc ALL; system spawn update kill;")
    try:
        denied = plain.cmd("kcall", name="update", fields={"src": a_ep, "dst": b_ep})
        assert denied["status"] == Errno.ECALLDENIED
        refused = stranger.cmd("kcall", name="update", fields={"src": a_ep, "dst": b_ep})
        assert refused["status"] == Errno.EPERM and "may not control" in refused["error"]
        assert (ask(root, a_ep)["tag"], ask(root, b_ep)["tag"]) == ("A", "B")
        # A parent without full privileges may update its own children.
        kids = []
        for tag in ("C", "D"):
            spawned = parent.cmd(
                "kcall",
                name="spawn",
                fields={"argv": [sys.executable, LU_ECHO, tag], "label": f"lu-{tag}",
                        "conf": conf(f"lu-{tag}")},
            )  # fmt: skip
            assert spawned["status"] == 0, spawned
            kids.append(spawned["reply"]["endpoint"])
        c_ep, d_ep = kids
        assert parent.cmd("kcall", name="update", fields={"src": c_ep, "dst": d_ep})["status"] == 0
        assert (ask(root, c_ep)["tag"], ask(root, d_ep)["tag"]) == ("D", "C")
        for ep in kids:
            assert parent.cmd("kcall", name="kill", fields={"endpoint": ep})["status"] == 0
    finally:
        for agent in (plain, stranger, parent):
            root.kill(agent.ep)


def test_the_update_is_logged(kernel: KernelProcess, root: ipc.Connection, spawn: Spawn) -> None:
    a_ep, _ = spawn("A")
    b_ep, _ = spawn("B")
    root.update(a_ep, b_ep)
    log = (kernel.run_dir / "kernel.log").read_text()
    assert f"update by root: ep {a_ep} " in log


def test_every_hello_names_the_root(
    kernel: KernelProcess, root: ipc.Connection, spawn: Spawn
) -> None:
    assert root.root_endpoint == root.endpoint
    a_ep, _ = spawn("A")
    assert ask(root, a_ep)["root"] == root.endpoint
    with kernel.attach() as user:
        assert user.root_endpoint == root.endpoint
    assert root.whoami() == root.endpoint
    assert root.getinfo("whoami")["root"] == root.endpoint


def test_a_root_program_is_named_in_its_own_hello_and_in_users() -> None:
    with KernelProcess.start(root_argv=[sys.executable, LU_ECHO, "R"]) as k, k.attach() as user:
        reply = user.sendrec(user.root_endpoint, ECHO, {}, timeout=5)
        assert (reply.source, reply["tag"]) == (user.root_endpoint, "R")
        assert reply["root"] == reply["hello_endpoint"] == user.root_endpoint


def test_grants_added_by_privctl_stay_with_the_endpoint(root: ipc.Connection, spawn: Spawn) -> None:
    """PCI's reserve grants ports and an IRQ to the driver's endpoint: after a live
    update the new program at that endpoint holds them, the old one does not."""
    a_ep, _ = spawn("A")
    b_ep, _ = spawn("B")
    root.privctl_add_io(a_ep, 0x1F0, 8)
    root.privctl_add_irq(a_ep, 14)

    def grants(ep: int) -> tuple[Any, Any]:
        priv = root.kcall("privctl", {"endpoint": ep, "op": "get"})["priv"]
        assert isinstance(priv, dict)
        return priv["io"], priv["irq"]

    assert grants(a_ep) == ([[0x1F0, 8]], [14])
    root.update(a_ep, b_ep)
    assert ask(root, a_ep)["tag"] == "B"
    assert grants(a_ep) == ([[0x1F0, 8]], [14])
    assert grants(b_ep) == ([], [])


def test_a_processs_posted_count_moves_with_it_in_the_swap() -> None:
    """The count of posted vdevio batches a process's answers carry is the OS
    process's: after the swap each endpoint answers with its new program's count
    (a live-updated NIC driver trusted the old version's and reused staging
    memory the stub had not read yet)."""
    old = Proc(3, 3, "nic", Priv.root("nic"), cast(Any, None), cast(Any, None), memoryview(b""))
    new = Proc(9, 9, "nic-new", Priv.root("nic-new"), cast(Any, None), cast(Any, None),
               memoryview(b""))  # fmt: skip
    old.posted.finished, old.posted.stopped = 5000, 2
    queued = old.posted  # what the stub's queued batches of the old program count into
    old.swap_process(new)
    assert (old.posted.finished, old.posted.stopped) == (0, 0)  # the new program's
    assert new.posted is queued and new.posted.finished == 5000
