"""SEF, the system event framework: what every service does the same way, as MINIX's
libsys (docs/services.md, "SEF").

A service sets its callbacks, calls :func:`startup` (which waits for RS's init
request, runs the matching init callback, fresh, restart or lu, and reports its
result), then loops on :func:`receive`, which answers RS's pings, handles
live-update and fault-injection requests and returns every other message.

What a service relies on: a reply kept with :func:`reply` leaves with the next
receive, or before the service blocks on anything else, or when SIGTERM ends it,
so a server never flushes it; a ``receive(nested=True)`` inside a piece of work
never counts as a live-update state reached; once a state is reached
``state_save`` runs and the service blocks until RS kills it or aborts the update
(then it serves on); SIGTERM ends it through ``SystemExit``. The predefined
callbacks (``init_fail``, ``lu_prepare_never_ready``, ...) are MINIX's test callbacks.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import NoReturn

from hwl.errors import HwlError
from hwl.ipc import codec
from hwl.ipc.client import Connection, IpcError, KernelGone, Message
from hwl.procs import set_title
from hwl.proto.errno import Errno, errno_of
from hwl.proto.sef import FI_CRASH_STATUS, SEF_FI, FiType
from hwl.system import proto
from hwl.system.proto import InitFlag, InitType, LuState

log = logging.getLogger(__name__)

OK = 0
Fields = dict[str, codec.Value]


@dataclass(frozen=True)
class InitInfo:
    """What RS says about this start."""

    type: InitType
    flags: InitFlag
    restarts: int
    endpoint: int
    saved: bytes = b""  # a live update's state from the old version


class SefError(HwlError):
    """SEF was used out of order (receive before startup) or RS spoke nonsense."""


class FaultInjected(HwlError):
    """Raised inside a request on RS's request (``service fi -type exception``):
    uncaught, it ends the service with a traceback, as a bug would."""


InitCallback = Callable[[InitInfo], int]
PingCallback = Callable[[int], None]
PrepareCallback = Callable[[int], int]
IsValidCallback = Callable[[int, int], bool]
StateChangedCallback = Callable[[int, int], None]
StateDumpCallback = Callable[[int], None]
StateSaveCallback = Callable[[int, int], bytes | None]
SignalCallback = Callable[[int], None]


# ------------------------------------------------------- predefined callbacks
def init_null(info: InitInfo) -> int:
    return OK


def init_fail(info: InitInfo) -> int:
    return int(Errno.ENOSYS)


def init_crash(info: InitInfo) -> int:
    log.error("init: crashing on purpose (init_crash)")
    logging.shutdown()
    os.abort()


def init_timeout(info: InitInfo) -> int:
    log.error("init: never answering on purpose (init_timeout)")
    while True:
        time.sleep(3600)


def ping_reply_pong(rs: int) -> None:
    _sef.conn.notify(rs)


def lu_prepare_null(state: int) -> int:
    return int(Errno.ENOTREADY)


def lu_prepare_always_ready(state: int) -> int:
    return OK


def lu_prepare_never_ready(state: int) -> int:
    return int(Errno.ENOTREADY)


def lu_prepare_crash(state: int) -> int:
    log.error("live update: crashing at prepare on purpose (state %d)", state)
    logging.shutdown()
    os.abort()


def lu_state_isvalid_standard(state: int, flags: int) -> bool:
    """The standard states; EVAL needs an expression language hwl does not have."""
    return state in (LuState.WORK_FREE, LuState.REQUEST_FREE, LuState.PROTOCOL_FREE)


def lu_state_changed_null(old: int, new: int) -> None:
    return None


def lu_state_dump_null(state: int) -> None:
    return None


def lu_state_save_null(state: int, flags: int) -> bytes | None:
    return None


def signal_handler_term(signo: int) -> None:
    """SIGTERM: leave the receive loop through SystemExit, so ``finally`` blocks run."""
    if signo == signal.SIGTERM:
        log.info("SIGTERM: exiting")
        raise SystemExit(0)


_DEBUG_STATES = (LuState.UNREACHABLE, LuState.PREPARE_CRASH)


class Sef:
    """One service's SEF state; the module functions use a single instance."""

    def __init__(self) -> None:
        self._conn: Connection | None = None
        self.rs = 0  # endpoint of the process that starts and pings us
        self.info: InitInfo | None = None
        self.lu_state = int(LuState.NULL)
        self.lu_flags = 0
        self.cb_init_fresh: InitCallback = init_null
        self.cb_init_restart: InitCallback | None = None  # default: fresh
        self.cb_init_lu: InitCallback | None = None  # default: fresh
        self.cb_ping_reply: PingCallback = ping_reply_pong
        self.cb_lu_prepare: PrepareCallback = lu_prepare_null
        self.cb_lu_state_isvalid: IsValidCallback = lu_state_isvalid_standard
        self.cb_lu_state_changed: StateChangedCallback = lu_state_changed_null
        self.cb_lu_state_dump: StateDumpCallback = lu_state_dump_null
        self.cb_lu_state_save: StateSaveCallback = lu_state_save_null
        self.cb_signal_handler: SignalCallback = signal_handler_term
        self.kept: tuple[int, int, Fields | bytes | None] | None = None  # see reply()
        self.fi_armed: FiType | None = None  # a fault for the next request or reply

    @property
    def conn(self) -> Connection:
        if self._conn is None:
            raise SefError("SEF has not started: call sef.startup() first")
        return self._conn

    # ----------------------------------------------------------------- init
    def startup(self) -> Connection:
        """Connect, wait for RS's init request, initialise, report; returns the
        connection for the service's own calls."""
        if not logging.getLogger().handlers:
            logging.basicConfig(
                level=logging.INFO,
                stream=sys.stderr,
                format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s",
                datefmt="%H:%M:%S",
            )
        self._conn = conn = Connection.from_env()
        atexit.register(self._flush_at_exit)  # a process that ends by returning
        set_title(conn.label, f"ep {conn.endpoint}")
        self.rs = conn.parent
        signal.signal(signal.SIGTERM, self._on_signal)
        while True:
            m = conn.receive(self.rs)
            if m.is_notify:
                self.cb_ping_reply(m.source)
            elif m.m_type == proto.SEF_INIT:
                break
            else:
                log.warning("before init: ignored message type %#x from RS", m.m_type)
        self._init(m)
        return conn

    def _init(self, m: Message) -> None:
        """Run the init callback, serve call channels, report to RS (a live
        update's new version serves them after the swap: the old version's, and
        the calls it left to this one to answer)."""
        try:
            saved, waiting = _unwrap_saved(bytes(m.get("saved", b"")))  # type: ignore[arg-type]
            info = InitInfo(
                type=InitType(int(m["type"])),  # type: ignore[arg-type]
                flags=InitFlag(int(m.get("flags", 0))),  # type: ignore[arg-type]
                restarts=int(m.get("restarts", 0)),  # type: ignore[arg-type]
                endpoint=int(m.get("endpoint", self.conn.endpoint)),  # type: ignore[arg-type]
                saved=saved,
            )
        except (KeyError, ValueError, TypeError, codec.CodecError) as exc:
            raise SefError(f"RS's init request is malformed: {exc}") from exc
        self.info = info
        self.conn.endpoint = info.endpoint  # a live update moved us to the old endpoint
        callback = self._init_callback(info)
        result = callback(info)
        status = -abs(int(result))
        log.info(
            "init %s (restarts %d, flags %s): %s",
            info.type.name.lower(),
            info.restarts,
            info.flags.name if info.flags else "none",
            "ok" if status == 0 else errno_of(status).name,
        )
        if status == 0 and info.type is not InitType.LU:
            # Before RS hears "up": a client that calls as soon as RS says so gets a
            # channel at once, not the kernel path until its retry (HWL_CHANNELS=0: no).
            self.conn.serve_channels(waiting)
        self.conn.send(self.rs, proto.RS_INIT, {"result": status})
        if status != 0:
            raise SystemExit(1)
        if info.type is InitType.LU:
            self._wait_for_swap()
            self.conn.serve_channels(waiting)

    def _wait_for_swap(self) -> None:
        """A new version runs its init before RS swaps it onto the old endpoint;
        it serves nothing (not even requests handed over in the saved state) until
        RS's notify says the swap is done. If the update is rolled back, RS kills it."""
        while True:
            m = self.conn.receive(self.rs)
            if m.is_notify:
                return
            log.warning("before the swap: ignored message type %#x from RS", m.m_type)

    def _init_callback(self, info: InitInfo) -> InitCallback:
        if info.flags & InitFlag.CRASH:
            return init_crash
        if info.flags & InitFlag.FAIL:
            return init_fail
        if info.flags & InitFlag.TIMEOUT:
            return init_timeout
        if info.type is InitType.RESTART and self.cb_init_restart is not None:
            return self.cb_init_restart
        if info.type is InitType.LU and self.cb_init_lu is not None:
            return self.cb_init_lu
        return self.cb_init_fresh

    # -------------------------------------------------------------- receive
    def reply(self, dest: int, m_type: int, fields: Fields | bytes | None = None) -> None:
        """Answer ``dest`` with the next receive (``reply_receive``: one kernel round
        trip for both). Until then the reply is kept; the connection sends it first
        if the service blocks on anything else (``Connection.before_block``), and
        SEF does when a signal ends the service. A reply kept already goes out first."""
        self.flush_reply()
        self.kept = (dest, m_type, fields)
        self.conn.before_block = self.flush_reply

    def flush_reply(self) -> None:
        """Send the kept reply now (the connection's ``before_block``)."""
        if self.kept is None:
            return
        dest, m_type, fields = self._take_kept()
        send, fields = self._fi_reply(dest, fields)
        if not send:
            return
        try:
            self.conn.sendnb(dest, m_type, fields)
        except IpcError as exc:
            log.info("reply to %d not taken: %s", dest, exc)

    def _take_kept(self) -> tuple[int, int, Fields | bytes | None]:
        kept, self.kept = self.kept, None
        assert kept is not None
        self.conn.before_block = None
        return kept

    def _flush_at_exit(self) -> None:
        """A reply kept when the service ends (SIGTERM between a reply and the next
        receive) still goes out, unless the signal came in the middle of a call."""
        conn = self._conn
        if self.kept is not None and conn is not None and not conn.closed and not conn.in_call:
            with contextlib.suppress(KernelGone):
                self.flush_reply()

    def receive(self, nested: bool = False) -> Message:
        """The next message for the service itself; system events are handled here.
        ``nested``: called in the middle of a piece of work, where no live-update
        state may count as reached (a request arriving is noted for later).
        A reply kept by ``reply`` goes out with it (before it, if nested)."""
        if self.kept is not None and not nested:
            dest, m_type, fields = self._take_kept()
            m = self.reply_receive(dest, m_type, fields)
            if m.reply_errno is not None:
                log.info("reply to %d not taken: %s", dest, m.reply_errno.name)
            return m
        conn = self.conn
        while True:
            if self.lu_state != LuState.NULL and not nested:
                self._lu_check()
            m = conn.receive()
            if not self._system_event(m):
                return self._fi_request_arrives(m)

    def reply_receive(
        self, dest: int, m_type: int, fields: Fields | bytes | None = None
    ) -> Message:
        """A server's reply and its next receive in one round trip (see
        ``Connection.reply_receive``); system events are handled as in receive."""
        conn = self.conn
        send, fields = self._fi_reply(dest, fields)
        if not send:
            return self.receive()
        if self.lu_state != LuState.NULL:
            try:
                conn.sendnb(dest, m_type, fields)
            except IpcError as exc:
                log.debug("reply to %d not taken: %s", dest, exc)
            return self.receive()
        try:
            m = conn.reply_receive(dest, m_type, fields)
        except IpcError as exc:  # the kernel refused the request itself: no receive ran
            log.warning("reply to %d refused (%s); receiving on", dest, exc)
            return self.receive()
        while self._system_event(m):
            if self.lu_state != LuState.NULL:
                return self.receive()
            m = conn.receive()
        return self._fi_request_arrives(m)

    def serve(self, handle: Callable[[Message], tuple[int, Fields] | None]) -> NoReturn:
        """A server's loop: each message goes to ``handle``; its answer (status,
        fields) goes back with the next receive, None answers nothing."""
        m = self.receive()
        while True:
            answer = handle(m)
            m = self.receive() if answer is None else self.reply_receive(m.source, *answer)

    def _system_event(self, m: Message) -> bool:
        if m.source != self.rs:
            return False
        if m.is_notify:
            self.cb_ping_reply(m.source)
            return True
        if m.m_type == proto.SEF_LU_PREPARE:
            self._lu_request(m)
            return True
        if m.m_type == SEF_FI:
            self._fi_request(m)
            return True
        return False

    # ------------------------------------------------------ fault injection
    def _fi_request(self, m: Message) -> None:
        """RS's ``service fi``: a crash or a hang now, the others armed."""
        try:
            kind = FiType(int(m.get("type", int(FiType.CRASH))))  # type: ignore[arg-type]
        except (ValueError, TypeError, codec.CodecError) as exc:
            log.error("malformed fault-injection request: %s", exc)
            return
        if kind is FiType.CRASH:
            log.error(
                "fault injection: crashing on RS's request (service fi), exit status %d",
                FI_CRASH_STATUS,
            )
            logging.shutdown()
            os._exit(FI_CRASH_STATUS)
        if kind is FiType.HANG:
            log.error("fault injection: hanging on RS's request (service fi), answering nothing")
            while True:
                time.sleep(3600)
        log.warning("fault injection: %s armed (service fi)", kind.option)
        self.fi_armed = kind

    def _fi_request_arrives(self, m: Message) -> Message:
        """A request for the service: raise inside it if an exception is armed."""
        if self.fi_armed is FiType.EXCEPTION and not m.is_notify:
            self.fi_armed = None
            raise FaultInjected(
                f"fault injection (service fi): exception inside request {m.m_type:#x} "
                f"from {m.source}"
            )
        return m

    def _fi_reply(
        self, dest: int, fields: Fields | bytes | None
    ) -> tuple[bool, Fields | bytes | None]:
        """Whether to send a reply, and its payload: an armed reply fault applies once."""
        kind = self.fi_armed
        if kind is FiType.DROP_REPLY:
            self.fi_armed = None
            log.warning("fault injection: the reply to %d is dropped (service fi)", dest)
            return False, fields
        if kind is FiType.CORRUPT_REPLY:
            self.fi_armed = None
            log.warning("fault injection: the reply to %d is garbled (service fi)", dest)
            return True, garble(fields)
        return True, fields

    # ---------------------------------------------------------- live update
    def _lu_request(self, m: Message) -> None:
        try:
            state = int(m["state"])  # type: ignore[arg-type]
            flags = int(m.get("flags", 0))  # type: ignore[arg-type]
        except (KeyError, ValueError, TypeError, codec.CodecError) as exc:
            log.error("malformed live-update request: %s", exc)
            return
        if state == LuState.NULL:  # RS cancels a pending request; no answer
            self._lu_state_change(LuState.NULL, 0)
            return
        if self.lu_state != LuState.NULL:
            self._lu_ready(int(Errno.EBUSY), state)
            return
        if state not in _DEBUG_STATES and not self.cb_lu_state_isvalid(state, flags):
            log.warning("live update to state %d refused: not a state this service knows", state)
            self._lu_ready(int(Errno.EINVAL), state)
            return
        self._lu_state_change(state, flags)

    def _lu_check(self) -> None:
        """Before a receive: is the requested state reached?"""
        state = self.lu_state
        if log.isEnabledFor(logging.DEBUG):
            self.cb_lu_state_dump(state)
        if state == LuState.WORK_FREE:
            result = OK
        elif state == LuState.UNREACHABLE:
            result = lu_prepare_never_ready(state)
        elif state == LuState.PREPARE_CRASH:
            result = lu_prepare_crash(state)
        else:
            result = self.cb_lu_prepare(state)
        if result != Errno.ENOTREADY:
            self._lu_ready(result, state)

    def _lu_ready(self, result: int, state: int) -> None:
        saved: bytes = b""
        if result == OK:
            try:
                saved = self.cb_lu_state_save(state, self.lu_flags) or b""
                server = self.conn.channel_server
                if server is not None:
                    saved = _wrap_saved(saved, server.waiting())
            except Exception:
                log.exception("state_save failed; the update is aborted")
                result = int(Errno.EGENERIC)
        log.info(
            "live update: state %d %s", state, "reached" if result == OK else f"refused ({result})"
        )
        answer = self.conn.sendrec(
            self.rs, proto.RS_LU_PREPARE, {"result": -abs(result), "state": state, "saved": saved}
        )
        # Still alive: RS aborted the update (or it was prepare-only). Resume.
        log.info("live update not done (RS answered %d); serving on", answer.m_type)
        self._lu_state_change(LuState.NULL, 0)

    def _lu_state_change(self, state: int, flags: int) -> None:
        old, self.lu_state, self.lu_flags = self.lu_state, int(state), flags
        if old != self.lu_state:
            self.cb_lu_state_changed(old, self.lu_state)

    # -------------------------------------------------------------- signals
    def _on_signal(self, signo: int, _frame: FrameType | None) -> None:
        """A handler that ends the service (SystemExit) sends the kept reply first:
        a process the kernel's fork server started ends with ``os._exit``, which
        runs no atexit handler."""
        try:
            self.cb_signal_handler(signo)
        except SystemExit:
            self._flush_at_exit()
            raise


