"""A restarted RS takes over the services its predecessor ran (beyond MINIX; docs/
services.md, "RS's own death").

The kernel restarts RS at its old endpoint, so every service's parent is this RS
again and the kernel's exit records reach it. From the table the old RS kept
(:mod:`hwl.servers.rs.keep`), the new one handles the exits held meanwhile as any
death, adopts every kept instance the kernel still runs (no restart, restart count
kept), restarts the ones that died unseen, settles what was half done (an init, a
stop, a backoff, a recovery script) and kills the processes that are nobody's
current instance now. What a caller relies on: nothing that runs is restarted.
"""

from __future__ import annotations

import logging

from hwl.ipc.client import IpcError
from hwl.ipc.kcalls import ExitInfo
from hwl.proto import wire
from hwl.proto.sef import InitType
from hwl.servers.rs.keep import Kept
from hwl.servers.rs.manager import Manager
from hwl.servers.rs.table import Instance, Service, State

log = logging.getLogger(__name__)


def adopt(m: Manager, kept: Kept) -> dict[str, list[str]]:
    """Rebuild the table from ``kept`` and the kernel; what became of each service,
    by outcome (adopted, restarted, dropped, down), for the event log."""
    me = m.conn.endpoint
    outcome: dict[str, list[str]] = {"adopted": [], "restarted": [], "dropped": [], "down": []}
    carried: dict[str, Instance] = {}
    for svc in kept.services:
        m.table.add(svc)
        if svc.current is not None:
            carried[svc.label] = svc.current
    for info in m.conn.exits():  # deaths while no RS ran, and the old RS's unread ones
        m.on_exit(info)
    died = set()  # handled as a death just now: by its policy, as any death
    for label, kept_inst in carried.items():
        now = m.table.get(label)
        if now is None or now.current is not kept_inst:
            died.add(label)
    try:
        procs = {int(p["endpoint"]): p for p in m.conn.proctab()}
    except IpcError as exc:  # without the table, every instance counts as alive
        log.error("the kernel's process table: %s; adopting every kept service", exc)
        procs = {inst.endpoint: {"pid": inst.pid, "parent": me} for inst in carried.values()}
    for svc in list(m.table):
        inst = carried.get(svc.label)
        if svc.label in died:  # handled as a death just now, by its policy
            outcome["restarted"].append(svc.label)
            continue
        if inst is None:
            _settle_dead(m, svc, outcome)
            continue
        proc = procs.get(inst.endpoint)
        if proc is None or int(proc.get("parent", wire.NONE)) != me or int(proc["pid"]) <= 0:
            # Gone without an exit record the kernel could hold: a death unseen.
            m.on_exit(ExitInfo(inst.endpoint, inst.pid, svc.label, None, None))
            outcome["restarted"].append(svc.label)
            continue
        inst.pid = int(proc["pid"])  # a live update may have swapped another in
        _settle_running(m, svc, outcome)
    current = {svc.current.endpoint for svc in m.table if svc.current is not None}
    for endpoint, proc in procs.items():
        if int(proc.get("parent", wire.NONE)) == me and endpoint not in current:
            log.info("killing %s (pid %s): nobody's current instance now",
                     proc.get("label"), proc.get("pid"))  # fmt: skip
            m.kill(endpoint)
    for svc in m.table:
        if svc.want_replica and svc.replica is None and svc.state is State.UP:
            m.make_replica(svc)
    return outcome


def _settle_running(m: Manager, svc: Service, outcome: dict[str, list[str]]) -> None:
    """A kept instance that still runs."""
    assert svc.current is not None
    if svc.state is State.STARTING:
        # Its init answer went to the dead RS (or never came): start it over.
        if svc.init_kind is InitType.FRESH:
            m.kill_current(svc)  # its exit is then nobody's
            m.table.remove(svc)
            outcome["dropped"].append(svc.label)
        else:  # its exit restarts it, as a crash during a restart's init does
            m.kill(svc.current.endpoint)
            outcome["restarted"].append(svc.label)
        return
    if svc.state is State.STOPPING or svc.stopping:
        # service down was under way: finish it (its exit forgets the service).
        svc.state = State.STOPPING
        svc.stopping = True
        m.kill(svc.current.endpoint)
        outcome["down"].append(svc.label)
        return
    # UP, or UPDATING (the update's owner died with the old RS: the old version
    # serves on; a new version is killed below as nobody's instance).
    svc.state = State.UP
    m.adopt(svc)
    outcome["adopted"].append(svc.label)


def _settle_dead(m: Manager, svc: Service, outcome: dict[str, list[str]]) -> None:
    """A service the old RS ran no instance of."""
    if svc.state is State.RESTARTING:  # its backoff timer died with the old RS
        m.restart(svc)
        outcome["restarted"].append(svc.label)
    elif svc.state is State.STARTING:  # spawning had not returned: start it now
        if svc.init_kind is InitType.FRESH:
            m.table.remove(svc)
            outcome["dropped"].append(svc.label)
        else:
            svc.state = State.RESTARTING
            m.restart(svc)
            outcome["restarted"].append(svc.label)
    elif svc.stopping or svc.state is State.STOPPING:
        m.table.remove(svc)
        outcome["down"].append(svc.label)
    # WAITING_SCRIPT: its script (still running) calls service restart; DOWN stays.
