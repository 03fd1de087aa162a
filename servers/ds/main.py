"""The data store server's loop: SEF startup, one request at a time, notifications
(docs/ds.md). The rules are :mod:`hwl.servers.ds.store`'s.

What a caller relies on: every request is answered with a non-blocking reply (a
caller that sent asynchronously may find a status message from DS in a
``receive(ANY)`` and must drop it), and DS never answers a message whose m_type is 0
or negative. A caller is known by the label RS published for it, else by the
kernel's process table; only DS's parent (RS) publishes labels. A subscriber is
notified when a key it watches changes; a notify that fails drops the subscription.
The store survives a live update and, beyond MINIX, DS's own death (kept in the
kernel after every change; what died meanwhile is dropped at the restart).
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from hwl.ipc.client import Connection, IpcError, KernelGone, Message
from hwl.proto import codec, wire
from hwl.proto import ds as dsp
from hwl.proto.errno import Errno
from hwl.servers.ds.store import Caller, Outcome, Store, StoreError, handle
from hwl.system import sef
from hwl.system.proctab import ProcTable
from hwl.system.serve import Answering

log = logging.getLogger("hwl.servers.ds")

MAX_SAVED = wire.MAX_PAYLOAD - 256
"""The largest state a live update can carry: it travels in one SEF message."""

Reply = tuple[int, dict[str, codec.Value]]

_ANSWERING = Answering(
    log,
    malformed=(),  # a request that does not decode is a StoreError already
    failed_text=lambda name, exc: f"DS failed: {exc!r}",
    level=lambda exc: logging.WARNING if exc.errno is Errno.EINVAL else logging.DEBUG,
)
_READS = frozenset({dsp.DS_RETRIEVE, dsp.DS_RETRIEVE_LABEL})  # requests that change nothing


class Keeper(Protocol):
    """Where the store outlives DS: the kernel's ``keep`` (the connection)."""

    def keep_put(self, data: bytes) -> None: ...
    def keep_get(self) -> bytes | None: ...


