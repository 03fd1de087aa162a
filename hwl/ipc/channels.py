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
import time
from dataclasses import dataclass

from hwl.ipc import wire
from hwl.ipc.arena import CHANNEL_WAIT
from hwl.proto.errno import Errno

log = logging.getLogger(__name__)

_REQUEST = wire.REQUEST
_RESPONSE = wire.RESPONSE
_NO_CHANNEL = frozenset({wire.ANY, wire.NONE, wire.SELF})
RETRY_REFUSED = 0.5  # s before asking again for a channel the kernel refused
MAX_ID = 0xFFFF


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
        self._socks: dict[int, socket.socket] = {}
        self._refused: dict[int, float] = {}  # dest -> when to ask again
        self._id = 0
        self.off = False  # the kernel said channels are off

    def wants(self, dest: int) -> bool:
        """Whether to ask the kernel for a channel to ``dest`` now."""
        if self.off or dest < 0 or dest in _NO_CHANNEL or dest in self._socks:
            return False
        return time.monotonic() >= self._refused.get(dest, 0.0)

    def get(self, dest: int) -> socket.socket | None:
        return self._socks.get(dest)

    def add(self, dest: int, fd: int) -> None:
        self._socks[dest] = socket.socket(fileno=fd)

    def refused(self, dest: int, errno: Errno) -> None:
        if errno is Errno.ENOSYS:
            self.off = True
        self._refused[dest] = time.monotonic() + RETRY_REFUSED

    def drop(self, dest: int) -> None:
        sock = self._socks.pop(dest, None)
        if sock is not None:
            sock.close()

    def call(self, dest: int, m_type: int, payload: bytes, timeout: float | None) -> bytes | None:
        """One call on ``dest``'s channel: the reply frame, or None if the request
        could not leave (the channel was ended: the caller uses the kernel path).
        Raises ChannelDead if the server's end closed while we waited, TimeoutError
        when ``timeout`` ran out."""
        sock = self._socks[dest]
        self._id = self._id % MAX_ID + 1
        ident = self._id
        try:
            sock.send(_REQUEST.pack(wire.Op.SENDREC, 0, ident, 0, m_type) + payload)
        except OSError:  # EPIPE, ECONNRESET: ended before the request left
            self.drop(dest)
            return None
        deadline = None if timeout is None else time.monotonic() + timeout
        self._mark(dest)
        try:
            while True:
                if deadline is not None:
                    sock.settimeout(max(0.0, deadline - time.monotonic()))
                try:
                    answer = sock.recv(wire.MAX_RESPONSE)
                except OSError as exc:
                    if isinstance(exc, TimeoutError):
                        raise
                    answer = b""
                if not answer:
                    self.drop(dest)
                    raise ChannelDead(f"the channel to {wire.endpoint_name(dest)} closed")
                if len(answer) >= _RESPONSE.size and _RESPONSE.unpack_from(answer)[2] == ident:
                    return answer
                # a late reply to a call that timed out: dropped
        finally:
            self._mark(wire.NONE)
            if deadline is not None and dest in self._socks:
                sock.settimeout(None)

    def _mark(self, endpoint: int) -> None:
        if self._wait_word is not None:
            CHANNEL_WAIT.pack_into(self._wait_word, 0, endpoint)

    def close(self) -> None:
        for dest in list(self._socks):
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
        self._by_client: dict[int, list[_Served]] = {}
        self._ready: collections.deque[int] = collections.deque()
        self.armed = False  # the kernel will bump the event fd: no need to ask it
        self.bad_frames = 0

    def add(self, client: int, fd: int) -> None:
        """A channel the kernel granted: requests from ``client`` arrive on it."""
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        served = _Served(sock, client, self._handed.pop(client, None))
        self._by_fd[fd] = served
        self._by_client.setdefault(client, []).append(served)
        self._epoll.register(fd, select.EPOLLIN)

    def _remove(self, served: _Served) -> None:
        fd = served.sock.fileno()
        self._by_fd.pop(fd, None)
        with contextlib.suppress(OSError, ValueError):
            self._epoll.unregister(fd)
        rows = self._by_client.get(served.client, [])
        if served in rows:
            rows.remove(served)
        if not rows:
            self._by_client.pop(served.client, None)
        served.sock.close()

    def poll(self, timeout: float | None) -> tuple[int, int, bytes] | KernelEvent | None:
        """The next request (client, m_type, payload); KERNEL_EVENT when the event
        fd rang; None when ``timeout`` ran out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            while self._ready:
                fd = self._ready.popleft()
                if fd == self.event_fd:
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
            frame = served.sock.recv(wire.MAX_REQUEST + 1)
        except BlockingIOError:
            return None
        except OSError:
            frame = b""
        if not frame:  # the kernel ended the channel, or the client is gone
            self._remove(served)
            return None
        if len(frame) > wire.MAX_REQUEST or len(frame) < _REQUEST.size:
            self._bad(served, frame, f"a {len(frame)}-byte frame")
            return None
        op, _flags, ident, _peer, m_type = _REQUEST.unpack_from(frame)
        if op != wire.Op.SENDREC:
            self._bad(served, frame, f"operation {op} (only SENDREC goes on a channel)")
            return None
        self._ready.append(fd)  # more may wait: after the others that are ready
        served.waiting = ident
        return served.client, m_type, frame[_REQUEST.size :]

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
        table = {s.client: s.waiting for s in self._by_fd.values() if s.waiting is not None}
        return {**self._handed, **table}

    def owes(self, client: int) -> bool:
        """Whether a call from ``client`` came on a channel and is unanswered."""
        return any(s.waiting is not None for s in self._by_client.get(client, ()))

    def reply(self, me: int, client: int, m_type: int, payload: bytes) -> Errno | None:
        """Answer the channel call ``client`` waits on; the errno if the reply
        could not be left (the client is gone or does not read)."""
        if len(payload) > wire.MAX_PAYLOAD:  # as the kernel path refuses it
            return Errno.EMSGSIZE
        for served in self._by_client.get(client, ()):
            if served.waiting is not None:
                ident, served.waiting = served.waiting, None
                frame = _RESPONSE.pack(wire.Kind.MESSAGE, 0, ident, 0, me, m_type) + payload
                try:
                    served.sock.send(frame)
                except BlockingIOError:
                    log.warning("%s does not read its channel's replies: channel closed",
                                wire.endpoint_name(client))  # fmt: skip
                    self._remove(served)
                    return Errno.ENOTREADY
                except OSError:
                    self._remove(served)
                    return Errno.EDEADSRCDST
                return None
        return Errno.ENOTREADY

    def close(self) -> None:
        for served in list(self._by_fd.values()):
            self._remove(served)
        self._epoll.close()
        with contextlib.suppress(OSError):
            os.close(self.event_fd)
