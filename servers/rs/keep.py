"""RS's service table kept in the kernel, so a restarted RS knows its services.

MINIX's RS keeps its table in its own memory; its death is a panic. hwl's kernel
restarts RS, and the new RS reads back what the old one kept with the kernel's
``keep`` call: for every service what ``service up`` gave (program, arguments,
system.conf entry, period, script, policy, restart limit, flags), its restart
count, its state and the instance that ran it (endpoint, pid), and whether the
boot list was done. What lives only for a moment (timers, heartbeat times,
waiting requests, live updates under way) is not kept: the new RS starts those
afresh (servers/rs/adopt.py).

RS saves before each receive, and only when something kept changed: a cheap
tuple of the kept fields is compared first, so a heartbeat answer costs no kernel
call.

See docs/services.md.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from hwl.ipc.client import Connection, IpcError
from hwl.proto import codec, wire
from hwl.proto.rs import Policy
from hwl.proto.sef import InitType
from hwl.servers.rs.table import Instance, Service, ServiceTable, State

log = logging.getLogger(__name__)

VERSION = 1

Snapshot = tuple[object, ...]


def _snapshot(svc: Service) -> Snapshot:
    """What is kept of one service, as a tuple that is cheap to compare."""
    return (
        svc.label,
        tuple(svc.argv),
        svc.conf,
        svc.period,
        svc.script,
        svc.dev,
        svc.max_restarts,
        int(svc.policy),
        svc.cold,
        svc.run,
        svc.state.value,
        svc.endpoint,
        svc.pid,
        svc.restarts,
        svc.want_replica,
        svc.last_endpoint,
        svc.init_kind.value,
        svc.stopping,
    )


_NAMES = (
    "label",
    "argv",
    "conf",
    "period",
    "script",
    "dev",
    "max_restarts",
    "policy",
    "cold",
    "run",
    "state",
    "endpoint",
    "pid",
    "restarts",
    "want_replica",
    "last_endpoint",
    "init_kind",
    "stopping",
)


def encode(snapshots: list[Snapshot], booted: bool) -> bytes:
    services: list[codec.Value] = []
    for snap in snapshots:
        row: dict[str, codec.Value] = {}
        for name, value in zip(_NAMES, snap, strict=True):
            row[name] = list(value) if isinstance(value, tuple) else value  # type: ignore[assignment]
        services.append(row)
    return codec.encode({"version": VERSION, "booted": booted, "services": services})


@dataclass
class Kept:
    """What the previous RS kept: its services (not yet in any table) and whether
    it had finished the boot list."""

    booted: bool
    services: list[Service] = field(default_factory=list)


def decode(data: bytes) -> Kept:
    """The kept table; ValueError if it is not one this RS wrote."""
    try:
        top = codec.decode(data)
    except codec.CodecError as exc:
        raise ValueError(f"the kept table does not decode: {exc}") from exc
    if top.get("version") != VERSION or not isinstance(top.get("services"), list):
        raise ValueError(f"the kept table is not version {VERSION}")
    kept = Kept(booted=bool(top.get("booted")))
    for row in top["services"]:  # type: ignore[union-attr]
        if not isinstance(row, dict):
            raise ValueError("a kept service is not a mapping")
        try:
            kept.services.append(_service(row))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"kept service {row.get('label')!r}: {exc!r}") from exc
    return kept


def _service(row: dict[str, codec.Value]) -> Service:
    argv = row["argv"]
    assert isinstance(argv, list)
    svc = Service(
        label=str(row["label"]),
        argv=[str(a) for a in argv],
        conf=str(row["conf"]),
        period=int(row["period"]),  # type: ignore[arg-type]
        script=str(row["script"]),
        dev=str(row["dev"]),
        max_restarts=int(row["max_restarts"]),  # type: ignore[arg-type]
        policy=Policy(int(row["policy"])),  # type: ignore[arg-type]
        cold=bool(row["cold"]),
        run=bool(row["run"]),
    )
    svc.state = State(str(row["state"]))
    endpoint, pid = int(row["endpoint"]), int(row["pid"])  # type: ignore[arg-type]
    if endpoint != wire.NONE and pid > 0:
        svc.current = Instance(endpoint, pid)
    svc.restarts = int(row["restarts"])  # type: ignore[arg-type]
    svc.want_replica = bool(row["want_replica"])
    svc.last_endpoint = int(row["last_endpoint"])  # type: ignore[arg-type]
    svc.init_kind = InitType(int(row["init_kind"]))  # type: ignore[arg-type]
    svc.stopping = bool(row["stopping"])
    return svc


class TableKeeper:
    """Saves the table to the kernel when it changed; reads it back at start."""

    def __init__(self, conn: Connection, table: ServiceTable) -> None:
        self.conn = conn
        self.table = table
        self.booted = False
        self._last: tuple[bool, list[Snapshot]] | None = None
        self.saves = 0
        self.save_seconds = 0.0  # spent encoding and keeping: the cost of a change

    def load(self) -> Kept | None:
        """What an RS before this one kept (None: this RS is the first)."""
        data = self.conn.keep_get()
        if not data:
            return None
        return decode(data)

    def save(self) -> None:
        """Keep the table if it changed since the last save."""
        now = (self.booted, [_snapshot(svc) for svc in self.table])
        if now == self._last:
            return
        started = time.perf_counter()
        try:
            self.conn.keep_put(encode(now[1], now[0]))
        except IpcError as exc:
            log.error("the service table could not be kept: %s", exc)
            return
        self._last = now
        self.saves += 1
        self.save_seconds += time.perf_counter() - started
