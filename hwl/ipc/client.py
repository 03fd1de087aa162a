"""The process side of IPC: one connection to the kernel, one call at a time.

A process gets its connection either inherited from the kernel that started it
(``Connection.from_env()``) or by attaching to the kernel's socket as a user
process (``Connection.attach(path)``). The kernel's first frame says who the
process is and carries its arena. Every call is one request frame and one
response frame; a call with a timeout that runs out is cancelled in the kernel,
so the connection stays in step.

A server's reply may wait to travel with its next receive (SEF's kept reply):
whoever keeps one sets ``before_block``, and the connection runs it once before
any call that may block (every receive, send, sendrec and reply_receive, on the
kernel path or a channel, and the kernel calls that wait for the machine,
:data:`BLOCKING_KCALLS`), so a kept reply never waits behind anything else.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hwl.errors import CallError, HwlError
from hwl.ipc import channels as chan
from hwl.ipc import codec, wire
from hwl.ipc.arena import CHANNEL_WAIT, CHANNEL_WAIT_AT, Arena
from hwl.ipc.kcalls import KernelCalls
from hwl.proto.errno import Errno, errno_of

log = logging.getLogger(__name__)

Fields = Mapping[str, codec.Value]
_REQUEST = wire.REQUEST.pack
_RESPONSE = wire.RESPONSE.unpack_from
_HEADER = wire.RESPONSE.size
_MESSAGE = int(wire.Kind.MESSAGE)
_MAX_PAYLOAD = wire.MAX_PAYLOAD

#: The kernel calls whose answer waits for the machine (the kernel defers it).
BLOCKING_KCALLS: frozenset[str] = frozenset({"devio", "vdevio", "sdevio"})
_BLOCKING_NUMBERS = frozenset(wire.KERNEL_CALL_NUMBERS[name] for name in BLOCKING_KCALLS)


class IpcError(CallError):
    """A call failed: ``errno`` is the MINIX error, ``detail`` the kernel's reason."""


class IpcTimeout(IpcError):
    """A call's timeout ran out; the kernel cancelled it (EINTR)."""


class KernelGone(HwlError, ConnectionError):
    """The connection to the kernel closed: the kernel stopped, or cut us off."""


@dataclass(slots=True)
class Message:
    """A received message. ``fields`` decodes the payload on first use."""

    source: int
    m_type: int
    payload: bytes = b""
    _fields: dict[str, codec.Value] | None = field(default=None, repr=False)
    reply_errno: Errno | None = None  # set by reply_receive: the reply's failure

    @property
    def fields(self) -> dict[str, codec.Value]:
        if self._fields is None:
            self._fields = codec.decode(self.payload)
        return self._fields

    def __getitem__(self, name: str) -> codec.Value:
        return self.fields[name]

    def get(self, name: str, default: codec.Value = None) -> codec.Value:
        return self.fields.get(name, default)

    @property
    def is_notify(self) -> bool:
        return self.m_type == wire.NOTIFY_MESSAGE


def _payload(fields: Fields | bytes | None) -> bytes:
    if fields is None:
        return b""
    if isinstance(fields, bytes):
        return fields
    return codec.encode(fields)


