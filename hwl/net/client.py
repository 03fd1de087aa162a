"""The INET client's calls and its socket class (see :mod:`hwl.net`)."""

from __future__ import annotations

import contextlib
import errno as pyerrno
import os
import socket as _pysocket
from pathlib import Path
from typing import Any, Final

from hwl.ipc.client import Connection, IpcError, Message
from hwl.proto import codec, wire
from hwl.proto import inet as ip
from hwl.proto.errno import Errno
from hwl.system import call
from hwl.system.call import Attachable, request
from hwl.system.rs import Rs, RsError

AF_INET: Final = _pysocket.AF_INET
SOCK_STREAM: Final = ip.SOCK_STREAM
SOCK_DGRAM: Final = ip.SOCK_DGRAM
IPPROTO_UDP: Final = _pysocket.IPPROTO_UDP
IPPROTO_TCP: Final = _pysocket.IPPROTO_TCP
TCP_NODELAY: Final = _pysocket.TCP_NODELAY
SHUT_RD: Final = ip.SHUT_RD
SHUT_WR: Final = ip.SHUT_WR
SHUT_RDWR: Final = ip.SHUT_RDWR
SOL_SOCKET: Final = _pysocket.SOL_SOCKET
SO_REUSEADDR: Final = _pysocket.SO_REUSEADDR
SO_BROADCAST: Final = _pysocket.SO_BROADCAST
SO_RCVBUF: Final = _pysocket.SO_RCVBUF
INADDR_ANY: Final = "0.0.0.0"
timeout = _pysocket.timeout  # TimeoutError, as Python's socket.timeout is

#: (level, option) -> INET's option name
_OPTIONS: Final = {
    (SOL_SOCKET, SO_REUSEADDR): "reuseaddr",
    (SOL_SOCKET, SO_BROADCAST): "broadcast",
    (SOL_SOCKET, SO_RCVBUF): "rcvbuf",
    (IPPROTO_TCP, TCP_NODELAY): "nodelay",
}
#: Slack on a timed request's IPC wait beyond its own timeout (INET answers first).
IPC_SLACK: Final = 5.0


def os_error(minix: Errno, what: str, detail: str = "") -> OSError:
    """An OSError with Python's errno for MINIX's ``minix`` (by name), so Python picks
    the subclass (TimeoutError, BlockingIOError, ...); EIO when Python has no such name."""
    number = getattr(pyerrno, minix.name, pyerrno.EIO)
    text = f"{what}: {os.strerror(number)}" + (f" ({detail})" if detail else "")
    return OSError(number, text)


class Inet(Attachable):
    """INET at ``endpoint`` (looked up at RS as ``inet`` if None), called over ``conn``."""

    def __init__(self, conn: Connection, endpoint: int | None = None) -> None:
        self.conn = conn
        if endpoint is None:
            try:
                endpoint = Rs(conn, timeout=10).lookup("inet")
            except RsError as exc:
                raise os_error(exc.errno, "inet lookup", exc.detail) from exc
        self.endpoint = endpoint

    @classmethod
    def attach(cls, run_dir: str | Path) -> Inet:
        return call.attach(run_dir, cls)

    def call(
        self, m_type: int, fields: dict[str, codec.Value], wait: float | None = 10.0
    ) -> Message:
        """One request; ``wait`` bounds the IPC (None: as long as INET takes). A
        negative answer raises OSError. A request interrupted or timed out on the
        IPC side is cancelled at INET, so no late answer is left behind."""
        return request(
            self.conn, self.endpoint, m_type, fields,
            call=ip.REQUEST_NAMES.get(m_type, hex(m_type)), server="INET", error=os_error,
            timeout=wait, counts=True, timed_out=Errno.ETIMEDOUT,
            abandon=lambda: self._cancel(fields),
        )  # fmt: skip

    def _cancel(self, fields: dict[str, codec.Value]) -> None:
        sock = fields.get("sock", 0)
        with contextlib.suppress(IpcError, KeyboardInterrupt):
            self.conn.sendrec(self.endpoint, ip.CANCEL, {"sock": sock}, timeout=2.0)


_default: Inet | None = None


def attach(run_dir: str | Path) -> Inet:
    """Attach to the machine in ``run_dir``; the result is the default for calls
    that get no ``inet=``."""
    global _default
    _default = Inet.attach(run_dir)
    return _default


def default() -> Inet:
    """The attached INET, or (in a process hwl's kernel started) its own connection's."""
    global _default
    if _default is None:
        if wire.ENV_FD not in os.environ:
            raise OSError(pyerrno.ENOTCONN, "hwl.net: call hwl.net.attach(run_dir) first")
        _default = Inet(Connection.from_env())
    return _default


