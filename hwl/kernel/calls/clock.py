"""The clock: ``setalarm``, as MINIX's ``do_setalarm.c``; an alarm that expires is a
CLOCK notify, sent by the kernel's loop."""

from __future__ import annotations

import time
from typing import Protocol

from hwl.ipc import wire
from hwl.kernel.calls.base import Fields, Reply, fail, get_bool, get_int
from hwl.kernel.errno import Errno
from hwl.kernel.proc import Proc


class Alarms(Protocol):
    """The loop's alarms, and the boot time ticks count from."""

    @property
    def boot(self) -> float: ...

    def set_alarm(self, proc: Proc, deadline: float | None) -> float | None: ...


class ClockCalls:
    def __init__(self, alarms: Alarms) -> None:
        self.alarms = alarms

    def do_setalarm(self, proc: Proc, f: Fields) -> Reply:
        now = time.monotonic()
        if "seconds" in f:
            seconds = f["seconds"]
            if (
                not isinstance(seconds, (int, float))
                or isinstance(seconds, bool)
                or not 0 <= seconds < 1e7
            ):
                fail(Errno.EINVAL, "setalarm: seconds must be a number in 0..1e7")
            deadline: float | None = now + seconds if seconds else None
        else:
            ticks = get_int(f, "ticks", 0, 1 << 40)
            if get_bool(f, "absolute"):
                deadline = self.alarms.boot + ticks / wire.HZ if ticks else None
            else:
                deadline = now + ticks / wire.HZ if ticks else None
        old = self.alarms.set_alarm(proc, deadline)
        left = max(0.0, old - now) if old is not None else 0.0
        return {"previous_ticks": int(left * wire.HZ), "previous_seconds": left}
