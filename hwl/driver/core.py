"""The driver core: what every driver library does the same way, whatever it speaks
(docs/drivers.md, "libblockdriver"; docs/network.md, "NDEV and libnetdriver").

libblockdriver (BDEV) and libnetdriver (NDEV) differ in their protocol and in what
they track per client; the rest of a driver's life lives here, once:

- the **incarnation** (``gen``): the driver's pid at its start, kept across a live
  update and new after a restart (:meth:`DriverCore.stale`);
- the **deferred queue**: messages received while the driver waited for its
  interrupt (:meth:`DriverCore.wait_intr`) or prepared a live-update state, served
  by :meth:`DriverCore.receive` before SEF's receive;
- **live update**: the standard states (the library says what "free" means for it)
  and the driver's own; one saved-state map with the core's, the library's and the
  driver's parts, restored in the new version by :meth:`DriverCore.start`;
- the **announcement** ``drv.<kind>.<label>`` (:mod:`hwl.driver.announce`).

A driver process has one core (:data:`core`); a library binds it with
:meth:`DriverCore.setup` before ``sef.startup()``.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from hwl.ipc import codec, wire
from hwl.ipc.client import Connection, Message
from hwl.proto.errno import Errno
from hwl.system import sef
from hwl.system.proto import InitType, LuState

from .announce import announce

log = logging.getLogger(__name__)

State = dict[str, codec.Value]
#: The saved-state keys the core owns; a library's own keys must differ.
CORE_KEYS = frozenset({"gen", "restarted", "queued", "driver"})


def _always_free(state: int) -> bool:
    return True


def _nothing() -> State:
    return {}


def _ignore(state: State) -> None:
    return None


@dataclass
class Library:
    """What a driver library tells the core about itself.

    ``free(state)``: is the library at REQUEST_FREE / PROTOCOL_FREE (what those mean
    depends on its protocol). ``save`` / ``restore``: the library's own part of a
    live update's state (keys other than :data:`CORE_KEYS`)."""

    kind: str  # "blk", "net": the DS key is drv.<kind>.<label>
    free: Callable[[int], bool] = _always_free
    save: Callable[[], State] = _nothing
    restore: Callable[[State], None] = _ignore


@dataclass
class Driver:
    """What the driver itself brings to a live update (from its dispatch table)."""

    state_save: Callable[[], codec.Value] | None = None
    state_restore: Callable[[codec.Value], None] | None = None
    #: custom states (>= LU_STATE_CUSTOM_BASE): state -> prepare, answering 0
    #: (reached), ENOTREADY, or an errno that refuses the update.
    lu_states: dict[int, Callable[[], int]] = field(default_factory=dict)


Receive = Callable[[bool], Message]