def _addr(address: object, what: str) -> tuple[str, int]:
    """A (host, port) tuple with a dotted-quad host ("" is INADDR_ANY)."""
    if not isinstance(address, tuple) or len(address) != 2:
        raise TypeError(f"{what}: AF_INET address must be a tuple (host, port)")
    host, port = address
    if not isinstance(host, str) or not isinstance(port, int) or isinstance(port, bool):
        raise TypeError(f"{what}: AF_INET address must be (str, int)")
    if not 0 <= port <= 0xFFFF:
        raise OverflowError(f"{what}: port must be 0-65535.")
    host = host or INADDR_ANY
    if host == "<broadcast>":
        host = "255.255.255.255"
    try:
        _pysocket.inet_pton(AF_INET, host)
    except OSError:
        raise _pysocket.gaierror(_pysocket.EAI_NONAME, f"{host!r}: hwl.net has no resolver; "
                                 "use a dotted quad") from None  # fmt: skip
    return host, port


def ping(addr: str, timeout: float = 1.0, size: int = 56, *, inet: Inet | None = None) -> float:
    """An ICMP echo to ``addr`` through INET; the round trip in seconds, or
    TimeoutError when no reply came within ``timeout``."""
    net = inet or default()
    host, _ = _addr((addr, 0), "ping")
    reply = net.call(ip.PING, {"addr": host, "timeout": float(timeout), "size": size},
                     wait=timeout + IPC_SLACK)  # fmt: skip
    rtt = reply.get("rtt")
    assert isinstance(rtt, float)
    return rtt


def ifstatus(*, inet: Inet | None = None) -> dict[str, codec.Value]:
    """INET's interfaces (driver state, addresses, port figures) and its counters."""
    return dict((inet or default()).call(ip.IFSTATUS, {}).fields)


