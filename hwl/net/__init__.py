"""The INET client: AF_INET sockets (UDP and TCP) that mirror Python's :mod:`socket`.

>>> net = hwl.net.attach(run_dir)          # a user process, through kernel.sock
>>> with hwl.net.socket(hwl.net.AF_INET, hwl.net.SOCK_DGRAM) as s:
...     s.settimeout(2.0)
...     s.sendto(b"hello", ("10.0.2.2", 7))
...     data, peer = s.recvfrom(2048)
>>> rtt = hwl.net.ping("10.0.2.2", timeout=1.0)

INET is found through RS (label ``inet``), as :class:`hwl.system.vfs.Vfs` finds VFS.
A process started by hwl's kernel (a service) uses its own connection; any other
attaches first (:func:`attach`) or passes ``inet=`` to each call. The requests are
:mod:`hwl.proto.inet`'s; a blocking receive is a request INET answers late, with
its timeout in the request (INET answers ETIMEDOUT itself). Errors are
:class:`OSError` with Python's errno (so ``TimeoutError``, ``BlockingIOError``,
``ConnectionRefusedError`` ... as Python's own sockets raise them). A stream's
``send`` moves at most :data:`hwl.proto.inet.MAX_IO` bytes per request (a short
count); ``sendall`` loops.
"""

from __future__ import annotations

from hwl.net.client import (
    AF_INET,
    INADDR_ANY,
    IPPROTO_TCP,
    IPPROTO_UDP,
    SHUT_RD,
    SHUT_RDWR,
    SHUT_WR,
    SO_BROADCAST,
    SO_RCVBUF,
    SO_REUSEADDR,
    SOCK_DGRAM,
    SOCK_STREAM,
    SOL_SOCKET,
    TCP_NODELAY,
    Inet,
    attach,
    default,
    ifstatus,
    ping,
    socket,
    timeout,
)

__all__ = [
    "AF_INET",
    "INADDR_ANY",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "SHUT_RD",
    "SHUT_RDWR",
    "SHUT_WR",
    "SOCK_DGRAM",
    "SOCK_STREAM",
    "SOL_SOCKET",
    "SO_BROADCAST",
    "SO_RCVBUF",
    "SO_REUSEADDR",
    "TCP_NODELAY",
    "Inet",
    "attach",
    "default",
    "ifstatus",
    "ping",
    "socket",
    "timeout",
]
