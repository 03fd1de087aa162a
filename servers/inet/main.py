"""inet: the TCP/IP server. Sockets for user processes over the NIC drivers.

Run by RS (``[hwl-service "inet"]`` in a profile, entry ``service inet`` in
system.conf) with one ``if=LABEL:ADDRESS/PREFIX[,gw=GATEWAY]`` argument per NIC
driver. Protocol: :mod:`hwl.proto.inet`; client: :mod:`hwl.net`; design:
docs/inet.md. The roles, each a module:

- :mod:`hwl.servers.inet.stack` (and the layers beside it): pure, frames in and out;
- :mod:`hwl.servers.inet.ifaces`: the drivers (a :class:`~hwl.servers.inet.port.Port`
  each) and their recovery;
- :mod:`hwl.servers.inet.sockets`: the clients' sockets and the late answers;
- this module: SEF, the receive loop, the alarm.

One loop: each message is a client's request, a driver's answer (its frames go
through the stack), DS's notify (a driver incarnation) or the CLOCK's (timers).
After each, the stack's output goes to the ports, waiting requests are answered
when they can be, and the alarm is set for the earliest deadline of the stack,
the waiting requests, a driver retry and the reaping of dead clients.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from functools import partial
from typing import Final

from hwl.ipc.client import Connection, IpcError, Message
from hwl.proto import codec, wire
from hwl.proto import inet as ip
from hwl.proto.errno import Errno
from hwl.servers.inet import ipv4
from hwl.servers.inet.ifaces import ConfigError, Ifaces, IfConfig, NicDriver, parse_if
from hwl.servers.inet.sockets import Sockets
from hwl.servers.inet.stack import Stack, StackError
from hwl.servers.inet.tcp.connection import TcpConfig
from hwl.servers.inet.tcp.tcp import Tcp
from hwl.system import sef
from hwl.system.ds import Ds, DsError
from hwl.system.proctab import ProcTable
from hwl.system.recovery import DriverTracker
from hwl.system.serve import Answering

log = logging.getLogger(__name__)
_GUARD = Answering(log, malformed=())
_ANSWERING = Answering(log, malformed_text=lambda name, exc: f"malformed {name}: {exc}")

Fields = dict[str, codec.Value]
REAP_SECONDS: Final = 2.0
#: The alarm never waits longer than this (ARP expiry and such need no precision).
MAX_SLEEP: Final = 5.0
#: TCP as Linux tunes it where RFC 6298 leaves room: a 200 ms RTO floor, so a segment
#: lost while a NIC driver restarts costs a fifth of a second, not a whole one.
TCP_CONFIG: Final = TcpConfig(rto_min=0.2)


class Inet:
    def __init__(self, configs: list[IfConfig], tcp_config: TcpConfig = TCP_CONFIG) -> None:
        self.configs = configs
        self.stack = Stack()
        self.tcp = Tcp(self.stack.ip_output, self.stack.source_for, tcp_config)
        self.stack.tcp_input = self.tcp.input
        self.stack.tcp_unreachable = self.tcp.unreachable
        self.ifaces: Ifaces | None = None
        self.sockets = Sockets(self.stack, self.tcp, self._reply, self._local)
        self.ds: Ds | None = None
        self.alarm_at: float | None = None
        self.reap_at: float | None = None
        self.requests = 0
        self.out: list[tuple[str, bytes]] = []  # frames the stack handed back, to send
        self.refused = 0

    @property
    def conn(self) -> Connection:
        return sef.connection()

    def _local(self, addr: bytes) -> bool:
        return self.ifaces is not None and self.ifaces.local(addr)

    @staticmethod
    def _reply(dest: int, status: int, fields: Fields) -> None:
        sef.reply(dest, status, fields)

    # ------------------------------------------------------------------ init
    def init(self, info: sef.InitInfo) -> int:
        conn = self.conn
        try:
            self.ds = Ds.find(conn, timeout=10)
            tracker = DriverTracker(conn, self.ds, "net", NicDriver)
            tracker.subscribe()
        except DsError as exc:
            log.error("cannot subscribe to driver-up events: %s", exc)
            return int(exc.errno)
        self.ifaces = Ifaces(conn, self.stack, self.configs, tracker, self._frames)
        now = time.monotonic()
        self.ifaces.start(now)
        self.flush(now)
        names = ", ".join(f"{c.label} {ipv4.dotted(c.config.address)}" for c in self.configs)
        log.info("inet up (%s): %s", info.type.name, names)
        return 0

    def _frames(self, ifname: str, frames: list[bytes]) -> None:
        now = time.monotonic()
        for frame in frames:
            self.out += self.stack.input(ifname, frame, now)  # sent by flush()

    # ------------------------------------------------------------------ loop
    def serve(self) -> None:
        while True:
            m = sef.receive()
            # A bug must not take the network down; a request it hit is answered.
            failed = _GUARD.answer(partial(self.dispatch, m), f"message {m.m_type:#x}", m.source)
            if failed is not None and not m.is_notify and ip.is_request(m.m_type):
                sef.reply(m.source, *failed)
            self.flush(time.monotonic())

    def dispatch(self, m: Message) -> None:
        assert self.ifaces is not None
        now = time.monotonic()
        if m.is_notify:
            if m.source == wire.CLOCK:
                self.alarm_at = None
                self.on_alarm(now)
            elif self.ds is not None and m.source == self.ds.endpoint:
                self.ifaces.on_ds_notify(now)
            return
        if self.ifaces.handle(m.source, m):
            return
        if m.m_type <= 0:
            return  # a stray status or a late driver message: never answered
        self.request(m, now)

    def on_alarm(self, now: float) -> None:
        assert self.ifaces is not None
        self.out += self.stack.tick(now)  # sent by flush()
        self.tcp.tick(now)
        self.ifaces.retry(now)
        if self.reap_at is not None and self.reap_at <= now:
            self.reap_at = None
            self.reap()

    def flush(self, now: float) -> None:
        """After each message: frames out, waiting requests answered, the alarm set."""
        if self.ifaces is None:
            return
        if (due := self.stack.deadline()) is not None and due <= now:
            self.out += self.stack.tick(now)
        if (due := self.tcp.next_deadline()) is not None and due <= now:
            self.tcp.tick(now)
        out, self.out = self.out + self.stack.take_output(), []
        self.ifaces.send(out, now)
        self.sockets.wake(now)
        if self.sockets.table and self.reap_at is None:
            self.reap_at = now + REAP_SECONDS
        self.arm(now)

    def arm(self, now: float) -> None:
        assert self.ifaces is not None
        times = [t for t in (self.stack.deadline(), self.tcp.next_deadline(),
                             self.sockets.deadline(), self.ifaces.deadline(), self.reap_at)
                 if t is not None]  # fmt: skip
        at = min(times) if times else now + MAX_SLEEP
        at = min(at, now + MAX_SLEEP)
        if self.alarm_at is not None and now < self.alarm_at <= at:
            return  # an earlier alarm is set: it re-arms when it rings
        try:
            self.conn.setalarm(seconds=max(0.001, at - now))
            self.alarm_at = at
        except IpcError as exc:
            log.warning("setalarm: %s", exc)

    def reap(self) -> None:
        """Close the sockets of clients that ended without closing them."""
        if not self.sockets.owners():
            return
        procs = ProcTable(self.conn, log).refresh()
        if procs is not None:
            n = self.sockets.reap(set(procs), time.monotonic())
            if n:
                log.info("closed the sockets of %d clients that have ended", n)

    # ------------------------------------------------------------------ requests
    def request(self, m: Message, now: float) -> None:
        self.requests += 1
        if not ip.is_request(m.m_type):
            self.refused += 1
            sef.reply(m.source, -int(Errno.ENOSYS), {"error": f"unknown request {m.m_type:#x}"})
            return
        answer = _ANSWERING.answer(
            lambda: [self.execute(m.m_type, m.source, ip.parse(m.m_type, m.fields), now)],
            ip.REQUEST_NAMES[m.m_type],
            m.source,
        )
        if not isinstance(answer, list):  # refused, malformed or failed
            self.refused += 1
            sef.reply(m.source, *answer)
        elif answer[0] is not None:  # None: it waits and is answered late
            sef.reply(m.source, *answer[0])

    def execute(
        self, m_type: int, client: int, req: ip.Request, now: float
    ) -> tuple[int, Fields] | None:
        """The answer to ``req`` now, or None: it waits and is answered late."""
        s = self.sockets
        if isinstance(req, ip.Socket):
            return s.socket(client, req), {}
        if isinstance(req, ip.Address):
            if m_type == ip.BIND:
                return 0, s.bind(client, req)
            return s.connect(client, req, now)
        if isinstance(req, ip.SendTo):
            return s.sendto(client, req, now)
        if isinstance(req, ip.RecvFrom):
            return s.recvfrom(client, req, now)
        if isinstance(req, ip.SockOpt):
            return 0, {"value": s.sockopt(client, req, now)}
        if isinstance(req, ip.Listen):
            s.listen(client, req)
            return 0, {}
        if isinstance(req, ip.Accept):
            return s.accept(client, req, now)
        if isinstance(req, ip.Shutdown):
            s.shutdown(client, req, now)
            return 0, {}
        if isinstance(req, ip.Ping):
            s.ping(client, req, now)
            return None
        if isinstance(req, ip.IfStatus):
            return 0, self.status()
        return self.on_sock(m_type, client, req.sock, now)

    def on_sock(self, m_type: int, client: int, ident: int, now: float) -> tuple[int, Fields]:
        s = self.sockets
        if m_type == ip.CANCEL:
            cancelled = s.cancel(client, ident) if ident in s.table else 0
            return 0, {"cancelled": cancelled + s.cancel_pings(client)}
        if m_type == ip.CLOSE:
            s.close(client, ident, now)
            return 0, {}
        if m_type == ip.GETSOCKNAME:
            return 0, s.name(s.get(client, ident))
        return 0, s.peername(client, ident)  # GETPEERNAME

    def tcp_counters(self) -> dict[str, codec.Value]:
        """TCP's counters: the closed connections' (kept by Tcp) and the live ones'."""
        total: dict[str, codec.Value] = dict(self.tcp.counters)
        for conn in self.tcp.conns.values():
            for name, n in conn.counters.items():
                total[name] = int(total.get(name, 0) or 0) + n  # type: ignore[arg-type]
        return total

    def status(self) -> Fields:
        assert self.ifaces is not None
        try:
            counters: codec.Value = self.stack.counters()  # type: ignore[assignment]
        except StackError:
            counters = {}
        return {
            "interfaces": self.ifaces.status(),
            "counters": counters,
            "tcp": self.tcp_counters(),
            "tcp_connections": len(self.tcp.conns),
            "sockets": len(self.sockets.table),
            "requests": self.requests,
            "refused": self.refused,
        }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="inet")
    p.add_argument("interfaces", nargs="*", metavar="if=LABEL:ADDRESS/PREFIX[,gw=GATEWAY]")
    p.add_argument("--verbose", action="store_true")
    p.add_argument(
        "--tcp-r2",
        type=float,
        default=TCP_CONFIG.r2,
        metavar="SECONDS",
        help="abort a connection that made no progress this long (RFC 1122 R2)",
    )
    p.add_argument("--tcp-msl", type=float, default=TCP_CONFIG.msl, metavar="SECONDS",
                   help="TIME_WAIT lasts twice this")  # fmt: skip
    args = p.parse_args(argv)
    if not 0 < args.tcp_r2 <= 3600 or not 0 <= args.tcp_msl <= 600:
        p.error(f"--tcp-r2 {args.tcp_r2} or --tcp-msl {args.tcp_msl} out of range")
    if args.verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    try:
        configs = [parse_if(a) for a in args.interfaces]
    except ConfigError as exc:
        p.error(str(exc))
    server = Inet(configs, dataclasses.replace(TCP_CONFIG, r2=args.tcp_r2, msl=args.tcp_msl))
    sef.setcb_init_fresh(server.init)
    sef.startup()
    server.serve()
    return 0
