"""The types INET's socket table and its stream half share: a socket, a request
waiting on it, and a refusal."""

from __future__ import annotations

import errno as pyerrno
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from hwl.errors import Refusal
from hwl.proto.errno import Errno
from hwl.proto.inet import SOCK_STREAM
from hwl.servers.inet import udp
from hwl.servers.inet.tcp.connection import Connection
from hwl.servers.inet.tcp.tcp import Listener

RCVBUF_UNIT: Final = 2048
"""SO_RCVBUF bytes per queued datagram: the queue holds rcvbuf // RCVBUF_UNIT."""
DEFAULT_OPTS: Final = {"reuseaddr": 0, "broadcast": 0, "rcvbuf": udp.QUEUE_LEN * RCVBUF_UNIT,
                       "nodelay": 0}  # fmt: skip


class Refused(Refusal):
    """A request answered ``-errno`` at once, with a reason."""


def minix_errno(exc: OSError) -> Errno:
    """The MINIX errno of an OSError the stack raised (Python's numbering), by name."""
    name = pyerrno.errorcode.get(exc.errno or 0, "EIO")
    return Errno.__members__.get(name, Errno.EIO)


@dataclass
class Waiter:
    """A client's request waiting on a socket, answered late: ``kind`` is RECVFROM's
    "recv", or on a stream "send" (``data`` not yet taken), "accept" or "connect"."""

    client: int
    max: int
    deadline: float | None
    kind: str = "recv"
    data: bytes = b""


@dataclass
class Sock:
    ident: int
    owner: int
    type: int
    udp: udp.UdpSocket | None = None
    peer: tuple[bytes, int] | None = None
    opts: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_OPTS))
    waiters: deque[Waiter] = field(default_factory=deque)
    # stream sockets
    local: tuple[bytes, int] | None = None  # bound, before listen or connect
    conn: Connection | None = None
    listener: Listener | None = None
    shut_rd: bool = False

    @property
    def stream(self) -> bool:
        return self.type == SOCK_STREAM


@dataclass
class PingWait:
    client: int
    seq: int
    deadline: float
