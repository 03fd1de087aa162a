"""libblockdriver: the main loop of a block driver and its dispatch table.

A driver fills a :class:`BlockDriver` table with its callbacks and calls
:func:`task` after ``sef.startup()``; the loop receives requests, checks them,
calls the callbacks and replies. As MINIX's libblockdriver:

- ``open`` / ``close`` / ``transfer`` (scatter/gather: a list of (grant, size)
  in the client's arena) / ``ioctl`` / ``geometry`` / ``cleanup`` / ``alarm``
  (a CLOCK notify) / ``intr`` (a HARDWARE notify) / ``other`` (anything else).
- :func:`driver_receive` takes queued messages first (those a driver deferred
  while it waited for an interrupt, :func:`mq_queue`), then SEF's receive, and
  drops requests meant for a previous incarnation of the driver: a request whose
  ``gen`` field names another incarnation (``gen`` is the driver's pid, handed
  out in every reply) is answered ERESTART and not served.
- :func:`driver_announce` clears the IPC references of a previous incarnation
  (``statectl clear_ipc_refs``) after a restart and publishes ``drv.blk.<label>``
  in DS.
- After a restart (policy restart keeps the endpoint, so a client's next call
  reaches the new process) every request other than OPEN on a minor that the
  client has not opened since this incarnation started is answered ERESTART: the
  client must re-open and redo the request. A fresh driver serves such requests.
- Live update: WORK_FREE and REQUEST_FREE are reached at every receive with no
  deferred messages; PROTOCOL_FREE also needs no open minor; a driver adds its
  own states in ``lu_states`` (state -> prepare, called at a receive with no
  deferred message; a prepare that waits for the hardware defers the requests
  arriving meanwhile). The open table, the incarnation id and the deferred
  requests travel to the new version (``state_save``), with the driver's own
  state: to clients the new version is the same incarnation, so nothing is
  re-opened, and it serves the deferred requests first.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from hwl.ipc import codec, wire
from hwl.ipc.client import Connection, IpcError, KernelGone, Message
from hwl.kernel.errno import Errno, ErrnoError
from hwl.system import sef
from hwl.system.proto import InitType, LuState

from . import proto
from .announce import announce

log = logging.getLogger(__name__)

Fields = dict[str, codec.Value]
Iov = list[tuple[int, int]]  # (grant, size)


class RequestError(ErrnoError):
    """A callback's refusal: the request is answered with ``-errno``."""


@dataclass(frozen=True)
class Geometry:
    """A minor's extent (bytes) and the sector size."""

    base: int
    size: int
    sector: int = 512


@dataclass
class BlockDriver:
    """The dispatch table (MINIX's ``struct blockdriver``). ``transfer`` gets
    (minor, write, position, endpoint, iov) and returns the bytes moved."""

    open: Callable[[int, int], None] | None = None
    close: Callable[[int], None] | None = None
    transfer: Callable[[int, bool, int, int, Iov], int] | None = None
    ioctl: Callable[[int, str, int, Fields], Fields | None] | None = None
    geometry: Callable[[int], Geometry | None] | None = None
    cleanup: Callable[[], None] | None = None
    alarm: Callable[[], None] | None = None
    intr: Callable[[int], None] | None = None
    other: Callable[[Message], tuple[int, Fields] | None] | None = None
    state_save: Callable[[], codec.Value] | None = None
    state_restore: Callable[[codec.Value], None] | None = None
    #: Custom live-update states (>= LU_STATE_CUSTOM_BASE): state -> prepare,
    #: which answers 0 (reached), ENOTREADY, or an errno that refuses the update.
    lu_states: dict[int, Callable[[], int]] = field(default_factory=dict)


@dataclass
class _State:
    restarted: bool = False
    gen: int = field(default_factory=os.getpid)
    opens: dict[tuple[int, int], int] = field(default_factory=dict)  # (client, minor) -> count
    mq: deque[Message] = field(default_factory=deque)
    table: BlockDriver | None = None


_st = _State()


def open_minors() -> set[int]:
    return {minor for _, minor in _st.opens}


# ----------------------------------------------------------------- init, LU
def setup(table: BlockDriver) -> None:
    """Install the live-update callbacks; call before ``sef.startup()``."""
    _st.table = table
    sef.setcb_lu_prepare(_lu_prepare)
    sef.setcb_lu_state_isvalid(_lu_state_isvalid)
    sef.setcb_lu_state_save(_lu_state_save)


