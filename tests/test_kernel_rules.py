"""Rules of docs/kernel.md that no other test holds the kernel to.

- While a process waits in ``sendrec`` for its reply, neither a notification nor an
  asynchronous message stands in for it (MINIX's MF_REPLY_PEND): both wait until
  the reply came.
- Indirect grants pass on someone else's grant at most 4 deep: a chain of four
  grants (the direct one and three indirect ones) copies, a fifth is refused.
- A zero-length frame reads as end of file: it ends the connection, and the
  process is gone for everyone else.
- A process that stops reading its responses is cut off, and the others then see
  it as dead.

A kernel without a machine (conftest.py's ``kernel``); the test is its root, the
agents are tests/programs/agent.py, the raw processes speak the wire by hand.
Each test ends with the kernel still serving the root.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator

import pytest
from agents import Agent, spawn_agent, wait_state

from hwl import ipc
from hwl.ipc import codec, wire
from hwl.kernel.errno import Errno
from hwl.kernel.launcher import KernelProcess


@pytest.fixture(scope="module")
def pair(kernel: KernelProcess) -> Iterator[tuple[Agent, Agent]]:
    assert kernel.root is not None
    yield spawn_agent(kernel.root, "left"), spawn_agent(kernel.root, "right")


class Raw:
    """A user process on a bare socket: the hello read, nothing else."""

    def __init__(self, kernel: KernelProcess) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.connect(str(kernel.socket_path))
        frame, fds, _, _ = socket.recv_fds(self.sock, wire.MAX_RESPONSE, 1)
        for fd in fds:
            socket.close(fd)
        hello = codec.decode(frame[wire.RESPONSE.size :])
        assert isinstance(hello, dict) and isinstance(hello["endpoint"], int), hello
        self.endpoint = hello["endpoint"]

    def drain_to_eof(self, timeout: float = 10) -> int:
        """Read every frame the kernel left queued, up to the end of the connection;
        how many there were (AssertionError if the connection stays open)."""
        frames = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.sock], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            try:
                data = self.sock.recv(wire.MAX_RESPONSE)
            except ConnectionResetError:
                return frames
            if not data:
                return frames
            frames += 1
        raise AssertionError(f"the kernel kept the connection open ({frames} frames read)")


def gone(root: ipc.Connection, endpoint: int, timeout: float = 10) -> None:
    """Wait until ``endpoint`` left the kernel's process table."""
    deadline = time.monotonic() + timeout
    while any(p["endpoint"] == endpoint for p in root.proctab()):
        assert time.monotonic() < deadline, f"{endpoint} is still in the process table"
        time.sleep(0.005)


def kernel_log(kernel: KernelProcess) -> str:
    return (kernel.run_dir / "kernel.log").read_text()


def test_neither_a_notify_nor_an_async_message_stands_in_for_a_reply(
    root: ipc.Connection, pair: tuple[Agent, Agent]
) -> None:
    a, b = pair
    b.start("receive")
    wait_state(root, b.ep, "receiving")
    a.start("sendrec", dest=b.ep, m_type=41, data=b"call")
    assert b.result()["m_type"] == 41  # b took the call; a waits for its reply
    wait_state(root, a.ep, "receiving", on=b.ep)
    root.notify(a.ep)
    ident = root.senda(a.ep, 42, b"async")
    # the kernel has taken both (each call returned); a still waits for b alone
    assert root.async_status(ident) is Errno.EINPROGRESS  # queued, not delivered
    wait_state(root, a.ep, "receiving", on=b.ep)
    assert b.cmd("send", dest=a.ep, m_type=43, data=b"reply")["status"] == 0
    got = a.result()
    assert (got["status"], got["source"], got["m_type"], got["payload"]) == (0, b.ep, 43, b"reply")
    # both come after the reply, the notification first (receive's order)
    deadline = time.monotonic() + 10
    inbox: list[dict[str, object]] = []
    while len(inbox) < 2 and time.monotonic() < deadline:
        inbox += a.cmd("inbox")["messages"]
    assert [(m["source"], m["m_type"]) for m in inbox] == [
        (root.endpoint, wire.NOTIFY_MESSAGE),
        (root.endpoint, 42),
    ]
    assert root.async_status(ident) is None  # delivered


