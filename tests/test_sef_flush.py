"""SEF's kept reply leaves on its own: a server that answers with ``sef.reply`` and
then blocks on anything but its next receive never stalls its client, though it
never flushes the reply itself (``Connection.before_block``); the reply order
and the one-call fast path (reply and next receive in one ``reply_receive``) stay.

The server is tests/programs/sef_keeper.py under RS (no QEMU); it logs which
connection call carried each reply. Clients A and B are user processes.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from rs_fixtures import PROGRAMS, RsSystem

from hwl.ipc.client import Connection, Message

PLAIN, SENDREC, RECEIVE_FROM, DEVIO, ALARM, HOLD, LOG, TERM = range(1, 9)
PING = 0x70
KEEPER = [sys.executable, str(PROGRAMS / "sef_keeper.py")]


@pytest.fixture(scope="module")
def rs() -> Iterator[RsSystem]:
    with RsSystem.running() as system:
        yield system


def start_keeper(rs: RsSystem, label: str) -> int:
    # ipc ALL: it calls the test's user processes (a service may not by default).
    return rs.rs.up(KEEPER, label=label, conf=f"service {label} {{ ipc ALL; }};")


@pytest.fixture(scope="module")
def keeper(rs: RsSystem) -> Iterator[int]:
    label = rs.label("keeper")
    yield start_keeper(rs, label)
    rs.down(label)


@pytest.fixture
def a(rs: RsSystem) -> Iterator[Connection]:
    with Connection.attach(rs.kernel.socket_path) as conn:
        yield conn


@pytest.fixture
def b(rs: RsSystem) -> Iterator[Connection]:
    with Connection.attach(rs.kernel.socket_path) as conn:
        yield conn


def call(conn: Connection, keeper: int, m_type: int, **fields: Any) -> Message:
    reply = conn.sendrec(keeper, m_type, fields, timeout=5)
    assert reply.m_type == 0, reply
    return reply


def log_since(conn: Connection, keeper: int) -> list[list[Any]]:
    """The keeper's connection calls since the last LOG (LOG's own answer first)."""
    log = call(conn, keeper, LOG)["log"]
    assert isinstance(log, list)
    return [list(entry) for entry in log if isinstance(entry, list)]


def test_plain_replies_take_one_call_each(a: Connection, keeper: int) -> None:
    log_since(a, keeper)
    for _ in range(3):
        call(a, keeper, PLAIN)
    # LOG's answer and three PLAIN answers, each with the next receive: no sendnb.
    assert log_since(a, keeper) == [["reply_receive", a.endpoint]] * 4


def test_a_sendrec_elsewhere_sends_the_kept_reply_first(
    a: Connection, b: Connection, keeper: int
) -> None:
    log_since(a, keeper)
    # The keeper blocks in a sendrec to B, which answers only after A got its reply:
    # without the connection's flush, A's call would time out.
    call(a, keeper, SENDREC, peer=b.endpoint)
    ping = b.receive(timeout=5)
    assert (ping.source, ping.m_type) == (keeper, PING)
    b.send(keeper, 0, {})
    assert log_since(a, keeper) == [
        ["reply_receive", a.endpoint],  # LOG's answer
        ["sendnb", a.endpoint],  # SENDREC's answer, before the sendrec blocked
        ["sendrec", b.endpoint],
        ["receive", a.endpoint],  # nothing kept: a plain receive took the LOG
    ]


def test_a_receive_from_one_endpoint_sends_the_kept_reply_first(
    a: Connection, b: Connection, keeper: int
) -> None:
    log_since(a, keeper)
    call(a, keeper, RECEIVE_FROM, peer=b.endpoint)  # the keeper now waits for B only
    b.send(keeper, 9, {})
    assert log_since(a, keeper) == [
        ["reply_receive", a.endpoint],
        ["sendnb", a.endpoint],
        ["receive", b.endpoint],
        ["receive", a.endpoint],
    ]


def test_a_kernel_call_that_waits_for_the_machine_sends_it_first(
    a: Connection, keeper: int
) -> None:
    log_since(a, keeper)
    call(a, keeper, DEVIO)
    log = log_since(a, keeper)
    assert log[1:3] == [["sendnb", a.endpoint], ["kcall devio", -1]], log


def test_a_kernel_call_that_does_not_block_keeps_the_fast_path(a: Connection, keeper: int) -> None:
    log_since(a, keeper)
    call(a, keeper, ALARM)
    assert log_since(a, keeper) == [
        ["reply_receive", a.endpoint],
        ["kcall setalarm", 0],
        ["reply_receive", a.endpoint],  # ALARM's answer still left with the receive
    ]


def test_kept_replies_leave_in_the_order_they_were_made(
    a: Connection, b: Connection, keeper: int
) -> None:
    log_since(a, keeper)
    answers: dict[int, Message] = {}

    def hold(conn: Connection) -> None:
        answers[conn.endpoint] = call(conn, keeper, HOLD, count=2)

    threads = [threading.Thread(target=hold, args=(conn,)) for conn in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads)
    assert answers.keys() == {a.endpoint, b.endpoint}
    order = answers[a.endpoint]["order"]
    assert isinstance(order, list) and {*order} == {a.endpoint, b.endpoint}
    assert answers[b.endpoint]["order"] == order
    first, second = order
    log = log_since(a, keeper)
    # The second HOLD came by a plain receive; then the first answer left when the
    # second was made, and the second with the next receive.
    assert log[1:] == [
        ["receive", second],
        ["sendnb", first],
        ["reply_receive", second],
    ], log


def test_a_reply_kept_when_sigterm_ends_the_service_still_goes_out(
    rs: RsSystem, a: Connection
) -> None:
    label = rs.label("term")
    try:
        ended = start_keeper(rs, label)
        # The keeper signals itself between the reply and its next receive; the
        # fork server ends the process with os._exit (no atexit handler runs):
        # without SEF's flush the call fails (the process is gone) or times out.
        assert call(a, ended, TERM)["n"] == 1
        exit = rs.wait_event(label, "exit")  # SEF's SIGTERM handler ended it: status 0
        assert (exit["endpoint"], exit["how"]) == (ended, "status 0")
    finally:
        rs.down(label)