class socket:
    """An AF_INET socket at INET; see :mod:`hwl.net`."""

    def __init__(
        self,
        family: int = AF_INET,
        type: int = SOCK_DGRAM,  # socket.socket's own name
        proto: int = 0,
        *,
        inet: Inet | None = None,
        _ident: int | None = None,
    ) -> None:
        if family != AF_INET:
            raise OSError(pyerrno.EAFNOSUPPORT, "hwl.net has AF_INET only")
        if proto not in (0, IPPROTO_UDP if type == SOCK_DGRAM else IPPROTO_TCP):
            raise OSError(pyerrno.EPROTONOSUPPORT, f"protocol {proto}")
        self.inet = inet or default()
        self.family, self.type, self.proto = family, type, proto
        self._timeout: float | None = _pysocket.getdefaulttimeout()
        self._sock: int | None = None
        if _ident is None:
            _ident = self.inet.call(ip.SOCKET, {"type": type}).m_type
        self._sock = _ident

    def __repr__(self) -> str:
        return f"<hwl.net.socket sock={self._sock} type={self.type}>"

    def fileno(self) -> int:
        return -1 if self._sock is None else self._sock

    def _id(self) -> int:
        if self._sock is None:
            raise OSError(pyerrno.EBADF, "Bad file descriptor")
        return self._sock

    def _call(self, m_type: int, wait: float | None = 10.0, **fields: Any) -> Message:
        return self.inet.call(m_type, {"sock": self._id(), **fields}, wait)

    def _timed(self, m_type: int, **fields: Any) -> Message:
        """A request INET may answer late: the socket's timeout goes with it (INET
        answers ETIMEDOUT itself), and the IPC waits a little longer."""
        wait: float | None = None
        if self._timeout is not None:
            fields["timeout"] = self._timeout
            wait = self._timeout + IPC_SLACK
        try:
            return self._call(m_type, wait, **fields)
        except TimeoutError:
            raise timeout("timed out") from None

    # ----------------------------------------------------------------- timeouts
    def settimeout(self, value: float | None) -> None:
        if value is not None:
            value = float(value)
            if value < 0:
                raise ValueError("Timeout value out of range")
        self._timeout = value

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0

    def getblocking(self) -> bool:
        return self._timeout != 0.0

    # ----------------------------------------------------------------- addresses
    def bind(self, address: tuple[str, int]) -> None:
        host, port = _addr(address, "bind")
        self._call(ip.BIND, addr=host, port=port)

    def connect(self, address: tuple[str, int]) -> None:
        host, port = _addr(address, "connect")
        if self.type == SOCK_STREAM:
            self._timed(ip.CONNECT, addr=host, port=port)
        else:
            self._call(ip.CONNECT, addr=host, port=port)

    def listen(self, backlog: int = 5) -> None:
        self._call(ip.LISTEN, backlog=backlog)

    def accept(self) -> tuple[socket, tuple[str, int]]:
        reply = self._timed(ip.ACCEPT)
        new = socket(self.family, self.type, self.proto, inet=self.inet, _ident=reply.m_type)
        new._timeout = self._timeout if self._timeout != 0.0 else None
        return new, self._address(reply)

    def shutdown(self, how: int) -> None:
        self._call(ip.SHUTDOWN, how=how)

    def connect_ex(self, address: tuple[str, int]) -> int:
        try:
            self.connect(address)
        except OSError as exc:
            return exc.errno or pyerrno.EIO
        return 0

    def getsockname(self) -> tuple[str, int]:
        return self._address(self._call(ip.GETSOCKNAME))

    def getpeername(self) -> tuple[str, int]:
        return self._address(self._call(ip.GETPEERNAME))

    @staticmethod
    def _address(reply: Message) -> tuple[str, int]:
        addr, port = reply.get("addr", "0.0.0.0"), reply.get("port", 0)
        assert isinstance(addr, str) and isinstance(port, int)
        return addr, port

    # ----------------------------------------------------------------- options
    def setsockopt(self, level: int, optname: int, value: int | bytes) -> None:
        name = self._option(level, optname)
        if isinstance(value, bytes):
            value = int.from_bytes(value[:4], "little")
        self._call(ip.SETSOCKOPT, name=name, value=int(value))

    def getsockopt(self, level: int, optname: int) -> int:
        value = self._call(ip.GETSOCKOPT, name=self._option(level, optname)).get("value")
        assert isinstance(value, int)
        return value

    @staticmethod
    def _option(level: int, optname: int) -> str:
        name = _OPTIONS.get((level, optname))
        if name is None:
            raise OSError(pyerrno.ENOPROTOOPT, f"option ({level}, {optname}) is not INET's")
        return name

    # ----------------------------------------------------------------- data
    def sendto(self, data: bytes, *args: Any) -> int:
        """``sendto(data, address)`` or ``sendto(data, flags, address)``."""
        if len(args) not in (1, 2):
            raise TypeError("sendto() takes 2 or 3 arguments")
        host, port = _addr(args[-1], "sendto")
        if len(bytes(data)) > ip.MAX_DGRAM:
            raise OSError(pyerrno.EMSGSIZE, "Message too long")
        return self._call(ip.SENDTO, data=bytes(data), addr=host, port=port).m_type

    def send(self, data: bytes | bytearray | memoryview, flags: int = 0) -> int:
        """A datagram to the connected peer; on a stream, what INET's buffer took of
        the first MAX_IO bytes (waiting for room as the timeout allows)."""
        if self.type == SOCK_STREAM:
            return self._timed(ip.SENDTO, data=bytes(memoryview(data)[: ip.MAX_IO])).m_type
        if len(bytes(data)) > ip.MAX_DGRAM:
            raise OSError(pyerrno.EMSGSIZE, "Message too long")
        return self._call(ip.SENDTO, data=bytes(data)).m_type

    def sendall(self, data: bytes | bytearray | memoryview, flags: int = 0) -> None:
        view = memoryview(data).cast("B")
        if self.type != SOCK_STREAM:
            self.send(view)
            return
        while view:
            view = view[self.send(view) :]

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, tuple[str, int]]:
        if bufsize < 0:
            raise ValueError("negative buffersize in recvfrom")
        reply = self._timed(ip.RECVFROM, max=bufsize)
        data = reply.get("data")
        assert isinstance(data, bytes)
        return data, self._address(reply)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        return self.recvfrom(bufsize, flags)[0]

    def recv_into(self, buffer: bytearray | memoryview, nbytes: int = 0, flags: int = 0) -> int:
        return self.recvfrom_into(buffer, nbytes, flags)[0]

    def recvfrom_into(
        self, buffer: bytearray | memoryview, nbytes: int = 0, flags: int = 0
    ) -> tuple[int, tuple[str, int]]:
        view = memoryview(buffer).cast("B")
        n = nbytes or len(view)
        if n > len(view):
            raise ValueError("nbytes is greater than the length of the buffer")
        data, peer = self.recvfrom(min(n, ip.MAX_RECV), flags)
        view[: len(data)] = data
        return len(data), peer

    # ----------------------------------------------------------------- lifetime
    def close(self) -> None:
        if self._sock is not None:
            try:
                self._call(ip.CLOSE)
            finally:
                self._sock = None

    def detach(self) -> int:
        sock, self._sock = self.fileno(), None
        return sock

    def __enter__(self) -> socket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