def test_grants_pass_on_at_most_four_deep(root: ipc.Connection, pair: tuple[Agent, Agent]) -> None:
    a, b = pair
    buf = root.arena.alloc(64)
    buf.write(bytes(range(64)))
    first = root.arena.grant(a.ep, buf.offset, 64, read=True)
    try:
        # root -> a (direct), then indirect: a -> b, b -> a, a -> b, b -> a
        chain = [(root.endpoint, first)]
        holders = [a, b, a, b, a]
        for depth in range(1, 5):
            maker, taker = holders[depth - 1], holders[depth]
            owner, owner_grant = chain[-1]
            made = maker.cmd(
                "grant_indirect",
                grantee=taker.ep,
                owner=owner,
                owner_grant=owner_grant,
                offset=1,
                length=64 - 2 * depth,
            )
            assert made["status"] == 0, made
            chain.append((maker.ep, made["grant"]))
        # four grants deep (three indirect): the range narrowed by one byte per step
        owner, gid = chain[3]
        got = holders[3].cmd("copyfrom", endpoint=owner, grant=gid, offset=0, length=4)
        assert got["status"] == 0 and got["data"] == bytes(range(3, 7)), got
        # five deep: refused, and nothing is copied
        owner, gid = chain[4]
        deep = holders[4].cmd("copyfrom", endpoint=owner, grant=gid, offset=0, length=4)
        assert Errno(deep["status"]) is Errno.EINVAL, deep
        assert "nested more than 4 deep" in deep["error"] and "data" not in deep
    finally:
        root.arena.revoke(first)
        root.arena.free(buf)


def test_a_zero_length_frame_ends_the_connection(
    root: ipc.Connection, kernel: KernelProcess
) -> None:
    raw = Raw(kernel)
    assert any(p["endpoint"] == raw.endpoint for p in root.proctab())
    try:
        raw.sock.send(b"")
        assert raw.drain_to_eof() == 0  # no answer: the end of the connection
        gone(root, raw.endpoint)
    finally:
        raw.sock.close()
    with pytest.raises(ipc.IpcError) as err:
        root.send(raw.endpoint, 1, b"")
    assert err.value.errno is Errno.EDEADSRCDST
    dead = f"({wire.endpoint_name(raw.endpoint)}) is dead: closed its connection"
    assert dead in kernel_log(kernel)
    assert root.whoami() == root.endpoint  # the kernel serves on


def test_a_process_that_stops_reading_its_responses_is_cut_off(
    root: ipc.Connection, kernel: KernelProcess, pair: tuple[Agent, Agent]
) -> None:
    a, _ = pair
    raw = Raw(kernel)
    # requests whose answers the raw process never reads: each answer is an error
    # with its reason, so the kernel's side of the socket fills in a few hundred
    unknown = wire.REQUEST.pack(99, 0, 0, 0, 0)
    raw.sock.settimeout(10)
    sent = 0
    try:
        for sent in range(1, 100_001):  # bounded; the kernel cuts it off long before
            try:
                raw.sock.send(unknown)
            except (BrokenPipeError, ConnectionResetError):
                break
            if sent % 256 == 0 and not any(p["endpoint"] == raw.endpoint for p in root.proctab()):
                break
        gone(root, raw.endpoint)
        queued = raw.drain_to_eof()
    finally:
        raw.sock.close()
    assert 0 < queued < sent, (queued, sent)  # it got answers until the kernel gave up
    dead = f"({wire.endpoint_name(raw.endpoint)}) is dead: does not read its replies"
    assert dead in kernel_log(kernel)
    print(f"cut off after {sent} requests, {queued} answers queued")
    # the others see it as dead
    outcome = a.cmd("send", dest=raw.endpoint, m_type=1)
    assert Errno(outcome["status"]) is Errno.EDEADSRCDST, outcome
    assert a.cmd("whoami")["endpoint"] == a.ep and root.whoami() == root.endpoint
