"""Test agent: runs the IPC step a CMD message asks for and reports the outcome.

A test sends ``CMD`` with ``op`` and arguments; the agent runs it on its own
connection and answers ``RESULT`` with ``status`` (0, or the errno of an IpcError
or DsError) and what the step returned; any other exception is the agent's own
(helper_error.py: status HELPER_ERROR and its traceback, never an errno).
``reply`` says how: "sendnb" (the test waits in sendrec, the default), "send"
(the test receives later), or "none".
Other messages are kept in an inbox that the "inbox" op returns.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from helper_error import helper_failed

from hwl import ipc
from hwl.system.ds import DsError

CMD = 1
RESULT = 2


def describe(msg: ipc.Message) -> dict[str, Any]:
    return {"source": msg.source, "m_type": msg.m_type, "payload": msg.payload}


def run(conn: ipc.Connection, f: dict[str, Any], inbox: list[dict[str, Any]]) -> dict[str, Any]:
    op = f.get("op")
    data = f.get("data", b"")
    if op == "send":
        conn.send(f["dest"], f.get("m_type", 0), data)
    elif op == "sendrec":
        return describe(conn.sendrec(f["dest"], f.get("m_type", 0), data))
    elif op == "notify":
        conn.notify(f["dest"])
    elif op == "senda":
        return {"ident": conn.senda(f["dest"], f.get("m_type", 0), data)}
    elif op == "receive":
        return describe(conn.receive(f.get("source", ipc.ANY), timeout=f.get("timeout")))
    elif op == "sleep":
        time.sleep(f["seconds"])
    elif op == "inbox":
        taken = list(inbox)
        inbox.clear()
        return {"messages": taken}
    elif op == "kcall":
        return {"reply": conn.kcall(f["name"], f.get("fields", {}))}
    elif op == "copyfrom":
        buf = conn.arena.alloc(f["length"])
        conn.safecopyfrom(f["endpoint"], f["grant"], f.get("offset", 0), buf.offset, f["length"])
        return {"data": buf.read()}
    elif op == "copyto":
        buf = conn.arena.alloc(len(data))
        buf.write(data)
        conn.safecopyto(f["endpoint"], f["grant"], f.get("offset", 0), buf.offset, len(data))
    elif op == "grant_indirect":
        gid = conn.arena.grant_indirect(
            f["grantee"], f["owner"], f["owner_grant"], f["offset"], f["length"],
            read=f.get("read", True), write=f.get("write", False),
        )  # fmt: skip
        return {"grant": gid}
    elif op == "whoami":
        return {"endpoint": conn.endpoint, "label": conn.label, "pid": os.getpid()}
    elif op == "exit":
        os._exit(f.get("code", 0))
    else:
        raise ValueError(f"unknown op {op!r}")
    return {}


Run = Callable[[ipc.Connection, dict[str, Any], list[dict[str, Any]]], dict[str, Any]]


def main(run_op: Run = run) -> None:
    """Serve CMD messages with ``run_op`` (ds_agent.py passes its own)."""
    conn = ipc.connect()
    inbox: list[dict[str, Any]] = []
    while True:
        try:
            msg = conn.receive()
        except ipc.KernelGone:
            return
        if msg.m_type != CMD:
            inbox.append(describe(msg))
            continue
        fields = msg.fields
        try:
            result = run_op(conn, fields, inbox)
            result["status"] = 0
        except (ipc.IpcError, DsError) as exc:
            result = {"status": int(exc.errno), "error": str(exc)}
        except Exception as exc:  # the helper's own error; it must not end the agent
            result = helper_failed(exc)
        mode = fields.get("reply", "sendnb")
        try:
            if mode == "sendnb":
                conn.sendnb(msg.source, RESULT, result)
            elif mode == "send":
                conn.send(msg.source, RESULT, result)
        except ipc.IpcError:
            pass


if __name__ == "__main__":
    main()
