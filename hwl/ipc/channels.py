"""Call channels, the process side: one socket per (client, server) pair.

The kernel makes a channel on a client's first ``sendrec`` to a server that
serves them (hwl.kernel.channels); afterwards the call and its reply go on the
socket, two wake-ups instead of four. What stays on the kernel path: notify,
send, senda, kernel calls, and every message of a process that does not serve
channels.

- :class:`ClientChannels`: a client's channels, by server endpoint. A call gets
  an id (1..65535) that its reply carries back, so the late reply of a call whose
  timeout ran out is dropped. EOF while waiting means the server died
  (EDEADSRCDST); EPIPE on the send means the request never left, so the call
  goes on the kernel path instead (to a restarted server, if one is coming).
- :class:`ChannelServer`: a server's channels and its event fd, which the kernel
  bumps when a kernel-path message waits. ``poll`` gives the next request, or
  says that the kernel has something. A malformed frame on a channel is answered
  EINVAL, logged and counted; the server goes on.

A call that timed out on a channel may still be served (the request cannot be
taken back from the server's socket), unlike on the kernel path.

See docs/channels.md.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import select
import socket
import struct
import time
from dataclasses import dataclass

from hwl.ipc import wire
from hwl.ipc.arena import CHANNEL_WAIT
from hwl.proto.errno import Errno

log = logging.getLogger(__name__)

_REQUEST = wire.REQUEST
_RESPONSE = wire.RESPONSE
_PACK_REQUEST = wire.REQUEST.pack
_UNPACK_REQUEST = wire.REQUEST.unpack_from
_REQUEST_SIZE = wire.REQUEST.size
_MAX_REQUEST = wire.MAX_REQUEST
_UNPACK_RESPONSE = wire.RESPONSE.unpack_from
_PACK_RESPONSE = wire.RESPONSE.pack
_MESSAGE = int(wire.Kind.MESSAGE)
_MAX_PAYLOAD = wire.MAX_PAYLOAD
_RESPONSE_SIZE = wire.RESPONSE.size
_MAX_RESPONSE = wire.MAX_RESPONSE
_SENDREC = int(wire.Op.SENDREC)
_PACK_WAIT = CHANNEL_WAIT.pack_into
_NO_CHANNEL = frozenset({wire.ANY, wire.NONE, wire.SELF})
RETRY_REFUSED = 0.5  # s before asking again for a channel the kernel refused
MAX_ID = 0xFFFF
_TIMEVAL = struct.Struct("@ll")  # SO_RCVTIMEO's struct timeval


def enabled() -> bool:
    """Channels are on unless ``HWL_CHANNELS=0``: then everything takes the kernel path."""
    return os.environ.get(wire.ENV_CHANNELS, "1") != "0"


Waiting = dict[int, int]  # client endpoint -> the id of the call it waits on


class ChannelDead(Exception):
    """The server's end of the channel is gone while a call waited on it."""


