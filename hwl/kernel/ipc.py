"""IPC: rendezvous send and receive, notifications, asynchronous sends.

The semantics are MINIX's (``proc.c``): a send completes when the receiver takes
the message; a receive takes, in order, pending notifications, blocked senders,
then asynchronous messages; a send that would close a cycle of blocked processes
fails with ELOCKED; a send to or a receive from a dead endpoint, and every call
blocked on a process when it dies, fail with EDEADSRCDST; a send the sender's
``ipc`` line forbids fails with ECALLDENIED. One hwl rule: a reply is always
allowed, that is a send to a process blocked in ``sendrec`` on the sender.

See docs/kernel.md.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Protocol

from hwl.ipc import codec, wire
from hwl.kernel.errno import Errno
from hwl.kernel.proc import AsyncMessage, Proc, ProcTable, State

log = logging.getLogger(__name__)

OK = 0
EDEADSRCDST = -Errno.EDEADSRCDST
ELOCKED = -Errno.ELOCKED
ECALLDENIED = -Errno.ECALLDENIED
ENOTREADY = -Errno.ENOTREADY
EINVAL = -Errno.EINVAL
EINTR = -Errno.EINTR
EINPROGRESS = -Errno.EINPROGRESS

_BLOCKED = 1  # not a status: the caller now waits, the answer comes later
ASYNC_STATUS_KEEP = 4096  # finished async statuses kept per sender until asked for
KERNEL_SOURCES = (wire.HARDWARE, wire.CLOCK, wire.SYSTEM, wire.ASYNCM)

# SYSTEM notification event bits.
EVENT_EXIT = 1  # a process this one created exited: getinfo("exits")
EVENT_SIGTERM = 2  # asked to end gracefully


class Output(Protocol):
    """How the IPC layer answers: the kernel's frames on the processes' sockets."""

    def respond(self, proc: Proc, status: int, m_type: int = 0, payload: bytes = b"") -> None: ...

    def deliver(
        self, proc: Proc, source: int, m_type: int, payload: bytes, fds: Sequence[int] = ()
    ) -> None: ...


class Ipc:
    def __init__(self, table: ProcTable, out: Output) -> None:
        self.table = table
        self.out = out
        self.boot = time.monotonic()

    # ------------------------------------------------------------- helpers
    @staticmethod
    def ring(proc: Proc) -> None:
        """Something waits for a channel server that is not in a kernel receive
        (its last non-blocking receive found nothing): bump its event fd once."""
        if proc.armed:
            proc.armed = False
            try:
                os.eventfd_write(proc.event_fd, 1)
            except OSError as exc:  # a full counter cannot happen; a closed fd can
                log.warning("event fd of %s: %s", proc.label, exc)

    def _unblock(self, proc: Proc) -> None:
        proc.state = State.RUNNING
        proc.send_to = proc.recv_from = wire.NONE
        proc.send_payload = b""
        proc.in_sendrec = proc.awaiting_reply = False

    def _take(self, receiver: Proc, source: int, m_type: int, payload: bytes) -> None:
        """Hand a message to a receiver blocked in receive."""
        self._unblock(receiver)
        self.out.deliver(receiver, source, m_type, payload)

    def _sender_done(self, sender: Proc, receiver: Proc) -> None:
        """The receiver took the sender's message: a send returns, a sendrec waits."""
        if sender.in_sendrec:
            self._unblock(sender)
            sender.state = State.RECEIVING
            sender.recv_from = receiver.endpoint
            sender.awaiting_reply = True
        else:
            self._unblock(sender)
            self.out.respond(sender, OK)

    @staticmethod
    def _accepts(receiver: Proc, source: int) -> bool:
        return receiver.state is State.RECEIVING and receiver.recv_from in (wire.ANY, source)

    @staticmethod
    def _accepts_extra(receiver: Proc, source: int) -> bool:
        """Notifications and asynchronous messages never stand in for the reply a
        process waits for in sendrec (MINIX's MF_REPLY_PEND)."""
        return Ipc._accepts(receiver, source) and not receiver.awaiting_reply

    def _target(self, caller: Proc, endpoint: int) -> tuple[Proc | None, int]:
        """The live process a send names, or the error for it."""
        if endpoint == wire.SELF:
            endpoint = caller.endpoint
        target = self.table.lookup(endpoint)
        if target is None:
            return None, EINVAL if endpoint < 0 or endpoint in (
                wire.ANY,
                wire.NONE,
            ) else EDEADSRCDST
        return target, OK

    def permitted(self, caller: Proc, target: Proc, what: str) -> bool:
        if caller.priv.may_send_to(target.priv):
            return True
        if target.awaiting_reply and target.recv_from == caller.endpoint:
            return True  # a reply
        log.warning(
            "ECALLDENIED: %s (%s) may not %s %s (%s): not on its ipc line",
            caller.label, caller.endpoint, what, target.label, target.endpoint,
        )  # fmt: skip
        return False

    def _deadlock(self, caller: Proc, target: int, sending: bool) -> bool:
        """Whether blocking ``caller`` on ``target`` closes a cycle (MINIX deadlock())."""
        group = 1
        endpoint = target
        while endpoint not in (wire.ANY, wire.NONE):
            proc = self.table.lookup(endpoint)
            if proc is None:
                return False
            group += 1
            endpoint = proc.blocked_on()
            if endpoint == caller.endpoint:
                # Two processes where one sends and the other receives would
                # have met already; anything else is a deadlock.
                return not (group == 2 and (proc.state is State.SENDING) != sending)
        return False

    # ------------------------------------------------------------ primitives
    def send(self, caller: Proc, endpoint: int, m_type: int, payload: bytes, op: wire.Op) -> None:
        status = self._send(caller, endpoint, m_type, payload, op)
        if status != _BLOCKED:
            self.out.respond(caller, status)

    def reply_receive(
        self, caller: Proc, endpoint: int, m_type: int, payload: bytes, nonblock: bool = False
    ) -> None:
        """A server's reply (as SENDNB) and its next receive (from ANY) in one
        request; the reply's errno rides on the next response."""
        caller.reply_errno = -self._send(caller, endpoint, m_type, payload, wire.Op.SENDNB)
        self.receive(caller, wire.ANY, nonblock)

    def _send(self, caller: Proc, endpoint: int, m_type: int, payload: bytes, op: wire.Op) -> int:
        """Send; returns the status to answer, or _BLOCKED if the caller now waits."""
        target, err = self._target(caller, endpoint)
        if target is None:
            return err
        if target is caller:
            return ELOCKED
        if not self.permitted(caller, target, "send to"):
            return ECALLDENIED
        if self._accepts(target, caller.endpoint):
            self._take(target, caller.endpoint, m_type, payload)
            if op is wire.Op.SENDREC:
                caller.state = State.RECEIVING
                caller.recv_from = target.endpoint
                caller.awaiting_reply = True
                return _BLOCKED
            return OK
        if op is wire.Op.SENDNB:
            return ENOTREADY
        if self._deadlock(caller, target.endpoint, sending=True):
            log.info("ELOCKED: %s -> %s would deadlock", caller.label, target.label)
            return ELOCKED
        caller.state = State.SENDING
        caller.send_to = target.endpoint
        caller.send_type = m_type
        caller.send_payload = payload
        caller.in_sendrec = op is wire.Op.SENDREC
        target.callers.append(caller)
        self.ring(target)
        return _BLOCKED

    def receive(self, caller: Proc, source: int, nonblock: bool = False) -> None:
        """Take what waits from ``source``, else block; ``nonblock`` (a channel
        server) answers ENOTREADY instead and arms the caller's event fd. A
        non-blocking receive that takes the last thing waiting arms it as well
        and says so (RESP_ARMED): the server's next receive asks nothing."""
        if source not in (wire.ANY, *KERNEL_SOURCES) and self.table.lookup(source) is None:
            self.out.respond(caller, EDEADSRCDST if source >= 0 else EINVAL)
            return
        if nonblock and source == wire.ANY and caller.event_fd >= 0 and self._waiting(caller) == 1:
            # the receive below takes that one thing (anything waits for ANY)
            caller.armed = True
            caller.resp_flags = wire.RESP_ARMED  # consumed by the delivery
        if self._take_waiting(caller, source, True):
            return
        if nonblock:
            caller.armed = caller.event_fd >= 0
            self.out.respond(caller, ENOTREADY)
            return
        caller.state = State.RECEIVING
        caller.recv_from = source

    @staticmethod
    def _waiting(caller: Proc) -> int:
        """How many things wait for a receive from ANY: channels granted,
        notifications, blocked senders, asynchronous messages."""
        grants = len(caller.grants) if caller.event_fd >= 0 else 0
        return grants + len(caller.notify_pending) + len(caller.callers) + len(caller.async_in)

    def _take_waiting(self, caller: Proc, source: int, extra: bool) -> bool:
        """Deliver to ``caller`` (not blocked) what already waits for it from
        ``source``: a notification or an asynchronous message only if ``extra``,
        else a blocked sender. A channel granted to a channel server goes first:
        its library takes it and receives on. Returns whether something was delivered."""
        if extra and caller.grants and caller.event_fd >= 0 and source == wire.ANY:
            channel = caller.grants.pop(0)
            fds = [channel.server_end.fileno()]
            self.out.deliver(caller, channel.client, wire.CHANNEL_GRANT, b"", fds)
            return True
        if extra and caller.notify_pending:
            for src in caller.notify_pending:
                if source in (wire.ANY, src):
                    bits = caller.notify_pending.pop(src)
                    self.out.deliver(caller, src, wire.NOTIFY_MESSAGE, self._notify_body(src, bits))
                    return True
        for sender in caller.callers:
            if source in (wire.ANY, sender.endpoint):
                caller.callers.remove(sender)
                self.out.deliver(caller, sender.endpoint, sender.send_type, sender.send_payload)
                self._sender_done(sender, caller)
                return True
        if extra:
            for message in caller.async_in:
                if source in (wire.ANY, message.source):
                    caller.async_in.remove(message)
                    self.out.deliver(caller, message.source, message.m_type, message.payload)
                    self._async_finished(message, OK)
                    return True
        return False

    def resume_receive(self, proc: Proc) -> None:
        """A receiving process now stands behind another endpoint (``update``):
        give it what already waits there for it, as if it had just called receive."""
        if proc.state is not State.RECEIVING:
            return
        source, reply_only = proc.recv_from, proc.awaiting_reply
        self._unblock(proc)
        if not self._take_waiting(proc, source, not reply_only):
            proc.state = State.RECEIVING
            proc.recv_from = source
            proc.awaiting_reply = reply_only

    def notify(self, caller: Proc, endpoint: int) -> None:
        target, err = self._target(caller, endpoint)
        if target is None:
            self.out.respond(caller, err)
            return
        if not self.permitted(caller, target, "notify"):
            self.out.respond(caller, ECALLDENIED)
            return
        self.post_notify(target, caller.endpoint, 0)
        self.out.respond(caller, OK)

    def post_notify(self, target: Proc, source: int, bits: int) -> None:
        """A notification from ``source`` (a process, HARDWARE, CLOCK, SYSTEM or
        ASYNCM): delivered now if the target waits for it, else kept, one per
        source, with ``bits`` OR-ed together (IRQ hooks, events)."""
        if self._accepts_extra(target, source):
            self._take(target, source, wire.NOTIFY_MESSAGE, self._notify_body(source, bits))
        else:
            target.notify_pending[source] = target.notify_pending.get(source, 0) | bits
            self.ring(target)

    def _notify_body(self, source: int, bits: int) -> bytes:
        fields: dict[str, codec.Value] = {"timestamp": self.ticks()}
        if source == wire.HARDWARE:
            fields["interrupts"] = bits
        elif source == wire.SYSTEM:
            fields["events"] = bits
        return codec.encode(fields)

    def ticks(self) -> int:
        return int((time.monotonic() - self.boot) * wire.HZ)

    # ---------------------------------------------------------------- async
    def senda(self, caller: Proc, endpoint: int, m_type: int, payload: bytes, notify: bool) -> None:
        """Queue a message without blocking; the response's m_type is its ident."""
        target, err = self._target(caller, endpoint)
        if target is None or target is caller:
            self.out.respond(caller, err if target is None else ELOCKED)
            return
        if not self.permitted(caller, target, "send to"):
            self.out.respond(caller, ECALLDENIED)
            return
        ident = caller.next_async
        caller.next_async += 1
        message = AsyncMessage(ident, caller.endpoint, m_type, payload, notify)
        if len(caller.async_status) >= ASYNC_STATUS_KEEP:
            del caller.async_status[next(iter(caller.async_status))]
        if self._accepts_extra(target, caller.endpoint):
            self._take(target, caller.endpoint, m_type, payload)
            caller.async_status[ident] = OK
        else:
            target.async_in.append(message)
            caller.async_status[ident] = None
            self.ring(target)
        self.out.respond(caller, OK, ident)

    def async_status(self, caller: Proc, ident: int) -> None:
        """The status of asynchronous send ``ident``: 0 delivered, EINPROGRESS
        pending, or the error; a finished status is forgotten once read."""
        if ident not in caller.async_status:
            self.out.respond(caller, EINVAL)
            return
        status = caller.async_status[ident]
        if status is None:
            self.out.respond(caller, EINPROGRESS, ident)
            return
        del caller.async_status[ident]
        self.out.respond(caller, status, ident)

    def _async_finished(self, message: AsyncMessage, status: int) -> None:
        sender = self.table.lookup(message.source)
        if sender is None:
            return
        sender.async_status[message.ident] = status
        if message.notify:
            self.post_notify(sender, wire.ASYNCM, 0)

    # -------------------------------------------------------------- cleanup
    def _withdraw_send(self, proc: Proc) -> None:
        """Take a process blocked in send out of its target's callers queue."""
        if proc.state is State.SENDING:
            target = self.table.lookup(proc.send_to)
            if target is not None and proc in target.callers:
                target.callers.remove(proc)

    def cancel(self, caller: Proc) -> None:
        """End the caller's blocked send or receive with EINTR (its client timed out)."""
        if caller.state not in (State.SENDING, State.RECEIVING):
            return  # the answer is on its way already
        self._withdraw_send(caller)
        self._unblock(caller)
        self.out.respond(caller, EINTR)

    def clear_refs(self, proc: Proc, status: int = EDEADSRCDST) -> None:
        """Fail every call blocked on ``proc`` (MINIX clear_ipc_refs): its callers,
        processes receiving from it, and asynchronous messages queued to it."""
        for sender in list(proc.callers):
            self._unblock(sender)
            self.out.respond(sender, status)
        proc.callers.clear()
        for other in self.table:
            if (
                other is not proc
                and other.state is State.RECEIVING
                and other.recv_from == proc.endpoint
            ):
                self._unblock(other)
                self.out.respond(other, status)
        while proc.async_in:
            self._async_finished(proc.async_in.popleft(), status)

    def process_died(self, proc: Proc) -> None:
        """Undo everything IPC knows about a dead process."""
        self._withdraw_send(proc)
        self._unblock(proc)
        self.clear_refs(proc)
        for other in self.table:
            other.notify_pending.pop(proc.endpoint, None)
            if other.async_in:
                kept = [m for m in other.async_in if m.source != proc.endpoint]
                other.async_in.clear()
                other.async_in.extend(kept)
