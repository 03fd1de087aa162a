"""The process table: slots, endpoints and what each process is blocked on.

A slot is reused by later processes; its generation counts the reuses, so the
endpoint of a dead process never names its successor (MINIX's ``isokendpt``).
"""

from __future__ import annotations

import mmap
import socket
import struct
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from hwl.ipc import wire
from hwl.ipc.arena import CHANNEL_WAIT, CHANNEL_WAIT_AT
from hwl.kernel.priv import Priv
from hwl.link.memory import DmaBuffer

if TYPE_CHECKING:
    from hwl.kernel.channels import Channel


class State(Enum):
    RUNNING = "running"
    SENDING = "sending"
    RECEIVING = "receiving"
    KCALL = "kernel call"  # waiting for the stub (vdevio, sdevio)


@dataclass
class AsyncMessage:
    """An asynchronous send waiting in the receiver's queue."""

    ident: int
    source: int
    m_type: int
    payload: bytes
    notify: bool


@dataclass
class IrqHook:
    """One process's claim on an IRQ line; ``notify_id`` is its bit in the notify."""

    hook: int
    line: int
    owner: int  # endpoint
    notify_id: int
    reenable: bool
    active: bool = False  # fired and not yet irqenable'd
    fired: int = 0  # times it fired: tells a batch's unmask from a later interrupt


@dataclass
class ExitRecord:
    endpoint: int
    pid: int | None
    label: str
    status: int | None  # exit code, or None if not known yet
    signal: int | None


# What belongs to the OS process behind an endpoint rather than to the endpoint:
# ``update`` swaps these between two Procs (MINIX's SYS_UPDATE). The rest of a
# Proc (its endpoint and slot, who waits on it, its notifications, asynchronous
# messages, IRQ hooks, DMA buffers, alarm, exit records and parent) stays put.
PROCESS_FIELDS = (
    "sock",
    "arena",
    "arena_view",
    "pid",
    "label",
    "priv",
    "state",
    "send_to",
    "send_type",
    "send_payload",
    "in_sendrec",
    "recv_from",
    "awaiting_reply",
    "reply_errno",
    "resp_flags",
    "event_fd",
    "armed",
    "posted",
)


@dataclass
class PostedCount:
    """A process's posted vdevio batches (hwl.proto.vdevio.POSTED): how many have
    finished, how many slots the stub stopped. It belongs to the OS process, so a
    live update's swap moves it along, and the batches still queued count into
    the process that posted them."""

    finished: int = 0
    stopped: int = 0


