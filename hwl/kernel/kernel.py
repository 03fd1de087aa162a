"""The kernel's main loop: one process per machine, between every process and the stub.

It owns the link to the stub and a socket in the machine's run directory. Each
process has one SEQPACKET connection; the loop reads one request frame at a time
from whichever connection is ready, runs it (IPC in :mod:`hwl.kernel.ipc`, kernel
calls in :mod:`hwl.kernel.calls`) and answers. It also watches the stub's doorbell
(finished requests, IRQs), the processes it started (pidfds, the fork server;
:mod:`hwl.kernel.lifecycle` starts, ends and reaps them) and alarms. This module
is the loop and the wiring of those parts, nothing else.

Nothing a process sends may stop the loop: a malformed frame gets an error status
and a log line; a process that breaks the protocol or stops reading its replies is
cut off, which to everyone else looks like its death.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hwl.ipc import codec, wire
from hwl.kernel.calls import Calls
from hwl.kernel.channels import Channels
from hwl.kernel.errno import Errno
from hwl.kernel.hwfaults import HwFaults
from hwl.kernel.ipc import Ipc
from hwl.kernel.irq import Irqs
from hwl.kernel.lifecycle import ROOT_RESTARTS, Lifecycle
from hwl.kernel.priv import Priv
from hwl.kernel.proc import Proc, ProcTable
from hwl.link.link import Link

__all__ = ["ROOT_RESTARTS", "Kernel"]

log = logging.getLogger("hwl.kernel")

# after this long, a safety net only: the doorbell is a byte on a TCP socket, and
# before both ends set TCP_NODELAY, Nagle held about one bell in 80 back past it.
LINK_SLICE = 0.002
WATCHDOG_PERIOD = 1.0  # s between looks for channel call cycles

_MESSAGE_HEADER = wire.RESPONSE.pack  # bound once: it runs for every message
_PEERCRED = struct.Struct("3i")


class Kernel:
    """Run with :meth:`serve_forever`; :meth:`stop` (or SIGTERM) ends it."""

    def __init__(self, run_dir: Path, link: Link | None) -> None:
        self.run_dir = run_dir
        self.link = link
        self.table = ProcTable()
        self.ipc = Ipc(self.table, self)
        self.channels = Channels(self.table, self.ipc)
        self._next_watch = 0.0  # the channel-cycle watchdog's next look
        self.hw = HwFaults()  # faultctl's hardware faults
        self.irqs = Irqs(self, self.table, self.ipc, self.hw)
        self.lifecycle = Lifecycle(run_dir, self.table, self.ipc, self.channels, self)
        self.calls = Calls(
            self, self, self.table, self.lifecycle, self.ipc, self.irqs, self.hw,
            self.channels, self,
        )  # fmt: skip
        self._epoll = select.epoll()
        self.calls.stub.others_wait = lambda: bool(self._epoll.poll(0))
        self._callbacks: dict[int, Callable[[], None]] = {}
        self.alarms: dict[Proc, float] = {}
        self.stopping = False
        self.listener: socket.socket | None = None
        self.socket_path = run_dir / wire.SOCKET_NAME
        self._link_ok = link is not None
        if link is not None:
            os.set_blocking(link.doorbell_fd, False)
            self.watch(link.doorbell_fd, self._on_doorbell)

    # ------------------------------------------------------------ event sources
    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` from the loop whenever ``fd`` is readable."""
        self._callbacks[fd] = callback
        self._epoll.register(fd, select.EPOLLIN)

    def unwatch(self, fd: int) -> None:
        if self._callbacks.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    # ---------------------------------------------------------------- output
    def respond(
        self,
        proc: Proc,
        status: int,
        m_type: int = 0,
        payload: bytes = b"",
        fds: Sequence[int] = (),
    ) -> None:
        """A status answer; ``fds`` ride along with it (SCM_RIGHTS: dmamap's RAM file)."""
        spare, proc.reply_errno = proc.reply_errno, 0
        frame = _MESSAGE_HEADER(wire.Kind.STATUS, 0, spare, status, 0, m_type) + payload
        self._write(proc, frame, fds)

    def deliver(
        self, proc: Proc, source: int, m_type: int, payload: bytes, fds: Sequence[int] = ()
    ) -> None:
        """A message; ``fds`` ride along with it (SCM_RIGHTS: a channel's server end)."""
        spare, proc.reply_errno = proc.reply_errno, 0
        flags, proc.resp_flags = proc.resp_flags, 0
        frame = _MESSAGE_HEADER(wire.Kind.MESSAGE, flags, spare, 0, source, m_type) + payload
        self._write(proc, frame, fds)

    def _write(self, proc: Proc, frame: bytes, fds: Sequence[int] = ()) -> None:
        """One frame to the process, with ``fds`` riding along (SCM_RIGHTS)."""
        if not proc.alive:
            return
        try:
            if fds:
                socket.send_fds(proc.sock, [frame], fds)
            else:
                proc.sock.send(frame)
        except BlockingIOError:
            self.lifecycle.doom(proc, "does not read its replies")
        except OSError as exc:
            self.lifecycle.doom(proc, f"its connection failed ({exc.strerror or exc})")

    # ------------------------------------------------------------- processes
    def listen(self) -> None:
        """The socket user processes attach through (the run directory is 0700)."""
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self.listener.bind(str(self.socket_path))
        self.socket_path.chmod(0o600)
        self.listener.listen(16)
        self.listener.setblocking(False)
        self.watch(self.listener.fileno(), self._on_accept)

    def _on_accept(self) -> None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        pid, uid, _gid = _PEERCRED.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
        if uid != os.getuid():
            log.warning("refused a connection from uid %d (pid %d)", uid, pid)
            conn.close()
            return
        try:
            proc = self.lifecycle.add_process(conn, f"user-{pid}", Priv.user(f"user-{pid}"))
        except LookupError as exc:
            log.warning("refused pid %d: %s", pid, exc)
            conn.close()
            return
        log.info("user process %s attached: %s", proc.label, wire.endpoint_name(proc.endpoint))

    def watch_requests(self, proc: Proc) -> None:
        """Run what arrives on the process's connection as its requests."""
        self.unwatch(proc.sock.fileno())
        self.watch(proc.sock.fileno(), lambda: self._on_request(proc))

    def released(self, proc: Proc) -> None:
        """A dead process's IRQ hooks, devices, DMA buffers and alarm go."""
        self.irqs.release(proc)
        self.calls.release(proc)
        self.alarms.pop(proc, None)

    # -------------------------------------------------------------- requests
    def _on_request(self, proc: Proc) -> None:
        try:
            data = proc.sock.recv(wire.MAX_KCALL_REQUEST + 1)
        except BlockingIOError:
            return
        except OSError as exc:
            self.lifecycle.doom(proc, f"its connection failed ({exc.strerror or exc})")
            return
        if not data:
            self.lifecycle.doom(proc, "closed its connection")
            return
        self.handle(proc, data)

    def handle(self, proc: Proc, data: bytes) -> None:
        """Run one request frame from ``proc``."""
        if len(data) < wire.REQUEST.size:
            self._refuse(proc, Errno.EINVAL, f"a {len(data)}-byte frame is shorter than a header")
            return
        op, flags, _spare, peer, m_type = wire.REQUEST.unpack_from(data)
        most = wire.MAX_KCALL_REQUEST if op == wire.Op.KCALL else wire.MAX_REQUEST
        if len(data) > most:
            self._refuse(proc, Errno.EMSGSIZE, f"a frame over {most} bytes")
            return
        if op == wire.Op.CANCEL:
            self.ipc.cancel(proc)
            return
        if proc.blocked:
            self._refuse(proc, Errno.EBUSY, f"a request (op {op}) while blocked in another")
            return
        payload = data[wire.REQUEST.size :]
        if op == wire.Op.SENDREC:
            self.ipc.send(proc, peer, m_type, payload, wire.Op.SENDREC)
        elif op == wire.Op.REPLY_RECEIVE:
            nonblock = bool(flags & wire.FLAG_NONBLOCK)
            self.ipc.reply_receive(proc, peer, m_type, payload, nonblock)
        elif op == wire.Op.RECEIVE:
            self.ipc.receive(proc, peer, bool(flags & wire.FLAG_NONBLOCK))
        elif op == wire.Op.SEND:
            self.ipc.send(proc, peer, m_type, payload, wire.Op.SEND)
        elif op == wire.Op.SENDNB:
            self.ipc.send(proc, peer, m_type, payload, wire.Op.SENDNB)
        elif op == wire.Op.NOTIFY:
            self.ipc.notify(proc, peer)
        elif op == wire.Op.KCALL:
            self.calls.dispatch(proc, m_type, payload, peer)
        elif op == wire.Op.SENDA:
            self.ipc.senda(proc, peer, m_type, payload, bool(flags & wire.FLAG_NOTIFY_DONE))
        elif op == wire.Op.ASYNC_STATUS:
            self.ipc.async_status(proc, peer)
        else:
            self._refuse(proc, Errno.EBADCALL, f"unknown operation {op}")

    def _refuse(self, proc: Proc, errno: Errno, why: str) -> None:
        log.warning("%s: %s (%s): %s", errno.name, proc.label, proc.endpoint, why)
        self.respond(proc, -errno, 0, codec.encode({"error": why}))

    # ------------------------------------------------------------- the stub
    def _on_doorbell(self) -> None:
        assert self.link is not None
        if not self.link.drain_doorbell():
            log.error("the stub's doorbell line closed: QEMU is gone; hardware calls now fail")
            self.unwatch(self.link.doorbell_fd)
            self._link_ok = False

    @property
    def link_ok(self) -> bool:
        return self._link_ok

    def _poll_link(self) -> None:
        if self.link is None or not self._link_ok:
            return
        self.calls.poll_pending()
        if self.irqs.hooks:
            for line in self.link.poll_irqs():
                self.irqs.fire(line)

    # ----------------------------------------------------------------- clock
    @property
    def boot(self) -> float:
        """When the kernel started (monotonic): ticks count from here."""
        return self.ipc.boot

    def set_alarm(self, proc: Proc, deadline: float | None) -> float | None:
        """Arm (or with None cancel) the process's alarm; returns the old deadline."""
        old = self.alarms.pop(proc, None)
        if deadline is not None:
            self.alarms[proc] = deadline
        return old

    def _fire_alarms(self, now: float) -> None:
        for proc, deadline in list(self.alarms.items()):
            if deadline <= now:
                del self.alarms[proc]
                self.ipc.post_notify(proc, wire.CLOCK, 0)

    # ------------------------------------------------------------------ loop
    def _link_busy(self) -> bool:
        """Whether the stub owes the loop something: a request or a hooked IRQ."""
        return self._link_ok and bool(self.calls.pending or self.irqs.hooks)

    def _timeout(self, link_busy: bool) -> float:
        """How long the loop may sleep: -1 (until an event) unless alarms, stub
        requests or IRQ hooks want it to look again sooner."""
        kept = self.calls.keeper.next_deadline() if self.calls.keeper else None
        if self.channels:
            kept = self._next_watch if kept is None else min(kept, self._next_watch)
        posted = self._link_ok and bool(self.calls.posted)  # collected within a slice
        if not self.alarms and not link_busy and not posted and kept is None:
            return -1
        timeout = LINK_SLICE if link_busy or posted else 3600.0
        if self.alarms:
            timeout = min(timeout, max(0.0, min(self.alarms.values()) - time.monotonic()))
        if kept is not None:
            timeout = min(timeout, max(0.0, kept - time.monotonic()))
        return timeout

    def serve_forever(self) -> None:
        """The loop. Kept lean: a sendrec passes through it twice."""
        link = self.link
        poll = self._epoll.poll
        callbacks = self._callbacks
        lifecycle = self.lifecycle
        while not self.stopping:
            busy = self._link_busy()
            timeout = self._timeout(busy)
            if busy:
                assert link is not None
                link.set_host_waiting(True)
                self._poll_link()  # what finished before the stub knew we sleep
                events = poll(timeout)
                link.set_host_waiting(False)
            else:
                events = poll(timeout)
            for fd, _mask in events:
                callback = callbacks.get(fd)
                if callback is not None:
                    callback()
            if self._link_busy():
                self._poll_link()
            elif self.calls.posted and self._link_ok:
                self.calls.stub.collect_posted()
            if self.alarms:
                self._fire_alarms(time.monotonic())
            if self.calls.keeper:
                self.calls.expire_kept(time.monotonic())
            if self.channels and time.monotonic() >= self._next_watch:
                self.channels.watch_cycles()
                self._next_watch = time.monotonic() + WATCHDOG_PERIOD
            if lifecycle.doomed or lifecycle.root_due:
                lifecycle.settle()

    def stop(self, *_args: Any) -> None:
        self.stopping = True

    def shutdown(self) -> None:
        """Kill every process the kernel started and close everything."""
        self.lifecycle.shutdown()
        if self.listener is not None:
            self.listener.close()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
        self._epoll.close()
