"""INET's socket table: the clients' sockets, the requests that wait for a datagram
or an echo reply, and their late answers.

A socket belongs to the client endpoint that made it; another client naming its
number gets EBADF, as another process's fd would. A RECVFROM that finds nothing
queued waits (a :class:`Waiter`) until a datagram comes, its ``timeout`` runs out
(ETIMEDOUT; 0: EAGAIN at once), the client cancels, or the socket is closed
(EBADF). Answers go through ``reply(dest, status, fields)``: SEF's reply, which
reaches a client blocked in its ``sendrec`` whenever it is sent.

See docs/inet.md.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator
from typing import Final

from hwl.proto import codec
from hwl.proto import inet as ip
from hwl.proto.errno import Errno
from hwl.servers.inet import ipv4, udp
from hwl.servers.inet.socktypes import RCVBUF_UNIT, PingWait, Refused, Sock, Waiter, minix_errno
from hwl.servers.inet.stack import Stack
from hwl.servers.inet.streams import Streams
from hwl.servers.inet.tcp.tcp import Tcp

Fields = dict[str, codec.Value]
Reply = Callable[[int, int, Fields], None]

MAX_PER_CLIENT: Final = 64
MAX_SOCKETS: Final = 1024
MAX_WAITERS: Final = 16
"""RECVFROMs one socket may have waiting (each client thread one, in practice)."""
MAX_QUEUE: Final = 1024


class Sockets:
    """The socket table over ``stack``; ``local`` says whether an address is one of
    the configured interfaces' (a bind to any other is EADDRNOTAVAIL)."""

    def __init__(
        self, stack: Stack, tcp: Tcp, reply: Reply, local: Callable[[bytes], bool]
    ) -> None:
        self.stack = stack
        self.reply = reply
        self.local = local
        self.table: dict[int, Sock] = {}
        self.pings: dict[int, PingWait] = {}
        self._ids = itertools.count(3)  # 0-2 look like stdio: never a socket
        self.streams = Streams(tcp, reply, self._adopt)

    def _adopt(self, owner: int) -> Sock:
        """A stream socket for a connection ACCEPT hands ``owner``."""
        ident = next(self._ids)
        sock = self.table[ident] = Sock(ident, owner, ip.SOCK_STREAM)
        return sock

    # ------------------------------------------------------------------ lookup
    def get(self, client: int, ident: int) -> Sock:
        sock = self.table.get(ident)
        if sock is None or sock.owner != client:
            raise Refused(Errno.EBADF, f"socket {ident} is not open")
        return sock

    def of(self, client: int) -> Iterator[Sock]:
        return (s for s in list(self.table.values()) if s.owner == client)

    def owners(self) -> set[int]:
        return {s.owner for s in self.table.values()} | {p.client for p in self.pings.values()}

    # ------------------------------------------------------------------ requests
    def socket(self, client: int, req: ip.Socket) -> int:
        if sum(1 for _ in self.of(client)) >= MAX_PER_CLIENT:
            raise Refused(Errno.EMFILE, f"{MAX_PER_CLIENT} sockets open")
        if len(self.table) >= MAX_SOCKETS:
            raise Refused(Errno.ENFILE, f"{MAX_SOCKETS} sockets open in INET")
        ident = next(self._ids)
        self.table[ident] = Sock(ident, client, req.type)
        return ident

    def bind(self, client: int, req: ip.Address) -> Fields:
        sock = self.get(client, req.sock)
        addr = ipv4.address(req.addr)
        if addr != ipv4.ANY and not self.local(addr):
            raise Refused(Errno.EADDRNOTAVAIL, f"{req.addr} is not an address of this host")
        if sock.stream:
            self.streams.bind(sock, addr, req.port)
            return self.name(sock)
        if sock.udp is not None:
            raise Refused(Errno.EINVAL, "the socket is bound already")
        self._bind(sock, addr, req.port)
        return self.name(sock)

    def _bind(self, sock: Sock, addr: bytes, port: int) -> udp.UdpSocket:
        limit = max(1, min(MAX_QUEUE, sock.opts["rcvbuf"] // RCVBUF_UNIT))
        try:
            sock.udp = self.stack.udp_bind(addr, port, limit)
        except OSError as exc:
            raise Refused(minix_errno(exc), exc.strerror or str(exc)) from None
        return sock.udp

    def connect(self, client: int, req: ip.Address, now: float) -> tuple[int, Fields] | None:
        sock = self.get(client, req.sock)
        if sock.stream:
            return self.streams.connect(client, sock, req, now)
        self._connect(sock, req)
        return 0, {}

    def _connect(self, sock: Sock, req: ip.Address) -> None:
        addr = ipv4.address(req.addr)
        if addr == ipv4.ANY:  # as Linux: connecting to 0.0.0.0 (AF_UNSPEC) dissolves it
            sock.peer = None
            return
        if req.port == 0:
            raise Refused(Errno.EINVAL, "port 0 is no peer")
        self._check_dst(sock, addr)
        if sock.udp is None:
            self._bind(sock, ipv4.ANY, 0)
        sock.peer = (addr, req.port)

    def _check_dst(self, sock: Sock, addr: bytes) -> None:
        if self.stack.routes.is_broadcast(addr) and not sock.opts["broadcast"]:
            raise Refused(Errno.EACCES, f"{ipv4.dotted(addr)} is a broadcast address: "
                          "set SO_BROADCAST first")  # fmt: skip
        try:
            self.stack.source_for(addr)
        except OSError as exc:
            raise Refused(minix_errno(exc), exc.strerror or str(exc)) from None

    def sendto(self, client: int, req: ip.SendTo, now: float) -> tuple[int, Fields] | None:
        sock = self.get(client, req.sock)
        if sock.stream:
            if req.addr is not None:
                raise Refused(Errno.EISCONN, "a stream socket sends to its peer only")
            return self.streams.send(client, sock, req, now)
        return self._sendto(sock, req, now), {}

    def _sendto(self, sock: Sock, req: ip.SendTo, now: float) -> int:
        if req.addr is None:
            if sock.peer is None:
                raise Refused(Errno.EDESTADDRREQ, "the socket is not connected: name a peer")
            dst, port = sock.peer
        else:
            dst, port = ipv4.address(req.addr), req.port
            if port == 0:
                raise Refused(Errno.EINVAL, "port 0 is no destination")
        self._check_dst(sock, dst)
        bound = sock.udp or self._bind(sock, ipv4.ANY, 0)
        try:
            self.stack.udp_send(bound, dst, port, req.data, now)
        except OSError as exc:
            raise Refused(minix_errno(exc), exc.strerror or str(exc)) from None
        return len(req.data)

    def recvfrom(self, client: int, req: ip.RecvFrom, now: float) -> tuple[int, Fields] | None:
        """The answer now, or None: the request waits (answered by :meth:`wake`)."""
        sock = self.get(client, req.sock)
        if sock.stream:
            return self.streams.recv(client, sock, req, now)
        got = self._take(sock)
        if got is not None:
            return self._datagram(got, req.max)
        if req.timeout == 0:
            raise Refused(Errno.EAGAIN, "no datagram is queued")
        if len(sock.waiters) >= MAX_WAITERS:
            raise Refused(Errno.EBUSY, f"{MAX_WAITERS} receives wait on socket {sock.ident}")
        deadline = None if req.timeout is None else now + req.timeout
        sock.waiters.append(Waiter(client, req.max, deadline))
        return None

    def _take(self, sock: Sock) -> udp.Received | None:
        """The next datagram for ``sock``; a connected socket skips other senders'."""
        if sock.udp is None:
            return None
        while (got := sock.udp.recv()) is not None:
            if sock.peer is None or (got.src, got.src_port) == sock.peer:
                return got
        return None

    @staticmethod
    def _datagram(got: udp.Received, limit: int) -> tuple[int, Fields]:
        data = got.payload[:limit]  # the rest is lost, as a short recv of a datagram
        return len(data), {"data": data, "addr": ipv4.dotted(got.src), "port": got.src_port,
                           "truncated": len(got.payload) > limit}  # fmt: skip

    def listen(self, client: int, req: ip.Listen) -> None:
        self.streams.listen(self._stream(client, req.sock), req.backlog)

    def accept(self, client: int, req: ip.Accept, now: float) -> tuple[int, Fields] | None:
        sock = self._stream(client, req.sock)
        if len(self.table) >= MAX_SOCKETS:
            raise Refused(Errno.ENFILE, f"{MAX_SOCKETS} sockets open in INET")
        return self.streams.accept(client, sock, req, now)

    def shutdown(self, client: int, req: ip.Shutdown, now: float) -> None:
        self.streams.shutdown(self._stream(client, req.sock), req.how, now)

    def _stream(self, client: int, ident: int) -> Sock:
        sock = self.get(client, ident)
        if not sock.stream:
            raise Refused(Errno.EOPNOTSUPP, "not on a datagram socket")
        return sock

    def cancel(self, client: int, ident: int) -> int:
        """Forget ``client``'s waiting receives on ``ident`` (it gave up on them)."""
        sock = self.get(client, ident)
        before = len(sock.waiters)
        sock.waiters = deque(w for w in sock.waiters if w.client != client)
        return before - len(sock.waiters)

    def close(self, client: int, ident: int, now: float) -> None:
        self._close(self.get(client, ident), "the socket was closed", now)

    def _close(self, sock: Sock, why: str, now: float) -> None:
        for w in sock.waiters:
            self.reply(w.client, -int(Errno.EBADF), {"error": why})
        sock.waiters.clear()
        if sock.udp is not None:
            self.stack.udp_close(sock.udp)
        if sock.stream:
            self.streams.close(sock, now)
        del self.table[sock.ident]

    def name(self, sock: Sock) -> Fields:
        if sock.stream:
            return self.streams.name(sock)
        if sock.udp is None:
            return {"addr": "0.0.0.0", "port": 0}
        return {"addr": ipv4.dotted(sock.udp.address), "port": sock.udp.port}

    def peername(self, client: int, ident: int) -> Fields:
        sock = self.get(client, ident)
        if sock.stream:
            return self.streams.peer(sock)
        if sock.peer is None:
            raise Refused(Errno.ENOTCONN, "the socket is not connected")
        return {"addr": ipv4.dotted(sock.peer[0]), "port": sock.peer[1]}

    def sockopt(self, client: int, req: ip.SockOpt, now: float) -> int:
        sock = self.get(client, req.sock)
        if req.name not in ip.SOCKOPTS:
            raise Refused(
                Errno.ENOPROTOOPT, f"option {req.name!r} (INET has {', '.join(ip.SOCKOPTS)})"
            )
        if req.value is not None:
            if req.name == "rcvbuf":
                if req.value < 0:
                    raise Refused(Errno.EINVAL, "a negative rcvbuf")
                limit = max(1, min(MAX_QUEUE, req.value // RCVBUF_UNIT))
                sock.opts["rcvbuf"] = limit * RCVBUF_UNIT
                if sock.udp is not None:
                    sock.udp.limit = limit
            else:
                sock.opts[req.name] = int(req.value != 0)
            if req.name == "nodelay":
                self.streams.set_nodelay(sock, bool(sock.opts["nodelay"]), now)
        return sock.opts[req.name]

    # ------------------------------------------------------------------ ping
    def ping(self, client: int, req: ip.Ping, now: float) -> None:
        if sum(1 for p in self.pings.values() if p.client == client) >= MAX_WAITERS:
            raise Refused(Errno.EBUSY, f"{MAX_WAITERS} pings of this client wait")
        try:
            seq = self.stack.ping(ipv4.address(req.addr), now, bytes(req.size))
        except OSError as exc:
            raise Refused(minix_errno(exc), exc.strerror or str(exc)) from None
        self.pings[seq] = PingWait(client, seq, now + req.timeout)

    def cancel_pings(self, client: int) -> int:
        gone = [seq for seq, p in self.pings.items() if p.client == client]
        for seq in gone:
            del self.pings[seq]
        return len(gone)

    # ------------------------------------------------------------------ late answers
    def wake(self, now: float) -> None:
        """Answer what can be answered: datagrams to waiting receives, echo replies
        to waiting pings, and the timeouts that have run out."""
        for reply in self.stack.echo_replies():
            waiting = self.pings.pop(reply.seq, None)
            if waiting is not None:
                self.reply(waiting.client, 0, {"rtt": reply.rtt, "seq": reply.seq})
        for seq, p in list(self.pings.items()):
            if p.deadline <= now:
                del self.pings[seq]
                self.reply(p.client, -int(Errno.ETIMEDOUT), {"error": "no echo reply"})
        for sock in list(self.table.values()):
            if sock.waiters:
                if sock.stream:
                    self.streams.wake(sock, now)
                else:
                    self._wake(sock, now)

    def _wake(self, sock: Sock, now: float) -> None:
        while sock.waiters and (got := self._take(sock)) is not None:
            w = sock.waiters.popleft()
            status, fields = self._datagram(got, w.max)
            self.reply(w.client, status, fields)
        kept: deque[Waiter] = deque()
        for w in sock.waiters:
            if w.deadline is not None and w.deadline <= now:
                self.reply(w.client, -int(Errno.ETIMEDOUT), {"error": "no datagram in time"})
            else:
                kept.append(w)
        sock.waiters = kept

    def deadline(self) -> float | None:
        """The earliest time a waiting request times out."""
        times = [p.deadline for p in self.pings.values()]
        times += [w.deadline for s in self.table.values() for w in s.waiters
                  if w.deadline is not None]  # fmt: skip
        return min(times) if times else None

    def reap(self, alive: set[int], now: float) -> int:
        """Close the sockets and forget the pings of clients that have ended."""
        dead = self.owners() - alive
        for client in dead:
            for sock in self.of(client):
                self._close(sock, "its owner ended", now)
            self.cancel_pings(client)
        for sock in self.table.values():  # waiters of other clients (none today)
            sock.waiters = deque(w for w in sock.waiters if w.client in alive)
        return len(dead)
