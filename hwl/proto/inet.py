"""The INET protocol: sockets for user processes (docs/inet.md).

Requests are ``sendrec`` to INET's endpoint (RS label ``inet``); the reply's m_type
is the result (a socket number, a byte count, 0) or a negative MINIX errno with an
``error`` field saying why. Data travels inline (a datagram is at most
:data:`MAX_DGRAM` bytes, well inside a message). Addresses are dotted quads.

| request | fields | reply |
|---|---|---|
| ``SOCKET`` | type (``SOCK_DGRAM`` UDP, ``SOCK_STREAM`` TCP) | socket number |
| ``BIND`` | sock, addr, port (0: ephemeral) | 0; addr, port |
| ``CONNECT`` | sock, addr, port; timeout (stream) | 0 (stream: once established) |
| ``SENDTO`` | sock, data; addr, port (absent: the connected peer); timeout | bytes taken |
| ``RECVFROM`` | sock, max; timeout (s; 0 polls; absent blocks) | bytes; data, addr, port |
| ``LISTEN`` | sock, backlog (stream) | 0 |
| ``ACCEPT`` | sock; timeout (stream) | the new socket; addr, port of the peer |
| ``SHUTDOWN`` | sock, how (``SHUT_RD`` 0, ``SHUT_WR`` 1, ``SHUT_RDWR`` 2) | 0 |
| ``CANCEL`` | sock | 0; the caller's waiting requests on it (and pings) are forgotten |
| ``CLOSE`` | sock | 0; anyone waiting on it is answered EBADF |
| ``GETSOCKNAME`` / ``GETPEERNAME`` | sock | 0; addr, port |
| ``SETSOCKOPT`` / ``GETSOCKOPT`` | sock, name (:data:`SOCKOPTS`); value | 0; value |
| ``PING`` | addr; timeout, size | 0; rtt (s), seq |
| ``IFSTATUS`` | | 0; interfaces, counters |

RECVFROM, PING, and on stream sockets CONNECT, ACCEPT and a SENDTO that finds the
send buffer full, are answered late, as VFS answers a read of a disk whose driver
is down: INET keeps the request and replies when it can, or with ETIMEDOUT when
the request's ``timeout`` runs out (0: EAGAIN at once, EINPROGRESS for CONNECT),
so a client never needs an IPC timeout of its own. A client that gave up anyway
(an IPC timeout, an interrupt) sends ``CANCEL``. A stream SENDTO takes at most
:data:`MAX_IO` bytes (a short count, as POSIX allows; the client loops).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from hwl.proto.fields import FieldError, get_bytes, get_int, get_name

INET_BASE: Final = 0x1B00
SOCKET: Final = INET_BASE + 1
BIND: Final = INET_BASE + 2
CONNECT: Final = INET_BASE + 3
SENDTO: Final = INET_BASE + 4
RECVFROM: Final = INET_BASE + 5
CANCEL: Final = INET_BASE + 6
CLOSE: Final = INET_BASE + 7
GETSOCKNAME: Final = INET_BASE + 8
GETPEERNAME: Final = INET_BASE + 9
SETSOCKOPT: Final = INET_BASE + 10
GETSOCKOPT: Final = INET_BASE + 11
PING: Final = INET_BASE + 12
IFSTATUS: Final = INET_BASE + 13
# Stream sockets only (EOPNOTSUPP on a datagram socket).
LISTEN: Final = INET_BASE + 14
ACCEPT: Final = INET_BASE + 15
SHUTDOWN: Final = INET_BASE + 16

REQUEST_NAMES: Final = {
    SOCKET: "socket",
    BIND: "bind",
    CONNECT: "connect",
    SENDTO: "sendto",
    RECVFROM: "recvfrom",
    CANCEL: "cancel",
    CLOSE: "close",
    GETSOCKNAME: "getsockname",
    GETPEERNAME: "getpeername",
    SETSOCKOPT: "setsockopt",
    GETSOCKOPT: "getsockopt",
    PING: "ping",
    IFSTATUS: "ifstatus",
    LISTEN: "listen",
    ACCEPT: "accept",
    SHUTDOWN: "shutdown",
}

SOCK_STREAM: Final = 1  # Python's socket.SOCK_STREAM
SOCK_DGRAM: Final = 2  # Python's socket.SOCK_DGRAM
SOCK_TYPES: Final = (SOCK_STREAM, SOCK_DGRAM)

#: The largest datagram: a 1500-byte MTU less the IP and UDP headers (no fragmentation).
MAX_DGRAM: Final = 1472
#: The most data one SENDTO or RECVFROM carries (a stream's short count; the rest
#: of an 8 KiB message is the codec's).
MAX_IO: Final = 7680
#: The largest ``max`` a RECVFROM may ask for (more is no error: it is cut to this).
MAX_RECV: Final = MAX_IO
#: The largest PING payload (the MTU less the IP and ICMP headers).
MAX_PING: Final = 1472
#: The longest a request may wait (s); longer is refused EINVAL, absent waits forever.
MAX_TIMEOUT: Final = 86400.0
MAX_SOCK: Final = (1 << 31) - 1
#: Socket options INET supports, by SO_/IP_ name lowercased; values are integers.
SOCKOPTS: Final = ("reuseaddr", "broadcast", "rcvbuf", "nodelay")
SHUT_RD: Final = 0
SHUT_WR: Final = 1
SHUT_RDWR: Final = 2
MAX_BACKLOG: Final = 128

Fields = Mapping[str, object]


# ----------------------------------------------------------------- field readers
def get_addr(fields: Fields, name: str) -> str:
    """A dotted-quad IPv4 address (``0.0.0.0`` allowed), normalised."""
    text = get_name(fields, name, 15)
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise FieldError(f"field {name!r}={text!r} is not an IPv4 address") from None


def get_port(fields: Fields, name: str = "port", default: int | None = None) -> int:
    if default is None:
        return get_int(fields, name, 0, 0xFFFF)
    return get_int(fields, name, 0, 0xFFFF, default)


def get_timeout(fields: Fields, name: str = "timeout") -> float | None:
    """Seconds (int or float, 0..MAX_TIMEOUT), or None when absent or None: wait forever."""
    value = fields.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FieldError(f"field {name!r} must be a number of seconds, not {type(value).__name__}")
    seconds = float(value)
    if math.isnan(seconds) or not 0.0 <= seconds <= MAX_TIMEOUT:
        raise FieldError(f"field {name!r}={value} is outside 0..{MAX_TIMEOUT:g} s")
    return seconds


def _sock(fields: Fields) -> int:
    return get_int(fields, "sock", 0, MAX_SOCK)


# ----------------------------------------------------------------- typed requests
# Built from a request's fields; a bad field raises FieldError, which INET answers
# with EINVAL and the reason. Values well-formed but refused (an unknown socket, a
# port in use) are INET's to check, with their own errno.


@dataclass(frozen=True)
class Socket:
    type: int

    @classmethod
    def from_fields(cls, f: Fields) -> Socket:
        kind = get_int(f, "type", 0, 0xFFFF)
        if kind not in SOCK_TYPES:
            raise FieldError(f"field 'type'={kind} is not SOCK_DGRAM or SOCK_STREAM")
        return cls(kind)


@dataclass(frozen=True)
class Sock:
    """CANCEL, CLOSE, GETSOCKNAME, GETPEERNAME."""

    sock: int

    @classmethod
    def from_fields(cls, f: Fields) -> Sock:
        return cls(_sock(f))


@dataclass(frozen=True)
class Address:
    """BIND and CONNECT (``timeout``: a stream's CONNECT)."""

    sock: int
    addr: str
    port: int
    timeout: float | None = None

    @classmethod
    def from_fields(cls, f: Fields) -> Address:
        return cls(_sock(f), get_addr(f, "addr"), get_port(f), get_timeout(f))


@dataclass(frozen=True)
class Listen:
    sock: int
    backlog: int

    @classmethod
    def from_fields(cls, f: Fields) -> Listen:
        backlog = get_int(f, "backlog", -(1 << 31), (1 << 31) - 1, 5)
        return cls(_sock(f), max(1, min(backlog, MAX_BACKLOG)))


@dataclass(frozen=True)
class Accept:
    sock: int
    timeout: float | None

    @classmethod
    def from_fields(cls, f: Fields) -> Accept:
        return cls(_sock(f), get_timeout(f))


@dataclass(frozen=True)
class Shutdown:
    sock: int
    how: int

    @classmethod
    def from_fields(cls, f: Fields) -> Shutdown:
        return cls(_sock(f), get_int(f, "how", SHUT_RD, SHUT_RDWR))


@dataclass(frozen=True)
class SendTo:
    """``addr`` None: to the connected peer (SEND); ``timeout``: how long a stream's
    SEND waits for room in its buffer."""

    sock: int
    data: bytes
    addr: str | None
    port: int
    timeout: float | None = None

    @classmethod
    def from_fields(cls, f: Fields) -> SendTo:
        data = get_bytes(f, "data", MAX_IO)
        timeout = get_timeout(f)
        if "addr" in f:
            return cls(_sock(f), data, get_addr(f, "addr"), get_port(f), timeout)
        if "port" in f:
            raise FieldError("field 'port' without 'addr'")
        return cls(_sock(f), data, None, 0, timeout)


@dataclass(frozen=True)
class RecvFrom:
    sock: int
    max: int
    timeout: float | None

    @classmethod
    def from_fields(cls, f: Fields) -> RecvFrom:
        limit = get_int(f, "max", 0, 1 << 31)
        return cls(_sock(f), min(limit, MAX_RECV), get_timeout(f))


@dataclass(frozen=True)
class SockOpt:
    """SETSOCKOPT (``value`` given) and GETSOCKOPT (``value`` None)."""

    sock: int
    name: str
    value: int | None

    @classmethod
    def from_fields(cls, f: Fields) -> SockOpt:
        name = get_name(f, "name", 32)
        value = get_int(f, "value", -(1 << 31), (1 << 31) - 1) if "value" in f else None
        return cls(_sock(f), name, value)


@dataclass(frozen=True)
class Ping:
    addr: str
    timeout: float
    size: int

    @classmethod
    def from_fields(cls, f: Fields) -> Ping:
        timeout = get_timeout(f)
        return cls(
            get_addr(f, "addr"),
            1.0 if timeout is None else timeout,
            get_int(f, "size", 0, MAX_PING, 56),
        )


@dataclass(frozen=True)
class IfStatus:
    @classmethod
    def from_fields(cls, f: Fields) -> IfStatus:
        return cls()


Request = (
    Socket | Sock | Address | SendTo | RecvFrom | SockOpt | Ping | IfStatus | Listen | Accept
    | Shutdown
)  # fmt: skip

_PARSERS: Final[dict[int, Callable[[Fields], Request]]] = {
    SOCKET: Socket.from_fields,
    BIND: Address.from_fields,
    CONNECT: Address.from_fields,
    SENDTO: SendTo.from_fields,
    RECVFROM: RecvFrom.from_fields,
    CANCEL: Sock.from_fields,
    CLOSE: Sock.from_fields,
    GETSOCKNAME: Sock.from_fields,
    GETPEERNAME: Sock.from_fields,
    SETSOCKOPT: SockOpt.from_fields,
    GETSOCKOPT: SockOpt.from_fields,
    PING: Ping.from_fields,
    IFSTATUS: IfStatus.from_fields,
    LISTEN: Listen.from_fields,
    ACCEPT: Accept.from_fields,
    SHUTDOWN: Shutdown.from_fields,
}


def is_request(m_type: int) -> bool:
    return m_type in _PARSERS


def parse(m_type: int, fields: Fields) -> Request:
    """The typed request of a message; FieldError names the bad field (or the type)."""
    parser = _PARSERS.get(m_type)
    if parser is None:
        raise FieldError(f"message type {m_type:#x} is not an INET request")
    if m_type == SETSOCKOPT and "value" not in fields:
        raise FieldError("field 'value' is missing")
    return parser(fields)
