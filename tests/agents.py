"""Helpers for kernel tests: test agents (tests/programs/agent.py) driven by the root."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwl import ipc
from hwl.kernel.errno import Errno

AGENT = str(Path(__file__).parent / "programs" / "agent.py")
CMD, RESULT = 1, 2
FULL_IPC = "ipc ALL;"
#: The ``process`` fixture (conftest.py): label, system.conf body -> an attached process.
MakeProc = Callable[[str, str], ipc.Connection]


def conf(label: str, body: str = FULL_IPC) -> str:
    return f"service {label} {{ {body} }};"


@dataclass
class Agent:
    root: ipc.Connection
    ep: int
    pid: int
    label: str

    def cmd(self, op: str, timeout: float = 10, **args: Any) -> dict[str, Any]:
        """Run ``op`` in the agent and wait for its result (root waits in sendrec)."""
        reply = self.root.sendrec(self.ep, CMD, {"op": op, **args}, timeout=timeout)
        assert reply.m_type == RESULT, reply
        return own_answer(dict(reply.fields))

    def start(self, op: str, reply: str = "send", **args: Any) -> None:
        """Start ``op`` in the agent; collect its result later with ``result``
        (``reply="none"``: the agent reports nothing)."""
        self.root.send(self.ep, CMD, {"op": op, "reply": reply, **args})

    def result(self, timeout: float = 10) -> dict[str, Any]:
        msg = self.root.receive(self.ep, timeout=timeout)
        assert msg.m_type == RESULT, msg
        return own_answer(dict(msg.fields))


def own_answer(result: dict[str, Any]) -> dict[str, Any]:
    """An agent's result, failing the test when the agent itself failed (its own
    exception, tests/programs/helper_error.py) rather than the system answering."""
    assert "traceback" not in result, f"the agent failed by itself:\n{result['traceback']}"
    return result


def spawn_agent(root: ipc.Connection, label: str, body: str | None = FULL_IPC) -> Agent:
    """An agent; ``body`` is its system.conf entry (None: a user process)."""
    ep, pid = root.spawn(
        [sys.executable, AGENT], label, conf=conf(label, body) if body is not None else None
    )
    return Agent(root, ep, pid, label)


def wait_state(
    root: ipc.Connection, ep: int, state: str, timeout: float = 10, on: int | None = None
) -> dict[str, Any]:
    """Poll the process table until ``ep`` is in ``state`` (e.g. "sending"), and
    with ``on`` blocked on that endpoint."""
    deadline = time.monotonic() + timeout
    while True:
        for p in root.proctab():
            if p["endpoint"] == ep and p["state"] == state and on in (None, p["blocked_on"]):
                return p
        if time.monotonic() > deadline:
            where = f" on {on}" if on is not None else ""
            raise AssertionError(
                f"endpoint {ep} never reached state {state!r}{where}: {root.proctab()}"
            )
        time.sleep(0.005)


def errno_of(result: dict[str, Any]) -> Errno | None:
    return Errno(result["status"]) if result["status"] else None
