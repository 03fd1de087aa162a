"""One NIC driver as INET uses it: NDEV from inside a server's event loop.

A server cannot wait in a RECV the way ``hwl.system.ndev.NetDevice`` does: its
clients and timers must be served meanwhile. So a :class:`Port` only posts
requests and the server's loop hands it the driver's answers (:meth:`handle`):

- :meth:`open` (a new incarnation's endpoint): INIT and CONF as calls (the
  driver answers them at once), then one RECV posted; each RECV_REPLY gives its
  frames to ``on_frames`` and posts the next.
- :meth:`send` posts a SEND (``senda``) and keeps its frames until the driver's
  SEND_REPLY confirms them. When the driver dies, :meth:`down` keeps them, and
  the next :meth:`open` sends them again, first and in order, as lwip's INET
  did: a duplicate frame is better than a lost one. While the driver is down,
  new frames wait in the same bounded queue; the oldest are dropped (and
  counted) when it is full.
- A STATUS (link, counters) is answered with STATUS_REPLY, as the driver needs
  before it sends the next.

Messages of an earlier incarnation (another source, or ids of an earlier
session) are not the port's: :meth:`handle` says so and the server drops them.

See docs/inet.md.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hwl.ipc import codec
from hwl.ipc.client import Connection, IpcError, Message
from hwl.proto import ndev
from hwl.proto.errno import Errno
from hwl.proto.fields import FieldError

log = logging.getLogger(__name__)

MAX_UNCONFIRMED = 256  # SENDs kept for a new incarnation (each up to a message of frames)


@dataclass
class PortStats:
    sends: int = 0  # SEND requests posted
    resent: int = 0  # SENDs posted again to a new incarnation
    confirmed: int = 0  # frames the driver said it took
    dropped: int = 0  # frames dropped from a full queue while the driver was down
    received: int = 0  # frames given to on_frames
    stale: int = 0  # driver messages of another session, ignored
    opens: int = 0


@dataclass
class _Send:
    ident: int
    frames: list[bytes]


@dataclass
class Port:
    """The driver ``label`` for a server on ``conn``; received frames go to ``on_frames``."""

    conn: Connection
    label: str
    on_frames: Callable[[list[bytes]], None]
    mode: int = ndev.MODE_UP | ndev.MODE_BCAST
    endpoint: int = 0  # 0: down
    card: ndev.InitReply | None = None
    link: bool = False
    gen: int | None = None  # the incarnation INIT named (the driver's pid at its start)
    stats: PortStats = field(default_factory=PortStats)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _unconfirmed: deque[_Send] = field(default_factory=deque)  # posted or waiting to be
    _posted: set[int] = field(default_factory=set)  # ids posted to this incarnation
    _recv_id: int | None = None

    @property
    def up(self) -> bool:
        return self.endpoint != 0

    # ---------------------------------------------------------------- session
    def open(self, endpoint: int, timeout: float = 5.0) -> ndev.InitReply:
        """Start a session with the incarnation at ``endpoint``: INIT, CONF, the
        first RECV, then every unconfirmed SEND again, oldest first. IpcError if
        the driver does not answer (it died again: the next driver-up retries)."""
        self.endpoint, self._posted, self._recv_id = endpoint, set(), None
        try:
            init = self._call(ndev.INIT, {}, timeout)
            self.card = ndev.InitReply.from_fields(init.fields)
            gen = init.fields.get("gen")
            self.gen = gen if isinstance(gen, int) else None
            self.link = self.card.link
            self._call(ndev.CONF, {"set": ndev.CONF_MODE, "mode": self.mode}, timeout)
        except BaseException:
            self.endpoint = 0
            raise
        self.stats.opens += 1
        self._post_recv()
        for send in self._unconfirmed:
            self._post_send(send)
            self.stats.resent += 1
        log.info("%s open at %d (%s), %d SENDs sent again", self.label, endpoint,
                 self.card.hwaddr.hex(":"), len(self._unconfirmed))  # fmt: skip
        return self.card

    def down(self) -> None:
        """The incarnation is gone: keep the unconfirmed frames for the next one."""
        self.endpoint, self._posted, self._recv_id = 0, set(), None

    # ----------------------------------------------------------------- frames
    def send(self, frames: Sequence[bytes]) -> None:
        """Post ``frames`` (as many SENDs as they need), or keep them for the next
        incarnation while the driver is down."""
        frames = list(frames)
        while frames:
            n = max(1, ndev.frames_fit(iter(frames), ndev.MAX_FRAMES))
            send = _Send(next(self._ids), frames[:n])
            del frames[:n]
            if len(self._unconfirmed) >= MAX_UNCONFIRMED:
                self.stats.dropped += len(self._unconfirmed.popleft().frames)
            self._unconfirmed.append(send)
            if self.up:
                self._post_send(send)

    def handle(self, m: Message) -> bool:
        """Take a message of the driver's; False if it is not this session's."""
        if not self.up or m.source != self.endpoint:
            return False
        try:
            fields = m.fields
        except codec.CodecError:
            self.stats.stale += 1
            return True
        ident = fields.get("id")
        if m.m_type == ndev.RECV_REPLY and ident == self._recv_id:
            self._recv_id = None
            if int(fields.get("result", -1)) > 0:  # type: ignore[arg-type]
                try:
                    got = ndev.frames_of(fields)
                except FieldError as exc:
                    log.warning("%s: a RECV reply with bad frames: %s", self.label, exc)
                    self.stats.stale += 1
                else:
                    self.stats.received += len(got)
                    self.on_frames(list(got))
            self._post_recv()
        elif m.m_type == ndev.SEND_REPLY and isinstance(ident, int) and ident in self._posted:
            self._posted.discard(ident)
            kept = [s for s in self._unconfirmed if s.ident != ident]
            if len(kept) != len(self._unconfirmed):
                self.stats.confirmed += max(0, int(fields.get("result", 0)))  # type: ignore[arg-type]
                self._unconfirmed = deque(kept)
        elif m.m_type == ndev.STATUS:
            self.link = bool(fields.get("link"))
            self._post(ndev.STATUS_REPLY, {"id": 0})
        else:
            self.stats.stale += 1
        return True

    @property
    def unconfirmed(self) -> int:
        """Frames not yet confirmed by a driver (posted or waiting for one)."""
        return sum(len(s.frames) for s in self._unconfirmed)

    # --------------------------------------------------------------- plumbing
    def _post_recv(self) -> None:
        self._recv_id = next(self._ids)
        self._post(ndev.RECV, {"id": self._recv_id, "max": ndev.MAX_FRAMES})

    def _post_send(self, send: _Send) -> None:
        self._posted.add(send.ident)
        self.stats.sends += 1
        self._post(ndev.SEND, {"id": send.ident, **ndev.frames_fields(send.frames)})

    def _post(self, m_type: int, fields: dict[str, codec.Value]) -> None:
        try:
            self.conn.senda(self.endpoint, m_type, fields)
        except IpcError as exc:  # dead: its driver-up event reopens the port
            log.info("%s: %s not posted (%s)", self.label, ndev.REQUEST_NAMES[m_type], exc)
            self.down()

    def _call(self, m_type: int, fields: dict[str, codec.Value], timeout: float) -> Message:
        reply = self.conn.sendrec(self.endpoint, m_type,
                                  {**fields, "id": next(self._ids), "sync": True},
                                  timeout=timeout)  # fmt: skip
        result = reply.get("result")
        if not isinstance(result, int) or result < 0:
            raise IpcError(ndev_errno(result), ndev.REQUEST_NAMES[m_type], str(reply.fields))
        return reply


def ndev_errno(result: object) -> Errno:
    """The errno of a failed NDEV reply (EIO if the reply did not say)."""
    try:
        return Errno(-result) if isinstance(result, int) else Errno.EIO
    except ValueError:
        return Errno.EIO
