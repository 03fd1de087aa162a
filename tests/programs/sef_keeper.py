"""A SEF service that answers with ``sef.reply`` (the kept reply) and then blocks
on something other than its next receive, never flushing the reply itself: its
connection must send it first (``Connection.before_block``, tests/test_sef_flush.py).

Every connection call it makes is logged as it returns, as [call, endpoint] (the
destination, or for a receive the sender), so a test sees which kernel call
carried each reply. Requests, each answered {"n": requests so far}:

- PLAIN (1): just the answer.
- SENDREC (2) {peer}: the answer kept, then a sendrec to ``peer`` (PING).
- RECEIVE_FROM (3) {peer}: the answer kept, then a receive from ``peer`` only.
- DEVIO (4): the answer kept, then a devio (a kernel call that waits for the
  machine; refused here, there is none).
- ALARM (5): the answer kept, then a setalarm (does not block: the reply stays kept).
- HOLD (6) {count}: held until ``count`` HOLDs arrived, then all answered in
  arrival order, each with {"order": the senders in that order}.
- LOG (7): {"log": the calls since the last LOG}.
- TERM (8): the answer kept, then SIGTERM to itself: SEF ends the service (the
  reply must still go out).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from hwl.ipc.client import Connection, IpcError, Message
from hwl.proto import codec
from hwl.system import sef

PLAIN, SENDREC, RECEIVE_FROM, DEVIO, ALARM, HOLD, LOG, TERM = range(1, 9)
PING = 0x70

calls: list[codec.Value] = []


def logged(conn: Connection, name: str) -> None:
    """Log each return of ``conn.name`` (an instance attribute over the method)."""
    method: Callable[..., Any] = getattr(conn, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            result = method(*args, **kwargs)
        except IpcError:
            calls.append([f"{name} {args[0]}" if name == "kcall" else name, -1])
            raise
        if isinstance(result, Message) and name == "receive":
            calls.append([name, result.source])
        elif name == "kcall":
            calls.append([f"kcall {args[0]}", 0])
        else:
            calls.append([name, int(args[0])])
        return result

    setattr(conn, name, wrapper)


def main() -> int:
    conn = sef.startup()
    for name in ("send", "sendnb", "sendrec", "receive", "reply_receive", "kcall"):
        logged(conn, name)
    served = 0
    held: list[Message] = []
    while True:
        m = sef.receive()
        if m.is_notify:
            continue
        served += 1
        answer: dict[str, codec.Value] = {"n": served}
        if m.m_type == HOLD:
            held.append(m)
            if len(held) < int(m.get("count", 1)):  # type: ignore[arg-type]
                continue
            order: list[codec.Value] = [h.source for h in held]
            for h in held:
                sef.reply(h.source, 0, {"n": served, "order": order})
            held.clear()
            continue
        if m.m_type == LOG:
            answer["log"] = list(calls)
            calls.clear()
        sef.reply(m.source, 0, answer)
        peer = int(m.get("peer", 0) or 0)  # type: ignore[arg-type]
        if m.m_type == SENDREC:
            conn.sendrec(peer, PING, {}, timeout=10)
        elif m.m_type == RECEIVE_FROM:
            conn.receive(peer, timeout=10)
        elif m.m_type == DEVIO:
            with contextlib.suppress(IpcError):  # no machine: the call was made
                conn.devio_in(0x1F7)
        elif m.m_type == ALARM:
            conn.setalarm(seconds=60)
        elif m.m_type == TERM:
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pause()  # not reached: the handler ends the process


if __name__ == "__main__":
    sys.exit(main())
