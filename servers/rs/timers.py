"""Deadlines on the kernel's alarm: RS arms ``setalarm`` for the earliest one and
runs what is due when the CLOCK notify arrives."""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable

from hwl.ipc.client import Connection


class Timer:
    """A handle to cancel a pending deadline."""

    __slots__ = ("callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callable[[], None]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Timers:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._armed: float | None = None

    def after(self, seconds: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(time.monotonic() + max(0.0, seconds), callback)
        heapq.heappush(self._heap, (timer.deadline, next(self._seq), timer))
        return timer

    def run_due(self) -> None:
        now = time.monotonic()
        while self._heap and self._heap[0][0] <= now:
            _, _, timer = heapq.heappop(self._heap)
            if not timer.cancelled:
                timer.callback()
            now = time.monotonic()

    def arm(self) -> None:
        """Set the kernel alarm for the earliest live deadline (before each receive)."""
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        deadline = self._heap[0][0] if self._heap else None
        if deadline == self._armed:
            return
        self._armed = deadline
        if deadline is None:
            self.conn.setalarm(seconds=0)
        else:
            self.conn.setalarm(seconds=max(0.0005, deadline - time.monotonic()))

    def fired(self) -> None:
        """The CLOCK notify: the armed alarm is spent."""
        self._armed = None