def init(info: sef.InitInfo) -> None:
    """Called from the driver's init callbacks: note the start type, take the
    saved state of a live update."""
    _st.restarted = info.type is InitType.RESTART
    _st.gen = os.getpid()
    if info.type is InitType.LU and info.saved:
        state = codec.decode(info.saved)
        gen = state.get("gen")
        if isinstance(gen, int):
            _st.gen = gen  # the same incarnation to clients: they re-open nothing
        _st.restarted = bool(state.get("restarted"))
        queued = state.get("queued", [])
        for row in queued if isinstance(queued, list) else []:
            if isinstance(row, list) and len(row) == 3:
                source, m_type, payload = row
                if isinstance(source, int) and isinstance(m_type, int):
                    _st.mq.append(Message(source, m_type, bytes(payload)))  # type: ignore[arg-type]
        opens = state.get("opens", [])
        if isinstance(opens, list):
            for row in opens:
                if isinstance(row, list) and len(row) == 3:
                    client, minor, count = (int(x) for x in row)  # type: ignore[arg-type]
                    _st.opens[(client, minor)] = count
        if _st.table is not None and _st.table.state_restore is not None:
            _st.table.state_restore(state.get("driver"))


def _lu_state_isvalid(state: int, flags: int) -> bool:
    custom = _st.table.lu_states if _st.table is not None else {}
    return sef.lu_state_isvalid_standard(state, flags) or state in custom


def _lu_prepare(state: int) -> int:
    if _st.mq:
        return int(Errno.ENOTREADY)
    if state == LuState.REQUEST_FREE:
        return 0
    if state == LuState.PROTOCOL_FREE:
        return 0 if not _st.opens else int(Errno.ENOTREADY)
    custom = _st.table.lu_states.get(state) if _st.table is not None else None
    if custom is None:
        return int(Errno.ENOTREADY)
    return custom()  # requests queued meanwhile travel to the new version


def _lu_state_save(state: int, flags: int) -> bytes:
    opens: list[codec.Value] = [[c, m, n] for (c, m), n in sorted(_st.opens.items())]
    driver: codec.Value = None
    if _st.table is not None and _st.table.state_save is not None:
        driver = _st.table.state_save()
    queued: list[codec.Value] = [[m.source, m.m_type, m.payload] for m in _st.mq if not m.is_notify]
    return codec.encode(
        {
            "opens": opens,
            "gen": _st.gen,
            "restarted": _st.restarted,
            "queued": queued,
            "driver": driver,
        }
    )


def driver_announce(conn: Connection, kind: str = "blk") -> None:
    """Tell the world this driver is up: after a restart, fail whatever is still
    blocked on the previous incarnation; then publish ``drv.<kind>.<label>``."""
    key = announce(conn, kind, _st.restarted)
    log.info("announced %s (gen %d%s)", key, _st.gen, ", restarted" if _st.restarted else "")


# ------------------------------------------------------------------ receive
def mq_queue(m: Message) -> None:
    """Keep a message for later (received while waiting for an interrupt)."""
    _st.mq.append(m)


def driver_receive() -> Message:
    """The next message to serve: deferred ones first; stale requests dropped.
    The last request's reply goes out with the receive, in one kernel round trip."""
    while True:
        if _st.mq:
            sef.flush_reply()
            m = _st.mq.popleft()
        else:
            m = sef.receive()
        if not m.is_notify and proto.is_request(m.m_type):
            try:
                gen = m.get("gen")
            except codec.CodecError:
                gen = None
            if isinstance(gen, int) and gen != _st.gen:
                log.info(
                    "dropped %s from %d meant for incarnation %d",
                    proto.BDEV_REQUEST_NAMES[m.m_type],
                    m.source,
                    gen,
                )
                _reply(m, -int(Errno.ERESTART), {"error": "sent to a previous incarnation"})
                continue
        return m


def _reply(m: Message, status: int, fields: Fields) -> None:
    """Answer ``m`` with the next receive (``sef.reply``)."""
    try:
        fields.setdefault("id", m.get("id"))
    except codec.CodecError:
        fields.setdefault("id", None)
    fields["gen"] = _st.gen
    sef.reply(m.source, status, fields)


