"""The ``service`` requests (MINIX's rs/request.c): check, then act.

Each ``do_*`` gets the caller's endpoint and the request's fields, and either
returns the reply fields at once, returns None when the answer comes later (the
caller waits in its sendrec: up, update, restart, refresh, down), or raises
RsError. Who may ask: user processes attached through the kernel's socket
(the operator, who owns the machine), and system services whose system.conf
entry lists the target in ``control``; lookup and status are open to all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from hwl.config.system_conf import parse
from hwl.proto import codec, wire
from hwl.proto import rs as rsp
from hwl.proto.errno import Errno
from hwl.proto.fields import FieldError, get_int
from hwl.proto.rs import RsLabel, RsSysctl, RsUp, RsUpdate, SysctlType, UpdateFlag
from hwl.proto.sef import FiType, InitType
from hwl.servers.rs.manager import Manager, RsError
from hwl.servers.rs.multiupdate import MultiUpdater
from hwl.servers.rs.table import Service, State, Waiter
from hwl.servers.rs.update import Asked, Updater

log = logging.getLogger(__name__)

Fields = dict[str, codec.Value]
Reply = Fields | None
DEFAULT_MAXTIME_TICKS = 3 * wire.HZ  # MINIX's service update default is 3HZ as well
NO_LIMIT_TICKS = 365 * 24 * 3600 * wire.HZ

#: States a service leaves by itself for UP: a lookup then says EAGAIN, not ESRCH.
COMING_BACK = frozenset({State.STARTING, State.RESTARTING, State.WAITING_SCRIPT})


class Requests:
    def __init__(self, manager: Manager, updater: Updater, is_operator: Callable[[int], bool]):
        self.m = manager
        self.updater = updater
        self.multi = MultiUpdater(updater)
        self.is_operator = is_operator
        self.handlers: dict[int, Callable[[int, Fields], Reply]] = {
            rsp.RS_UP: self.do_up,
            rsp.RS_DOWN: self.do_down,
            rsp.RS_REFRESH: self.do_refresh,
            rsp.RS_RESTART: self.do_restart,
            rsp.RS_SHUTDOWN: self.do_shutdown,
            rsp.RS_UPDATE: self.do_update,
            rsp.RS_CLONE: self.do_clone,
            rsp.RS_UNCLONE: self.do_unclone,
            rsp.RS_EDIT: self.do_edit,
            rsp.RS_LOOKUP: self.do_lookup,
            rsp.RS_STATUS: self.do_status,
            rsp.RS_FI: self.do_fi,
            rsp.RS_SYSCTL: self.do_sysctl,
        }

    def handle(self, source: int, m_type: int, fields: Fields) -> Reply:
        handler = self.handlers.get(m_type)
        if handler is None:
            raise RsError(Errno.ENOSYS, f"no RS request {m_type:#x}")
        try:
            return handler(source, fields)
        except FieldError as exc:  # the typed requests of hwl.proto.rs
            raise RsError(Errno.EINVAL, str(exc)) from exc

    # ------------------------------------------------------------- helpers
    def _service(self, source: int, fields: Fields, request: str) -> Service:
        label = RsLabel.from_fields(fields).label
        svc = self.m.table.get(label)
        if svc is None:
            raise RsError(Errno.ESRCH, f"no service with label '{label}'")
        self._check_control(source, svc.label, request)
        return svc

    def _check_control(self, source: int, label: str, request: str) -> None:
        if self.is_operator(source):
            return
        caller = self.m.table.by_endpoint(source)
        if caller is not None:
            # The entry the caller was started with (given or the stock one), not
            # the stock file's entry for its label: a conf given at `service up`
            # decides its rights, and a stock label lends none to another conf.
            entry = parse(caller.conf, f"<config of {caller.label}>").get(caller.label)
            if entry is not None and entry.may_control(label):
                return
        raise RsError(Errno.EPERM, f"{wire.endpoint_name(source)} may not {request} '{label}'")

    # ------------------------------------------------------------ requests
    def do_up(self, source: int, fields: Fields) -> Reply:
        label = RsLabel.from_fields(fields).label
        self._check_control(source, label, "start")
        if self.m.shutting_down:
            raise RsError(Errno.EBUSY, "RS is shutting down")
        if self.m.table.get(label) is not None:
            raise RsError(Errno.EEXIST, f"a service '{label}' is already running")
        svc = service_from_fields(self.m, label, fields)
        svc.waiters.append(Waiter(source, "up"))
        self.m.table.add(svc)
        try:
            self.m.start(svc, InitType.FRESH)
        except RsError:
            self.m.table.remove(svc)
            raise
        return None

    def do_down(self, source: int, fields: Fields) -> Reply:
        svc = self._service(source, fields, "stop")
        if svc.stopping:
            raise RsError(Errno.EBUSY, f"{svc.label} is already going down")
        svc.waiters.append(Waiter(source, "down"))
        self.m.stop(svc)
        return None

    def do_refresh(self, source: int, fields: Fields) -> Reply:
        svc = self._service(source, fields, "refresh")
        if svc.state is not State.UP:
            raise RsError(Errno.EBUSY, f"{svc.label} is {svc.state.value}, not up")
        svc.waiters.append(Waiter(source, "refresh"))
        self.m.stop(svc, refresh=True)
        return None

    def do_restart(self, source: int, fields: Fields) -> Reply:
        svc = self._service(source, fields, "restart")
        if svc.state is not State.WAITING_SCRIPT:
            raise RsError(
                Errno.EBUSY,
                f"{svc.label} is {svc.state.value}: only a recovery script restarts a service",
            )
        svc.waiters.append(Waiter(source, "restart"))
        self.m.restart(svc)
        return None

    def do_shutdown(self, source: int, fields: Fields) -> Reply:
        if not self.is_operator(source):
            raise RsError(Errno.EPERM, "only the operator may shut the system down")
        self.m.shutting_down = True
        for svc in reversed(list(self.m.table)):
            if not svc.stopping:
                self.m.stop(svc)
        self.m.events.write("shutdown")
        return {}

    def do_update(self, source: int, fields: Fields) -> Reply:
        """One service (answered when it is done), or with -q (``UpdateFlag.BATCH``)
        queued for ``sysctl upd_run`` and answered at once with its position."""
        svc = self._service(source, fields, "update")
        req = RsUpdate.from_fields(fields)
        argv, conf = list(req.argv), req.conf
        maxtime = req.maxtime  # as MINIX: 0 the default, -1 no limit
        if maxtime == 0:
            maxtime = DEFAULT_MAXTIME_TICKS
        elif maxtime == -1:
            maxtime = NO_LIMIT_TICKS
        new_conf = self.m.conf_for(svc.label, conf, argv or svc.argv) if conf else None
        asked = Asked(argv or None, new_conf, req.state, maxtime / wire.HZ, req.flags)
        if req.flags & UpdateFlag.BATCH:
            position = self.multi.queue(svc, asked)
            return {"endpoint": svc.endpoint, "position": position}
        if self.multi.batch is not None:
            raise RsError(
                Errno.EBUSY,
                "a multi-component update is queued or under way "
                "(sysctl upd_run runs it, upd_stop drops it)",
            )
        self.updater.start(svc, Waiter(source, "update"), asked)
        return None

    def do_clone(self, source: int, fields: Fields) -> Reply:
        svc = self._service(source, fields, "clone")
        svc.want_replica = True
        if svc.replica is None and svc.state is State.UP:
            self.m.make_replica(svc)
        return {"endpoint": svc.replica.endpoint if svc.replica else wire.NONE}

    def do_unclone(self, source: int, fields: Fields) -> Reply:
        svc = self._service(source, fields, "unclone")
        svc.want_replica = False
        if svc.replica is not None:
            self.m.kill(svc.replica.endpoint)
            svc.replica = None
        return {}

    def do_edit(self, source: int, fields: Fields) -> Reply:
        svc = self._service(source, fields, "edit")
        edited = service_from_fields(self.m, svc.label, {**_fields_of(svc), **fields})
        for name in ("argv", "conf", "period", "script", "dev", "max_restarts", "policy", "cold"):
            setattr(svc, name, getattr(edited, name))
        self.m.schedule_ping(svc)
        self.m.events.write("edit", svc.label, changed=sorted(k for k in fields if k != "label"))
        return {}

    def do_fi(self, source: int, fields: Fields) -> Reply:
        """MINIX's do_fi: checked as every request on a service, then the service is
        asked (asynchronously: RS never waits on it) to inject the fault itself;
        the answer is at once, the crash and restart come as events."""
        svc = self._service(source, fields, "inject a fault into")
        number = get_int(fields, "type", 0, max(FiType), int(FiType.CRASH))
        kind = FiType(number)
        if svc.state is not State.UP or svc.current is None:
            raise RsError(Errno.EBUSY, f"{svc.label} is {svc.state.value}, not up")
        self.m.inject_fault(svc, kind)
        return {}

    def do_lookup(self, source: int, fields: Fields) -> Reply:
        label = RsLabel.from_fields(fields).label
        svc = self.m.table.get(label)
        if svc is not None and svc.state in COMING_BACK:
            # A client waits for it rather than giving up (VFS queues the request).
            raise RsError(Errno.EAGAIN, f"service '{label}' is {svc.state.value}")
        if svc is None or svc.current is None or svc.state not in (State.UP, State.UPDATING):
            raise RsError(Errno.ESRCH, f"no service '{label}' is up")
        return {"endpoint": svc.current.endpoint}

    def do_status(self, source: int, fields: Fields) -> Reply:
        return {"services": [svc.status_row() for svc in self.m.table]}

    def do_sysctl(self, source: int, fields: Fields) -> Reply:
        """MINIX's do_sysctl: the update queue (run, start, stop) and two reports.
        The reports are open to all; running or stopping the queue needs the
        right to update every service in it."""
        kind = RsSysctl.from_fields(fields).subtype
        if kind is SysctlType.SRV_STATUS:
            return {
                "services": [svc.status_row() for svc in self.m.table],
                "instances": self._instances(),
            }
        if kind is SysctlType.UPD_STATUS:
            return self.multi.status()
        batch = self.multi.batch
        for label in batch.labels if batch is not None else []:
            self._check_control(source, label, f"sysctl {kind.option}")
        if kind is SysctlType.UPD_STOP:
            self.multi.stop()
            return {}
        waiter = Waiter(source, "sysctl upd_run") if kind is SysctlType.UPD_RUN else None
        self.multi.run(waiter)
        return None if waiter is not None else {}

    def _instances(self) -> list[codec.Value]:
        """Every process RS runs for a service, as MINIX's srv_status lists its
        slots: the current one, a replica, the new version of an update."""
        rows: list[codec.Value] = []
        for svc in self.m.table:
            found = [("current", svc.current), ("replica", svc.replica)]
            update = self.updater.updates.get(svc.label)
            if update is not None:
                found.append(("new", update.new))
            for role, inst in found:
                if inst is not None:
                    # a new version's state is its update's phase
                    state = update.phase if role == "new" and update else svc.state.value
                    row: dict[str, codec.Value] = {"label": svc.label, "role": role}
                    row.update(endpoint=inst.endpoint, pid=inst.pid, state=state)
                    rows.append(row)
        return rows


def service_from_fields(m: Manager, label: str, fields: Fields) -> Service:
    """A Service from RS_UP fields (also the boot list's entries), checked
    (RsError EINVAL for a bad field)."""
    try:
        up = RsUp.from_fields(fields)
    except FieldError as exc:
        raise RsError(Errno.EINVAL, str(exc)) from exc
    argv = list(up.argv)
    return Service(
        label=label,
        argv=argv,
        conf=m.conf_for(label, up.conf, argv),
        period=up.period,
        script=up.script,
        dev=up.dev,
        max_restarts=up.restarts,
        policy=up.policy,
        cold=up.cold,
        run=up.run,
    )


def _fields_of(svc: Service) -> Fields:
    return {
        "argv": list(svc.argv),
        "conf": svc.conf,
        "period": svc.period,
        "script": svc.script,
        "dev": svc.dev,
        "restarts": svc.max_restarts,
        "policy": int(svc.policy),
        "cold": svc.cold,
        "run": svc.run,
    }
