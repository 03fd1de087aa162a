"""Multi-component live update (MINIX's update chain: ``service -q update``, then
``sysctl upd_run``/``upd_start``/``upd_stop``/``upd_status``) (docs/services.md).

:class:`MultiUpdater` holds the one queue; :class:`Batch` runs it through the
phases of :mod:`hwl.servers.rs.update` for all its services at once. What a caller
relies on: every service is asked for its state in queue order and swapped only
when all inits answered OK; any failure rolls every one back (cancel, answer the
blocked, kill the new versions, swap back) with MINIX's result errno; endpoints
never change and nothing counts as a restart. The request checks (EBUSY, EINVAL)
are MINIX's ``do_update``'s; how hwl differs from MINIX is in the docs page.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from hwl.ipc.client import IpcError
from hwl.ipc.kcalls import ExitInfo
from hwl.proto import codec
from hwl.proto.errno import Errno, errno_of
from hwl.servers.rs.manager import RsError, how_it_ended
from hwl.servers.rs.table import Service, State, Waiter
from hwl.servers.rs.update import SWAP_RETRY_S, Asked, Update, Updater

log = logging.getLogger(__name__)

#: Phases in which the old version was asked for its state and blocks in RS's hands.
HELD = frozenset({"prepared", "init", "ready", "swapped"})


class Batch:
    """The queued updates, then their run (the owner of each of them)."""

    def __init__(self, multi: MultiUpdater) -> None:
        self.multi = multi
        self.up = multi.up
        self.members: list[Update] = []
        self.running = False
        self.over = False
        self.waiter: Waiter | None = None
        self.broken: tuple[Errno, str] | None = None  # a queued one can no longer be run
        self.current = -1  # the member asked for its state
        self.started_at = 0.0
        self.swap_deadline = 0.0

    @property
    def labels(self) -> list[str]:
        return [u.svc.label for u in self.members]

    # ------------------------------------------------------------------- run
    def start(self, waiter: Waiter | None) -> None:
        self.running = True
        self.waiter = waiter
        self.started_at = time.monotonic()
        for u in self.members:
            self.up.claim(u, self)
        log.info("multi-component update of %s", ", ".join(self.labels))
        self._prepare_next()

    def _prepare_next(self) -> None:
        self.current += 1
        if self.current == len(self.members):
            self._init_all()
            return
        u = self.members[self.current]
        u.phase = "spawning"
        u.spawned_at = time.monotonic()
        self.up.arm(u)
        self.up.when_ready(u, lambda: self._ask(u))

    def _ask(self, u: Update) -> None:
        error = self.up.ask_prepare(u)
        if error is not None:
            self.fail(error.errno, f"cannot ask {u.svc.label} to prepare: {error}")

    def prepared(self, u: Update, result: int, saved: bytes) -> None:
        if result != 0:
            errno = errno_of(result)
            self.up.resume(u.old.endpoint, result)
            u.phase = "refused"
            self.fail(errno, f"{u.svc.label} refused state {u.state}: {errno.name}")
            return
        self.up.mark_prepared(u, saved)
        self._prepare_next()

    def _init_all(self) -> None:
        """Every old version is blocked: initialise every new one."""
        for u in self.members:
            if not u.prepare_only:
                self.up.send_init(u)
        self._swap_when_ready()

    def init_done(self, u: Update, result: int) -> None:
        if result != 0:
            errno = errno_of(result)
            self.fail(errno, f"the new version of {u.svc.label} failed its init ({errno.name})")
            return
        u.phase = "ready"
        if u.timer:  # its init is done; the slowest init's own maxtime bounds the wait
            u.timer.cancel()
        self._swap_when_ready()

    def _swap_when_ready(self) -> None:
        if all(u.prepare_only or u.phase in ("ready", "swapped") for u in self.members):
            self.swap_deadline = time.monotonic() + max(u.maxtime for u in self.members)
            self._swap_all()

    def _swap_all(self) -> None:
        """Swap every one; a kernel refusal swaps back those done and rolls back."""
        if self.over:
            return
        for u in self.members:
            if u.prepare_only or u.phase == "swapped":
                continue
            try:
                self.up.swap(u)
            except IpcError as exc:
                if exc.errno is Errno.EBUSY and time.monotonic() < self.swap_deadline:
                    self.up.m.timers.after(SWAP_RETRY_S, self._swap_all)  # in a call for now
                    return
                self.fail(exc.errno, f"the kernel refused the swap of {u.svc.label}: {exc}")
                return
        self._commit()

    def _commit(self) -> None:
        """Every new version is in its place: let them all serve, end the old ones."""
        self.over = True
        downtimes = {u.svc.label: self.up.activate(u) for u in self.members if not u.prepare_only}
        for u in self.members:
            if u.prepare_only:
                self.up.resume(u.old.endpoint, 0)
        size = len(self.members)
        for u in self.members:
            extra: dict[str, codec.Value] = {"batch": size}
            if u.prepare_only:
                extra["prepare_only"] = True
            else:
                extra["downtime_ms"] = downtimes[u.svc.label]
            self.up.release(u, "update-done", 0, "", **extra)
        self.finish(0, "")

    # --------------------------------------------------------------- failure
    def timed_out(self, u: Update) -> None:
        label = u.svc.label
        if u.phase in ("spawning", "preparing"):
            self.fail(Errno.EINTR, f"{label}: state {u.state} not reached in {u.maxtime} s")
        elif u.phase == "init":
            self.fail(Errno.EINTR, f"{label}: the new version's init took over {u.maxtime} s")
        else:
            self.fail(Errno.EINTR, f"{label}: not swapped within {u.maxtime} s")

    def new_died(self, u: Update, info: ExitInfo) -> None:
        why = f"the new version of {u.svc.label} died ({how_it_ended(info)})"
        if self.running:
            self.fail(Errno.ERESTART, why)
        else:
            self.broken = (Errno.ERESTART, why)

    def old_died(self, u: Update) -> None:
        u.phase = "dead"
        u.svc.state = State.UP  # the manager restarts it as after any crash
        self.fail(Errno.ERESTART, f"the old version of {u.svc.label} died")

    def fail(self, errno: Errno, why: str) -> None:
        """Roll every service back and answer the run with ``errno``."""
        if self.over:
            return
        self.over = True
        log.warning("multi-component update failed (%s): %s", errno.name, why)
        for u in reversed(self.members):
            if u.phase == "swapped":
                self.up.unswap(u)
        for u in reversed(self.members):
            phase = u.phase
            if phase == "preparing":
                self.up.cancel_prepare(u)
            elif phase in HELD:
                self.up.resume(u.old.endpoint, -Errno.EINTR)
            self.up.kill_new(u)
            event = "update-rolled-back" if phase in HELD else "update-aborted"
            self.up.release(u, event, -errno, why, batch=len(self.members))
        self.finish(-errno, why)

    def finish(self, status: int, why: str) -> None:
        self.multi.batch = None
        result = errno_of(status).name if status else "OK"
        took = round((time.monotonic() - self.started_at) * 1000, 3) if self.running else 0.0
        details: dict[str, Any] = {"labels": self.labels, "result": result}
        if why:
            details["reason"] = why
        self.up.m.events.write("update-batch", took_ms=took, **details)
        if self.waiter is not None:
            fields: dict[str, codec.Value] = {"labels": list(self.labels)}
            if status:
                fields["error"] = f"multi-component update: {why}"
            self.up.m.reply(self.waiter, status, fields)


class MultiUpdater:
    """The update queue: ``-q`` adds to it; ``sysctl`` runs, stops or shows it."""

    def __init__(self, updater: Updater) -> None:
        self.up = updater
        self.batch: Batch | None = None  # queued or running

    def queue(self, svc: Service, asked: Asked) -> int:
        """Queue an update of ``svc`` (its new version starts now); its position."""
        if self.batch is not None and self.batch.running:
            raise RsError(Errno.EBUSY, "a multi-component update is under way")
        if any(u.owner is not self.batch for u in self.up.updates.values()):
            busy = ", ".join(u.svc.label for u in self.up.updates.values())
            raise RsError(Errno.EBUSY, f"an update is under way ({busy})")
        if self.batch is not None and svc.label in self.batch.labels:
            raise RsError(Errno.EINVAL, f"{svc.label} is already in the queued update")
        u = self.up.new_update(svc, asked)
        if self.batch is None:
            self.batch = Batch(self)
        u.phase = "queued"
        u.owner = self.batch
        self.up.updates[svc.label] = u
        self.batch.members.append(u)
        new = {"new_pid": u.new.pid, "new_endpoint": u.new.endpoint} if u.new else {}
        position = len(self.batch.members)
        events = self.up.m.events
        events.write("update-queued", svc.label, position=position, state=asked.state, **new)
        return len(self.batch.members)

    def run(self, waiter: Waiter | None) -> None:
        """Start the queued batch (``upd_run``: ``waiter`` gets its result)."""
        batch = self.batch
        if batch is None:
            raise RsError(Errno.EINVAL, "no update is queued")
        if batch.running:
            raise RsError(Errno.EBUSY, "the queued update is already running")
        problem = batch.broken or self._stale(batch)
        if problem is not None:
            errno, why = problem
            self.drop(errno, why)
            raise RsError(errno, f"{why}; the queue was dropped")
        batch.start(waiter)

    def _stale(self, batch: Batch) -> tuple[Errno, str] | None:
        """A queued service that is not the process it was when it was queued."""
        table = self.up.m.table
        for u in batch.members:
            svc = u.svc
            if table.get(svc.label) is not svc:
                return Errno.ESRCH, f"{svc.label} is gone since it was queued"
            if svc.state is not State.UP or svc.current != u.old:
                return Errno.ESRCH, f"{svc.label} was restarted since it was queued"
        return None

    def stop(self) -> None:
        """``upd_stop``: drop the queue, or abort the running batch (EINTR)."""
        batch = self.batch
        if batch is None:
            raise RsError(Errno.EINVAL, "no update is queued or under way")
        if batch.running:
            batch.fail(Errno.EINTR, "stopped (sysctl upd_stop)")
        else:
            self.drop(Errno.EINTR, "the queue was dropped (sysctl upd_stop)")

    def drop(self, errno: Errno, why: str) -> None:
        """Forget a queue that never ran: its new versions end, the services serve on."""
        batch = self.batch
        if batch is None:
            return
        batch.over = True
        for u in batch.members:
            self.up.kill_new(u)
            self.up.release(u, "update-aborted", -errno, why, batch=len(batch.members))
        batch.finish(-errno, why)

    def status(self) -> dict[str, codec.Value]:
        """``upd_status``: the queued or running batch, and single updates under way."""
        batch = self.batch
        mode = "none" if batch is None else "running" if batch.running else "queued"
        rows: list[codec.Value] = []
        members = batch.members if batch is not None else []
        for u in members:
            rows.append({**u.row(), "batch": True})
        for u in self.up.updates.values():
            if u not in members:
                rows.append({**u.row(), "batch": False})
        return {"batch": mode, "updates": rows}