class DriverCore:
    """One driver process's incarnation, deferred queue and live-update state.

    ``receive``: where messages come from; SEF's, unless a unit test feeds
    messages of its own."""

    def __init__(self, receive: Receive | None = None) -> None:
        self.gen = os.getpid()
        self.restarted = False
        self.mq: deque[Message] = deque()
        self.library = Library("drv")
        self.driver = Driver()
        self._receive = receive

    # ------------------------------------------------------------ binding
    def setup(self, library: Library, driver: Driver) -> None:
        """Bind the library and the driver; install SEF's live-update callbacks.
        Call before ``sef.startup()``."""
        self.bind(library, driver)
        sef.setcb_lu_prepare(self.lu_prepare)
        sef.setcb_lu_state_isvalid(self.lu_state_isvalid)
        sef.setcb_lu_state_save(self.lu_state_save)

    def bind(self, library: Library, driver: Driver) -> None:
        """Bind without touching SEF (a library's ``task`` given its table again)."""
        self.library, self.driver = library, driver

    def start(self, info: sef.InitInfo) -> None:
        """From the init callback: a restart is a new incarnation; the new version
        of a live update takes the old one's state and stays its incarnation."""
        self.restarted = info.type is InitType.RESTART
        self.gen = os.getpid()
        if info.type is InitType.LU and info.saved:
            self.restore(info.saved)

    # ------------------------------------------------------- incarnation
    def stale(self, m: Message) -> int | None:
        """The other incarnation a request names in ``gen`` (None: this one or none)."""
        try:
            gen = m.get("gen")
        except codec.CodecError:
            return None
        return gen if isinstance(gen, int) and gen != self.gen else None

    def announce(self, conn: Connection, kind: str | None = None) -> str:
        """Publish ``drv.<kind>.<label>`` (the library's kind unless given; after a
        restart, first fail what is still blocked on the previous incarnation);
        returns the key."""
        key = announce(conn, kind or self.library.kind, self.restarted)
        log.info("announced %s (gen %d%s)", key, self.gen, ", restarted" if self.restarted else "")
        return key

    # ---------------------------------------------------------- deferred
    def queue(self, m: Message) -> None:
        """Keep a message to serve later, after the work in progress."""
        self.mq.append(m)

    def receive(self) -> Message:
        """The next message: deferred ones first, then SEF's receive."""
        if self.mq:
            return self.mq.popleft()
        return self._next(False)

    def wait_intr(self, on_alarm: Callable[[], None] | None = None) -> Message:
        """Wait for a HARDWARE notify in the middle of a piece of work and return it.

        The receive is nested (no live-update state counts as reached mid-command).
        A CLOCK notify goes to ``on_alarm`` when given (a command's timeout: it may
        raise to end the wait), else it is deferred with every other message, to
        be served in order once the work is done."""
        while True:
            m = self._next(True)
            if m.is_notify and m.source == wire.HARDWARE:
                return m
            if m.is_notify and m.source == wire.CLOCK and on_alarm is not None:
                on_alarm()
                continue
            self.queue(m)

    def _next(self, nested: bool) -> Message:
        if self._receive is not None:
            return self._receive(nested)
        return sef.receive(nested=nested)

    # ------------------------------------------------------- live update
    def lu_state_isvalid(self, state: int, flags: int) -> bool:
        return sef.lu_state_isvalid_standard(state, flags) or state in self.driver.lu_states

    def lu_prepare(self, state: int) -> int:
        """Is ``state`` reached? Never with deferred messages (they are work not yet
        done); the standard states as the library says; a custom one as the
        driver's prepare says (requests it defers meanwhile travel to the new version)."""
        if self.mq:
            return int(Errno.ENOTREADY)
        if state in (LuState.WORK_FREE, LuState.REQUEST_FREE, LuState.PROTOCOL_FREE):
            return 0 if self.library.free(state) else int(Errno.ENOTREADY)
        prepare = self.driver.lu_states.get(state)
        return int(Errno.ENOTREADY) if prepare is None else prepare()

    def lu_state_save(self, state: int, flags: int) -> bytes:
        return self.save()

    def save(self) -> bytes:
        """The state the new version takes over: the incarnation, the deferred
        requests (notifies are not kept: the new version gets its own), the
        library's part and the driver's."""
        own = self.library.save()
        clash = CORE_KEYS & own.keys()
        assert not clash, f"library state uses the core's keys {sorted(clash)}"
        save = self.driver.state_save
        queued: list[codec.Value] = [
            [m.source, m.m_type, m.payload] for m in self.mq if not m.is_notify
        ]
        core: State = {
            "gen": self.gen,
            "restarted": self.restarted,
            "queued": queued,
            "driver": save() if save is not None else None,
        }
        return codec.encode({**core, **own})

    def restore(self, saved: bytes) -> None:
        """Take over what :meth:`save` encoded (the old version's); a state from a
        version without some key keeps this one's value for it."""
        state = codec.decode(saved)
        gen = state.get("gen")
        if isinstance(gen, int):
            self.gen = gen  # the same incarnation to clients: they redo nothing
        self.restarted = bool(state.get("restarted"))
        queued = state.get("queued")
        for row in queued if isinstance(queued, list) else []:
            if isinstance(row, list) and len(row) == 3:
                source, m_type, payload = row
                if isinstance(source, int) and isinstance(m_type, int):
                    self.mq.append(Message(source, m_type, bytes(payload)))  # type: ignore[arg-type]
        self.library.restore(state)
        if self.driver.state_restore is not None:
            self.driver.state_restore(state.get("driver"))


#: The process's core: a driver process runs one library.
core = DriverCore()


def mq_queue(m: Message) -> None:
    """Defer ``m`` (see :meth:`DriverCore.queue`)."""
    core.queue(m)


def wait_intr(on_alarm: Callable[[], None] | None = None) -> Message:
    """Wait for the driver's interrupt, deferring the rest (:meth:`DriverCore.wait_intr`)."""
    return core.wait_intr(on_alarm)


def gen() -> int:
    """This incarnation's id."""
    return core.gen
