"""A synchronous face on qemu.qmp's asyncio client, with the event log.

hwl's API is synchronous (drivers and tests are plain code), so the QMP client
runs on its own event-loop thread. Every QMP event is appended to
qmp-events.jsonl in the run directory as it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import EventListener, QMPClient

T = TypeVar("T")


class Qmp:
    """Runs a QMPClient on a background loop; call ``execute`` from any thread."""

    def __init__(self, name: str, events_path: Path) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hwl-qmp", daemon=True)
        self._thread.start()
        self._client = QMPClient(name)
        self._events_path = events_path
        self._listener = EventListener()
        self._client.register_listener(self._listener)
        self._events: list[dict[str, Any]] = []

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def connect(self, socket_path: str, timeout: float) -> None:
        self._run(self._client.connect(socket_path), timeout)
        asyncio.run_coroutine_threadsafe(self._log_events(), self._loop)

    async def _log_events(self) -> None:
        with self._events_path.open("a") as fh:
            async for event in self._listener:
                record = dict(event)
                record["host_time"] = time.time()
                self._events.append(record)
                fh.write(json.dumps(record) + "\n")
                fh.flush()

    def execute(
        self, cmd: str, args: dict[str, object] | None = None, timeout: float = 10.0
    ) -> Any:
        return self._run(self._client.execute(cmd, args), timeout)

    def hmp(self, command_line: str, timeout: float = 10.0) -> str:
        """A human-monitor command (``info network``, ``qemu-io hd0 "..."``) through
        QMP; its text. ``qemu-io`` prints its own results on QEMU's stdout."""
        args: dict[str, object] = {"command-line": command_line}
        return str(self.execute("human-monitor-command", args, timeout))

    def drive_nodes(self, drive: str) -> tuple[str, str]:
        """The node names under the block backend ``drive`` (a ``-drive`` id): its
        format node and that node's ``file`` child, from QEMU's block graph."""
        graph = self.execute("x-debug-query-block-graph")
        names = {n["id"]: n["name"] for n in graph["nodes"]}
        backend = next(
            (
                n["id"]
                for n in graph["nodes"]
                if n["type"] == "block-backend" and n["name"] == drive
            ),
            None,
        )
        if backend is None:
            raise KeyError(f"QEMU has no drive '{drive}'")

        def child(parent: int, role: str) -> int:
            for edge in graph["edges"]:
                if edge["parent"] == parent and edge["name"] == role:
                    return int(edge["child"])
            raise KeyError(f"drive '{drive}': node {names[parent]!r} has no {role!r} child")

        fmt = child(backend, "root")
        return names[fmt], names[child(fmt, "file")]

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The events received so far, optionally only those called ``name``."""
        return [e for e in self._events if name is None or e.get("event") == name]

    async def _shutdown(self) -> None:
        # QEMU may already be gone; closing must not fail because of it.
        with contextlib.suppress(Exception):
            await self._client.disconnect()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # the loop is stopped below either way
            self._run(self._shutdown(), 5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()
