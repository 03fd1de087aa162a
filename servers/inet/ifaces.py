"""INET's interfaces: one per NIC driver label, each a :class:`Port` to the driver
and an interface of the stack, followed through driver crashes.

Configured from arguments ``if=LABEL:ADDRESS/PREFIX[,gw=GATEWAY]``. The stack's
interface is made when the driver first answers INIT (it gives the MAC); from
then on it stays, whatever the driver does: while the driver is down, frames the
stack sends wait in the port (bounded) and sockets wait with them; nothing fails.

Recovery, lwip's model: DS announces each incarnation (``drv.net.<label>``); the
:class:`DriverTracker` turns that into an event, and INET takes the new endpoint,
opens the port (INIT, CONF, a RECV; the SENDs the dead driver never confirmed go
again, first and in order), and re-enables the interface, which announces its
address (gratuitous ARP). The ARP cache, routes and sockets are kept. A port that
finds the driver dead when posting marks it down and INET retries on its alarm.

See docs/inet.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hwl.ipc.client import Connection, Message
from hwl.proto import codec
from hwl.servers.inet import ipv4
from hwl.servers.inet.port import Port
from hwl.servers.inet.stack import Stack
from hwl.system.proctab import ProcTable
from hwl.system.recovery import DriverTracker, TrackedDriver

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """An ``if=`` argument INET cannot use."""


@dataclass(frozen=True)
class IfConfig:
    label: str
    config: ipv4.Config
    prefix: int


def parse_if(arg: str) -> IfConfig:
    """``if=e1000:10.0.2.15/24,gw=10.0.2.2`` (the ``if=`` optional)."""
    text = arg.removeprefix("if=")
    label, sep, rest = text.partition(":")
    if not sep or not label:
        raise ConfigError(f"{arg!r}: expected if=LABEL:ADDRESS/PREFIX[,gw=GATEWAY]")
    parts = rest.split(",")
    addr, slash, prefix_text = parts[0].partition("/")
    try:
        prefix = int(prefix_text) if slash else 24
        if not 0 < prefix <= 32:
            raise ValueError(f"prefix {prefix}")
        address = ipv4.address(addr)
        gateway = None
        for opt in parts[1:]:
            key, _, value = opt.partition("=")
            if key != "gw":
                raise ValueError(f"unknown option {key!r}")
            gateway = ipv4.address(value)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{arg!r}: {exc}") from None
    mask = ((0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF).to_bytes(4, "big")
    return IfConfig(label, ipv4.Config(address, mask, gateway), prefix)


@dataclass
class NicDriver(TrackedDriver[None]):
    """A NIC driver as the tracker follows it (nothing waits in ``pending``: the
    port keeps the frames)."""


@dataclass
class Iface:
    cfg: IfConfig
    port: Port
    driver: NicDriver
    made: bool = False  # the stack has the interface (the driver answered INIT once)
    retry_at: float | None = None  # when to try the driver again while it is down
    restarts: int = 0  # incarnations opened after the first
    last_open: float = 0.0
    history: list[str] = field(default_factory=list)


def _to(deliver: Callable[[str, list[bytes]], None], name: str) -> Callable[[list[bytes]], None]:
    return lambda frames: deliver(name, frames)


class Ifaces:
    """The interfaces over ``stack``; received frames go to ``deliver(ifname, frames)``."""

    def __init__(
        self,
        conn: Connection,
        stack: Stack,
        configs: list[IfConfig],
        tracker: DriverTracker[NicDriver],
        deliver: Callable[[str, list[bytes]], None],
    ) -> None:
        self.conn = conn
        self.stack = stack
        self.tracker = tracker
        self.ifaces: dict[str, Iface] = {}
        for cfg in configs:
            port = Port(conn, cfg.label, _to(deliver, cfg.label))
            self.ifaces[cfg.label] = Iface(cfg, port, tracker.track(cfg.label))

    def local(self, addr: bytes) -> bool:
        return any(i.cfg.config.address == addr for i in self.ifaces.values())

    # ------------------------------------------------------------------ drivers
    def start(self, now: float) -> None:
        """Open every driver that is up (the others are retried on the alarm)."""
        for iface in self.ifaces.values():
            self.open(iface, None, now)

    def open(self, iface: Iface, endpoint: int | None, now: float) -> bool:
        """Open the port on ``endpoint`` (None: look the label up); on failure the
        driver is marked down and retried at ``retry_at``."""
        label = iface.cfg.label
        iface.port.down()  # an earlier incarnation's session is over
        try:
            if endpoint is None:
                iface.driver.endpoint = None
                endpoint = self.tracker.endpoint(label)
            card = iface.port.open(endpoint)
        except Exception as exc:  # RS does not list it yet, or it died again
            self.tracker.mark_down(iface.driver, str(exc))
            iface.retry_at = now + self.tracker.retry_delay(iface.driver)
            return False
        iface.driver.up, iface.driver.endpoint, iface.retry_at = True, endpoint, None
        if iface.made:
            iface.restarts += 1
            self.stack.enable(label, now)  # gratuitous ARP; the cache and routes stay
            if self.stack.interface(label).mac != card.hwaddr:
                self.stack.interfaces[label].mac = card.hwaddr
            note = f"re-opened at endpoint {endpoint} (incarnation {iface.restarts + 1})"
        else:
            self.stack.add_interface(label, card.hwaddr, iface.cfg.config, now)
            iface.made = True
            note = f"opened at endpoint {endpoint}, {card.name} {card.hwaddr.hex(':')}"
        iface.last_open = time.monotonic()
        iface.history = [*iface.history[-7:], note]
        log.info("interface %s %s", label, note)
        return True

    def handle(self, m_source: int, m: Message) -> bool:
        """Give a driver's message to its port; False if no port takes it."""
        for iface in self.ifaces.values():
            if iface.port.up and iface.port.endpoint == m_source:
                iface.port.handle(m)
                self._check_down(iface, time.monotonic())
                return True
        return False

    def send(self, out: list[tuple[str, bytes]], now: float) -> None:
        """Hand the stack's frames to their ports (kept there while a driver is down)."""
        by_if: dict[str, list[bytes]] = {}
        for name, frame in out:
            by_if.setdefault(name, []).append(frame)
        for name, frames in by_if.items():
            iface = self.ifaces.get(name)
            if iface is not None:
                iface.port.send(frames)
                self._check_down(iface, now)

    def _check_down(self, iface: Iface, now: float) -> None:
        """A post that failed took the port down: mark the driver and retry."""
        if not iface.port.up and iface.driver.up:
            self.tracker.mark_down(iface.driver, "a request could not be posted")
            iface.retry_at = now + self.tracker.retry_delay(iface.driver)

    def on_ds_notify(self, now: float) -> None:
        """DS changed: open the announced incarnations."""
        for event in self.tracker.on_ds_notify(resolve=True):
            iface = self.ifaces.get(event.label)
            if iface is None:
                continue
            if event.endpoint is None:
                self.tracker.mark_down(iface.driver, "announced but not listed by RS yet")
                iface.retry_at = now + self.tracker.retry_delay(iface.driver)
            elif self._opened_already(iface, event.endpoint):
                log.info("interface %s: the announced incarnation is the one open", iface.cfg.label)
            else:
                self.open(iface, event.endpoint, now)

    def _opened_already(self, iface: Iface, endpoint: int) -> bool:
        """Whether the port is open on this very incarnation (a retry found it before
        DS's notify was read): same endpoint, and its process is the one INIT named."""
        port = iface.port
        if not port.up or port.endpoint != endpoint or port.gen is None:
            return False
        procs = ProcTable(self.conn, log).refresh()
        proc = procs.get(endpoint) if procs is not None else None
        return proc is not None and proc.pid == port.gen

    def retry(self, now: float) -> None:
        for iface in self.ifaces.values():
            if iface.retry_at is not None and iface.retry_at <= now:
                self.open(iface, None, now)

    def deadline(self) -> float | None:
        times = [i.retry_at for i in self.ifaces.values() if i.retry_at is not None]
        return min(times) if times else None

    # ------------------------------------------------------------------ status
    def status(self) -> list[codec.Value]:
        rows: list[codec.Value] = []
        for label, iface in self.ifaces.items():
            cfg, port = iface.cfg.config, iface.port
            rows.append({
                "name": label,
                "address": f"{ipv4.dotted(cfg.address)}/{iface.cfg.prefix}",
                "gateway": ipv4.dotted(cfg.gateway) if cfg.gateway else "",
                "mac": port.card.hwaddr.hex(":") if port.card else "",
                "driver": "up" if port.up else "down",
                "endpoint": port.endpoint,
                "link": port.link,
                "opens": port.stats.opens,
                "restarts": iface.restarts,
                "sends": port.stats.sends,
                "confirmed": port.stats.confirmed,
                "received": port.stats.received,
                "stale": port.stats.stale,
                "resent": port.stats.resent,
                "unconfirmed": port.unconfirmed,
                "dropped": port.stats.dropped,
                "history": list(iface.history),
            })  # fmt: skip
        return rows