_sef = Sef()


def startup() -> Connection:
    return _sef.startup()


def receive(nested: bool = False) -> Message:
    return _sef.receive(nested)


def reply_receive(dest: int, m_type: int, fields: Fields | bytes | None = None) -> Message:
    return _sef.reply_receive(dest, m_type, fields)


def reply(dest: int, m_type: int, fields: Fields | bytes | None = None) -> None:
    _sef.reply(dest, m_type, fields)


def serve(handle: Callable[[Message], tuple[int, Fields] | None]) -> NoReturn:
    _sef.serve(handle)


def connection() -> Connection:
    return _sef.conn


def init_info() -> InitInfo | None:
    return _sef.info


def setcb_init_fresh(cb: InitCallback) -> None:
    _sef.cb_init_fresh = cb


def setcb_init_restart(cb: InitCallback) -> None:
    _sef.cb_init_restart = cb


def setcb_init_lu(cb: InitCallback) -> None:
    _sef.cb_init_lu = cb


def setcb_ping_reply(cb: PingCallback) -> None:
    _sef.cb_ping_reply = cb


def setcb_lu_prepare(cb: PrepareCallback) -> None:
    _sef.cb_lu_prepare = cb


def setcb_lu_state_isvalid(cb: IsValidCallback) -> None:
    _sef.cb_lu_state_isvalid = cb


