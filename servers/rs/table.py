"""The service table: what RS knows about each service, by label and by endpoint."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum

from hwl.proto import codec, wire
from hwl.proto.rs import Policy
from hwl.proto.sef import FiType, InitType
from hwl.servers.rs.timers import Timer


class State(Enum):
    STARTING = "starting"  # spawned, init not answered yet
    UP = "up"
    RESTARTING = "restarting"  # dead, waiting for its backoff
    WAITING_SCRIPT = "waiting-script"  # dead, its recovery script decides
    UPDATING = "updating"
    STOPPING = "stopping"  # down or refresh asked; waiting for the exit
    DOWN = "down"  # gave up or failed init


@dataclass
class Waiter:
    """A ``service`` request RS answers later (up, update, restart, down)."""

    endpoint: int
    request: str


@dataclass
class Instance:
    """One process running (or about to run) a service's program."""

    endpoint: int
    pid: int


@dataclass
class Service:
    label: str
    argv: list[str]
    conf: str  # the system.conf entry text handed to the kernel
    period: int = 0  # heartbeat period in ticks; 0: no pings
    script: str = ""
    dev: str = ""
    max_restarts: int = -1
    policy: Policy = Policy.RESET
    cold: bool = False
    run: bool = False  # service run: never restarted; its death takes it out of the table

    state: State = State.STARTING
    current: Instance | None = None
    restarts: int = 0
    last_alive: float = 0.0  # monotonic time of the last heartbeat answer
    pings_sent: tuple[float, float] = (0.0, 0.0)  # monotonic times of the last two pings
    ping_timer: Timer | None = None
    init_timer: Timer | None = None
    kill_timer: Timer | None = None
    backoff_timer: Timer | None = None
    no_ping_reply: bool = False
    refreshing: bool = False
    stopping: bool = False  # down asked: do not restart
    waiters: list[Waiter] = field(default_factory=list)
    replica: Instance | None = None  # clone: spawned, waiting for an init
    want_replica: bool = False
    init_kind: InitType = InitType.FRESH  # what the pending init is for
    last_endpoint: int = wire.NONE  # of the instance that died, for the restart policy
    fi_pending: FiType | None = None  # a fault asked for (service fi) that ends the process

    @property
    def endpoint(self) -> int:
        return self.current.endpoint if self.current else wire.NONE

    @property
    def pid(self) -> int:
        return self.current.pid if self.current else -1

    def status_row(self) -> dict[str, codec.Value]:
        since = time.monotonic() - self.last_alive if self.last_alive else -1.0
        return {
            "label": self.label,
            "endpoint": self.endpoint,
            "pid": self.pid,
            "restarts": self.restarts,
            "period": self.period,
            "last_heartbeat": round(since, 3) if self.period else -1.0,
            "state": self.state.value,
            "policy": self.policy.name.lower(),
            "flags": ",".join(self.flags()),
            "program": " ".join(self.argv),
        }

    def flags(self) -> list[str]:
        """What sets this service apart, as ``service status`` shows it."""
        marks = {
            "run": self.run,  # never restarted
            "cold": self.cold,  # started from a fresh interpreter
            "script": bool(self.script),  # a recovery script decides
            "clone": self.want_replica,  # a warm replica is kept
            "fi": self.fi_pending is not None,  # a fault injection is under way
        }
        return [name for name, on in marks.items() if on]


class ServiceTable:
    def __init__(self) -> None:
        self._by_label: dict[str, Service] = {}

    def add(self, svc: Service) -> None:
        self._by_label[svc.label] = svc

    def remove(self, svc: Service) -> None:
        self._by_label.pop(svc.label, None)

    def get(self, label: str) -> Service | None:
        return self._by_label.get(label)

    def by_endpoint(self, endpoint: int) -> Service | None:
        for svc in self._by_label.values():
            if svc.current is not None and svc.current.endpoint == endpoint:
                return svc
        return None

    def __iter__(self) -> Iterator[Service]:
        return iter(list(self._by_label.values()))
