"""Test agent for DS: the agent of tests/programs/agent.py, plus the DS client.

Extra ops (every other op is agent.py's):
- "ds": call ``Ds(conn, endpoint).<method>(*args, **kwargs)``; the result is
  ``result`` (tuples become lists); a DsError reports its errno as ``status``
  (agent.py's loop runs the ops).
- "ds_find": ``Ds.find(conn)`` (asks RS, the root, for DS's endpoint) -> ``endpoint``.
- "flush_notify": forget the notifications from ``source`` kept in the inbox.
- "wait_notify": wait for a notification from ``source`` (kept in the inbox if it
  came while the agent was idle) -> ``source``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import agent

from hwl import ipc
from hwl.ipc import wire
from hwl.system.ds import Ds

METHODS = {
    "publish", "publish_u32", "publish_str", "publish_mem", "publish_label",
    "retrieve", "retrieve_u32", "retrieve_str", "retrieve_mem", "retrieve_label",
    "retrieve_label_name", "delete_u32", "delete_str", "delete_mem", "delete_label",
    "subscribe", "check", "check_owner", "changes",
}  # fmt: skip


def plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    return value


def run(conn: ipc.Connection, f: dict[str, Any], inbox: list[dict[str, Any]]) -> dict[str, Any]:
    op = f.get("op")
    if op == "ds":
        method = f["method"]
        if method not in METHODS:
            raise ValueError(f"no DS method {method!r}")
        result = getattr(Ds(conn, f["endpoint"], timeout=10), method)(
            *f.get("args", []), **f.get("kwargs", {})
        )
        if method == "changes":
            result = list(result)
        return {"result": plain(result)}
    if op == "ds_find":
        return {"endpoint": Ds.find(conn, timeout=10).endpoint}
    if op == "flush_notify":
        inbox[:] = [
            seen
            for seen in inbox
            if not (seen["m_type"] == wire.NOTIFY_MESSAGE and seen["source"] == f["source"])
        ]
        return {}
    if op == "wait_notify":
        source = f["source"]
        for i, seen in enumerate(inbox):
            if seen["m_type"] == wire.NOTIFY_MESSAGE and seen["source"] == source:
                del inbox[i]
                return {"source": source}
        msg = conn.receive(source, timeout=f.get("wait", 5))
        if not msg.is_notify:
            raise ValueError(f"expected a notification from {source}, got {msg}")
        return {"source": msg.source}
    return agent.run(conn, f, inbox)


if __name__ == "__main__":
    agent.main(run)
