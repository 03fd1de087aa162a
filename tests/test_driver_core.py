"""The driver core (hwl/driver/core.py): on its own, without QEMU, the order in
which deferred messages are served, the interrupt wait, the live-update states
and the saved state's round trip; on a real e1000, libnetdriver's incarnation
across a live update and a restart. The libraries' protocols on real hardware are
covered by test_at_wini*, test_lu, test_nics and test_rtl8139."""

from __future__ import annotations

import os
import signal
from collections import deque

import pytest

from hwl.driver import blockdriver, netdriver
from hwl.driver.core import CORE_KEYS, Driver, DriverCore, Library, State
from hwl.ipc import codec, wire
from hwl.ipc.client import Message
from hwl.kernel.errno import Errno
from hwl.proto import ndev
from hwl.system.nicrig import Nic, nic_up
from hwl.system.proto import InitFlag, InitType, LuState
from hwl.system.sef import InitInfo

pytestmark = pytest.mark.qemu

CUSTOM = 7


def request(n: int, source: int = 42) -> Message:
    return Message(source, 0x500 + n, codec.encode({"id": n}))


def notify(source: int) -> Message:
    return Message(source, wire.NOTIFY_MESSAGE, b"")


class Feed:
    """A scripted message source in place of SEF's receive; notes whether each
    receive was nested."""

    def __init__(self, *messages: Message) -> None:
        self.messages = deque(messages)
        self.nested: list[bool] = []

    def receive(self, nested: bool) -> Message:
        self.nested.append(nested)
        return self.messages.popleft()

    def core(self) -> DriverCore:
        return DriverCore(receive=self.receive)


def info(kind: InitType, saved: bytes = b"") -> InitInfo:
    return InitInfo(kind, InitFlag(0), 0, 1, saved)


# ------------------------------------------------------------------ deferred
def test_deferred_messages_come_first_in_order_then_the_source() -> None:
    feed = Feed(request(3))
    core = feed.core()
    core.queue(request(1))
    core.queue(request(2))
    got = [core.receive().m_type for _ in range(3)]
    assert got == [0x501, 0x502, 0x503]
    assert feed.nested == [False]  # the source only once the queue was empty


def test_wait_intr_defers_everything_but_the_interrupt() -> None:
    feed = Feed(request(1), notify(wire.CLOCK), request(2), notify(wire.HARDWARE), request(3))
    core = feed.core()
    m = core.wait_intr()
    assert m.is_notify and m.source == wire.HARDWARE
    assert feed.nested == [True, True, True, True]  # no live-update state mid-work
    served = [core.receive() for _ in range(4)]
    assert [(m.source, m.m_type) for m in served] == [
        (42, 0x501),
        (wire.CLOCK, wire.NOTIFY_MESSAGE),  # a tick, served after the work in order
        (42, 0x502),
        (42, 0x503),
    ]
    assert feed.nested[-1] is False


def test_wait_intr_gives_clock_to_the_alarm_and_the_alarm_may_end_it() -> None:
    feed = Feed(request(1), notify(wire.CLOCK), notify(wire.CLOCK))
    core = feed.core()
    alarms: list[int] = []

    def alarm() -> None:
        alarms.append(1)
        if len(alarms) == 2:
            raise TimeoutError("command timed out")

    with pytest.raises(TimeoutError):
        core.wait_intr(on_alarm=alarm)
    assert len(alarms) == 2
    assert [m.m_type for m in core.mq] == [0x501]  # the request still waits its turn


# --------------------------------------------------------------- incarnation
def test_start_fresh_and_restart() -> None:
    core = DriverCore()
    core.gen = 1
    core.start(info(InitType.RESTART))
    assert core.restarted and core.gen == os.getpid()
    core.start(info(InitType.FRESH))
    assert not core.restarted and core.gen == os.getpid()


def test_stale_names_only_another_incarnation() -> None:
    core = DriverCore()
    core.gen = 100
    assert core.stale(Message(5, 0x501, codec.encode({"gen": 99}))) == 99
    assert core.stale(Message(5, 0x501, codec.encode({"gen": 100}))) is None
    assert core.stale(Message(5, 0x501, codec.encode({"id": 1}))) is None
    assert core.stale(Message(5, 0x501, b"\xff not a codec payload")) is None


# ---------------------------------------------------------------- live update
class Lib:
    """A library with one piece of state and a flag saying whether it is free."""

    def __init__(self) -> None:
        self.busy = False
        self.table: list[int] = []

    def library(self) -> Library:
        return Library("test", free=lambda state: not self.busy, save=self.save,
                       restore=self.restore)  # fmt: skip

    def save(self) -> State:
        return {"table": list(self.table)}

    def restore(self, state: State) -> None:
        table = state.get("table")
        assert isinstance(table, list)
        self.table = [int(x) for x in table if isinstance(x, int)]


