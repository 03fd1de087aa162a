"""The event log RS writes (one JSON object per line), read by tests and tools."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hwl.errors import HwlError

Event = dict[str, Any]


class EventTimeout(HwlError):
    """The awaited event did not come."""


def read_events(path: Path) -> list[Event]:
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def wait_event(
    path: Path,
    predicate: Callable[[Event], bool],
    timeout: float,
    alive: Callable[[], bool] = lambda: True,
) -> Event:
    """The first event in the log that matches, waiting up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        for event in read_events(path):
            if predicate(event):
                return event
        if not alive():
            raise EventTimeout(f"the kernel exited before the event came (logs in {path.parent})")
        if time.monotonic() > deadline:
            raise EventTimeout(f"no such event in {path} within {timeout} s")
        time.sleep(0.01)


def append_event(path: Path, event: str, **fields: Any) -> Event:
    """Append one event to the log at ``path``, in RS's format (``time``, ``mono``,
    ``event``, then ``fields``), and return it.

    Others (RS) append to the same file from their own processes: the line goes
    out in one ``write`` on an ``O_APPEND`` descriptor, so lines never interleave.
    Use an event name of your own: readers pick events by name. ``time`` and
    ``mono`` may be given (when the thing logged happened before the call).
    """
    record: Event = {"time": time.time(), "mono": time.monotonic(), "event": event}
    record.update(fields)
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return record
