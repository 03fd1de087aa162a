"""libblockdriver: the main loop of a block driver and its dispatch table, as
MINIX's (docs/drivers.md, "libblockdriver").

A driver fills a :class:`BlockDriver` table (``open``, ``close``, ``transfer``,
``ioctl``, ``geometry``, ``cleanup``, ``alarm``, ``intr``, ``other``,
``state_save``/``state_restore``) and calls :func:`task` after ``sef.startup()``;
the loop receives requests, checks them, calls the callbacks and replies. The
incarnation, the deferred queue, live update and the announcement are the driver
core's (:mod:`hwl.driver.core`); this library adds what is BDEV's.

What a client relies on: every reply carries ``gen``, the incarnation; a request
naming another incarnation, and after a restart any request but OPEN on a minor
it has not re-opened, is answered ERESTART, unserved; a malformed request is
answered EINVAL and the driver serves on; a live update keeps the incarnation and
the open table, so nothing needs re-opening.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from hwl.errors import Refusal
from hwl.ipc import codec, wire
from hwl.ipc.client import Connection, Message
from hwl.proto import bdev
from hwl.proto.errno import Errno
from hwl.system import sef
from hwl.system.proto import LuState
from hwl.system.serve import Answering

from . import proto
from .core import Driver, Library, core

log = logging.getLogger(__name__)

Fields = dict[str, codec.Value]
Iov = list[tuple[int, int]]  # (grant, size)


#: A missing or ill-typed field is EINVAL; a failed kernel call (a client's grant)
#: answers its errno; a bug ends the driver, and RS restarts it.
_ANSWERING = Answering(
    log,
    malformed=(KeyError, TypeError, ValueError, codec.CodecError),
    call_text=lambda name, exc: str(exc),
    answer_bugs=False,
)


class RequestError(Refusal):
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
    opens: dict[tuple[int, int], int] = field(default_factory=dict)  # (client, minor) -> count
    table: BlockDriver | None = None
    inline: tuple[int, memoryview] | None = None  # inline reads' own grant and its bytes


_st = _State()


def open_minors() -> set[int]:
    return {minor for _, minor in _st.opens}


# ----------------------------------------------------------------- init, LU
def _library() -> Library:
    """libblockdriver as the core sees it: the open table travels in a live update,
    and PROTOCOL_FREE needs no open minor."""
    return Library("blk", free=_free, save=_save_opens, restore=_restore_opens)


def _driver(table: BlockDriver) -> Driver:
    return Driver(table.state_save, table.state_restore, table.lu_states)


def setup(table: BlockDriver) -> None:
    """Install the live-update callbacks; call before ``sef.startup()``."""
    _st.table = table
    core.setup(_library(), _driver(table))


def init(info: sef.InitInfo) -> None:
    """Called from the driver's init callbacks: note the start type, take the
    saved state of a live update."""
    core.start(info)


def _free(state: int) -> bool:
    return state != LuState.PROTOCOL_FREE or not _st.opens


def _save_opens() -> dict[str, codec.Value]:
    opens: list[codec.Value] = [[c, m, n] for (c, m), n in sorted(_st.opens.items())]
    return {"opens": opens}


def _restore_opens(state: dict[str, codec.Value]) -> None:
    opens = state.get("opens", [])
    if isinstance(opens, list):
        for row in opens:
            if isinstance(row, list) and len(row) == 3:
                client, minor, count = (int(x) for x in row)  # type: ignore[arg-type]
                _st.opens[(client, minor)] = count


def driver_announce(conn: Connection, kind: str = "blk") -> None:
    """Tell the world this driver is up: after a restart, fail whatever is still
    blocked on the previous incarnation; then publish ``drv.<kind>.<label>``."""
    core.announce(conn, kind)


# ------------------------------------------------------------------ receive
def mq_queue(m: Message) -> None:
    """Keep a message for later (received while waiting for an interrupt)."""
    core.queue(m)


def driver_receive() -> Message:
    """The next message to serve: deferred ones first; stale requests dropped.
    The last request's reply goes out with the receive, in one kernel round trip."""
    while True:
        m = core.receive()
        if not m.is_notify and proto.is_request(m.m_type):
            gen = core.stale(m)
            if gen is not None:
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
    fields["gen"] = core.gen
    sef.reply(m.source, status, fields)


# --------------------------------------------------------------------- loop
def task(table: BlockDriver) -> None:
    """The driver's main loop; never returns (SIGTERM ends it through SEF)."""
    _st.table = table
    core.bind(_library(), _driver(table))
    try:
        while True:
            m = driver_receive()
            process(table, m)
    finally:
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
    name = proto.BDEV_REQUEST_NAMES.get(m.m_type, f"{m.m_type:#x}")
    _reply(m, *_ANSWERING.answer(lambda: _request(table, m), name, m.source))


def _int(m: Message, name: str, default: int | None = None) -> int:
    value = m.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"field {name!r} is not an integer: {value!r}")
    return value


Transfer = Callable[[int, bool, int, int, Iov], int]


def _inline_buffer() -> tuple[int, memoryview]:
    """Inline requests' buffer in this driver's arena and its grant to itself."""
    if _st.inline is None:
        conn = sef.connection()
        buf = conn.arena.alloc(bdev.INLINE_MAX)
        _st.inline = conn.arena.grant_buffer(conn.endpoint, buf, read=True, write=True), buf.view
    return _st.inline


def _inline_read(transfer: Transfer, minor: int, position: int, count: int) -> tuple[int, Fields]:
    """A read answered with its data (bdev.INLINE_MAX at most): the driver's own
    transfer into a grant of its own, the bytes into the reply."""
    if not 0 <= count <= bdev.INLINE_MAX or position < 0:
        raise RequestError(Errno.EINVAL, f"an inline read of {count} bytes at {position} "
                                         f"(at most {bdev.INLINE_MAX})")  # fmt: skip
    grant, view = _inline_buffer()
    done = transfer(minor, False, position, sef.connection().endpoint, [(grant, count)])
    return done, {"data": bytes(view[:done])}


def _inline_write(
    transfer: Transfer, minor: int, position: int, data: codec.Value
) -> tuple[int, Fields]:
    """A write that brought its data (bdev.INLINE_MAX bytes at most): the bytes
    into a grant of the driver's own, and its own transfer from there."""
    if not isinstance(data, bytes) or len(data) > bdev.INLINE_MAX or position < 0:
        what = f"{len(data)} bytes" if isinstance(data, bytes) else f"data {type(data).__name__}"
        raise RequestError(Errno.EINVAL, f"an inline write of {what} at {position} "
                                         f"(bytes, at most {bdev.INLINE_MAX})")  # fmt: skip
    grant, view = _inline_buffer()
    view[: len(data)] = data
    return transfer(minor, True, position, sef.connection().endpoint, [(grant, len(data))]), {}


def _request(table: BlockDriver, m: Message) -> tuple[int, Fields]:
    minor = _int(m, "minor")
    client = m.source
    if m.m_type == proto.BDEV_OPEN:
        access = _int(m, "access", proto.BDEV_R_BIT)
        if table.open is not None:
            table.open(minor, access)
        _st.opens[(client, minor)] = _st.opens.get((client, minor), 0) + 1
        return 0, {}
    if core.restarted and (client, minor) not in _st.opens:
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
        if m.m_type == proto.BDEV_READ and m.get("inline") is True:
            return _inline_read(table.transfer, minor, position, _int(m, "count"))
        if m.m_type == proto.BDEV_WRITE and m.get("inline") is True:
            return _inline_write(table.transfer, minor, position, m.get("data"))
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
