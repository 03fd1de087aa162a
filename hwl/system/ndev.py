"""An NDEV client: one NIC driver driven frame by frame (tests, ``hwl net``, benchmarks).

``NetDevice(conn, label).open()`` finds the driver through DS, sends INIT and a
CONF (up, broadcast), and then moves raw Ethernet frames: ``send(frames)`` waits
until they have left (SEND by ``sendrec``), ``recv(timeout)`` keeps one RECV
posted with ``senda`` and returns the frames of its reply. A driver that died is
found again by ``reopen()``: its label's new endpoint from DS, then INIT and
the same CONF, as INET does on a ``drv.net.<label>`` event. Every call is
bounded by a timeout, since a restarted driver drops requests sent before INIT.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence

from hwl.errors import HwlError
from hwl.ipc import codec
from hwl.ipc.client import Connection, IpcError, IpcTimeout, Message
from hwl.proto import ndev
from hwl.proto.errno import Errno
from hwl.proto.fields import FieldError
from hwl.system.ds import Ds, DsError

CALL_TIMEOUT = 5.0
#: How often ``reopen`` asks DS whether the driver is back (one DS call each).
POLL_SECONDS = 0.005


class NetDeviceError(HwlError):
    """The driver refused a request, or did not answer in time."""

    def __init__(self, what: str, errno: Errno | None = None) -> None:
        super().__init__(what)
        self.errno = errno


class NetDevice:
    """A client of the NIC driver ``label``; ``conn`` must be allowed to talk to it."""

    def __init__(self, conn: Connection, label: str, mode: int = ndev.MODE_UP | ndev.MODE_BCAST):
        self.conn = conn
        self.label = label
        self.mode = mode
        self.endpoint = 0
        self.card: ndev.InitReply | None = None
        self.stats: dict[str, int] = {}
        self.link = False
        self._ids = itertools.count(1)
        self._recv_id: int | None = None  # the RECV posted and not yet answered
        self._ds: Ds | None = None  # found through RS once, not on every lookup

    # ---------------------------------------------------------------- session
    def open(self, timeout: float = CALL_TIMEOUT, endpoint: int | None = None) -> ndev.InitReply:
        """INIT and CONF at the driver's current endpoint (``endpoint``: one just
        looked up); returns the card."""
        self.endpoint = self._lookup() if endpoint is None else endpoint
        self._recv_id = None
        reply = self._call(ndev.INIT, {}, ndev.INIT_REPLY, timeout)
        self.card = ndev.InitReply.from_fields(reply.fields)
        self._take_stats(reply.fields)
        self.link = self.card.link
        self._call(ndev.CONF, {"set": ndev.CONF_MODE, "mode": self.mode}, ndev.CONF_REPLY, timeout)
        return self.card

    def reopen(self, timeout: float = 10.0, old: int | None = None) -> ndev.InitReply:
        """Open the driver again once it is back (a new endpoint, or the same one
        answering INIT); ``old``: an endpoint known to be dead, to wait past. Each
        try is one DS call (RS, busy restarting the driver, is not asked)."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                ep = self._lookup()
                if ep != old:
                    left = deadline - time.monotonic()
                    return self.open(timeout=min(1.0, max(0.1, left)), endpoint=ep)
            except (IpcError, DsError, NetDeviceError) as exc:
                last = exc
            time.sleep(POLL_SECONDS)
        raise NetDeviceError(f"{self.label} did not come back within {timeout} s: {last}")

    def _lookup(self) -> int:
        """The driver's endpoint as RS published it in DS. DS is found through RS
        on the first lookup, and again after a DS call that failed other than with
        ESRCH (no such label: the driver is not back yet)."""
        if self._ds is None:
            self._ds = Ds.find(self.conn)
        try:
            return self._ds.retrieve_label(self.label)
        except DsError as exc:
            if exc.errno is not Errno.ESRCH:
                self._ds = None
            raise

    def conf(self, mode: int, mcast: Sequence[bytes] = ()) -> None:
        fields: dict[str, codec.Value] = {"set": ndev.CONF_MODE, "mode": mode}
        if mcast:
            fields["set"] = ndev.CONF_MODE | ndev.CONF_MCAST
            fields["mcast"] = list(mcast)
        self._call(ndev.CONF, fields, ndev.CONF_REPLY, CALL_TIMEOUT)
        self.mode = mode

    # ----------------------------------------------------------------- frames
    def send(self, frames: Sequence[bytes], timeout: float = CALL_TIMEOUT) -> int:
        """Send ``frames`` (as many requests as they need); returns how many left."""
        frames = list(frames)
        sent = at = 0
        while at < len(frames):
            n = ndev.frames_fit(itertools.islice(frames, at, None), ndev.MAX_FRAMES)
            fields = ndev.frames_fields(frames[at : at + n])
            reply = self._call(ndev.SEND, fields, ndev.SEND_REPLY, timeout)  # type: ignore[arg-type]
            sent += int(reply["result"])  # type: ignore[arg-type]
            at += n
        return sent

    def recv(self, timeout: float = 1.0, most: int = ndev.MAX_FRAMES) -> list[bytes]:
        """Frames that arrive within ``timeout`` (an empty list if none did)."""
        if self._recv_id is None:
            self._recv_id = next(self._ids)
            self.conn.senda(self.endpoint, ndev.RECV, {"id": self._recv_id, "max": most})
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            try:
                m = self.conn.receive(self.endpoint, timeout=left)
            except IpcError as exc:
                if isinstance(exc, IpcTimeout):
                    return []
                raise
            if m.m_type == ndev.STATUS:
                self._status(m)
                continue
            if m.m_type != ndev.RECV_REPLY or m.get("id") != self._recv_id:
                continue  # a stale reply of an earlier session
            self._recv_id = None
            result = int(m["result"])  # type: ignore[arg-type]
            if result < 0:
                raise NetDeviceError(f"RECV: {m.get('error')!r}", Errno(-result))
            if result == 0:
                return []
            try:
                return list(ndev.frames_of(m.fields))
            except FieldError as exc:
                raise NetDeviceError(f"RECV reply: {exc}", Errno.EINVAL) from exc

    def recv_until(self, count: int, timeout: float) -> list[bytes]:
        """Receive until ``count`` frames arrived or ``timeout`` passed."""
        got: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            got += self.recv(timeout=max(0.0, deadline - time.monotonic()))
        return got

    # --------------------------------------------------------------- plumbing
    def _call(
        self, m_type: int, fields: dict[str, codec.Value], reply_type: int, timeout: float
    ) -> Message:
        ident = next(self._ids)
        name = ndev.REQUEST_NAMES[m_type]
        try:
            reply = self.conn.sendrec(self.endpoint, m_type, {**fields, "id": ident, "sync": True},
                                      timeout=timeout)  # fmt: skip
        except IpcError as exc:
            if isinstance(exc, IpcTimeout):
                raise NetDeviceError(
                    f"{name}: {self.label} did not answer within {timeout} s "
                    "(restarted, and not initialised?)",
                    exc.errno,
                ) from exc
            raise NetDeviceError(f"{name}: {exc}", exc.errno) from exc
        if reply.m_type != reply_type:
            raise NetDeviceError(f"{name}: answered with type {reply.m_type:#x}: {reply.fields}")
        result = reply.get("result")
        if not isinstance(result, int):
            raise NetDeviceError(f"{name}: malformed reply {reply.fields}")
        if result < 0:
            raise NetDeviceError(f"{name}: {reply.get('error')!r}", Errno(-result))
        return reply

    def _status(self, m: Message) -> None:
        self.link = bool(m.get("link"))
        self._take_stats(m.fields)
        self.conn.senda(self.endpoint, ndev.STATUS_REPLY, {"id": 0})

    def _take_stats(self, fields: dict[str, codec.Value]) -> None:
        stats = fields.get("stats")
        if isinstance(stats, dict):
            self.stats = {k: v for k, v in stats.items() if isinstance(v, int)}