def test_lu_prepare_standard_custom_and_deferred() -> None:
    lib, answers = Lib(), {CUSTOM: int(Errno.ENOTREADY)}
    core = DriverCore()
    core.bind(lib.library(), Driver(lu_states={CUSTOM: lambda: answers[CUSTOM]}))
    for state in (LuState.REQUEST_FREE, LuState.PROTOCOL_FREE):
        assert core.lu_prepare(state) == 0
        lib.busy = True
        assert core.lu_prepare(state) == Errno.ENOTREADY
        lib.busy = False
    assert core.lu_prepare(CUSTOM) == Errno.ENOTREADY
    answers[CUSTOM] = 0
    assert core.lu_prepare(CUSTOM) == 0
    assert core.lu_prepare(CUSTOM + 1) == Errno.ENOTREADY
    core.queue(request(1))  # deferred work: no state is reached
    assert core.lu_prepare(LuState.REQUEST_FREE) == Errno.ENOTREADY
    assert core.lu_prepare(CUSTOM) == Errno.ENOTREADY
    assert core.lu_state_isvalid(CUSTOM, 0) and core.lu_state_isvalid(LuState.PROTOCOL_FREE, 0)
    assert not core.lu_state_isvalid(CUSTOM + 1, 0)
    assert not core.lu_state_isvalid(LuState.EVAL, 0)


def test_lu_state_round_trip() -> None:
    old_lib, new_lib = Lib(), Lib()
    old_lib.table = [3, 1, 2]
    driver_state: codec.Value = {"ints": [1, 2], "blob": b"\x00\x01"}
    restored: list[codec.Value] = []
    old = DriverCore()
    old.bind(old_lib.library(), Driver(state_save=lambda: driver_state))
    old.gen, old.restarted = 4321, True
    old.queue(request(1, source=7))
    old.queue(notify(wire.HARDWARE))  # the new version gets its own interrupts
    old.queue(Message(8, 0x602, b"raw payload"))
    saved = old.lu_state_save(LuState.REQUEST_FREE, 0)

    new = DriverCore()
    new.bind(new_lib.library(), Driver(state_restore=restored.append))
    new.start(info(InitType.LU, saved))
    assert new.gen == 4321  # the same incarnation to clients
    assert new.restarted
    assert [(m.source, m.m_type, m.payload) for m in new.mq] == [
        (7, 0x501, request(1).payload),
        (8, 0x602, b"raw payload"),
    ]
    assert new_lib.table == [3, 1, 2]
    assert restored == [driver_state]


def test_lu_state_from_a_version_without_the_core_keys() -> None:
    """A saved state without ``gen`` (an older version's) keeps this process's pid."""
    lib, restored = Lib(), list[codec.Value]()
    core = DriverCore()
    core.bind(lib.library(), Driver(state_restore=restored.append))
    core.start(info(InitType.LU, codec.encode({"table": [5]})))
    assert core.gen == os.getpid() and not core.restarted and not core.mq
    assert lib.table == [5] and restored == [None]


def test_library_state_may_not_take_the_core_keys() -> None:
    core = DriverCore()
    core.bind(Library("bad", save=lambda: {"gen": 1}), Driver())
    with pytest.raises(AssertionError, match="gen"):
        core.save()


def test_both_libraries_save_beside_the_core_keys() -> None:
    """libblockdriver's and libnetdriver's own parts of a live update's state
    (checked on their initial, empty state) leave the core's keys alone."""
    block = blockdriver._library().save()
    net = netdriver._library().save()
    assert set(block) == {"opens"}
    assert set(net) == {"client", "mode", "mcast", "recvs", "backlog", "stats"}
    assert not (set(block) | set(net)) & CORE_KEYS


# ------------------------------------------------- libnetdriver's incarnation
def _init_gen(nic: Nic) -> int:
    """INIT the driver and return the incarnation its reply names; the session
    is then opened again (CONF) for the next steps."""
    reply = nic.conn.sendrec(nic.dev.endpoint, ndev.INIT, {"id": 1, "sync": True}, timeout=5)
    assert reply.m_type == ndev.INIT_REPLY and reply["result"] == 0, reply.fields
    gen = reply["gen"]
    assert isinstance(gen, int)
    nic.dev.open()
    return gen


def test_netdriver_incarnation_kept_by_live_update_new_after_restart() -> None:
    """On a real e1000: INIT_REPLY names the incarnation (the driver's pid); a live
    update keeps it while the process changes; a restart makes a new one."""
    with nic_up("e1000") as nic:
        first = nic.service_pid()
        assert _init_gen(nic) == first
        nic.system.rs.update(nic.label, state=int(LuState.REQUEST_FREE), maxtime=120)
        updated = nic.service_pid()
        assert updated != first
        assert _init_gen(nic) == first  # the same incarnation to its client
        old_ep = nic.dev.endpoint
        os.kill(updated, signal.SIGKILL)
        nic.dev.reopen(timeout=15, old=old_ep)
        restarted = nic.service_pid()
        assert _init_gen(nic) == restarted != first
        nic.arp(timeout=10)
