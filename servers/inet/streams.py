"""Stream sockets: INET's socket table over the TCP engine (``servers/inet/tcp``).

The engine is pure; this is where a client's requests meet it. CONNECT waits for
the handshake, ACCEPT for an established connection, SENDTO for room in the send
buffer (it takes what fits: a short count, as POSIX allows) and RECVFROM for data
or the end of the stream; each is a :class:`Waiter` answered by :meth:`wake`
after anything happened, or ETIMEDOUT when its timeout runs out. Errors the
engine reports (ECONNREFUSED, ECONNRESET, ETIMEDOUT, EPIPE) are the client's, in
MINIX's numbering.

See docs/inet.md.
"""

from __future__ import annotations

import errno as pyerrno
import os
from collections.abc import Callable
from typing import Final

from hwl.proto import codec
from hwl.proto import inet as ip
from hwl.proto.errno import Errno
from hwl.servers.inet import ipv4
from hwl.servers.inet.socktypes import Refused, Sock, Waiter, minix_errno
from hwl.servers.inet.tcp.connection import Connection, State
from hwl.servers.inet.tcp.tcp import EPHEMERAL, Tcp

Fields = dict[str, codec.Value]
Reply = Callable[[int, int, Fields], None]
Answer = tuple[int, Fields] | None

_CONNECTING: Final = (State.SYN_SENT, State.SYN_RECEIVED)


def _refused(err: int) -> Refused:
    return Refused(minix_errno(OSError(err, "")), os.strerror(err))


