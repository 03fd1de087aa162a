"""The event log: one JSON line per lifecycle event, for tests, reports and people.

Events: boot-done, boot-failed, up, init-failed, exit, crash, restart,
heartbeat-missed, script, down, gave-up, update-prepared, update-done,
update-aborted, update-rolled-back, clone, fi (a fault asked for: service fi; the crash
it causes has the reason "fault injection (TYPE)").
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class EventLog:
    """Appends events to ``path``; each line is flushed at once so readers see it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("a", encoding="utf-8", buffering=1)

    def write(self, event: str, label: str | None = None, **fields: Any) -> None:
        record: dict[str, Any] = {"time": time.time(), "mono": time.monotonic(), "event": event}
        if label is not None:
            record["label"] = label
        record.update(fields)
        self._file.write(json.dumps(record, sort_keys=False) + "\n")
        log.info("event %s %s %s", event, label or "", fields or "")

    def close(self) -> None:
        self._file.close()
