"""The layers glued together: interfaces, ARP before IP output, ICMP, UDP, and the
hooks TCP plugs into. Still pure: frames in, frames out, time passed in.

Addresses are 4-byte ``bytes`` in network order throughout. Every frame the stack
sends is queued as ``(ifname, frame)``; ``input``, ``tick`` and ``take_output`` hand
the queue over, so whoever drives the stack (the server, a test with a TAP) writes
them to the NICs. TCP lives elsewhere (``servers/inet/tcp``) and meets the stack in
two places whose signatures stay as they are:

- ``stack.tcp_input = fn``: ``fn(src, dst, segment, now)`` is called for each TCP
  segment addressed to us (the IP payload; the TCP checksum is TCP's to check);
- ``stack.ip_output(dst, proto, payload, now, df=...)``: sends a datagram, raising
  OSError ENETUNREACH (no route) or EMSGSIZE (over the MTU: no fragmentation).
  ``stack.source_for(dst)`` gives the source address it will use, for the pseudo-header.

A datagram to one of our own addresses is looped back, never from inside
``ip_output``: it is delivered by the next ``tick`` (``deadline`` says it is due at
once) or ``input``, so no protocol is re-entered while it sends.

Optionally ``stack.tcp_unreachable = fn``: ``fn(dst, errno, segment)`` for a segment
whose next hop never answered ARP (EHOSTUNREACH) or whose queue was full (ENOBUFS).

See docs/inet.md.
"""

from __future__ import annotations

import errno
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from hwl.servers.inet import arp, ether, icmp, ipv4, udp
from hwl.servers.inet.counters import Drop, EtherCounters, IcmpCounters, IpCounters, UdpCounters
from hwl.servers.inet.ipv4 import ANY, PROTO_ICMP, PROTO_TCP, PROTO_UDP, Config

TcpInput = Callable[[bytes, bytes, bytes, float], None]
"""(src, dst, segment, now): a TCP segment for us."""
TcpUnreachable = Callable[[bytes, int, bytes], None]
"""(dst, errno, segment): a segment TCP sent that could not be delivered to the link."""
Output = list[tuple[str, bytes]]

ICMP_RATE = 10.0
"""Port-unreachable messages a second, after a burst of ICMP_BURST."""
ICMP_BURST = 10.0
LOOPBACK_LEN = 256
"""Datagrams to ourselves waiting for the next tick; more are dropped (ENOBUFS)."""


class StackError(LookupError):
    """A caller named an interface the stack does not have."""


@dataclass
class Interface:
    """One NIC as the stack sees it: MAC, IPv4 config, ARP table, link counters."""

    name: str
    mac: bytes
    config: Config
    arp: arp.ArpTable
    counters: EtherCounters = field(default_factory=EtherCounters)
    up: bool = True


