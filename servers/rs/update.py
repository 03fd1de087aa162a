"""Live update (MINIX's rs/update.c), one service at a time.

1. RS starts the new version; it waits in ``sef.startup`` for its init.
2. RS asks the old version for the state (``SEF_LU_PREPARE``). The old one
   keeps serving until it reaches the state, then saves its state and blocks
   in a ``sendrec`` to RS: from here on it serves nobody, and callers queue on
   its endpoint.
3. RS hands the saved state to the new version's init (type lu).
4. Init OK: the kernel's ``update`` call moves the new process onto the old
   endpoint (the queued callers are now its callers), RS notifies it there (it
   waits for that before serving) and kills the old process.
   Init failed, crashed or timed out: RS kills the new process and answers the
   old one's ``sendrec``: it resumes serving (rollback).

The state not reached within maxtime aborts the update with EINTR; the old
version gets a cancel and serves on. The new version's init runs before the
swap, so a crash there never touches the old endpoint.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from hwl.ipc.client import IpcError
from hwl.ipc.kcalls import ExitInfo
from hwl.proto import codec, wire
from hwl.proto import sef as sefp
from hwl.proto.errno import Errno, errno_of
from hwl.proto.rs import UpdateFlag
from hwl.proto.sef import InitFlag, InitType
from servers.rs.manager import Manager, RsError, how_it_ended
from servers.rs.table import Instance, Service, State, Waiter
from servers.rs.timers import Timer

log = logging.getLogger(__name__)

SWAP_RETRY_S = 0.001
READY_POLL_S = 0.001


@dataclass
class Update:
    svc: Service
    waiter: Waiter
    state: int
    flags: UpdateFlag
    maxtime: float  # seconds
    old: Instance
    new: Instance | None
    phase: str = "spawning"  # spawning -> preparing -> init (-> swapping) -> done
    spawned_at: float = 0.0
    timer: Timer | None = None
    prepared_at: float = 0.0
    argv: list[str] | None = None  # the new program (None: the same again)
    conf: str | None = None


def _init_flags(flags: UpdateFlag) -> InitFlag:
    out = InitFlag.NONE
    if flags & UpdateFlag.FORCE_INIT_CRASH:
        out |= InitFlag.CRASH
    if flags & UpdateFlag.FORCE_INIT_FAIL:
        out |= InitFlag.FAIL
    if flags & UpdateFlag.FORCE_INIT_TIMEOUT:
        out |= InitFlag.TIMEOUT
    return out


class Updater:
    def __init__(self, manager: Manager) -> None:
        self.m = manager
        self.updates: dict[str, Update] = {}
        self.retired: set[int] = set()  # pids of old versions RS killed after an update
        manager.on_foreign_exit = self.on_exit
        manager.on_foreign_init = self.on_init
        manager.on_updating_died = self.old_died

    def start(
        self,
        svc: Service,
        waiter: Waiter,
        *,
        argv: list[str] | None,
        conf: str | None,
        state: int,
        maxtime: float,
        flags: UpdateFlag,
    ) -> None:
        if svc.label in self.updates:
            raise RsError(Errno.EBUSY, f"{svc.label} is already being updated")
        if svc.state is not State.UP or svc.current is None:
            raise RsError(Errno.EBUSY, f"{svc.label} is {svc.state.value}, not up")
        if state <= 0:
            raise RsError(Errno.EINVAL, f"live-update state {state} is not a state to reach")
        new = None
        if not flags & UpdateFlag.PREPARE_ONLY:
            new = self.m.spawn(svc, argv=argv, conf=conf)
        u = Update(svc, waiter, state, flags, maxtime, svc.current, new, argv=argv, conf=conf)
        self.updates[svc.label] = u
        svc.state = State.UPDATING
        if svc.ping_timer:
            svc.ping_timer.cancel()
        self._arm(u)
        u.spawned_at = time.monotonic()
        self._prepare_when_ready(u)

    def _prepare_when_ready(self, u: Update) -> None:
        """Ask the old version for its state once the new one waits for its init,
        so the new program's start-up is not part of the downtime."""
        if self.updates.get(u.svc.label) is not u or u.phase != "spawning":
            return
        waiting = u.new is not None and not self._waiting_for_init(u.new.endpoint)
        if waiting and time.monotonic() - u.spawned_at < u.maxtime:
            self.m.timers.after(READY_POLL_S, lambda: self._prepare_when_ready(u))
            return
        u.phase = "preparing"
        fields: dict[str, codec.Value] = {"state": u.state, "flags": int(u.flags)}
        try:
            self.m.conn.senda(u.old.endpoint, sefp.SEF_LU_PREPARE, fields)
        except IpcError as exc:  # the old version is gone, or the kernel refused
            self._kill_new(u)
            self._finish(u, "update-aborted", -exc.errno, f"cannot ask it to prepare: {exc}")
            return
        self._arm(u)
        log.info("update of %s: state %d within %.2f s", u.svc.label, u.state, u.maxtime)

    def _waiting_for_init(self, endpoint: int) -> bool:
        for proc in self.m.conn.proctab():
            if proc["endpoint"] == endpoint:
                return bool(proc["state"] == "receiving")
        return True  # gone: let the exit report decide

    # ------------------------------------------------------------ prepare
    def prepared(self, source: int, fields: dict[str, codec.Value]) -> None:
        """The old version's RS_LU_PREPARE: state reached, or refused."""
        u = next((u for u in self.updates.values() if u.old.endpoint == source), None)
        if u is None or u.phase != "preparing":
            # Late, after an abort: let it resume.
            self._resume(source, -Errno.EINTR)
            return
        result = _int(fields.get("result", -Errno.EINVAL))
        if result != 0:
            errno = errno_of(result)
            self._resume(source, result)
            self._finish(u, "update-aborted", -errno, f"the service refused: {errno.name}")
            return
        u.prepared_at = time.monotonic()
        self.m.events.write("update-prepared", u.svc.label, state=u.state)
        if u.new is None:  # prepare only
            self._resume(source, 0)
            self._finish(u, "update-done", 0, "", prepare_only=True)
            return
        saved = fields.get("saved", b"")
        u.phase = "init"
        self.m.send_init(
            u.new.endpoint,
            InitType.LU,
            u.svc.restarts,
            flags=int(_init_flags(u.flags)),
            saved=saved if isinstance(saved, bytes) else b"",
            as_endpoint=u.old.endpoint,
        )
        self._arm(u)

    def _arm(self, u: Update) -> None:
        """Give the update's current phase its maxtime (the previous phase's is off)."""
        if u.timer:
            u.timer.cancel()
        u.timer = self.m.timers.after(u.maxtime, lambda: self._timeout(u))

    # --------------------------------------------------------------- init
    def on_init(self, source: int, result: int) -> bool:
        u = next(
            (u for u in self.updates.values() if u.new is not None and u.new.endpoint == source),
            None,
        )
        if u is None:
            return False
        if u.phase != "init":
            log.warning("update of %s: the new version answered init too early", u.svc.label)
            return True
        if result != 0:
            self._rollback(u, errno_of(result), "the new version's init failed")
            return True
        self._swap(u)
        return True

    def _swap(self, u: Update) -> None:
        assert u.new is not None
        try:
            self.m.conn.update(u.old.endpoint, u.new.endpoint)
        except IpcError as exc:
            if exc.errno is Errno.EBUSY and u.phase == "init":
                u.phase = "swapping"
                self.m.timers.after(SWAP_RETRY_S, lambda: self._retry_swap(u))
                return
            self._rollback(u, exc.errno, f"the kernel refused the swap: {exc}")
            return
        # The new program now answers at the old endpoint; the old program
        # holds the new one's and is still blocked in its sendrec: kill it.
        # The new one waits for this notify before it serves: requests the old
        # one handed over in its state must not run before the swap, with the
        # endpoint's IRQ hooks, DMA buffers and callers still the old one's.
        try:
            self.m.conn.notify(u.old.endpoint)
        except IpcError as exc:
            log.warning("update of %s: the go-ahead notify failed: %s", u.svc.label, exc)
        old_pid = u.old.pid
        self.retired.add(old_pid)
        self.m.kill(u.new.endpoint)
        svc = u.svc
        svc.current = Instance(u.old.endpoint, u.new.pid)
        # As in MINIX, the new version takes the old one's place, program and
        # privileges included: a later restart runs the new program.
        if u.argv:
            svc.argv = u.argv
        if u.conf:
            svc.conf = u.conf
        svc.state = State.UP
        svc.last_alive = time.monotonic()
        self.m.schedule_ping(svc)
        downtime = time.monotonic() - u.prepared_at
        self._finish(u, "update-done", 0, "", downtime_ms=round(downtime * 1000, 3))

    def _retry_swap(self, u: Update) -> None:
        if self.updates.get(u.svc.label) is u and u.phase == "swapping":
            u.phase = "init"
            self._swap(u)

    # ------------------------------------------------------------ failure
    def _timeout(self, u: Update) -> None:
        if self.updates.get(u.svc.label) is not u:
            return
        if u.phase in ("spawning", "preparing"):
            if u.phase == "preparing":  # call the request off (MINIX: state 0)
                try:
                    self.m.conn.senda(u.old.endpoint, sefp.SEF_LU_PREPARE, {"state": 0, "flags": 0})
                except IpcError as exc:
                    log.info("update of %s: cancel not sent: %s", u.svc.label, exc)
            self._kill_new(u)
            self._finish(
                u, "update-aborted", -Errno.EINTR, f"state {u.state} not reached in {u.maxtime} s"
            )
        else:
            self._rollback(u, Errno.EINTR, f"the new version's init took over {u.maxtime} s")

    def _rollback(self, u: Update, errno: Errno, why: str) -> None:
        self._kill_new(u)
        self._resume(u.old.endpoint, -Errno.EINTR)
        self._finish(u, "update-rolled-back", -errno, why)

    def _kill_new(self, u: Update) -> None:
        """Kill the new version (if any); its exit is then expected."""
        if u.new is not None:
            self.retired.add(u.new.pid)
            self.m.kill(u.new.endpoint)
            u.new = None

    def _resume(self, endpoint: int, status: int) -> None:
        """Answer a prepared old version's sendrec: it serves on."""
        try:
            self.m.conn.sendnb(endpoint, status, {})
        except IpcError as exc:
            log.debug("resume %s: %s", wire.endpoint_name(endpoint), exc)

    def _finish(self, u: Update, event: str, status: int, why: str, **extra: codec.Value) -> None:
        if u.timer:
            u.timer.cancel()
        u.phase = "done"
        self.updates.pop(u.svc.label, None)
        svc = u.svc
        if svc.state is State.UPDATING:
            svc.state = State.UP
            self.m.schedule_ping(svc)
        fields: dict[str, codec.Value] = {"endpoint": svc.endpoint}
        if status != 0:
            fields["error"] = f"update of {svc.label}: {why}"
            self.m.events.write(event, svc.label, reason=why, errno=errno_of(status).name)
        else:
            self.m.events.write(event, svc.label, endpoint=svc.endpoint, pid=svc.pid, **extra)
        self.m.reply(u.waiter, status, fields)

    def on_exit(self, info: ExitInfo) -> bool:
        if info.pid in self.retired:
            self.retired.discard(info.pid)
            return True
        for u in list(self.updates.values()):
            if u.new is not None and u.new.pid == info.pid:
                u.new = None  # nothing left to kill
                self._rollback(u, Errno.ERESTART, f"the new version died ({how_it_ended(info)})")
                return True
        return False

    def old_died(self, svc: Service) -> None:
        """The old version died in the middle of its update: give up the update;
        the manager restarts the service as after any crash."""
        u = self.updates.get(svc.label)
        if u is None:
            return
        self._kill_new(u)
        svc.state = State.UP  # so the manager treats it as a crash of a running service
        self._finish(u, "update-aborted", -Errno.ERESTART, "the old version died")


def _int(value: codec.Value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -Errno.EINVAL