class ClientChannels:
    """A client's channels, by server endpoint."""

    def __init__(self, wait_word: memoryview | None = None) -> None:
        self._wait_word = wait_word  # arena.CHANNEL_WAIT in our arena: whom a call waits on
        self.socks: dict[int, socket.socket] = {}  # by server endpoint; add and drop change it
        self._refused: dict[int, float] = {}  # dest -> when to ask again
        self._limits: dict[int, float] = {}  # dest -> its socket's SO_RCVTIMEO (0: none)
        self._id = 0
        self.off = False  # the kernel said channels are off

    def wants(self, dest: int) -> bool:
        """Whether to ask the kernel for a channel to ``dest`` now."""
        if self.off or dest < 0 or dest in _NO_CHANNEL or dest in self.socks:
            return False
        return time.monotonic() >= self._refused.get(dest, 0.0)

    def get(self, dest: int) -> socket.socket | None:
        return self.socks.get(dest)

    def add(self, dest: int, fd: int) -> None:
        sock = self.socks[dest] = socket.socket(fileno=fd)
        sock.settimeout(None)  # blocking, whatever the default: timeouts are SO_RCVTIMEO
        self._limits[dest] = 0.0

    def refused(self, dest: int, errno: Errno) -> None:
        if errno is Errno.ENOSYS:
            self.off = True
        self._refused[dest] = time.monotonic() + RETRY_REFUSED

    def drop(self, dest: int) -> None:
        self._limits.pop(dest, None)
        sock = self.socks.pop(dest, None)
        if sock is not None:
            sock.close()

    def call(self, dest: int, m_type: int, payload: bytes, timeout: float | None) -> bytes | None:
        """One call on ``dest``'s channel: the reply frame, or None if the request
        could not leave (the channel was ended: the caller uses the kernel path).
        Raises ChannelDead if the server's end closed while we waited, TimeoutError
        when ``timeout`` ran out. Every call takes this path: it is kept short."""
        sock = self.socks[dest]
        ident = self._id = self._id % MAX_ID + 1
        try:
            sock.send(_PACK_REQUEST(_SENDREC, 0, ident, 0, m_type) + payload)
        except OSError:  # EPIPE, ECONNRESET: ended before the request left
            self.drop(dest)
            return None
        word = self._wait_word
        if word is not None:
            _PACK_WAIT(word, 0, dest)
        try:
            return self._reply(sock, dest, ident, timeout)
        finally:
            if word is not None and self._wait_word is not None:
                _PACK_WAIT(word, 0, wire.NONE)

    def _reply(self, sock: socket.socket, dest: int, ident: int, timeout: float | None) -> bytes:
        """The reply to call ``ident``, waited for at most ``timeout`` seconds (None:
        as long as it takes); a late reply to a call that timed out is dropped. The
        socket stays blocking with the kernel's receive timeout (SO_RCVTIMEO), set
        only when it changes: a call is a send and a recv, where Python's settimeout
        adds a poll and two mode switches to each timed one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        limit = timeout or 0.0
        if self._limits.get(dest) != limit:
            self._limit(sock, dest, limit)
        while True:
            try:
                answer = sock.recv(_MAX_RESPONSE)
            except BlockingIOError:  # the receive timeout ran out
                answer = None
            except OSError:
                answer = b""
            if answer is not None:
                if not answer:
                    self.drop(dest)
                    raise ChannelDead(f"the channel to {wire.endpoint_name(dest)} closed")
                if len(answer) >= _RESPONSE_SIZE and _UNPACK_RESPONSE(answer)[2] == ident:
                    return answer
            if deadline is None:
                continue
            left = deadline - time.monotonic()  # a late reply, or woken a little early
            if left <= 0:
                raise TimeoutError("timed out")
            self._limit(sock, dest, left)

    def _limit(self, sock: socket.socket, dest: int, seconds: float) -> None:
        """The channel's receive timeout (0: none); at least a microsecond, since a
        zero timeval means none."""
        micros = max(1, round(seconds * 1e6)) if seconds > 0 else 0
        timeval = _TIMEVAL.pack(*divmod(micros, 10**6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        self._limits[dest] = seconds

    def close(self) -> None:
        for dest in list(self.socks):
            self.drop(dest)
        if self._wait_word is not None:
            self._wait_word.release()  # the arena can then be unmapped
            self._wait_word = None


@dataclass
class _Served:
    """A channel a server reads, and the id of the call its client waits on: the
    last one read (a client makes one call at a time; an older one timed out).
    As on the kernel path, the server's next reply to that client answers it."""

    sock: socket.socket
    client: int
    waiting: int | None = None


class KernelEvent:
    """``ChannelServer.poll``'s answer when the kernel holds something."""


KERNEL_EVENT = KernelEvent()


