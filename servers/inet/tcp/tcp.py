"""The TCP layer between IP and the connections: it checks and parses segments,
finds each one's connection by its 4-tuple or a listener by its local address,
answers a segment for no socket with a RST (RFC 9293 3.10.7.1), keeps listen and
accept queues bounded by the backlog, picks ephemeral ports and initial sequence
numbers (RFC 6528), and keeps connections in TIME_WAIT until their 2*MSL is over.

It meets IP through two callables that ``hwl.servers.inet.stack.Stack`` provides:
``ip_output(dst, proto, payload, now, df=...)`` to send (OSError when it cannot),
and ``source_for(dst)`` for the source address of a connect; IP calls
``input(src, dst, segment, now)`` for each segment addressed to us
(``stack.tcp_input``) and ``unreachable(dst, errno, segment)`` for one it could
not deliver (``stack.tcp_unreachable``). Still pure: time is passed in and
nothing blocks.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from hwl.servers.inet.tcp import seq
from hwl.servers.inet.tcp.connection import Connection, State, TcpConfig
from hwl.servers.inet.tcp.segment import ACK, PROTO, RST, SYN, Segment, SegmentError, build, parse

__all__ = ["ANY", "EPHEMERAL", "IpOut", "Listener", "Tcp"]

ANY = bytes(4)
EPHEMERAL = range(49152, 65536)
"""IANA's dynamic ports, where connect picks its local port."""
MAX_TIME_WAIT = 4096
"""Most connections kept in TIME_WAIT; the oldest goes first beyond it."""

Key = tuple[bytes, int, bytes, int]
"""(local address, local port, remote address, remote port)."""


class IpOut(Protocol):
    """Sends one datagram (``Stack.ip_output``)."""

    def __call__(
        self, dst: bytes, proto: int, payload: bytes, now: float, *, df: bool = ...
    ) -> None: ...


@dataclass(eq=False)
class Listener:
    """A listening socket: SYN-RECEIVED connections and the established ones
    waiting for ``accept``, together at most ``backlog``."""

    address: bytes
    port: int
    backlog: int
    pending: set[Connection] = field(default_factory=set)
    ready: deque[Connection] = field(default_factory=deque)
    closed: bool = False