class Connection(KernelCalls):
    """This process's link to the kernel: IPC primitives and kernel calls."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()
        frame, fds, _flags, _addr = socket.recv_fds(sock, wire.MAX_RESPONSE, 1)
        if not frame:
            raise KernelGone("the kernel closed the connection before saying hello")
        kind = frame[0]
        if kind != wire.Kind.HELLO or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise HwlError(f"the kernel's first frame is not a hello (kind {kind}, {len(fds)} fds)")
        hello = codec.decode(frame[_HEADER:])
        self.endpoint = int(hello["endpoint"])  # type: ignore[arg-type]
        self.label = str(hello["label"])
        self.parent = int(hello["parent"])  # type: ignore[arg-type]
        self.system = bool(hello["system"])
        # The root process (RS, or the kernel's starter): where user processes find RS.
        self.root_endpoint = int(hello.get("root", wire.NONE))  # type: ignore[arg-type]
        self.arena = Arena(fds[0])
        self.closed = False
        # Call channels (hwl.ipc.channels): ours to servers, and the ones we serve.
        self._channels = chan.ClientChannels(self._wait_word()) if chan.enabled() else None
        self._server: chan.ChannelServer | None = None
        # Run once before the next call that may block (a kept reply's send).
        self.before_block: Callable[[], None] | None = None

    @property
    def in_call(self) -> bool:
        """Whether a call is under way: a signal handler must not start another."""
        return self._lock.locked()

    @classmethod
    def from_env(cls) -> Connection:
        """The connection a process started by the kernel inherited."""
        value = os.environ.get(wire.ENV_FD)
        if value is None:
            raise HwlError(
                f"${wire.ENV_FD} is not set: this process was not started by hwl's kernel"
            )
        fd = int(value)
        os.set_inheritable(fd, False)
        return cls(socket.socket(fileno=fd))

    @classmethod
    def attach(cls, path: str | Path) -> Connection:
        """Attach to a running kernel as a user process."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.connect(str(path))
            return cls(sock)
        except BaseException:
            sock.close()
            raise

    # ---------------------------------------------------------------- frames
    def _unblock(self) -> None:
        """Run ``before_block`` once (it is cleared first: it may call us back)."""
        hook = self.before_block
        if hook is not None:
            self.before_block = None
            hook()

    def _call_fds(self, frame: bytes, what: str, most: int = 4) -> tuple[bytes, list[int]]:
        """One request and its response, with the file descriptors riding on it
        (the caller owns and closes them)."""
        with self._lock:
            if self.closed:
                raise KernelGone("this connection is closed")
            try:
                self.sock.send(frame)
                answer, fds, _flags, _addr = socket.recv_fds(self.sock, wire.MAX_RESPONSE, most)
            except OSError as exc:
                raise KernelGone(f"{what}: the kernel connection failed: {exc}") from exc
        if not answer:
            raise KernelGone(f"{what}: the kernel closed the connection")
        return answer, fds

    def _call(self, frame: bytes, what: str, timeout: float | None = None) -> bytes:
        with self._lock:
            if self.closed:
                raise KernelGone("this connection is closed")
            sock = self.sock
            try:
                sock.send(frame)
                if timeout is None:
                    answer = sock.recv(wire.MAX_RESPONSE)
                else:
                    sock.settimeout(timeout)
                    try:
                        answer = sock.recv(wire.MAX_RESPONSE)
                    except TimeoutError:
                        # Cancel; exactly one frame still comes: the answer (if it
                        # was on its way) or EINTR.
                        sock.settimeout(None)
                        sock.send(_REQUEST(wire.Op.CANCEL, 0, 0, 0, 0))
                        answer = sock.recv(wire.MAX_RESPONSE)
                    finally:
                        sock.settimeout(None)
            except OSError as exc:
                raise KernelGone(f"{what}: the kernel connection failed: {exc}") from exc
        if not answer:
            raise KernelGone(f"{what}: the kernel closed the connection")
        return answer

    def _status(self, answer: bytes, what: str) -> int:
        """Raise for an error status; return the response's m_type."""
        _kind, _flags, _spare, status, _source, m_type = _RESPONSE(answer)
        if status < 0:
            raise self._error(status, answer, what, None)
        return int(m_type)

    @staticmethod
    def _error(status: int, answer: bytes, what: str, timeout: float | None) -> IpcError:
        errno = errno_of(status)
        detail = ""
        if len(answer) > _HEADER:
            try:
                detail = str(codec.decode(answer[_HEADER:]).get("error", ""))
            except codec.CodecError:
                detail = ""
        if errno is Errno.EINTR and timeout is not None:
            return IpcTimeout(errno, what, f"no answer within {timeout} s")
        return IpcError(errno, what, detail)

    def _message(self, answer: bytes, what: str, timeout: float | None) -> Message:
        kind, _flags, reply_errno, status, source, m_type = _RESPONSE(answer)
        if status < 0 or kind != wire.Kind.MESSAGE:
            raise self._error(status or -Errno.EGENERIC, answer, what, timeout)
        message = Message(source, m_type, answer[_HEADER:])
        if reply_errno:  # only after a reply_receive whose reply was not taken
            message.reply_errno = errno_of(reply_errno)
        return message

    # ------------------------------------------------------------ primitives
    def send(self, dest: int, m_type: int, fields: Fields | bytes | None = None) -> None:
        """Send and wait until ``dest`` has taken the message."""
        if self.before_block is not None:
            self._unblock()
        self._status(
            self._call(_REQUEST(wire.Op.SEND, 0, 0, dest, m_type) + _payload(fields), "send"),
            "send",
        )

    def sendnb(self, dest: int, m_type: int, fields: Fields | bytes | None = None) -> None:
        """Send only if ``dest`` is waiting for it (else ENOTREADY): replies of servers.
        The reply to a call that came on a channel goes back on it."""
        server = self._server
        if server is not None and server.owes(dest):
            errno = server.reply(self.endpoint, dest, m_type, _payload(fields))
            if errno is not None:
                raise IpcError(errno, "sendnb", "the reply on the call channel was not taken")
            return
        frame = _REQUEST(wire.Op.SENDNB, 0, 0, dest, m_type) + _payload(fields)
        self._status(self._call(frame, "sendnb"), "sendnb")

    def receive(self, source: int = wire.ANY, timeout: float | None = None) -> Message:
        """The next message from ``source`` (or anyone): notifications first. A
        channel server's receive from anyone also takes its channels' calls; a
        receive from one endpoint takes only the kernel path's messages."""
        if self.before_block is not None:
            self._unblock()
        if self._server is not None and source == wire.ANY:
            return self._serve(None, timeout)
        answer = self._call(_REQUEST(wire.Op.RECEIVE, 0, 0, source, 0), "receive", timeout)
        return self._message(answer, "receive", timeout)

    def sendrec(
        self,
        dest: int,
        m_type: int,
        fields: Fields | bytes | None = None,
        timeout: float | None = None,
    ) -> Message:
        """Send, then receive the reply from ``dest``: on a call channel if there is
        one (made on the first call to a server that serves them)."""
        if self.before_block is not None:
            self._unblock()
        channels = self._channels
        if channels is not None:
            payload = fields if isinstance(fields, bytes) else _payload(fields)
            if dest not in channels.socks and channels.wants(dest):
                self._open_channel(channels, dest)
            if dest in channels.socks:
                answer = self._channel_call(channels, dest, m_type, payload, timeout)
                if answer is not None:
                    kind, _flags, _ident, status, source, reply_type = _RESPONSE(answer)
                    if status < 0 or kind != _MESSAGE:
                        raise self._error(status or -Errno.EGENERIC, answer, "sendrec", timeout)
                    return Message(source, reply_type, answer[_HEADER:])
            fields = payload
        frame = _REQUEST(wire.Op.SENDREC, 0, 0, dest, m_type) + _payload(fields)
        return self._message(self._call(frame, "sendrec", timeout), "sendrec", timeout)

    def reply_receive(
        self, dest: int, m_type: int, fields: Fields | bytes | None = None
    ) -> Message:
        """A server's reply to ``dest`` (sent only if it waits for it, as ``sendnb``)
        and its next receive from anyone, in one round trip to the kernel. The
        reply's fate is ``reply_errno`` of the returned message (None: taken)."""
        if self.before_block is not None:
            self._unblock()  # a reply kept before this one leaves first
        server = self._server
        if server is not None:
            if dest in server.owed:
                payload = fields if isinstance(fields, bytes) else _payload(fields)
                errno = server.reply(self.endpoint, dest, m_type, payload)
                message = self._serve(None, None)
                if errno is not None:
                    message.reply_errno = errno
                return message
            first = _REQUEST(wire.Op.REPLY_RECEIVE, wire.FLAG_NONBLOCK, 0, dest, m_type)
            return self._serve(first + _payload(fields), None)
        frame = _REQUEST(wire.Op.REPLY_RECEIVE, 0, 0, dest, m_type) + _payload(fields)
        return self._message(self._call(frame, "reply_receive"), "reply_receive", None)

    def notify(self, dest: int) -> None:
        """A non-blocking notification; several before a receive arrive as one."""
        self._status(self._call(_REQUEST(wire.Op.NOTIFY, 0, 0, dest, 0), "notify"), "notify")

    def senda(
        self, dest: int, m_type: int, fields: Fields | bytes | None = None, *, notify: bool = False
    ) -> int:
        """Queue a message without blocking; returns its ident for ``async_status``.
        With ``notify`` the kernel notifies this process (from ASYNCM) on delivery."""
        flags = wire.FLAG_NOTIFY_DONE if notify else 0
        frame = _REQUEST(wire.Op.SENDA, flags, 0, dest, m_type) + _payload(fields)
        return self._status(self._call(frame, "senda"), "senda")

    def async_status(self, ident: int) -> Errno | None:
        """None once delivered, EINPROGRESS while queued, else the error."""
        answer = self._call(_REQUEST(wire.Op.ASYNC_STATUS, 0, 0, ident, 0), "async_status")
        status = _RESPONSE(answer)[3]
        if status == 0:
            return None
        if status == -Errno.EINVAL:
            raise self._error(status, answer, f"async_status({ident})", None)
        return errno_of(status)

    def kcall(self, name: str, fields: Fields | None = None) -> dict[str, codec.Value]:
        number = wire.KERNEL_CALL_NUMBERS.get(name)
        if number is None:
            raise ValueError(f"no kernel call named {name!r}")
        if self.before_block is not None and number in _BLOCKING_NUMBERS:
            self._unblock()
        answer = self._call(_REQUEST(wire.Op.KCALL, 0, 0, 0, number) + _payload(fields), name)
        self._status(answer, name)
        return codec.decode(answer[_HEADER:]) if len(answer) > _HEADER else {}

    def kcall_fds(
        self, name: str, fields: Fields | None = None
    ) -> tuple[dict[str, codec.Value], list[int]]:
        """A kernel call whose reply carries file descriptors (dmamap); the caller
        owns and closes them."""
        number = wire.KERNEL_CALL_NUMBERS[name]
        answer, fds = self._call_fds(
            _REQUEST(wire.Op.KCALL, 0, 0, 0, number) + _payload(fields), name
        )
        try:
            self._status(answer, name)
            reply = codec.decode(answer[_HEADER:]) if len(answer) > _HEADER else {}
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return reply, fds

    def kcall_binary(self, number: int, arg: int, payload: bytes, name: str) -> bytes:
        """A kernel call that skips the codec (see ``wire.VDEVIO``): ``arg`` rides in
        the request's peer field; returns the whole response frame."""
        if self.before_block is not None and number in _BLOCKING_NUMBERS:
            self._unblock()
        answer = self._call(_REQUEST(wire.Op.KCALL, 0, 0, arg, number) + payload, name)
        self._status(answer, name)
        return answer

    # --------------------------------------------------------- call channels
    def serve_channels(self, waiting: chan.Waiting | None = None) -> bool:
        """Serve call channels from now on (SEF does, once the service runs): a
        receive from anyone then also takes the calls of clients that have a
        channel to us. ``waiting``: the calls a live update's old version read
        and left to this one to answer (``channel_server.waiting()``). False if
        the kernel refuses (``HWL_CHANNELS=0``)."""
        if self._server is not None:
            return True
        if not chan.enabled():
            return False
        try:
            reply, fds = self.kcall_fds("chanserve")
        except IpcError as exc:
            log.info("not serving call channels: %s", exc)
            return False
        clients = reply.get("clients", [])
        if not fds or not isinstance(clients, list) or len(clients) != len(fds) - 1:
            for fd in fds:
                os.close(fd)
            raise HwlError(f"chanserve answered {len(fds)} fds for {clients!r}")
        self._server = chan.ChannelServer(fds[0], waiting)
        for client, fd in zip(clients, fds[1:], strict=True):
            self._server.add(int(client), fd)  # type: ignore[arg-type]
        return True

    @property
    def channel_server(self) -> chan.ChannelServer | None:
        return self._server

    def channel_to(self, dest: int) -> socket.socket | None:
        """This process's channel to ``dest``, if it has one (tests and tools)."""
        return self._channels.get(dest) if self._channels is not None else None

    def use_channels(self, on: bool) -> None:
        """Make this process's own calls on channels or on the kernel path (the
        benchmark compares both in one run); ``HWL_CHANNELS=0`` starts it off."""
        if not on and self._channels is not None:
            self._channels.close()
            self._channels = None
        elif on and self._channels is None and chan.enabled():
            self._channels = chan.ClientChannels(self._wait_word())

    def _wait_word(self) -> memoryview:
        word = self.arena.view[CHANNEL_WAIT_AT : CHANNEL_WAIT_AT + CHANNEL_WAIT.size]
        CHANNEL_WAIT.pack_into(word, 0, wire.NONE)
        return word

    def _open_channel(self, channels: chan.ClientChannels, dest: int) -> None:
        try:
            _reply, fds = self.kcall_fds("chanopen", {"dest": dest})
        except IpcError as exc:
            channels.refused(dest, exc.errno)
            return
        for extra in fds[1:]:
            os.close(extra)
        if fds:
            channels.add(dest, fds[0])

    def _channel_call(
        self,
        channels: chan.ClientChannels,
        dest: int,
        m_type: int,
        payload: bytes,
        timeout: float | None,
    ) -> bytes | None:
        """A sendrec on ``dest``'s channel: the reply frame; None: it could not
        leave (the caller takes the kernel path)."""
        if len(payload) > _MAX_PAYLOAD:  # as the kernel path refuses it
            raise IpcError(Errno.EMSGSIZE, "sendrec", f"a payload over {_MAX_PAYLOAD} bytes")
        with self._lock:
            if self.closed:
                raise KernelGone("this connection is closed")
            try:
                return channels.call(dest, m_type, payload, timeout)
            except TimeoutError:
                raise IpcTimeout(Errno.EINTR, "sendrec", f"no answer within {timeout} s") from None
            except chan.ChannelDead as exc:
                raise IpcError(Errno.EDEADSRCDST, "sendrec", str(exc)) from None

    def _serve(self, first: bytes | None, timeout: float | None) -> Message:
        """A channel server's receive from anyone: what the kernel holds (asked
        with a non-blocking receive, or ``first``, a non-blocking REPLY_RECEIVE,
        unless the kernel promised to ring the event fd), else its channels' next
        call. Channels the kernel grants on the way are taken in."""
        server = self._server
        assert server is not None
        if first is None and timeout is None and server.armed:  # the usual case: a call
            call = server.next_call()
            if call.__class__ is tuple:
                client, m_type, payload = call
                return Message(client, m_type, payload)
        deadline = None if timeout is None else time.monotonic() + timeout
        reply_errno: Errno | None = None
        while True:
            if first is not None or not server.armed:
                frame = first or _REQUEST(wire.Op.RECEIVE, wire.FLAG_NONBLOCK, 0, wire.ANY, 0)
                what = "reply_receive" if first else "receive"
                answer, fds = self._call_fds(frame, what, 1)
                first = None
                kind, flags, spare, status, source, m_type = _RESPONSE(answer)
                if flags & wire.RESP_ARMED:  # it took the last: the kernel rings for the next
                    server.armed = True
                if spare and reply_errno is None:
                    reply_errno = errno_of(spare)
                if m_type == wire.CHANNEL_GRANT and kind == wire.Kind.MESSAGE and fds:
                    server.add(source, fds[0])
                    continue
                for fd in fds:
                    os.close(fd)
                if status == -Errno.ENOTREADY and kind == wire.Kind.STATUS:
                    server.armed = True
                else:
                    message = self._message(answer, what, None)
                    message.reply_errno = reply_errno
                    return message
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            got = server.poll(left)
            if got is None:
                raise IpcTimeout(Errno.EINTR, "receive", f"no answer within {timeout} s")
            if isinstance(got, chan.KernelEvent):
                continue
            client, m_type, payload = got
            return Message(client, m_type, payload, reply_errno=reply_errno)

    def whoami(self) -> int:
        """This process's endpoint as the kernel knows it now, kept in ``endpoint``:
        a live update (kernel call ``update``) moves a process to another endpoint."""
        info = self.getinfo("whoami")
        self.endpoint = int(info["endpoint"])  # type: ignore[arg-type]
        self.label = str(info["label"])
        self.parent = int(info["parent"])  # type: ignore[arg-type]
        return self.endpoint

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._channels is not None:
                self._channels.close()
            if self._server is not None:
                self._server.close()
            self.sock.close()
            self.arena.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