class ChannelServer:
    """A server's channels and the kernel's event fd, polled together."""

    def __init__(self, event_fd: int, waiting: Waiting | None = None) -> None:
        self.event_fd = event_fd
        self._handed: Waiting = dict(waiting or {})  # for channels granted later
        os.set_blocking(event_fd, False)
        self._epoll = select.epoll()
        self._epoll.register(event_fd, select.EPOLLIN)
        self._by_fd: dict[int, _Served] = {}
        self.owed: dict[int, _Served] = {}  # client -> the channel whose call it waits on
        self._ready: collections.deque[int] = collections.deque()
        self.armed = False  # the kernel will bump the event fd: no need to ask it
        self.bad_frames = 0

    def add(self, client: int, fd: int) -> None:
        """A channel the kernel granted: requests from ``client`` arrive on it."""
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        served = _Served(sock, client, self._handed.pop(client, None))
        self._by_fd[fd] = served
        if served.waiting is not None:
            self._owe(served)
        self._epoll.register(fd, select.EPOLLIN)

    def _owe(self, served: _Served) -> None:
        """``served``'s client waits on its last call: an older one it left on
        another channel timed out, and is answered no more."""
        before = self.owed.get(served.client)
        if before is not None and before is not served:
            before.waiting = None
        self.owed[served.client] = served

    def _remove(self, served: _Served) -> None:
        fd = served.sock.fileno()
        self._by_fd.pop(fd, None)
        with contextlib.suppress(OSError, ValueError):
            self._epoll.unregister(fd)
        if self.owed.get(served.client) is served:
            del self.owed[served.client]
        served.sock.close()

    def next_call(self) -> tuple[int, int, bytes] | KernelEvent:
        """``poll(None)``, shortened for the usual case: nothing queued, one epoll
        wait, and it reports one channel's call."""
        if not self._ready:
            events = self._epoll.poll(-1.0)
            if len(events) == 1 and events[0][0] != self.event_fd:
                request = self._read(events[0][0])
                if request is not None:
                    return request
            else:
                self._queue(events)
        got = self.poll(None)
        assert got is not None  # no timeout
        return got

    def poll(self, timeout: float | None) -> tuple[int, int, bytes] | KernelEvent | None:
        """The next request (client, m_type, payload); KERNEL_EVENT when the event
        fd rang; None when ``timeout`` ran out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        ready, event_fd = self._ready, self.event_fd
        while True:
            while ready:
                fd = ready.popleft()
                if fd == event_fd:
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(fd)
                    self.armed = False
                    return KERNEL_EVENT
                request = self._read(fd)
                if request is not None:
                    return request
            left = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            events = self._epoll.poll(left)
            if not events:
                return None
            self._queue(events)

    def _queue(self, events: list[tuple[int, int]]) -> None:
        """Level-triggered: a channel with more calls is reported again on the next
        poll, after the others ready now (each ready channel one call)."""
        fds = [fd for fd, _ in events]
        if self.event_fd in fds:  # the kernel's messages first: notifications
            fds.remove(self.event_fd)
            fds.insert(0, self.event_fd)
        self._ready.extend(fds)

    def _read(self, fd: int) -> tuple[int, int, bytes] | None:
        served = self._by_fd.get(fd)
        if served is None:
            return None
        try:
            frame = served.sock.recv(_MAX_REQUEST + 1)
        except BlockingIOError:
            return None
        except OSError:
            frame = b""
        size = len(frame)
        if not size:  # the kernel ended the channel, or the client is gone
            self._remove(served)
            return None
        if size > _MAX_REQUEST or size < _REQUEST_SIZE:
            self._bad(served, frame, f"a {size}-byte frame")
            return None
        op, _flags, ident, _peer, m_type = _UNPACK_REQUEST(frame)
        if op != _SENDREC:
            self._bad(served, frame, f"operation {op} (only SENDREC goes on a channel)")
            return None
        served.waiting = ident
        self._owe(served)
        return served.client, m_type, frame[_REQUEST_SIZE:]

    def _bad(self, served: _Served, frame: bytes, why: str) -> None:
        self.bad_frames += 1
        log.warning("bad frame on the channel from %s: %s", wire.endpoint_name(served.client), why)
        ident = _REQUEST.unpack_from(frame)[2] if len(frame) >= _REQUEST.size else 0
        error = -int(Errno.EINVAL)
        with contextlib.suppress(OSError):
            served.sock.send(_RESPONSE.pack(wire.Kind.STATUS, 0, ident, error, 0, 0))
        self._ready.append(served.sock.fileno())

    def waiting(self) -> Waiting:
        """The calls read and not answered, by client: what a live update's new
        version must answer (SEF carries it in the saved state)."""
        table = {client: s.waiting for client, s in self.owed.items() if s.waiting is not None}
        return {**self._handed, **table}

    def owes(self, client: int) -> bool:
        """Whether a call from ``client`` came on a channel and is unanswered."""
        return client in self.owed

    def reply(self, me: int, client: int, m_type: int, payload: bytes) -> Errno | None:
        """Answer the channel call ``client`` waits on; the errno if the reply
        could not be left (the client is gone or does not read)."""
        if len(payload) > _MAX_PAYLOAD:  # as the kernel path refuses it
            return Errno.EMSGSIZE
        served = self.owed.pop(client, None)
        if served is None or served.waiting is None:
            return Errno.ENOTREADY
        ident, served.waiting = served.waiting, None
        try:
            served.sock.send(_PACK_RESPONSE(_MESSAGE, 0, ident, 0, me, m_type) + payload)
        except BlockingIOError:
            log.warning("%s does not read its channel's replies: channel closed",
                        wire.endpoint_name(client))  # fmt: skip
            self._remove(served)
            return Errno.ENOTREADY
        except OSError:
            self._remove(served)
            return Errno.EDEADSRCDST
        return None

    def close(self) -> None:
        for served in list(self._by_fd.values()):
            self._remove(served)
        self._epoll.close()
        with contextlib.suppress(OSError):
            os.close(self.event_fd)
