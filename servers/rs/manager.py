"""Starting, watching, stopping and restarting services (MINIX's rs/manager.c).

Every service is a process the kernel spawns for RS (from its warm fork server
unless the service asks for a cold start). A new process blocks in
``sef.startup`` until RS sends it ``SEF_INIT``; its answer (``RS_INIT``) makes
it up. RS never blocks on a service: it sends asynchronously and reads answers
in its main loop.

Restart rules, as MINIX's: the first unexpected death restarts at once; the
n-th waits 2^n backoff units (a unit is 1 s by default), at most 30 units. A
service with a recovery script is not restarted by RS: the script is run as
``script label reason repetition`` (reason: terminated, no-heartbeat, or restart
for a refresh) and may call ``service restart LABEL``.
The restart policy decides the endpoint: reset gives a new one, restart keeps it.
A service started with ``service run`` is never restarted: its death takes it
out of the table. ``service fi`` asks a service to inject a fault into itself
(MINIX's RS_FI_CRASH and hwl's other kinds); a death it causes is logged as a
crash with the reason "fault injection" and recovered by the service's policy.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hwl.config import SystemConf, SystemConfError, parse
from hwl.errors import Refusal
from hwl.ipc.client import Connection, IpcError
from hwl.ipc.kcalls import ExitInfo
from hwl.proto import codec, wire
from hwl.proto import ds as dsp
from hwl.proto import sef as sefp
from hwl.proto.errno import Errno, errno_of
from hwl.proto.rs import Policy
from hwl.proto.sef import FI_CRASH_STATUS, FiType, InitType
from hwl.servers.rs.events import EventLog
from hwl.servers.rs.table import Instance, Service, ServiceTable, State, Waiter
from hwl.servers.rs.timers import Timers
from hwl.system.rs import default_label

log = logging.getLogger(__name__)

MAX_BACKOFF_UNITS = 30
STOP_GRACE_S = 1.0  # SIGTERM, then SIGKILL after this long
SCRIPT_REAP_S = 0.2  # how often finished recovery scripts are collected


class RsError(Refusal):
    """A request RS refuses: the errno and why, for the reply."""


def how_it_ended(info: ExitInfo) -> str:
    """An exit as events and errors tell it: "signal N" or "status N" (or, for a
    death a restarted RS found but nobody reported, "unseen")."""
    if info.signal is None and info.status is None:
        return "unseen"
    return f"signal {info.signal}" if info.signal else f"status {info.status}"


def default_conf(label: str) -> str:
    """The entry for a service system.conf does not list: basic calls, ipc ALL_SYS."""
    return f"service {label}\n{{\n}};\n"


class Manager:
    """RS's state and the operations on services; the loop and requests call in."""

    def __init__(
        self,
        conn: Connection,
        run_dir: Path,
        system_conf: SystemConf,
        *,
        backoff_unit: float = 1.0,
        init_timeout: float = 10.0,
    ) -> None:
        self.conn = conn
        self.run_dir = run_dir
        self.system_conf = system_conf
        self.backoff_unit = backoff_unit
        self.init_timeout = init_timeout
        self.table = ServiceTable()
        self.timers = Timers(conn)
        self.events = EventLog(run_dir / "events.jsonl")
        self.shutting_down = False
        self.scripts: list[subprocess.Popen[bytes]] = []
        # Instances that are not a service's current one: live-update newcomers
        # and old versions, by endpoint; the update module owns them.
        self.on_foreign_exit: Callable[[ExitInfo], bool] = lambda info: False
        self.on_foreign_init: Callable[[int, int], bool] = lambda source, result: False
        self.on_updating_died: Callable[[Service], None] = lambda svc: None

    # ------------------------------------------------------------- config
    def conf_for(self, label: str, text: str = "", argv: list[str] | None = None) -> str:
        """The system.conf entry for a new service: the text given (checked), the
        stock file's entry for the label, else the entry for the program's name (as
        MINIX finds an instance's entry: at_wini1 runs hwl.drivers.at_wini, so it gets
        at_wini's privileges), else a default one."""
        if text:
            try:
                parsed = parse(text, f"<config of {label}>")
            except SystemConfError as exc:
                raise RsError(Errno.EINVAL, str(exc)) from exc
            if len(parsed) != 1:
                raise RsError(Errno.EINVAL, f"the config must hold one entry, not {len(parsed)}")
            entry = next(iter(parsed))
            if entry.label != label:
                # The entry's privileges under the service's label.
                return text.replace(f"service {entry.label}", f"service {label}", 1)
            return text
        stock = self.system_conf.get(label)
        if stock is None and argv:
            program = self.system_conf.get(default_label(argv))
            if program is not None:
                return program.to_text().replace(f"service {program.label}", f"service {label}", 1)
        return stock.to_text() if stock is not None else default_conf(label)

    # ------------------------------------------------------------ spawning
    def spawn(
        self,
        svc: Service,
        reuse: int | None = None,
        *,
        argv: list[str] | None = None,
        conf: str | None = None,
    ) -> Instance:
        """A new process for ``svc`` (or, for a live update, another program)."""
        env = {"HWL_RUN_DIR": str(self.run_dir), "HWL_SERVICE_LABEL": svc.label}
        try:
            endpoint, pid = self.conn.spawn(
                argv or svc.argv,
                svc.label,
                conf=conf or svc.conf,
                env=env,
                endpoint=reuse,
                cold=svc.cold,
            )
        except IpcError as exc:
            raise RsError(exc.errno, f"cannot start {svc.label}: {exc.detail or exc}") from exc
        return Instance(endpoint, pid)

    def send_init(
        self,
        endpoint: int,
        kind: InitType,
        restarts: int,
        *,
        flags: int = 0,
        saved: bytes = b"",
        as_endpoint: int | None = None,
    ) -> None:
        fields: dict[str, codec.Value] = {
            "type": int(kind),
            "flags": flags,
            "restarts": restarts,
            "endpoint": endpoint if as_endpoint is None else as_endpoint,
        }
        if saved:
            fields["saved"] = saved
        self.conn.senda(endpoint, sefp.SEF_INIT, fields)

    def start(self, svc: Service, kind: InitType, reuse: int | None = None) -> None:
        """Spawn the service's program and ask it to initialise."""
        svc.current = self.spawn(svc, reuse)
        self._init_instance(svc, kind)

    def _init_instance(self, svc: Service, kind: InitType) -> None:
        assert svc.current is not None
        svc.state = State.STARTING
        svc.init_kind = kind
        svc.no_ping_reply = False
        svc.refreshing = False
        self.send_init(svc.current.endpoint, kind, svc.restarts)
        svc.init_timer = self.timers.after(self.init_timeout, lambda: self._init_timeout(svc))

    def _init_timeout(self, svc: Service) -> None:
        if svc.state is not State.STARTING or svc.current is None:
            return
        log.error("%s did not answer its init within %.1f s", svc.label, self.init_timeout)
        self._init_failed(svc, Errno.EINTR, "init timed out")

    def init_done(self, source: int, result: int) -> None:
        """A service answered RS_INIT."""
        svc = self.table.by_endpoint(source)
        if svc is None or svc.state is not State.STARTING:
            if not self.on_foreign_init(source, result):
                log.warning("RS_INIT from %s, which is not starting", wire.endpoint_name(source))
            return
        if svc.init_timer:
            svc.init_timer.cancel()
        if result != 0:
            self._init_failed(svc, errno_of(result), "init failed")
            return
        svc.state = State.UP
        svc.last_alive = time.monotonic()
        assert svc.current is not None
        self.events.write(
            "up" if svc.init_kind is InitType.FRESH else "restart",
            svc.label,
            endpoint=svc.current.endpoint,
            pid=svc.current.pid,
            restarts=svc.restarts,
        )
        if svc.label == "ds":  # a new DS knows nobody: tell it every label
            for other in self.table:
                self.publish_label(other)
        else:
            self.publish_label(svc)
        self.schedule_ping(svc)
        self.answer_waiters(svc, 0, {"endpoint": svc.current.endpoint})
        if svc.want_replica and svc.replica is None:
            self.make_replica(svc)

    def _init_failed(self, svc: Service, errno: Errno, why: str) -> None:
        self.events.write("init-failed", svc.label, errno=errno.name, reason=why)
        fresh = svc.init_kind is InitType.FRESH
        self.kill_current(svc)
        if fresh:  # service up / boot: the service does not come up
            self._forget(svc, -errno, {"error": f"{svc.label}: {why} ({errno.name})"})
        else:  # a restart that did not take: count it and try again later
            self.schedule_restart(svc, "init-failed")

    def kill_current(self, svc: Service) -> None:
        """Kill the running instance; its exit is then expected, not a crash."""
        if svc.current is None:
            return
        self.kill(svc.current.endpoint)
        svc.current = None

    def kill(self, endpoint: int, signo: int = signal.SIGKILL) -> None:
        try:
            self.conn.kill(endpoint, signo)
        except IpcError as exc:
            log.debug("kill %s: %s", wire.endpoint_name(endpoint), exc)

    # ----------------------------------------------------- fault injection
    def inject_fault(self, svc: Service, kind: FiType) -> None:
        """Ask the service's SEF for the fault (MINIX's fi_service: an asynchronous
        send RS does not wait on); a fault that kills is remembered for its crash."""
        assert svc.current is not None
        current = svc.current
        try:
            self.conn.senda(current.endpoint, sefp.SEF_FI, {"type": int(kind)})
        except IpcError as exc:
            raise RsError(exc.errno, f"cannot reach {svc.label}: {exc.detail or exc}") from exc
        if kind.kills:
            svc.fi_pending = kind
        self.events.write(
            "fi", svc.label, type=kind.option, endpoint=current.endpoint, pid=current.pid
        )

    def _fault_of(self, svc: Service, info: ExitInfo) -> FiType | None:
        """The injected fault this death is the result of, if any (then forgotten)."""
        fault, svc.fi_pending = svc.fi_pending, None
        if fault is None and not info.signal and info.status == FI_CRASH_STATUS:
            fault = FiType.CRASH
        return fault

    # ----------------------------------------------------------- heartbeat
    def schedule_ping(self, svc: Service) -> None:
        if svc.ping_timer:
            svc.ping_timer.cancel()
        if svc.period > 0:
            svc.ping_timer = self.timers.after(svc.period / wire.HZ, lambda: self._ping(svc))

    def _ping(self, svc: Service) -> None:
        if svc.state is not State.UP or svc.current is None:
            return
        # Two pings sent since the last answer, each given a period: a hang. Counted
        # in pings RS sent, not in time, so RS's own stall (stopped, starved) is no
        # service's hang: the answers it has not read yet are to earlier pings.
        if svc.pings_sent[0] > svc.last_alive:
            log.warning("%s missed its heartbeat for two periods: killing it", svc.label)
            self.events.write("heartbeat-missed", svc.label, endpoint=svc.current.endpoint)
            svc.no_ping_reply = True
            self.kill(svc.current.endpoint)
            return
        svc.pings_sent = (svc.pings_sent[1], time.monotonic())
        try:
            self.conn.notify(svc.current.endpoint)
        except IpcError as exc:
            log.debug("ping %s: %s", svc.label, exc)
        self.schedule_ping(svc)

    def adopt(self, svc: Service) -> None:
        """A restarted RS takes over a running instance (servers/rs/adopt.py): up,
        heartbeats from now, its label published again (DS may have missed a change)."""
        assert svc.current is not None
        svc.last_alive = time.monotonic()
        svc.pings_sent = (0.0, 0.0)
        svc.no_ping_reply = svc.refreshing = False
        self.events.write("adopt", svc.label, endpoint=svc.current.endpoint,
                          pid=svc.current.pid, restarts=svc.restarts)  # fmt: skip
        self.publish_label(svc)
        self.schedule_ping(svc)

    def pong(self, source: int) -> None:
        svc = self.table.by_endpoint(source)
        if svc is not None:
            svc.last_alive = time.monotonic()

    # --------------------------------------------------------------- exits
    def on_exit(self, info: ExitInfo) -> None:
        svc = self.table.by_endpoint(info.endpoint)
        if svc is not None and svc.current is not None and svc.current.pid == info.pid:
            self._current_died(svc, info)
            return
        for svc in self.table:
            if svc.replica is not None and svc.replica.pid == info.pid:
                log.warning("the replica of %s died", svc.label)
                svc.replica = None
                return
        if not self.on_foreign_exit(info):
            log.debug("exit of %s (pid %s): not a current service", info.label, info.pid)

    def _current_died(self, svc: Service, info: ExitInfo) -> None:
        svc.current = None
        if svc.label != "ds":
            self.unpublish_label(svc)
        if svc.state is State.UPDATING:
            self.on_updating_died(svc)
        for timer in (svc.ping_timer, svc.init_timer, svc.kill_timer):
            if timer:
                timer.cancel()
        how = how_it_ended(info)
        if svc.stopping:
            self.events.write("down", svc.label, pid=info.pid, how=how)
            self._forget(svc, 0, {})
            return
        if svc.state is State.STARTING and svc.init_kind is InitType.FRESH:
            self.events.write("init-failed", svc.label, pid=info.pid, how=how)
            self._forget(
                svc, -Errno.ERESTART, {"error": f"{svc.label} died during its init ({how})"}
            )
            return
        fault = self._fault_of(svc, info)
        crashed = (info.signal and not svc.refreshing) or fault is not None
        why: dict[str, str] = {}
        if fault is not None:
            why["reason"] = f"fault injection ({fault.option})"
            log.warning("%s crashed (%s): %s", svc.label, how, why["reason"])
        event = "crash" if crashed else "exit"
        self.events.write(event, svc.label, endpoint=info.endpoint, pid=info.pid, how=how, **why)
        if self.shutting_down:
            svc.state = State.DOWN
            return
        if svc.run:  # service run: never restarted
            self.events.write("down", svc.label, pid=info.pid, how=how, reason="not restarted")
            self._forget(svc, 0, {})
            return
        reason = (
            "restart" if svc.refreshing else "no-heartbeat" if svc.no_ping_reply else "terminated"
        )
        if svc.script:
            # MINIX's restart_service: a refresh runs the script too (reason
            # "restart"), after the late reply to the refresh request.
            if svc.refreshing:
                self.answer_waiters(svc, 0, {})
            self.run_script(svc, reason)
            return
        self.schedule_restart(svc, reason, last_endpoint=info.endpoint)

    # ------------------------------------------------------------- restart
    def schedule_restart(self, svc: Service, reason: str, last_endpoint: int | None = None) -> None:
        if svc.max_restarts >= 0 and svc.restarts >= svc.max_restarts:
            self.events.write("gave-up", svc.label, restarts=svc.restarts, reason=reason)
            svc.state = State.DOWN
            return
        if last_endpoint is not None:
            svc.last_endpoint = last_endpoint
        refresh = svc.refreshing
        units = 0 if svc.restarts == 0 or refresh else min(2**svc.restarts, MAX_BACKOFF_UNITS)
        svc.state = State.RESTARTING
        if units == 0:
            self.restart(svc)
        else:
            delay = units * self.backoff_unit
            log.info("%s: restart %d in %.2f s (backoff)", svc.label, svc.restarts + 1, delay)
            svc.backoff_timer = self.timers.after(delay, lambda: self.restart(svc))

    def restart(self, svc: Service) -> None:
        """Bring a dead service back (backoff over, or its script asked)."""
        if svc.state is State.DOWN or self.shutting_down:
            return
        svc.restarts += 1
        try:
            if svc.policy is Policy.RESET and svc.replica is not None:
                svc.current, svc.replica = svc.replica, None
                self._init_instance(svc, InitType.RESTART)
            else:
                reuse = svc.last_endpoint if svc.policy is Policy.RESTART else None
                self.start(svc, InitType.RESTART, reuse=reuse)
        except RsError as exc:
            log.error("restart of %s failed: %s", svc.label, exc.why)
            self.events.write("restart-failed", svc.label, reason=exc.why)
            self.schedule_restart(svc, "restart-failed")

    def run_script(self, svc: Service, reason: str) -> None:
        svc.state = State.WAITING_SCRIPT
        argv = [svc.script, svc.label, reason, str(svc.restarts)]
        env = dict(os.environ, HWL_RUN_DIR=str(self.run_dir))
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.pop(wire.ENV_FD, None)
        out = (self.run_dir / "scripts.log").open("ab")
        try:
            self.scripts.append(
                subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
            )
        except OSError as exc:
            log.error("recovery script of %s: %s", svc.label, exc)
            self.events.write("script-failed", svc.label, reason=str(exc))
            svc.state = State.DOWN
            return
        finally:
            out.close()
        self.events.write("script", svc.label, argv=argv)
        self.timers.after(SCRIPT_REAP_S, self._reap_tick)

    def _reap_tick(self) -> None:
        """Collect finished recovery scripts (no zombies) while any runs."""
        self.reap_scripts()
        if self.scripts:
            self.timers.after(SCRIPT_REAP_S, self._reap_tick)

    # ----------------------------------------------------------- stopping
    def stop(self, svc: Service, *, refresh: bool = False) -> None:
        """SIGTERM (graceful), SIGKILL if it lingers; the exit finishes the job."""
        svc.stopping = not refresh
        svc.refreshing = refresh
        if svc.backoff_timer:
            svc.backoff_timer.cancel()
        if svc.replica is not None and not refresh:
            self.kill(svc.replica.endpoint)
            svc.replica = None
        if svc.current is None:  # already dead (restarting, waiting for a script)
            if refresh:
                self.restart(svc)
            else:
                self.events.write("down", svc.label)
                self._forget(svc, 0, {})
            return
        svc.state = State.STOPPING
        endpoint = svc.current.endpoint
        self.kill(endpoint, signal.SIGTERM)
        svc.kill_timer = self.timers.after(STOP_GRACE_S, lambda: self.kill(endpoint))

    # ------------------------------------------------------------ replicas
    def make_replica(self, svc: Service) -> None:
        """A spawned instance that waits for an init: recovery without a fork."""
        try:
            svc.replica = self.spawn(svc)
        except RsError as exc:
            log.error("clone of %s: %s", svc.label, exc.why)
            return
        self.events.write("clone", svc.label, endpoint=svc.replica.endpoint, pid=svc.replica.pid)

    # ------------------------------------------------------------------ DS
    def publish_label(self, svc: Service) -> None:
        """Tell DS the service's endpoint (asynchronously: RS never waits on DS)."""
        if svc.state is State.UP and svc.current is not None:
            fields: dict[str, codec.Value] = {"key": svc.label, "type": "label"}
            fields.update(value=svc.current.endpoint, flags=int(dsp.DsFlag.OVERWRITE))
            self._tell_ds(dsp.DS_PUBLISH, fields)

    def unpublish_label(self, svc: Service) -> None:
        """The service died: its label (and, in DS, what it owned) goes."""
        self._tell_ds(dsp.DS_DELETE, {"key": svc.label, "type": "label"})

    def _tell_ds(self, m_type: int, fields: dict[str, codec.Value]) -> None:
        ds = self.table.get("ds")
        if ds is None or ds.state is not State.UP or ds.current is None:
            return
        try:
            self.conn.senda(ds.current.endpoint, m_type, fields)
        except IpcError as exc:
            log.warning("DS request %#x for %s: %s", m_type, fields.get("key"), exc)

    # ------------------------------------------------------------- replies
    def reply(self, waiter: Waiter, status: int, fields: dict[str, codec.Value]) -> None:
        try:
            self.conn.sendnb(waiter.endpoint, status, fields)
        except IpcError as exc:
            log.info("%s reply to %s not taken: %s", waiter.request, waiter.endpoint, exc)

    def answer_waiters(self, svc: Service, status: int, fields: dict[str, codec.Value]) -> None:
        waiters, svc.waiters = svc.waiters, []
        for waiter in waiters:
            self.reply(waiter, status, fields)

    def _forget(self, svc: Service, status: int, fields: dict[str, codec.Value]) -> None:
        """The service is down for good: out of the table, its waiters answered."""
        svc.state = State.DOWN
        self.table.remove(svc)
        self.answer_waiters(svc, status, fields)

    def reap_scripts(self) -> None:
        self.scripts = [p for p in self.scripts if p.poll() is None]