class Streams:
    """TCP's half of the socket table; ``adopt(owner)`` makes the socket an accepted
    connection becomes."""

    def __init__(self, tcp: Tcp, reply: Reply, adopt: Callable[[int], Sock]) -> None:
        self.tcp = tcp
        self.reply = reply
        self.adopt = adopt
        self.ports: set[int] = set()  # bound by stream sockets (listening or not)

    # ------------------------------------------------------------------ setup
    def bind(self, sock: Sock, addr: bytes, port: int) -> None:
        if sock.local is not None or sock.conn is not None or sock.listener is not None:
            raise Refused(Errno.EINVAL, "the socket is bound already")
        if port == 0:
            port = self._ephemeral()
        elif port in self.ports or any(p == port for (_a, p) in self.tcp.listeners):
            raise Refused(Errno.EADDRINUSE, f"port {port} is in use")
        self.ports.add(port)
        sock.local = (addr, port)

    def _ephemeral(self) -> int:
        used = self.ports | {p for (_a, p) in self.tcp.listeners}
        used |= {key[1] for key in self.tcp.conns}
        for port in EPHEMERAL:
            if port not in used:
                return port
        raise Refused(Errno.EADDRINUSE, "no ephemeral TCP port is free")

    def listen(self, sock: Sock, backlog: int) -> None:
        if sock.conn is not None:
            raise Refused(Errno.EISCONN, "the socket is connected")
        if sock.listener is not None:
            return
        if sock.local is None:
            self.bind(sock, ipv4.ANY, 0)
        assert sock.local is not None
        try:
            sock.listener = self.tcp.listen(sock.local[0], sock.local[1], backlog)
        except OSError as exc:
            raise _refused(exc.errno or pyerrno.EINVAL) from None

    def connect(self, client: int, sock: Sock, req: ip.Address, now: float) -> Answer:
        if sock.listener is not None:
            raise Refused(Errno.EINVAL, "the socket is listening")
        if sock.conn is not None:
            if sock.conn.state in _CONNECTING:
                raise Refused(Errno.EALREADY, "a connect is in progress")
            raise Refused(Errno.EISCONN, "the socket is connected")
        if req.port == 0:
            raise Refused(Errno.EINVAL, "port 0 is no peer")
        local, lport = sock.local if sock.local is not None else (None, 0)
        try:
            sock.conn = self.tcp.connect(ipv4.address(req.addr), req.port, now,
                                         local=local, local_port=lport)  # fmt: skip
        except OSError as exc:
            raise _refused(exc.errno or pyerrno.EINVAL) from None
        if req.timeout == 0:
            raise Refused(Errno.EINPROGRESS, "connecting")
        return self._wait(client, sock, now, req.timeout, "connect")

    def _wait(
        self, client: int, sock: Sock, now: float, timeout: float | None, kind: str,
        data: bytes = b"", limit: int = 0,
    ) -> Answer:  # fmt: skip
        """Keep the request, or answer it at once if it can be."""
        waiter = Waiter(client, limit, None if timeout is None else now + timeout, kind, data)
        answer = self._try(sock, waiter, now)
        if answer is not None:
            return answer
        if timeout == 0:
            raise Refused(Errno.EAGAIN, f"{kind} would block")
        sock.waiters.append(waiter)
        return None

    def accept(self, client: int, sock: Sock, req: ip.Accept, now: float) -> Answer:
        if sock.listener is None:
            raise Refused(Errno.EINVAL, "the socket is not listening")
        return self._wait(client, sock, now, req.timeout, "accept")

    def send(self, client: int, sock: Sock, req: ip.SendTo, now: float) -> Answer:
        if sock.conn is None:
            raise Refused(Errno.ENOTCONN, "the socket is not connected")
        if not req.data:
            return 0, {}
        return self._wait(client, sock, now, req.timeout, "send", req.data)

    def recv(self, client: int, sock: Sock, req: ip.RecvFrom, now: float) -> Answer:
        if sock.conn is None:
            raise Refused(Errno.ENOTCONN, "the socket is not connected")
        return self._wait(client, sock, now, req.timeout, "recv", limit=req.max)

    def shutdown(self, sock: Sock, how: int, now: float) -> None:
        if sock.conn is None:
            raise Refused(Errno.ENOTCONN, "the socket is not connected")
        if how in (ip.SHUT_RD, ip.SHUT_RDWR):
            sock.shut_rd = True
        if how in (ip.SHUT_WR, ip.SHUT_RDWR):
            try:
                sock.conn.shutdown_write(now)
            except OSError as exc:
                raise _refused(exc.errno or pyerrno.ENOTCONN) from None

    def close(self, sock: Sock, now: float) -> None:
        """The client is done with it: FIN (RST with unread data), listener closed."""
        if sock.conn is not None:
            sock.conn.close(now)
        if sock.listener is not None:
            self.tcp.close_listener(sock.listener, now)
        if sock.local is not None:
            self.ports.discard(sock.local[1])

    # ------------------------------------------------------------------ answers
    def _try(self, sock: Sock, w: Waiter, now: float) -> Answer:
        """The answer to ``w`` now, or None while it must wait; Refused for an error."""
        if w.kind == "accept":
            assert sock.listener is not None
            conn = self.tcp.accept(sock.listener)
            if conn is None:
                return None
            new = self.adopt(w.client)
            new.conn = conn
            return new.ident, {"sock": new.ident, **_address(conn.remote)}
        conn = sock.conn
        assert conn is not None
        if w.kind == "connect":
            if conn.state in _CONNECTING:
                return None
            if conn.state is State.CLOSED:
                raise _refused(conn.error or pyerrno.ECONNREFUSED)
            return 0, {}
        if w.kind == "send":
            if conn.state in _CONNECTING:
                return None
            try:
                n = conn.send(w.data[: conn.writable], now) if conn.writable else 0
            except OSError as exc:
                raise _refused(exc.errno or pyerrno.EPIPE) from None
            if n == 0 and conn.state is State.CLOSED:
                raise _refused(conn.error or pyerrno.EPIPE)
            return (n, {}) if n else None
        if sock.shut_rd:
            return 0, {"data": b""}
        try:
            data = conn.recv(w.max, now)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise _refused(exc.errno or pyerrno.ECONNRESET) from None
        return len(data), {"data": data, **_address(conn.remote)}

    def wake(self, sock: Sock, now: float) -> None:
        """Answer the waiting requests of ``sock`` that can be, in order per kind;
        time out the others whose deadline passed."""
        kept = []
        for w in list(sock.waiters):
            try:
                answer = self._try(sock, w, now)
            except Refused as exc:
                self.reply(w.client, *exc.reply())
                continue
            if answer is not None:
                self.reply(w.client, *answer)
            elif w.deadline is not None and w.deadline <= now:
                if w.kind == "connect" and sock.conn is not None:
                    sock.conn.abort(now)
                self.reply(w.client, -int(Errno.ETIMEDOUT), {"error": f"{w.kind} timed out"})
            else:
                kept.append(w)
        sock.waiters.clear()
        sock.waiters.extend(kept)

    # ------------------------------------------------------------------ names
    @staticmethod
    def name(sock: Sock) -> Fields:
        if sock.conn is not None:
            return _address(sock.conn.local)
        if sock.local is not None:
            return _address(sock.local)
        return {"addr": "0.0.0.0", "port": 0}

    @staticmethod
    def peer(sock: Sock) -> Fields:
        if sock.conn is None or sock.conn.state in _CONNECTING:
            raise Refused(Errno.ENOTCONN, "the socket is not connected")
        return _address(sock.conn.remote)

    @staticmethod
    def set_nodelay(sock: Sock, on: bool, now: float) -> None:
        if sock.conn is not None:
            sock.conn.set_nodelay(on, now)


def _address(addr: tuple[bytes, int]) -> Fields:
    return {"addr": ipv4.dotted(addr[0]), "port": addr[1]}


__all__ = ["Connection", "Streams"]