def setcb_lu_state_changed(cb: StateChangedCallback) -> None:
    _sef.cb_lu_state_changed = cb


def setcb_lu_state_dump(cb: StateDumpCallback) -> None:
    _sef.cb_lu_state_dump = cb


def setcb_lu_state_save(cb: StateSaveCallback) -> None:
    _sef.cb_lu_state_save = cb


def setcb_signal_handler(cb: SignalCallback) -> None:
    _sef.cb_signal_handler = cb


def garble(fields: Fields | bytes | None) -> bytes:
    """A payload no decoder takes: 65535 entries declared (more than any message
    holds), then the real payload with its bits flipped."""
    payload = fields if isinstance(fields, bytes) else codec.encode(fields or {})
    return b"\xff\xff" + bytes(b ^ 0xFF for b in payload)


_WRAPPED = "hwl.sef.lu"


def _wrap_saved(saved: bytes, waiting: dict[int, int]) -> bytes:
    """The service's saved state, with the channel calls it read and has not
    answered: the new version answers them on the channels it inherits."""
    pairs: list[codec.Value] = [[client, ident] for client, ident in waiting.items()]
    return codec.encode({_WRAPPED: 1, "channels": pairs, "service": saved})


def _unwrap_saved(saved: bytes) -> tuple[bytes, dict[int, int]]:
    """The service's own saved state and the channel calls left to answer."""
    if _WRAPPED.encode() not in saved[:32]:
        return saved, {}
    try:
        outer = codec.decode(saved)
    except codec.CodecError:
        return saved, {}
    inner, pairs = outer.get("service"), outer.get("channels")
    if outer.get(_WRAPPED) != 1 or not isinstance(inner, bytes) or not isinstance(pairs, list):
        return saved, {}
    waiting = {
        int(p[0]): int(p[1])  # type: ignore[arg-type]
        for p in pairs
        if isinstance(p, list) and len(p) == 2 and all(isinstance(v, int) for v in p)
    }
    return inner, waiting
