"""Live update (MINIX's rs/update.c): the phases, and the update of one service
(docs/services.md, "Live update, step by step").

:class:`Updater` holds every service's part of an update (:class:`Update`) and
the phases, one call each: start the new version, ask the old one for its state,
init the new one with the saved state, swap (the kernel's ``update``) or roll
back. RS's events (a prepare answer, an init answer, an exit, a timer) go to the
update's owner, which decides what comes next: :class:`Single` for ``service
update`` and, for a queue updated together,
:class:`hwl.servers.rs.multiupdate.Batch`. The old version serves on after any
failure; the new version's init runs before the swap, so a crash there never
touches the endpoint clients use.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from hwl.ipc.client import IpcError
from hwl.ipc.kcalls import ExitInfo
from hwl.proto import codec, wire
from hwl.proto import sef as sefp
from hwl.proto.errno import Errno, errno_of
from hwl.proto.rs import UpdateFlag
from hwl.proto.sef import InitFlag, InitType
from hwl.servers.rs.manager import Manager, RsError, how_it_ended
from hwl.servers.rs.table import Instance, Service, State, Waiter
from hwl.servers.rs.timers import Timer

log = logging.getLogger(__name__)

SWAP_RETRY_S = 0.001
READY_POLL_S = 0.001
NO_LIMIT_S = 1e6  # a maxtime this long is no limit (the kernel's alarms stop at 1e7 s)


@dataclass(frozen=True)
class Asked:
    """What an update request asks: the new version's ``argv`` and ``conf`` (None: the
    service's own), the live-update ``state`` to reach, ``maxtime`` in seconds to
    reach it, and its flags."""

    argv: list[str] | None
    conf: str | None
    state: int
    maxtime: float
    flags: UpdateFlag


class Owner(Protocol):
    """What drives an update: told of each event of one of its updates."""

    def prepared(self, u: Update, result: int, saved: bytes) -> None: ...
    def init_done(self, u: Update, result: int) -> None: ...
    def timed_out(self, u: Update) -> None: ...
    def new_died(self, u: Update, info: ExitInfo) -> None: ...
    def old_died(self, u: Update) -> None: ...


@dataclass
class Update:
    """One service's part of an update: its old and new instance, and its phase."""

    svc: Service
    state: int
    flags: UpdateFlag
    maxtime: float  # seconds
    old: Instance
    new: Instance | None  # None: prepare only, or the new version is gone
    argv: list[str] | None = None  # the new program (None: the same again)
    conf: str | None = None
    # queued -> spawning -> preparing -> prepared -> init -> ready -> swapped -> done
    phase: str = "spawning"
    owner: Owner | None = None
    spawned_at: float = 0.0
    prepared_at: float = 0.0
    saved: bytes = b""
    timer: Timer | None = None
    extra: dict[str, codec.Value] = field(default_factory=dict)

    @property
    def prepare_only(self) -> bool:
        return bool(self.flags & UpdateFlag.PREPARE_ONLY)

    def row(self) -> dict[str, codec.Value]:
        """This update as ``sysctl upd_status`` shows it."""
        return {
            "label": self.svc.label,
            "phase": self.phase,
            "state": self.state,
            "flags": int(self.flags),
            "maxtime": self.maxtime,
            "endpoint": self.old.endpoint,
            "new_endpoint": self.new.endpoint if self.new else wire.NONE,
            "program": " ".join(self.argv or self.svc.argv),
        }


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
    """Every update under way, by label, and the phases an owner runs them through."""

    def __init__(self, manager: Manager) -> None:
        self.m = manager
        self.updates: dict[str, Update] = {}
        self.retired: set[int] = set()  # pids of instances RS killed itself
        manager.on_foreign_exit = self.on_exit
        manager.on_foreign_init = self.on_init
        manager.on_updating_died = self.old_died

    # ------------------------------------------------------------- requests
    def start(self, svc: Service, waiter: Waiter, asked: Asked) -> None:
        """``service update``: this service alone, answered when it is done."""
        Single(self, self.new_update(svc, asked), waiter).start()

    # --------------------------------------------------------------- phases
    def new_update(self, svc: Service, asked: Asked) -> Update:
        """Check the request and start the new version (not for a prepare-only one)."""
        if svc.label in self.updates:
            raise RsError(Errno.EBUSY, f"{svc.label} is already being updated")
        if svc.state is not State.UP or svc.current is None:
            raise RsError(Errno.EBUSY, f"{svc.label} is {svc.state.value}, not up")
        if asked.state <= 0:
            raise RsError(Errno.EINVAL, f"live-update state {asked.state} is not a state to reach")
        new = None
        argv, conf = asked.argv, asked.conf
        if not asked.flags & UpdateFlag.PREPARE_ONLY:
            new = self.m.spawn(svc, argv=argv, conf=conf)
        u = Update(svc, asked.state, asked.flags, asked.maxtime, svc.current, new, argv=argv,
                   conf=conf)  # fmt: skip
        u.spawned_at = time.monotonic()
        return u

    def claim(self, u: Update, owner: Owner) -> None:
        """The update is under way: its service is updating, its events go to ``owner``."""
        u.owner = owner
        self.updates[u.svc.label] = u
        u.svc.state = State.UPDATING
        if u.svc.ping_timer:
            u.svc.ping_timer.cancel()

    def when_ready(self, u: Update, then: Callable[[], None]) -> None:
        """Call ``then`` once the new version waits for its init (or after maxtime),
        so the new program's start-up is not part of the downtime."""
        if self.updates.get(u.svc.label) is not u or u.phase != "spawning":
            return
        waiting = u.new is not None and not self._waiting_for_init(u.new.endpoint)
        if waiting and time.monotonic() - u.spawned_at < u.maxtime:
            self.m.timers.after(READY_POLL_S, lambda: self.when_ready(u, then))
            return
        then()

    def _waiting_for_init(self, endpoint: int) -> bool:
        for proc in self.m.conn.proctab():
            if proc["endpoint"] == endpoint:
                return bool(proc["state"] == "receiving")
        return True  # gone: let the exit report decide

    def ask_prepare(self, u: Update) -> IpcError | None:
        """Ask the old version for the state (maxtime from now); the error if the
        request cannot be sent."""
        u.phase = "preparing"
        fields: dict[str, codec.Value] = {"state": u.state, "flags": int(u.flags)}
        try:
            self.m.conn.senda(u.old.endpoint, sefp.SEF_LU_PREPARE, fields)
        except IpcError as exc:  # the old version is gone, or the kernel refused
            return exc
        self.arm(u)
        log.info("update of %s: state %d within %.2f s", u.svc.label, u.state, u.maxtime)
        return None

    def cancel_prepare(self, u: Update) -> None:
        """Call a pending prepare request off (MINIX: state 0); the old one serves on."""
        try:
            self.m.conn.senda(u.old.endpoint, sefp.SEF_LU_PREPARE, {"state": 0, "flags": 0})
        except IpcError as exc:
            log.info("update of %s: cancel not sent: %s", u.svc.label, exc)

    def mark_prepared(self, u: Update, saved: bytes) -> None:
        """The old version reached the state and blocks: keep what it saved."""
        if u.timer:
            u.timer.cancel()
        u.phase = "prepared"
        u.saved = saved
        u.prepared_at = time.monotonic()
        self.m.events.write("update-prepared", u.svc.label, state=u.state)

    def send_init(self, u: Update) -> None:
        """Initialise the new version with the saved state (maxtime from now)."""
        assert u.new is not None
        u.phase = "init"
        self.m.send_init(
            u.new.endpoint,
            InitType.LU,
            u.svc.restarts,
            flags=int(_init_flags(u.flags)),
            saved=u.saved,
            as_endpoint=u.old.endpoint,
        )
        self.arm(u)

    def swap(self, u: Update) -> None:
        """The kernel's update: the new program now answers at the old endpoint and
        the old one holds the new one's (calling it again swaps back). Raises the
        kernel's IpcError (EBUSY: one of them is in a call; try again)."""
        assert u.new is not None
        self.m.conn.update(u.old.endpoint, u.new.endpoint)
        u.phase = "swapped"

    def unswap(self, u: Update) -> None:
        """Swap back after :meth:`swap` (a batch whose later swap failed)."""
        assert u.new is not None
        try:
            self.m.conn.update(u.old.endpoint, u.new.endpoint)
            u.phase = "ready"
        except IpcError as exc:
            log.error("update of %s: cannot swap back: %s", u.svc.label, exc)

    def activate(self, u: Update) -> float:
        """After the swap: let the new version serve, end the old one, and make the
        new one the service's; the downtime (since the state was reached) in ms."""
        assert u.new is not None
        # The old program holds the new one's endpoint and is still blocked in
        # its sendrec: kill it. The new one waits for this notify before it
        # serves: requests the old one handed over in its state must not run
        # before the swap, with the endpoint's IRQ hooks, DMA buffers and
        # callers still the old one's.
        try:
            self.m.conn.notify(u.old.endpoint)
        except IpcError as exc:
            log.warning("update of %s: the go-ahead notify failed: %s", u.svc.label, exc)
        self.retired.add(u.old.pid)
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
        return round((time.monotonic() - u.prepared_at) * 1000, 3)

    def kill_new(self, u: Update) -> None:
        """Kill the new version (if any); its exit is then expected."""
        if u.new is not None:
            self.retired.add(u.new.pid)
            self.m.kill(u.new.endpoint)
            u.new = None

    def resume(self, endpoint: int, status: int) -> None:
        """Answer a prepared old version's sendrec: it serves on."""
        try:
            self.m.conn.sendnb(endpoint, status, {})
        except IpcError as exc:
            log.debug("resume %s: %s", wire.endpoint_name(endpoint), exc)

    def release(self, u: Update, event: str, status: int, why: str, **extra: codec.Value) -> None:
        """The update of this service is over: its service serves again; the event."""
        if u.timer:
            u.timer.cancel()
        u.phase = "done"
        if self.updates.get(u.svc.label) is u:
            del self.updates[u.svc.label]
        svc = u.svc
        if svc.state is State.UPDATING:
            svc.state = State.UP
            self.m.schedule_ping(svc)
        if status != 0:
            self.m.events.write(event, svc.label, reason=why, errno=errno_of(status).name, **extra)
        else:
            self.m.events.write(event, svc.label, endpoint=svc.endpoint, pid=svc.pid, **extra)

    def arm(self, u: Update) -> None:
        """Give the update's current phase its maxtime (the previous phase's is off);
        "no limit" (maxtime -1, a year) sets no timer: the kernel's alarm would
        refuse it, and RS with it."""
        if u.timer:
            u.timer.cancel()
            u.timer = None
        if u.maxtime < NO_LIMIT_S:
            u.timer = self.m.timers.after(u.maxtime, lambda: self._timed_out(u))

    def _timed_out(self, u: Update) -> None:
        if self.updates.get(u.svc.label) is u and u.owner is not None:
            u.owner.timed_out(u)

    # ----------------------------------------------------------- RS's events
    def prepared(self, source: int, fields: dict[str, codec.Value]) -> None:
        """The old version's RS_LU_PREPARE: state reached, or refused."""
        u = next((u for u in self.updates.values() if u.old.endpoint == source), None)
        if u is None or u.phase != "preparing" or u.owner is None:
            # Late, after an abort: let it resume.
            self.resume(source, -Errno.EINTR)
            return
        saved = fields.get("saved", b"")
        result = _int(fields.get("result", -Errno.EINVAL))
        u.owner.prepared(u, result, saved if isinstance(saved, bytes) else b"")

    def on_init(self, source: int, result: int) -> bool:
        u = next(
            (u for u in self.updates.values() if u.new is not None and u.new.endpoint == source),
            None,
        )
        if u is None:
            return False
        if u.phase != "init" or u.owner is None:
            log.warning("update of %s: the new version answered init too early", u.svc.label)
            return True
        u.owner.init_done(u, result)
        return True

    def on_exit(self, info: ExitInfo) -> bool:
        if info.pid in self.retired:
            self.retired.discard(info.pid)
            return True
        for u in list(self.updates.values()):
            if u.new is not None and u.new.pid == info.pid and u.owner is not None:
                u.new = None  # nothing left to kill
                u.owner.new_died(u, info)
                return True
        return False

    def old_died(self, svc: Service) -> None:
        """The old version died in the middle of its update: give up the update;
        the manager restarts the service as after any crash."""
        u = self.updates.get(svc.label)
        if u is not None and u.owner is not None:
            u.owner.old_died(u)


