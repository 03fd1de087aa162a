"""libnetdriver: the main loop of a NIC driver and its dispatch table (MINIX 3.4's
model; docs/network.md, "NDEV and libnetdriver").

A driver fills a :class:`NetDriver` table (or :meth:`NetDriver.of` an object with
methods of the callbacks' names), calls :func:`setup` before ``sef.startup()`` and
:func:`task` after it (:func:`run` does all three). The library speaks NDEV
(:mod:`hwl.proto.ndev`) with one client; the driver only moves frames:

- ``init(instance)`` finds, reserves and starts the card and returns its
  :class:`~hwl.proto.ndev.InitReply`; it runs in SEF's init, so a driver that
  cannot find its card fails its init. Then the driver is announced in DS.
- ``send(frames)`` returns how many frames it took (0: the card is full; the rest
  is offered again after the next interrupt or tick); ``recv(n)`` returns up to
  ``n`` frames that arrived.
- ``intr(mask)`` acknowledges the card and re-enables its IRQ line.
- optional: ``set_mode(mode, mcast)``, ``stop()``, ``tick()`` (every
  ``tick_seconds``), ``get_link()``, ``other(m)``, ``state_save()`` /
  ``state_restore(state)``.

The library keeps MINIX's rules for requests before INIT, while DOWN and when
malformed, and carries its own state through a live update; the incarnation, the
deferred queue and the interrupt wait are :mod:`hwl.driver.core`'s.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from dataclasses import fields as table_fields

from hwl.ipc import codec, wire
from hwl.ipc.client import Connection, IpcError, Message
from hwl.proto import ndev
from hwl.proto.errno import Errno
from hwl.proto.fields import FieldError
from hwl.system import sef
from hwl.system.proto import InitType, LuState

from .core import Driver, Library, core

log = logging.getLogger(__name__)

Fields = dict[str, codec.Value]


@dataclass
class NetDriver:
    """The dispatch table (MINIX's ``struct netdriver``)."""

    init: Callable[[int], ndev.InitReply]
    send: Callable[[Sequence[bytes]], int]
    recv: Callable[[int], list[bytes]]
    intr: Callable[[int], None] | None = None
    set_mode: Callable[[int, tuple[bytes, ...]], None] | None = None
    stop: Callable[[], None] | None = None
    tick: Callable[[], None] | None = None
    tick_seconds: float = 1.0
    get_link: Callable[[], bool] | None = None
    other: Callable[[Message], tuple[int, Fields] | None] | None = None
    state_save: Callable[[], codec.Value] | None = None
    state_restore: Callable[[codec.Value], None] | None = None

    @classmethod
    def of(cls, driver: object) -> NetDriver:
        """The table of a driver object whose methods bear the callbacks' names
        (``init``, ``send``, ``recv``, and any of the optional ones)."""
        names = [f.name for f in table_fields(cls) if f.name != "tick_seconds"]
        table = cls(**{n: getattr(driver, n) for n in names if hasattr(driver, n)})
        table.tick_seconds = getattr(driver, "tick_seconds", table.tick_seconds)
        return table


@dataclass
class _Pending:
    """A request waiting for the card: who asked, and how to answer."""

    source: int
    id: int
    sync: bool
    frames: Sequence[bytes] = ()  # SEND: not yet taken (an ndev.Frames)
    done: int = 0  # SEND: frames taken so far
    max: int = 0  # RECV: frames wanted


@dataclass
class _State:
    table: NetDriver | None = None
    instance: int = 0
    card: ndev.InitReply | None = None
    client: int | None = None  # the endpoint that sent INIT; None: not initialised
    mode: int = ndev.MODE_DOWN
    mcast: tuple[bytes, ...] = ()
    sends: deque[_Pending] = field(default_factory=deque)
    recvs: deque[_Pending] = field(default_factory=deque)
    backlog: deque[bytes] = field(default_factory=deque)  # received, not yet answered
    stats: ndev.Stats = field(default_factory=ndev.Stats)
    link: bool = False
    status_out: bool = False  # a STATUS is unanswered
    status_due: bool = False


_st = _State()


def stats() -> ndev.Stats:
    """The counters; a driver adds its device's errors and drops here."""
    return _st.stats


# ------------------------------------------------------------------- init, LU
def _library() -> Library:
    """libnetdriver as the core sees it: what is pending says which live-update
    state is reached; the session travels to the new version."""
    return Library("net", free=_free, save=_save, restore=_restore)


def setup(table: NetDriver, instance: int = 0) -> None:
    """Install SEF's callbacks; call before ``sef.startup()``."""
    _st.table, _st.instance = table, instance
    sef.setcb_init_fresh(_init)
    sef.setcb_init_restart(_init)
    sef.setcb_init_lu(_init)
    core.setup(_library(), Driver(table.state_save, table.state_restore))


def _init(info: sef.InitInfo) -> int:
    table = _st.table
    assert table is not None, "netdriver.setup() was not called"
    core.start(info)
    try:
        _st.card = table.init(_st.instance)
    except (IpcError, OSError, LookupError, ValueError) as exc:
        log.error("init failed: %s", exc)
        return int(getattr(exc, "errno", Errno.EIO))
    _st.link = _st.card.link
    log.info("%s %s, link %s", _st.card.name, _st.card.hwaddr.hex(":"),
             "up" if _st.link else "down")  # fmt: skip
    return 0


def _free(state: int) -> bool:
    """REQUEST_FREE: no send pending; PROTOCOL_FREE: nothing pending at all."""
    if state == LuState.REQUEST_FREE:
        return not _st.sends
    if state == LuState.PROTOCOL_FREE:
        return not _st.sends and not _st.recvs
    return True


def _save() -> dict[str, codec.Value]:
    recvs: list[codec.Value] = [[p.source, p.id, p.sync, p.max] for p in _st.recvs]
    return {
        "client": _st.client,
        "mode": _st.mode,
        "mcast": list(_st.mcast),
        "recvs": recvs,
        "backlog": list(_st.backlog),
        "stats": _st.stats.as_fields(),  # type: ignore[dict-item]
    }


def _restore(state: dict[str, codec.Value]) -> None:
    client = state.get("client")
    _st.client = client if isinstance(client, int) else None
    mode = state.get("mode")
    _st.mode = mode if isinstance(mode, int) else ndev.MODE_DOWN
    mcast = state.get("mcast")
    _st.mcast = tuple(a for a in mcast if isinstance(a, bytes)) if isinstance(mcast, list) else ()
    for row in state.get("recvs") or []:  # type: ignore[union-attr]
        if isinstance(row, list) and len(row) == 4:
            source, ident, sync, most = row
            _st.recvs.append(_Pending(int(source), int(ident), bool(sync), max=int(most)))  # type: ignore[arg-type]
    backlog = state.get("backlog")
    if isinstance(backlog, list):
        _st.backlog.extend(f for f in backlog if isinstance(f, bytes))
    counters = state.get("stats")
    if isinstance(counters, dict):
        for name, value in counters.items():
            if hasattr(_st.stats, name) and isinstance(value, int):
                setattr(_st.stats, name, value)


def announce(conn: Connection) -> None:
    """Publish ``drv.net.<label>``: clients (re)initialise the driver on it."""
    core.announce(conn)


# ------------------------------------------------------------------- the loop
def run(table: NetDriver, instance: int = 0) -> None:
    """A NIC driver's whole life: SEF's callbacks, its init by RS, then serving."""
    setup(table, instance)
    sef.startup()
    task(table)


def task(table: NetDriver) -> None:
    """Announce the driver and serve until SIGTERM (SEF ends the process)."""
    conn = sef.connection()
    info = sef.init_info()
    if info is None or info.type is not InitType.LU:
        announce(conn)
    if table.tick is not None:
        conn.setalarm(seconds=table.tick_seconds)
    try:
        while True:
            process(table, core.receive())
    finally:
        if table.stop is not None:
            with contextlib.suppress(Exception):
                table.stop()


def process(table: NetDriver, m: Message) -> None:
    """Serve one message."""
    if m.is_notify:
        if m.source == wire.HARDWARE:
            if table.intr is not None:
                table.intr(int(m.get("interrupts", 0) or 0))  # type: ignore[arg-type]
            _after_event(table)
        elif m.source == wire.CLOCK:
            if table.tick is not None:
                table.tick()
                sef.connection().setalarm(seconds=table.tick_seconds)
            _after_event(table)
        return
    if not ndev.is_request(m.m_type):
        answer = table.other(m) if table.other is not None else None
        if answer is not None:
            sef.reply(m.source, answer[0], answer[1])
        elif table.other is None and m.m_type > 0:
            log.info("message type %#x from %d is not NDEV: ignored", m.m_type, m.source)
        return
    if _st.client is None and m.m_type != ndev.INIT:
        _st.stats.dropped_requests += 1
        log.debug("dropped %s from %d: before INIT", ndev.REQUEST_NAMES[m.m_type], m.source)
        return
    try:
        request = ndev.parse(m.m_type, m.fields)
    except (FieldError, codec.CodecError) as exc:
        _bad_request(m, str(exc))
        return
    _serve(table, m.source, request)


def _bad_request(m: Message, why: str) -> None:
    """Answer a malformed request EINVAL, the way its client waits for the answer."""
    _st.stats.bad_requests += 1
    log.warning("malformed %s from %d: %s", ndev.REQUEST_NAMES[m.m_type], m.source, why)
    reply_type = ndev.REPLY_OF.get(m.m_type)
    if reply_type is None:  # a malformed STATUS_REPLY: nothing to answer
        return
    try:
        fields = m.fields
    except codec.CodecError:
        fields = {}
    ident = fields.get("id", 0)
    sync = fields.get("sync") is True
    _reply(m.source, sync, reply_type, {"id": ident if isinstance(ident, int) else 0,
                                         "result": -int(Errno.EINVAL), "error": why})  # fmt: skip


def _serve(table: NetDriver, source: int, request: ndev.Request) -> None:
    if isinstance(request, ndev.Init):
        _do_init(source, request)
    elif isinstance(request, ndev.Conf):
        _do_conf(table, source, request)
    elif isinstance(request, ndev.Send):
        if _st.mode == ndev.MODE_DOWN:
            _answer(_Pending(source, request.id, request.sync), ndev.SEND_REPLY, -int(Errno.EINTR))
            return
        _st.sends.append(_Pending(source, request.id, request.sync, request.frames))
        _offer_sends(table)
    elif isinstance(request, ndev.Recv):
        pending = _Pending(source, request.id, request.sync, max=request.max)
        if _st.mode == ndev.MODE_DOWN:
            _answer(pending, ndev.RECV_REPLY, -int(Errno.EINTR))
            return
        _st.recvs.append(pending)
        _answer_recvs(table)
    elif isinstance(request, ndev.StatusReply):
        _st.status_out = False
        _send_status()


def _do_init(source: int, request: ndev.Init) -> None:
    """A new client session: forget what was pending, name the card."""
    _st.sends.clear()
    _st.recvs.clear()
    _st.client = source
    _st.status_out = False
    card = _st.card
    assert card is not None
    _reply(source, request.sync, ndev.INIT_REPLY, {
        "id": request.id, "result": 0, "hwaddr": card.hwaddr, "name": card.name,
        "link": _st.link, "caps": card.caps, "max_send": card.max_send,
        "max_recv": card.max_recv, "stats": _st.stats.as_fields(),  # type: ignore[dict-item]
        "gen": core.gen,
    })  # fmt: skip


def _do_conf(table: NetDriver, source: int, request: ndev.Conf) -> None:
    mode, mcast = _st.mode, _st.mcast
    if request.set & ndev.CONF_MODE:
        mode = request.mode
    if request.set & ndev.CONF_MCAST:
        mcast = request.mcast
    if len(mcast) > ndev.MAX_MCAST:
        mode |= ndev.MODE_MCAST_ALL
    if mode == ndev.MODE_DOWN and _st.mode != ndev.MODE_DOWN:
        for queue, reply_type in ((_st.sends, ndev.SEND_REPLY), (_st.recvs, ndev.RECV_REPLY)):
            while queue:
                _answer(queue.popleft(), reply_type, -int(Errno.EINTR))
    if table.set_mode is not None and (mode, mcast) != (_st.mode, _st.mcast):
        table.set_mode(mode, mcast)
    _st.mode, _st.mcast = mode, mcast
    _reply(source, request.sync, ndev.CONF_REPLY, {"id": request.id, "result": 0})


def _offer_sends(table: NetDriver) -> None:
    """Give the card the frames of pending SENDs, oldest first, until it is full."""
    while _st.sends:
        p = _st.sends[0]
        while p.frames:  # a driver may take fewer than offered per call
            taken = table.send(p.frames)
            _st.stats.sent += taken
            p.done += taken
            p.frames = p.frames[taken:]
            if not taken:
                return  # full: offered again after the next interrupt or tick
        _st.sends.popleft()
        _answer(p, ndev.SEND_REPLY, p.done)


def _answer_recvs(table: NetDriver) -> None:
    """Answer pending RECVs with the frames that have arrived, as many in each
    reply as fit in one message (the rest wait in ``backlog`` for the next RECV)."""
    while _st.recvs:
        p = _st.recvs[0]
        if not _st.backlog:
            frames = table.recv(p.max)
            _st.stats.received += len(frames)
            _st.backlog.extend(frames)
        n = ndev.frames_fit(_st.backlog, p.max)
        if not n:
            return
        _st.recvs.popleft()
        frames = [_st.backlog.popleft() for _ in range(n)]
        _answer(p, ndev.RECV_REPLY, n, ndev.frames_fields(frames))  # type: ignore[arg-type]


def _after_event(table: NetDriver) -> None:
    if _st.client is None:
        return
    _offer_sends(table)
    _answer_recvs(table)
    if table.get_link is not None:
        link = table.get_link()
        if link != _st.link:
            _st.link = link
            log.info("link %s", "up" if link else "down")
            _st.status_due = True
    _send_status()


def _send_status() -> None:
    """One STATUS at a time to the client, when something changed."""
    if not _st.status_due or _st.status_out or _st.client is None:
        return
    fields: Fields = {"id": 0, "link": _st.link, "gen": core.gen,
                      "stats": _st.stats.as_fields()}  # type: ignore[dict-item]  # fmt: skip
    try:
        sef.connection().senda(_st.client, ndev.STATUS, fields)
    except IpcError as exc:
        log.info("STATUS to %d not sent: %s", _st.client, exc)
        return
    _st.status_out, _st.status_due = True, False


def _answer(p: _Pending, reply_type: int, result: int, extra: Fields | None = None) -> None:
    fields: Fields = {"id": p.id, "result": result}
    if result < 0:
        fields["error"] = Errno(-result).name
    if extra:
        fields.update(extra)
    _reply(p.source, p.sync, reply_type, fields)


def _reply(dest: int, sync: bool, m_type: int, fields: Fields) -> None:
    """A sync client waits in sendrec: the reply goes with the next receive.
    Otherwise it is queued with ``senda`` and the client receives it when it can."""
    if sync:
        sef.reply(dest, m_type, fields)
        return
    try:
        sef.connection().senda(dest, m_type, fields)
    except IpcError as exc:
        log.info("reply %#x to %d not sent: %s", m_type, dest, exc)