# --------------------------------------------------------------------- loop
def task(table: BlockDriver) -> None:
    """The driver's main loop; never returns (SIGTERM ends it through SEF)."""
    _st.table = table
    try:
        while True:
            m = driver_receive()
            process(table, m)
    finally:
        with contextlib.suppress(KernelGone):
            sef.flush_reply()  # SIGTERM between a request's end and the next receive
        if table.cleanup is not None:
            table.cleanup()


def process(table: BlockDriver, m: Message) -> None:
    """Serve one message."""
    if m.is_notify:
        if m.source == wire.HARDWARE and table.intr is not None:
            table.intr(int(m.get("interrupts", 0) or 0))  # type: ignore[arg-type]
        elif m.source == wire.CLOCK and table.alarm is not None:
            table.alarm()
        return
    if not proto.is_request(m.m_type):
        if table.other is not None and m.m_type > 0:
            answer = table.other(m)
            if answer is not None:
                _reply(m, answer[0], answer[1])
        return
    try:
        status, fields = _request(table, m)
    except RequestError as exc:
        status, fields = -int(exc.errno), {"error": str(exc)}
    except (KeyError, TypeError, ValueError, codec.CodecError) as exc:
        status, fields = -int(Errno.EINVAL), {"error": f"malformed request: {exc}"}
    except IpcError as exc:
        status, fields = -int(exc.errno), {"error": str(exc)}
    _reply(m, status, fields)


def _int(m: Message, name: str, default: int | None = None) -> int:
    value = m.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"field {name!r} is not an integer: {value!r}")
    return value


def _request(table: BlockDriver, m: Message) -> tuple[int, Fields]:
    minor = _int(m, "minor")
    client = m.source
    if m.m_type == proto.BDEV_OPEN:
        access = _int(m, "access", proto.BDEV_R_BIT)
        if table.open is not None:
            table.open(minor, access)
        _st.opens[(client, minor)] = _st.opens.get((client, minor), 0) + 1
        return 0, {}
    if _st.restarted and (client, minor) not in _st.opens:
        raise RequestError(Errno.ERESTART, f"minor {minor} not re-opened since the restart")
    if m.m_type == proto.BDEV_CLOSE:
        count = _st.opens.get((client, minor), 0)
        if count <= 1:
            _st.opens.pop((client, minor), None)
        else:
            _st.opens[(client, minor)] = count - 1
        if table.close is not None:
            table.close(minor)
        return 0, {}
    if m.m_type in (proto.BDEV_READ, proto.BDEV_WRITE, proto.BDEV_GATHER, proto.BDEV_SCATTER):
        if table.transfer is None:
            raise RequestError(Errno.ENOSYS, "this driver does not transfer")
        write = m.m_type in (proto.BDEV_WRITE, proto.BDEV_SCATTER)
        position = _int(m, "position")
        if m.m_type in (proto.BDEV_READ, proto.BDEV_WRITE):
            iov: Iov = [(_int(m, "grant"), _int(m, "count"))]
        else:
            raw = m["iov"]
            if not isinstance(raw, list) or not raw:
                raise ValueError("iov is not a non-empty list")
            iov = []
            for item in raw:
                if not isinstance(item, list) or len(item) != 2:
                    raise ValueError(f"iov element {item!r} is not [grant, size]")
                grant, size = item
                if not isinstance(grant, int) or not isinstance(size, int):
                    raise ValueError(f"iov element {item!r} is not [grant, size]")
                iov.append((grant, size))
        if position < 0 or any(size < 0 for _, size in iov):
            raise RequestError(Errno.EINVAL, "negative position or size")
        done = table.transfer(minor, write, position, client, iov)
        return done, {}
    if m.m_type == proto.BDEV_IOCTL:
        request = m["request"]
        if not isinstance(request, str):
            raise ValueError("request is not a string")
        if request == proto.IOCTL_GEOMETRY and table.geometry is not None:
            geometry = table.geometry(minor)
            if geometry is None:
                raise RequestError(Errno.ENXIO, f"no minor {minor}")
            return 0, {"base": geometry.base, "size": geometry.size, "sector": geometry.sector}
        if table.ioctl is None:
            raise RequestError(Errno.ENOTTY, f"ioctl {request!r} not supported")
        return 0, table.ioctl(minor, request, client, dict(m.fields)) or {}
    raise RequestError(Errno.EBADREQUEST, f"request {m.m_type:#x}")