class Single:
    """``service update`` of one service: the caller is answered when it is over."""

    def __init__(self, up: Updater, u: Update, waiter: Waiter) -> None:
        self.up = up
        self.u = u
        self.waiter = waiter

    def start(self) -> None:
        self.up.claim(self.u, self)
        self.up.arm(self.u)
        self.up.when_ready(self.u, self._prepare)

    def _prepare(self) -> None:
        u = self.u
        error = self.up.ask_prepare(u)
        if error is not None:
            self.up.kill_new(u)
            self._finish("update-aborted", -error.errno, f"cannot ask it to prepare: {error}")

    def prepared(self, u: Update, result: int, saved: bytes) -> None:
        if result != 0:
            errno = errno_of(result)
            self.up.resume(u.old.endpoint, result)
            self._finish("update-aborted", -errno, f"the service refused: {errno.name}")
            return
        self.up.mark_prepared(u, saved)
        if u.new is None:  # prepare only
            self.up.resume(u.old.endpoint, 0)
            self._finish("update-done", 0, "", prepare_only=True)
            return
        self.up.send_init(u)

    def init_done(self, u: Update, result: int) -> None:
        if result != 0:
            self._rollback(errno_of(result), "the new version's init failed")
            return
        self._swap()

    def _swap(self) -> None:
        u = self.u
        try:
            self.up.swap(u)
        except IpcError as exc:
            if exc.errno is Errno.EBUSY and u.phase == "init":
                u.phase = "swapping"
                self.up.m.timers.after(SWAP_RETRY_S, self._retry_swap)
                return
            self._rollback(exc.errno, f"the kernel refused the swap: {exc}")
            return
        downtime = self.up.activate(u)
        self._finish("update-done", 0, "", downtime_ms=downtime)

    def _retry_swap(self) -> None:
        if self.up.updates.get(self.u.svc.label) is self.u and self.u.phase == "swapping":
            self.u.phase = "init"
            self._swap()

    def timed_out(self, u: Update) -> None:
        if u.phase in ("spawning", "preparing"):
            if u.phase == "preparing":
                self.up.cancel_prepare(u)
            self.up.kill_new(u)
            self._finish(
                "update-aborted", -Errno.EINTR, f"state {u.state} not reached in {u.maxtime} s"
            )
        else:
            self._rollback(Errno.EINTR, f"the new version's init took over {u.maxtime} s")

    def new_died(self, u: Update, info: ExitInfo) -> None:
        self._rollback(Errno.ERESTART, f"the new version died ({how_it_ended(info)})")

    def old_died(self, u: Update) -> None:
        self.up.kill_new(u)
        u.svc.state = State.UP  # so the manager treats it as a crash of a running service
        self._finish("update-aborted", -Errno.ERESTART, "the old version died")

    def _rollback(self, errno: Errno, why: str) -> None:
        self.up.kill_new(self.u)
        self.up.resume(self.u.old.endpoint, -Errno.EINTR)
        self._finish("update-rolled-back", -errno, why)

    def _finish(self, event: str, status: int, why: str, **extra: codec.Value) -> None:
        svc = self.u.svc
        self.up.release(self.u, event, status, why, **extra)
        fields: dict[str, codec.Value] = {"endpoint": svc.endpoint}
        if status != 0:
            fields["error"] = f"update of {svc.label}: {why}"
        self.up.m.reply(self.waiter, status, fields)


def _int(value: codec.Value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -Errno.EINVAL