class Tcp:
    """All of one stack's TCP: connections, listeners and the counters."""

    def __init__(
        self,
        ip_output: IpOut,
        source_for: Callable[[bytes], bytes] | None = None,
        cfg: TcpConfig | None = None,
        *,
        secret: bytes | None = None,
        seed: int | None = None,
    ) -> None:
        self.ip_output = ip_output
        self.source_for = source_for
        self.cfg = cfg or TcpConfig()
        self.secret = secret if secret is not None else os.urandom(16)
        self.random = random.Random(seed)
        self.conns: dict[Key, Connection] = {}
        self.listeners: dict[tuple[bytes, int], Listener] = {}
        self.parents: dict[Connection, Listener] = {}
        self.time_wait: dict[Key, float] = {}
        self.on_change: Callable[[Connection], None] | None = None
        """Called when a connection changes state (the socket layer's wake-up)."""
        self.counters: dict[str, int] = {}

    # --- user side ----------------------------------------------------------------------

    def listen(self, address: bytes, port: int, backlog: int) -> Listener:
        """Listen on ``address`` (ANY for all) and ``port``; EADDRINUSE when taken."""
        if not 0 < port <= 0xFFFF:
            raise OSError(errno.EINVAL, f"port {port} out of range")
        if (address, port) in self.listeners or (ANY, port) in self.listeners:
            raise OSError(errno.EADDRINUSE, f"port {port} is already listened on")
        listener = Listener(address, port, max(1, backlog))
        self.listeners[(address, port)] = listener
        return listener

    def accept(self, listener: Listener) -> Connection | None:
        """The next established connection of ``listener``, None when there is none."""
        while listener.ready:
            conn = listener.ready.popleft()
            self.parents.pop(conn, None)
            if conn.state is not State.CLOSED or conn.rcvbuf:
                return conn
        return None

    def close_listener(self, listener: Listener, now: float) -> None:
        """Stop listening; connections not yet accepted are reset."""
        listener.closed = True
        self.listeners.pop((listener.address, listener.port), None)
        for conn in [*listener.pending, *listener.ready]:
            self.parents.pop(conn, None)
            conn.abort(now)
        listener.pending.clear()
        listener.ready.clear()

    def connect(
        self,
        remote: bytes,
        port: int,
        now: float,
        *,
        local: bytes | None = None,
        local_port: int = 0,
    ) -> Connection:
        """Open a connection to ``remote``:``port`` (its SYN goes now); the source
        address is ``local`` or IP's choice, the port ``local_port`` or an ephemeral one."""
        if not 0 < port <= 0xFFFF:
            raise OSError(errno.EINVAL, f"port {port} out of range")
        if local is None or local == ANY:
            if self.source_for is None:
                raise OSError(errno.EADDRNOTAVAIL, "no source address")
            local = self.source_for(remote)
        lport = local_port or self._ephemeral(local, remote, port)
        key = (local, lport, remote, port)
        if key in self.conns:
            raise OSError(errno.EADDRINUSE, "that 4-tuple is in use")
        conn = Connection(
            self.cfg, (local, lport), (remote, port), self._isn(key, now), self._emitter(key), now
        ).connect()
        self._add(key, conn)
        return conn

    # --- IP side ------------------------------------------------------------------------

    def input(self, src: bytes, dst: bytes, data: bytes, now: float) -> None:
        """One TCP segment from ``src`` to us at ``dst``."""
        try:
            seg = parse(data, src, dst)
        except SegmentError:
            self._count("bad_segments")
            return
        self._count("segments_in")
        key = (dst, seg.dport, src, seg.sport)
        conn = self.conns.get(key)
        if conn is not None and conn.state is State.TIME_WAIT and self._reopens(conn, seg):
            conn.timewait_at = now  # RFC 6191's spirit: a new SYN beyond the old stream
            conn.tick(now)
            conn = None
        if conn is not None:
            conn.input(seg, now)
            return
        if not (_unicast(src) and _unicast(dst)):
            self._count("not_unicast")  # TCP is unicast only; never a RST to a group
            return
        listener = self.listeners.get((dst, seg.dport)) or self.listeners.get((ANY, seg.dport))
        if listener is not None:
            self._to_listener(listener, key, seg, now)
            return
        self._count("no_socket")
        self._reset(key, seg, now)

    def unreachable(self, dst: bytes, err: int, segment: bytes) -> None:
        """IP could not deliver a segment we sent to ``dst`` (its next hop never
        answered ARP, or its queue was full): a soft error for the connection, which
        keeps retrying and reports ``err`` only if it then times out
        (``Stack.tcp_unreachable``)."""
        if len(segment) < 4:
            return
        sport, dport = struct.unpack_from("!HH", segment)
        for key, conn in self.conns.items():
            if key[1] == sport and key[2] == dst and key[3] == dport:
                conn.soft_error = err
                self._count("soft_errors")

    def _reopens(self, conn: Connection, seg: Segment) -> bool:
        return seg.flags & (SYN | ACK | RST) == SYN and seq.gt(seg.seq, conn.rcv_nxt)

    def _to_listener(self, listener: Listener, key: Key, seg: Segment, now: float) -> None:
        """RFC 9293 3.10.7.2: RST ignored, ACK answered with RST, SYN starts a connection."""
        if seg.has(RST):
            return
        if seg.has(ACK):
            self._reset(key, seg, now)
            return
        if not seg.has(SYN):
            return
        if len(listener.pending) + len(listener.ready) >= listener.backlog:
            self._count("listen_overflows")
            return  # as Linux: the SYN is dropped and the peer retries
        conn = Connection(
            self.cfg, key[:2], key[2:], self._isn(key, now), self._emitter(key), now
        ).accept(seg)
        listener.pending.add(conn)
        self.parents[conn] = listener
        self._add(key, conn)

    def _reset(self, key: Key, seg: Segment, now: float) -> None:
        """The RST for a segment no connection takes (RFC 9293 3.10.7.1)."""
        if seg.has(RST):
            return
        if seg.has(ACK):
            rst = Segment(seg.dport, seg.sport, seg.ack, 0, RST, 0)
        else:
            rst = Segment(seg.dport, seg.sport, 0, seq.add(seg.seq, seg.seg_len), RST | ACK, 0)
        self._count("resets_out")
        self._send(key[0], key[2], rst, now)

    # --- timers -------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """The earliest deadline among all connections, None when none is armed."""
        times = [t for c in self.conns.values() if (t := c.next_deadline()) is not None]
        return min(times) if times else None

    def tick(self, now: float) -> None:
        """Run every connection's due timers."""
        for conn in list(self.conns.values()):
            deadline = conn.next_deadline()
            if deadline is not None and now >= deadline:
                conn.tick(now)

    # --- internals ----------------------------------------------------------------------

    def _add(self, key: Key, conn: Connection) -> None:
        conn.on_change = self._changed
        self.conns[key] = conn
        if conn.state is State.CLOSED:
            self._changed(conn)

    def _changed(self, conn: Connection) -> None:
        key = (conn.local[0], conn.local[1], conn.remote[0], conn.remote[1])
        listener = self.parents.get(conn)
        if (
            listener is not None
            and conn in listener.pending
            and conn.state is not State.SYN_RECEIVED
        ):
            listener.pending.discard(conn)
            if conn.state is State.CLOSED:
                self.parents.pop(conn, None)
            else:
                listener.ready.append(conn)
        if conn.state is State.TIME_WAIT:
            self.time_wait[key] = conn.now
            if len(self.time_wait) > MAX_TIME_WAIT:
                oldest = next(iter(self.time_wait))
                old = self.conns.get(oldest)
                if old is not None:
                    old.tick(float("inf"))
        if conn.state is State.CLOSED:
            self.time_wait.pop(key, None)
            if self.conns.get(key) is conn:
                del self.conns[key]
                for name, n in conn.counters.items():  # kept beyond the connection
                    self.counters[name] = self.counters.get(name, 0) + n
        if self.on_change is not None:
            self.on_change(conn)

    def _emitter(self, key: Key) -> Callable[[Segment, float], None]:
        def emit(seg: Segment, now: float) -> None:
            self._send(key[0], key[2], seg, now)

        return emit

    def _send(self, src: bytes, dst: bytes, seg: Segment, now: float) -> None:
        self._count("segments_out")
        try:
            self.ip_output(dst, PROTO, build(seg, src, dst), now, df=True)
        except OSError:
            self._count("output_errors")  # the retransmission timer tries again

    def _ephemeral(self, local: bytes, remote: bytes, port: int) -> int:
        span = len(EPHEMERAL)
        start = self.random.randrange(span)
        for i in range(span):
            candidate = EPHEMERAL[(start + i) % span]
            if (local, candidate, remote, port) in self.conns:
                continue
            if (local, candidate) in self.listeners or (ANY, candidate) in self.listeners:
                continue
            return candidate
        raise OSError(errno.EADDRNOTAVAIL, "no ephemeral port left")

    def _isn(self, key: Key, now: float) -> int:
        """RFC 6528: a 4-microsecond clock plus a keyed hash of the 4-tuple."""
        digest = hashlib.blake2s(
            struct.pack("!4sH4sH", key[0], key[1], key[2], key[3]), key=self.secret, digest_size=4
        ).digest()
        return (int(now * 250_000) + int.from_bytes(digest, "big")) & seq.MASK

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1


def _unicast(address: bytes) -> bool:
    """Not 0.0.0.0, 255.255.255.255 or a multicast group (224/4). A directed broadcast
    is IP's to filter: only it knows the netmask."""
    return address not in (ANY, b"\xff\xff\xff\xff") and not 224 <= address[0] <= 239