class Stack:
    """Interfaces, routes, ICMP, UDP ports and the TCP hooks; see the module doc."""

    def __init__(
        self, *, ident: int = 0, ping_ident: int = 0x4857, icmp_rate: float = ICMP_RATE,
        icmp_burst: float = ICMP_BURST,
    ) -> None:  # fmt: skip
        self.interfaces: dict[str, Interface] = {}
        self.routes = ipv4.Routes()
        self.ip = IpCounters()
        self.icmp = IcmpCounters()
        self.udp = UdpCounters()
        self.ports = udp.PortTable()
        self.pinger = icmp.Pinger(ping_ident)
        self.unreach_bucket = icmp.TokenBucket(icmp_rate, icmp_burst)
        self.outbox: Output = []
        self.loopback: deque[bytes] = deque()
        self.tcp_input: TcpInput | None = None
        self.tcp_unreachable: TcpUnreachable | None = None
        self._ident = ident & 0xFFFF

    # --- interfaces -------------------------------------------------------------------

    def add_interface(self, name: str, mac: bytes, config: Config, now: float) -> Interface:
        """Add (or replace) interface ``name`` and enable it (a gratuitous ARP goes out)."""
        table = arp.ArpTable(
            mac, config.address, lambda frame: self._emit_on(name, frame), self._arp_failed
        )
        iface = Interface(name, mac, config, table)
        self.interfaces[name] = iface
        self.routes.set(name, config)
        self.enable(name, now)
        return iface

    def interface(self, name: str) -> Interface:
        try:
            return self.interfaces[name]
        except KeyError:
            raise StackError(f"no interface {name!r}") from None

    def set_config(self, name: str, config: Config, now: float) -> None:
        """Give ``name`` a new IPv4 configuration (routes follow) and announce it."""
        iface = self.interface(name)
        iface.config = config
        iface.arp.ip = config.address
        self.routes.set(name, config)
        if iface.up:
            iface.arp.announce()

    def enable(self, name: str, now: float) -> None:
        """Bring ``name`` up (again, after its driver restarted): announce our address."""
        iface = self.interface(name)
        iface.up = True
        iface.arp.announce()

    def disable(self, name: str) -> None:
        """Take ``name`` down: its frames in and out are dropped and counted."""
        self.interface(name).up = False

    def _emit_on(self, name: str, frame: bytes) -> None:
        self._emit(self.interfaces[name], frame)

    def _emit(self, iface: Interface, frame: bytes) -> None:
        if not iface.up:
            iface.counters.down += 1
            return
        iface.counters.tx += 1
        iface.counters.tx_bytes += len(frame)
        self.outbox.append((iface.name, frame))

    # --- the driver's side ------------------------------------------------------------

    def take_output(self) -> Output:
        """The frames queued to send since the last call, as (ifname, frame)."""
        out, self.outbox = self.outbox, []
        return out

    def tick(self, now: float) -> Output:
        """Run the timers (ARP retries and expiry) and deliver looped-back datagrams;
        returns the frames to send."""
        for iface in self.interfaces.values():
            iface.arp.tick(now)
        self._deliver_loopback(now)
        return self.take_output()

    def _deliver_loopback(self, now: float) -> None:
        """Deliver the datagrams queued so far (not those they cause: next tick)."""
        for _ in range(len(self.loopback)):
            self._ip_input(self.loopback.popleft(), now)

    def deadline(self) -> float | None:
        """When ``tick`` next has work, or None."""
        if self.loopback:
            return 0.0
        times = [t for i in self.interfaces.values() if (t := i.arp.deadline()) is not None]
        return min(times) if times else None

    def input(self, ifname: str, frame: bytes, now: float) -> Output:
        """Handle one received frame; returns the frames to send (replies among them)."""
        iface = self.interface(ifname)
        counters = iface.counters
        if not iface.up:
            counters.down += 1
            return self.take_output()
        decoded = ether.parse(frame)
        if isinstance(decoded, Drop):
            counters.drop(decoded)
            return self.take_output()
        counters.rx += 1
        counters.rx_bytes += len(frame)
        if decoded.dst != iface.mac and decoded.dst != ether.BROADCAST:
            counters.not_ours += 1
        elif decoded.ethertype == ether.ETH_P_ARP:
            iface.arp.input(decoded.payload, now)
        else:
            self._ip_input(decoded.payload, now)
        self._deliver_loopback(now)
        return self.take_output()

    # --- IP ---------------------------------------------------------------------------

    def source_for(self, dst: bytes) -> bytes:
        """The source address of datagrams to ``dst`` (OSError ENETUNREACH if no route)."""
        route = self.routes.lookup(dst)
        if route is None:
            raise OSError(errno.ENETUNREACH, f"no route to {ipv4.dotted(dst)}")
        return route.src

    def ip_output(
        self, dst: bytes, proto: int, payload: bytes, now: float, *, df: bool = False
    ) -> None:
        """Send ``payload`` as one datagram of protocol ``proto`` to ``dst`` (resolving
        the next hop first); OSError ENETUNREACH or EMSGSIZE when it cannot (ENOBUFS
        when ``dst`` is ours and the loopback queue is full)."""
        route = self.routes.lookup(dst)
        if route is None:
            self.ip.no_route += 1
            raise OSError(errno.ENETUNREACH, f"no route to {ipv4.dotted(dst)}")
        if len(payload) > ipv4.MAX_PAYLOAD:
            self.ip.too_big += 1
            raise OSError(errno.EMSGSIZE, f"{len(payload)} bytes is over {ipv4.MAX_PAYLOAD}")
        own = self.routes.is_own(dst)
        if own and len(self.loopback) >= LOOPBACK_LEN:
            raise OSError(errno.ENOBUFS, "the loopback queue is full")
        packet = ipv4.build(route.src, dst, proto, payload, self._ident, df=df)
        self._ident = (self._ident + 1) & 0xFFFF
        self.ip.tx += 1
        iface = self.interfaces[route.ifname]
        if own:
            self.loopback.append(packet)
            self.ip.loopback += 1
        elif self.routes.is_broadcast(dst):
            self._emit(iface, ether.build(ether.BROADCAST, iface.mac, ether.ETH_P_IP, packet))
        else:
            iface.arp.output(route.next_hop, ether.ETH_P_IP, packet, now)

    def _arp_failed(self, _next_hop: bytes, _ethertype: int, packet: bytes, err: int) -> None:
        self.ip.unreachable += 1
        decoded = ipv4.parse(packet)
        if isinstance(decoded, Drop) or decoded.proto != PROTO_TCP:
            return
        if self.tcp_unreachable is not None:
            self.tcp_unreachable(decoded.dst, err, decoded.payload)

    def _ip_input(self, data: bytes, now: float) -> None:
        packet = ipv4.parse(data)
        if isinstance(packet, Drop):
            self.ip.drop(packet)
            return
        if not self.routes.is_local(packet.dst):
            self.ip.not_ours += 1
            return
        if self.routes.is_martian_source(packet.src):
            self.ip.bad_source += 1
            return
        self.ip.rx += 1
        if packet.proto == PROTO_ICMP:
            self._icmp_input(packet, now)
        elif packet.proto == PROTO_UDP:
            self._udp_input(packet, now)
        elif packet.proto == PROTO_TCP and self.tcp_input is not None:
            self.tcp_input(packet.src, packet.dst, packet.payload, now)
        else:
            self.ip.no_protocol += 1

    # --- ICMP -------------------------------------------------------------------------

    def _icmp_input(self, packet: ipv4.Packet, now: float) -> None:
        message = icmp.parse(packet.payload)
        if isinstance(message, Drop):
            self.icmp.drop(message)
            return
        self.icmp.rx += 1
        if message.type == icmp.ECHO_REQUEST and not self.routes.is_broadcast(packet.dst):
            self.icmp.echo_requests += 1
            self._icmp_output(packet.src, icmp.echo_reply(message), now)
        elif message.type == icmp.ECHO_REPLY:
            if self.pinger.match(packet.src, message, now) is None:
                self.icmp.unmatched_replies += 1
            else:
                self.icmp.echo_replies += 1
        elif message.type == icmp.DEST_UNREACH:
            self.icmp.unreach_in += 1
        else:
            self.icmp.other += 1

    def _icmp_output(self, dst: bytes, message: bytes, now: float) -> bool:
        try:
            self.ip_output(dst, PROTO_ICMP, message, now)
        except OSError:
            return False
        self.icmp.tx += 1
        return True

    def ping(self, dst: bytes, now: float, payload: bytes = b"") -> int:
        """Send an echo request to ``dst``; returns its sequence number. Replies are
        collected by ``echo_replies``."""
        seq, message = self.pinger.request(dst, payload, now)
        self.ip_output(dst, PROTO_ICMP, message, now)
        self.icmp.tx += 1
        return seq

    def echo_replies(self) -> list[icmp.EchoReply]:
        """The echo replies matched since the last call."""
        return self.pinger.take()

    # --- UDP --------------------------------------------------------------------------

    def _udp_input(self, packet: ipv4.Packet, now: float) -> None:
        datagram = udp.parse(packet.payload, packet.src, packet.dst)
        if isinstance(datagram, Drop):
            self.udp.drop(datagram)
            return
        sock = self.ports.lookup(packet.dst, datagram.dst_port)
        if sock is None:
            self.udp.no_port += 1
            self._port_unreachable(packet, now)
            return
        self.udp.rx += 1
        if not sock.deliver(udp.Received(packet.src, datagram.src_port, datagram.payload)):
            self.udp.queue_full += 1

    def _port_unreachable(self, packet: ipv4.Packet, now: float) -> None:
        if self.routes.is_broadcast(packet.dst) or packet.src in (ANY, ipv4.LIMITED_BROADCAST):
            return
        if not self.unreach_bucket.take(now):
            self.icmp.rate_limited += 1
            return
        if self._icmp_output(packet.src, icmp.port_unreachable(packet.header, packet.payload), now):
            self.icmp.unreach_out += 1

    def udp_bind(
        self, address: bytes = ANY, port: int = 0, limit: int = udp.QUEUE_LEN
    ) -> udp.UdpSocket:
        """A UDP socket on ``port`` (0: ephemeral); OSError EADDRINUSE when taken."""
        return self.ports.bind(address, port, limit)

    def udp_close(self, sock: udp.UdpSocket) -> None:
        self.ports.close(sock)

    def udp_send(
        self, sock: udp.UdpSocket, dst: bytes, port: int, payload: bytes, now: float
    ) -> None:
        """Send ``payload`` from ``sock`` to ``dst``:``port``."""
        if sock.closed:
            raise OSError(errno.EBADF, "the socket is closed")
        if not 0 < port <= 0xFFFF:
            raise OSError(errno.EINVAL, f"port {port} out of range")
        src = sock.address if sock.address != ANY else self.source_for(dst)
        datagram = udp.build(src, dst, sock.port, port, payload)
        self.ip_output(dst, PROTO_UDP, datagram, now)
        self.udp.tx += 1

    # --- reporting --------------------------------------------------------------------

    def counters(self) -> dict[str, dict[str, int]]:
        """Every counter set: ``<ifname>.ether``, ``<ifname>.arp``, ``ip``, ``icmp``, ``udp``."""
        out: dict[str, dict[str, int]] = {}
        for name, iface in self.interfaces.items():
            out[f"{name}.ether"] = iface.counters.as_fields()
            out[f"{name}.arp"] = iface.arp.counters.as_fields()
        out["ip"] = self.ip.as_fields()
        out["icmp"] = self.icmp.as_fields()
        out["udp"] = self.udp.as_fields()
        return out