@dataclass(eq=False)
class Proc:
    """One live process."""

    slot: int
    endpoint: int
    label: str
    priv: Priv
    sock: socket.socket
    arena: mmap.mmap
    arena_view: memoryview
    parent: int = wire.NONE
    pid: int | None = None
    state: State = State.RUNNING
    send_to: int = wire.NONE
    send_type: int = 0
    send_payload: bytes = b""
    in_sendrec: bool = False  # the send of a sendrec; then waiting for the reply
    recv_from: int = wire.NONE
    awaiting_reply: bool = False  # RECEIVING the reply of its own sendrec
    callers: deque[Proc] = field(default_factory=deque)
    notify_pending: dict[int, int] = field(default_factory=dict)  # source -> bits
    async_in: deque[AsyncMessage] = field(default_factory=deque)
    async_status: dict[int, int | None] = field(default_factory=dict)  # ident -> status
    next_async: int = 1
    irq_hooks: list[IrqHook] = field(default_factory=list)
    posted: PostedCount = field(default_factory=PostedCount)
    dma: dict[int, DmaBuffer] = field(default_factory=dict)
    exits: list[ExitRecord] = field(default_factory=list)  # of processes it created
    alive: bool = True
    reply_errno: int = 0  # of a REPLY_RECEIVE's reply, carried by its next response
    resp_flags: int = 0  # the next message's response flags (wire.RESP_ARMED)
    # Call channels (hwl.kernel.channels): a process serving them has an event fd,
    # bumped when a kernel-path message waits and ``armed`` (its last
    # non-blocking receive found nothing); channels granted to the endpoint wait
    # in ``grants`` until its next receive.
    event_fd: int = -1
    armed: bool = False
    grants: list[Channel] = field(default_factory=list)

    @property
    def blocked(self) -> bool:
        return self.state is not State.RUNNING

    def blocked_on(self) -> int:
        """The endpoint this process waits for, as MINIX's P_BLOCKEDON."""
        if self.state is State.SENDING:
            return self.send_to
        if self.state is State.RECEIVING:
            return self.recv_from
        return wire.NONE

    def swap_process(self, other: Proc) -> None:
        """Exchange the OS processes behind this endpoint and ``other``'s. A wait on
        one of the two endpoints becomes a wait on the other: it still names the
        same program."""
        for name in PROCESS_FIELDS:
            mine = getattr(self, name)
            setattr(self, name, getattr(other, name))
            setattr(other, name, mine)
        # What privctl add_* granted (PCI's reserve) was granted to the endpoint,
        # like its IRQ hooks and DMA buffers: it stays.
        self.priv.swap_grants(other.priv)
        moved = {self.endpoint: other.endpoint, other.endpoint: self.endpoint}
        for proc in (self, other):
            proc.send_to = moved.get(proc.send_to, proc.send_to)
            proc.recv_from = moved.get(proc.recv_from, proc.recv_from)

    def describe(self) -> dict[str, object]:
        return {
            "endpoint": self.endpoint,
            "slot": self.slot,
            "label": self.label,
            "pid": self.pid if self.pid is not None else -1,
            "system": self.priv.system,
            "state": self.state.value,
            "blocked_on": self.blocked_on(),
            "channel_wait": self.channel_wait(),
            "parent": self.parent,
        }

    def channel_wait(self) -> int:
        """The endpoint this process's call on a channel waits on, as the process
        wrote it in its arena (wire.NONE: none; the kernel cannot see such a wait)."""
        try:
            (endpoint,) = CHANNEL_WAIT.unpack_from(self.arena_view, CHANNEL_WAIT_AT)
        except (ValueError, struct.error):  # released at death, or a tiny arena
            return wire.NONE
        return int(endpoint)


class ProcTable:
    """Slots 0 .. NR_SLOTS-1; ``lookup`` refuses endpoints of dead processes."""

    def __init__(self) -> None:
        self._slots: list[Proc | None] = [None] * wire.NR_SLOTS
        self._generation = [0] * wire.NR_SLOTS
        self._next = 0

    def new_endpoint(self, reuse: int | None = None) -> int:
        """A free slot's next endpoint; ``reuse`` asks for a dead process's endpoint
        again (RS's restart policy keeps a service's endpoint)."""
        if reuse is not None:
            slot = wire.endpoint_slot(reuse)
            if (
                not 0 <= slot < wire.NR_SLOTS
                or self._slots[slot] is not None
                or wire.make_endpoint(self._generation[slot], slot) != reuse
            ):
                raise LookupError(f"{wire.endpoint_name(reuse)} is not a free endpoint")
            return reuse
        for i in range(wire.NR_SLOTS):
            slot = (self._next + i) % wire.NR_SLOTS
            if self._slots[slot] is None:
                self._next = (slot + 1) % wire.NR_SLOTS
                self._generation[slot] = (self._generation[slot] + 1) % wire.GENERATION_LIMIT
                return wire.make_endpoint(self._generation[slot], slot)
        raise LookupError(f"all {wire.NR_SLOTS} process slots are in use")

    def add(self, proc: Proc) -> None:
        assert self._slots[proc.slot] is None
        self._slots[proc.slot] = proc

    def remove(self, proc: Proc) -> None:
        if self._slots[proc.slot] is proc:
            self._slots[proc.slot] = None

    def lookup(self, endpoint: int) -> Proc | None:
        """The live process with exactly this endpoint."""
        slot = endpoint & wire.SLOT_MASK
        if endpoint < 0 or slot >= wire.NR_SLOTS:
            return None
        proc = self._slots[slot]
        return proc if proc is not None and proc.endpoint == endpoint else None

    def by_label(self, label: str) -> Proc | None:
        for proc in self:
            if proc.label == label:
                return proc
        return None

    def __iter__(self) -> Iterator[Proc]:
        return (p for p in self._slots if p is not None)