class DataStore:
    """The server: the store, the connection and what DS knows about processes.
    ``keeper``: where the store is kept across DS's death (default: the kernel,
    through DS's connection)."""

    def __init__(self, keeper: Keeper | None = None) -> None:
        self.store = Store()
        self._procs: ProcTable | None = None
        self._keeper = keeper
        self._kept = b""  # what was kept last, so an unchanged store is not kept again
        self.keeps = 0
        self.keep_seconds = 0.0  # spent encoding and keeping: the cost of a change

    @property
    def keeper(self) -> Keeper:
        return self._keeper if self._keeper is not None else self.conn

    @property
    def conn(self) -> Connection:
        return sef.connection()

    @property
    def procs(self) -> ProcTable:
        """The kernel's process table (built on first use: the connection comes with SEF)."""
        if self._procs is None:
            self._procs = ProcTable(self.conn, log)
        return self._procs

    @property
    def rs(self) -> int:
        return self.conn.parent

    # ------------------------------------------------------------ SEF callbacks
    def init_fresh(self, info: sef.InitInfo) -> int:
        self.store = Store()
        self.keep()  # an earlier DS's store is not this one's
        return 0

    def init_restart(self, info: sef.InitInfo) -> int:
        """After a crash (or a refresh): the store the dead DS kept, less what died
        meanwhile; an empty one if it kept nothing or something unusable."""
        try:
            saved = self.keeper.keep_get()
        except IpcError as exc:
            log.error("restart: the kept store cannot be read (%s): starting empty", exc)
            saved = None
        self.store = Store()
        if saved:
            try:
                self.store = Store.restore(saved)
            except StoreError as exc:
                log.error("restart: the kept store is unusable (%s): starting empty", exc.why)
        self._kept = self.store.save() if saved else b""
        alive = self.alive()
        if alive is not None:
            self.notify(self.store.drop_dead(alive))
        log.info(
            "restart: %d entries and %d subscriptions kept across DS's death",
            len(self.store.entries),
            len(self.store.subs),
        )
        self.keep()
        return 0

    def alive(self) -> set[int] | None:
        """The endpoints the kernel has now, and RS's (None: the kernel would not say)."""
        procs = self.procs.refresh()
        return None if procs is None else set(procs) | {self.rs}

    def keep(self) -> None:
        """Keep the store in the kernel if it changed since it was last kept."""
        started = time.perf_counter()
        data = self.store.save()
        if data == self._kept:
            return
        try:
            self.keeper.keep_put(data)
        except (IpcError, ValueError, MemoryError) as exc:
            log.error("the store could not be kept (%d bytes): %s", len(data), exc)
            return
        self._kept = data
        self.keeps += 1
        self.keep_seconds += time.perf_counter() - started

    def init_lu(self, info: sef.InitInfo) -> int:
        if not info.saved:
            log.warning("live update without saved state: starting with an empty store")
            self.store = Store()
            return 0
        try:
            self.store = Store.restore(info.saved)
        except StoreError as exc:
            log.error("live update: the old version's state is unusable: %s", exc.why)
            return int(Errno.EINVAL)
        log.info(
            "live update: %d entries and %d subscriptions restored",
            len(self.store.entries),
            len(self.store.subs),
        )
        return 0

    def state_save(self, state: int, flags: int) -> bytes:
        data = self.store.save()
        if len(data) > MAX_SAVED:
            # SEF turns this into a refusal, so RS aborts the update and DS serves on.
            raise StoreError(
                Errno.E2BIG, f"the store is {len(data)} bytes; a live update carries {MAX_SAVED}"
            )
        return data

    # ---------------------------------------------------------------- callers
    def label_of(self, endpoint: int) -> str | None:
        label = self.store.label_of(endpoint)
        if label is None:
            proc = self.procs.get(endpoint)
            label = proc.label if proc is not None else None
        return label

    def caller(self, m: Message) -> Caller:
        return Caller(m.source, self.label_of(m.source), m.source == self.rs)

    # --------------------------------------------------------------- requests
    def serve(self, m: Message) -> Reply | None:
        """Handle one message; returns the reply, or None for a notification."""
        if m.is_notify:
            log.debug("ignored a notification from %d", m.source)
            return None
        if m.m_type <= 0:
            # A status, not a request: someone's stray reply (e.g. RS answering the
            # reply DS sent to its asynchronous publish). Answering it could start an
            # endless exchange of error replies, so DS never replies to a reply.
            log.debug("ignored a reply (status %d) from %d", m.m_type, m.source)
            return None
        name = dsp.DS_REQUEST_NAMES.get(m.m_type, f"{m.m_type:#x}")
        outcome = _ANSWERING.answer(lambda: self._request(m), name, m.source)
        if not isinstance(outcome, Outcome):
            return outcome
        self.notify(outcome.notify)
        if m.m_type not in _READS:
            self.keep()
        return 0, outcome.fields

    def _request(self, m: Message) -> Outcome:
        try:
            fields = m.fields
        except codec.CodecError as exc:
            raise StoreError(Errno.EINVAL, f"the request does not decode: {exc}") from exc
        return self._handle(self.caller(m), m.m_type, fields)

    def _handle(self, caller: Caller, m_type: int, fields: dict[str, codec.Value]) -> Outcome:
        """The store's answer; a subscribe that finds the table full has the dead
        subscribers dropped and is tried once more."""
        try:
            return handle(self.store, caller, m_type, fields)
        except StoreError as exc:
            if exc.errno is not Errno.EAGAIN or m_type != dsp.DS_SUBSCRIBE:
                raise
            procs = self.procs.refresh()
            if procs is None or not self.store.prune_subscribers(set(procs) | {self.rs}):
                raise
        return handle(self.store, caller, m_type, fields)

    def notify(self, endpoints: list[int]) -> None:
        for endpoint in endpoints:
            try:
                self.conn.notify(endpoint)
            except IpcError as exc:
                if self.store.drop_subscriber(endpoint):
                    log.info("subscriber %d unreachable (%s): subscription dropped", endpoint, exc)
                    self.keep()

    # -------------------------------------------------------------------- loop
    def run(self) -> None:
        sef.serve(self.serve)


def main() -> int:
    server = DataStore()
    sef.setcb_init_fresh(server.init_fresh)
    sef.setcb_init_restart(server.init_restart)
    sef.setcb_init_lu(server.init_lu)
    sef.setcb_lu_state_save(server.state_save)
    sef.startup()
    log.info("DS serving")
    try:
        server.run()
    except KernelGone:
        log.info("the kernel is gone: DS stops")
    return 0
