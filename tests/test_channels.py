"""Call channels (hwl.ipc.channels, hwl.kernel.channels) between real processes:
made on the first call, ended by a death, a restart, a privctl; timeouts, bad
frames and a flooding client. The server is tests/programs/chan_server.py."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agents import MakeProc, conf

from hwl import ipc
from hwl.ipc import channels, wire
from hwl.kernel.errno import Errno
from hwl.kernel.launcher import KernelProcess

SERVER = str(Path(__file__).parent / "programs" / "chan_server.py")
FLOODER = str(Path(__file__).parent / "programs" / "chan_flooder.py")
CALL, SLOW, PEER = 1, 2, 3

on_channels = pytest.mark.skipif(
    not channels.enabled(), reason="HWL_CHANNELS=0: test_switch_off_keeps_calls_on_the_kernel_path"
)


def spawn_server(root: ipc.Connection, endpoint: int | None = None) -> tuple[int, int]:
    return root.spawn([sys.executable, SERVER], "chan", conf=conf("chan"), endpoint=endpoint)


@pytest.fixture
def server(root: ipc.Connection) -> Iterator[tuple[int, int]]:
    ep, pid = spawn_server(root)
    call_until_served(root, ep)
    yield ep, pid
    kill_quietly(pid)


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def call_until_served(conn: ipc.Connection, ep: int, timeout: float = 10) -> ipc.Message:
    """The server opens channels once it runs: call until it answers on one."""
    deadline = time.monotonic() + timeout
    while True:
        reply = conn.sendrec(ep, CALL, {"n": 0}, timeout=timeout)
        if conn.channel_to(ep) is not None or time.monotonic() > deadline:
            return reply
        time.sleep(channels.RETRY_REFUSED)


@on_channels
def test_calls_go_on_a_channel_after_the_first(
    root: ipc.Connection, server: tuple[int, int]
) -> None:
    ep, pid = server
    assert root.channel_to(ep) is not None
    for n in range(1, 50):
        reply = root.sendrec(ep, CALL, {"n": n}, timeout=5)
        assert (reply.source, reply.m_type, reply["n"], reply["pid"]) == (ep, CALL, n, pid)


@on_channels
def test_server_killed_mid_call_is_edeadsrcdst_at_once(
    root: ipc.Connection, server: tuple[int, int]
) -> None:
    ep, pid = server
    threading.Timer(0.3, os.kill, (pid, signal.SIGKILL)).start()
    start = time.monotonic()
    with pytest.raises(ipc.IpcError) as err:
        root.sendrec(ep, SLOW, {"seconds": 20}, timeout=10)
    assert err.value.errno is Errno.EDEADSRCDST
    assert time.monotonic() - start < 3, "the caller waited for its timeout, not the death"
    assert root.channel_to(ep) is None


@on_channels
def test_restart_at_the_same_endpoint_gets_the_next_call(root: ipc.Connection) -> None:
    ep, pid = spawn_server(root)
    call_until_served(root, ep)
    old = root.channel_to(ep)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(p["endpoint"] == ep for p in root.proctab()) and time.monotonic() < deadline:
        time.sleep(0.02)
    new_ep, new_pid = spawn_server(root, endpoint=ep)  # RS's restart policy keeps it
    assert new_ep == ep
    try:
        reply = root.sendrec(ep, CALL, {"n": 1}, timeout=5)  # the old channel is shut
        assert reply["pid"] == new_pid
        call_until_served(root, ep)
        assert root.channel_to(ep) is not None and root.channel_to(ep) is not old
        assert root.sendrec(ep, CALL, {"n": 2}, timeout=5)["pid"] == new_pid
    finally:
        kill_quietly(new_pid)


@on_channels
def test_reset_policy_old_endpoint_is_dead(root: ipc.Connection) -> None:
    ep, pid = spawn_server(root)
    call_until_served(root, ep)
    os.kill(pid, signal.SIGKILL)
    new_ep, new_pid = spawn_server(root)
    try:
        assert new_ep != ep
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                root.sendrec(ep, CALL, {"n": 1}, timeout=5)
            except ipc.IpcError as exc:
                assert exc.errno is Errno.EDEADSRCDST
                break
            time.sleep(0.02)  # the kernel has not seen the death yet
        else:
            pytest.fail("calls to the dead endpoint kept being answered")
    finally:
        kill_quietly(new_pid)


@on_channels
def test_late_reply_after_a_timeout_is_dropped(
    root: ipc.Connection, server: tuple[int, int]
) -> None:
    ep, _ = server
    with pytest.raises(ipc.IpcTimeout):
        root.sendrec(ep, SLOW, {"seconds": 0.5, "n": 1}, timeout=0.1)
    reply = root.sendrec(ep, CALL, {"n": 2}, timeout=5)  # the late reply to n=1 comes first
    assert (reply.m_type, reply["n"]) == (CALL, 2)
    assert root.channel_to(ep) is not None
    # a call without a timeout after timed ones waits as long as it takes: the
    # channel's receive timeout (SO_RCVTIMEO, 0.1 s just now) is gone for it
    with pytest.raises(ipc.IpcTimeout):
        root.sendrec(ep, SLOW, {"seconds": 0.4, "n": 3}, timeout=0.1)
    reply = root.sendrec(ep, SLOW, {"seconds": 0.3, "n": 4})  # after n=3's late reply
    assert (reply.m_type, reply["n"]) == (SLOW, 4)
    assert root.channel_to(ep) is not None


@on_channels
def test_privctl_revocation_closes_the_channel(
    root: ipc.Connection, server: tuple[int, int], process: MakeProc
) -> None:
    ep, _ = server
    client = process("client", "ipc ALL;")
    call_until_served(client, ep)
    assert client.channel_to(ep) is not None
    root.privctl_set(client.endpoint, conf("client", "ipc SYSTEM;"))
    with pytest.raises(ipc.IpcError) as err:
        client.sendrec(ep, CALL, {"n": 1}, timeout=5)
    assert err.value.errno is Errno.ECALLDENIED
    assert client.channel_to(ep) is None


@on_channels
def test_no_channel_without_the_ipc_right(server: tuple[int, int], process: MakeProc) -> None:
    ep, _ = server
    client = process("outsider", "ipc SYSTEM;")
    with pytest.raises(ipc.IpcError) as err:
        client.kcall_fds("chanopen", {"dest": ep})
    assert err.value.errno is Errno.ECALLDENIED
    with pytest.raises(ipc.IpcError) as err:
        client.sendrec(ep, CALL, {"n": 1}, timeout=5)
    assert err.value.errno is Errno.ECALLDENIED
    assert client.channel_to(ep) is None


@on_channels
def test_bad_frames_on_a_channel_get_einval_and_the_server_serves_on(
    root: ipc.Connection, server: tuple[int, int]
) -> None:
    ep, _ = server
    sock = root.channel_to(ep)
    assert sock is not None
    bad = [
        b"\x01",  # shorter than a header
        wire.REQUEST.pack(wire.Op.NOTIFY, 0, 7, 0, 0),  # not a call
        wire.REQUEST.pack(wire.Op.SENDREC, 0, 8, 0, 1) + bytes(wire.MAX_PAYLOAD + 1),  # too big
    ]
    for frame in bad:
        sock.send(frame)
        answer = sock.recv(wire.MAX_RESPONSE)
        kind, _flags, _ident, status, _src, _type = wire.RESPONSE.unpack_from(answer)
        assert (kind, status) == (wire.Kind.STATUS, -int(Errno.EINVAL))
    assert root.sendrec(ep, CALL, {"n": 9}, timeout=5)["n"] == 9


@on_channels
def test_a_flooding_client_starves_no_other(root: ipc.Connection, server: tuple[int, int]) -> None:
    ep, _ = server
    argv = [sys.executable, FLOODER, str(ep), "3"]
    flooder, pid = root.spawn(argv, "flooder", conf=conf("flooder"))
    try:
        time.sleep(0.5)  # it runs and floods
        worst, calls = 0.0, 0
        while calls < 100:
            start = time.monotonic()
            assert root.sendrec(ep, CALL, {"n": calls}, timeout=5)["n"] == calls
            worst = max(worst, time.monotonic() - start)
            calls += 1
        report = root.receive(flooder, timeout=10)
    finally:
        kill_quietly(pid)
    assert report["channel"] is True
    flooded = report["count"]
    assert isinstance(flooded, int) and flooded > calls, f"the flooder made {flooded!r} calls"
    assert worst < 1.0, f"a call waited {worst:.3f} s behind the flooder"


@on_channels
def test_a_channel_call_cycle_is_logged_by_the_watchdog(
    kernel: KernelProcess, root: ipc.Connection
) -> None:
    (a, a_pid), (b, b_pid) = spawn_server(root), spawn_server(root)
    try:
        for ep in (a, b):
            call_until_served(root, ep)
        root.sendrec(a, CALL, {"n": 0}, timeout=5)
        log = kernel.run_dir / "kernel.log"
        before = log.read_text().count("channel call cycle")
        # a calls b, b calls a back: both wait on channels, ELOCKED cannot see it
        with pytest.raises(ipc.IpcTimeout):
            root.sendrec(a, PEER, {"peer": b}, timeout=3)
        text = log.read_text()
        assert text.count("channel call cycle") == before + 1, text[-2000:]
        line = text[text.rindex("channel call cycle") :].splitlines()[0]
        assert f"chan ({a})" in line and f"chan ({b})" in line
        rows = {row["endpoint"]: row for row in root.proctab()}
        assert (rows[a]["channel_wait"], rows[b]["channel_wait"]) == (b, a)
    finally:
        kill_quietly(a_pid)
        kill_quietly(b_pid)


@on_channels
def test_a_receive_that_takes_the_last_message_arms_the_event_fd(
    root: ipc.Connection, process: MakeProc
) -> None:
    """A channel server's receive takes kernel-path messages without blocking; the
    one that takes the last of them arms the event fd there and then (RESP_ARMED),
    so the server's next receive goes straight to its channels and event fd, and
    the next message rings it."""
    srv = process("armed", "ipc ALL; system ALL;")
    assert srv.serve_channels()
    server = srv._server  # the library's view of the event fd (white-box on purpose)
    assert server is not None
    for n in (1, 2):
        root.senda(srv.endpoint, 40 + n, {"n": n})
    first = srv.receive(timeout=5)
    assert (first.m_type, server.armed) == (41, False)  # one still waits: not armed
    second = srv.receive(timeout=5)
    assert (second.m_type, server.armed) == (42, True)  # the last: armed, no ENOTREADY asked
    assert not select.select([server.event_fd], [], [], 0.05)[0]  # nothing rang yet
    root.senda(srv.endpoint, 43, {"n": 3})
    assert select.select([server.event_fd], [], [], 5)[0]  # the kernel rang for it
    assert srv.receive(timeout=5).m_type == 43


@pytest.mark.skipif(channels.enabled(), reason="channels on: the other tests of this module")
def test_switch_off_keeps_calls_on_the_kernel_path(root: ipc.Connection) -> None:
    ep, pid = spawn_server(root)
    try:
        for n in range(20):
            assert root.sendrec(ep, CALL, {"n": n}, timeout=5)["n"] == n
        assert root.channel_to(ep) is None
        with pytest.raises(ipc.IpcError) as err:
            root.kcall_fds("chanopen", {"dest": ep})
        assert err.value.errno is Errno.ENOSYS
    finally:
        kill_quietly(pid)


@on_channels
def test_an_oversized_call_is_emsgsize_as_on_the_kernel_path(
    root: ipc.Connection, server: tuple[int, int]
) -> None:
    ep, _ = server
    for on in (True, False):
        root.use_channels(on)
        try:
            with pytest.raises(ipc.IpcError) as err:
                root.sendrec(ep, CALL, bytes(wire.MAX_PAYLOAD + 1), timeout=5)
            assert err.value.errno is Errno.EMSGSIZE
        finally:
            root.use_channels(True)
    assert root.sendrec(ep, CALL, {"n": 3}, timeout=5)["n"] == 3
