"""The kernel's main loop: one process per machine, between every process and the stub.

It owns the link to the stub and a socket in the machine's run directory. Each
process has one SEQPACKET connection; the loop reads one request frame at a time
from whichever connection is ready, runs it (IPC in :mod:`hwl.kernel.ipc`, kernel
calls in :mod:`hwl.kernel.calls`) and answers. It also watches the stub's doorbell
(finished requests, IRQs), the processes it started (pidfds) and alarms.

Nothing a process sends may stop the loop: a malformed frame gets an error status
and a log line; a process that breaks the protocol or stops reading its replies is
cut off, which to everyone else looks like its death.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import select
import signal
import socket
import struct
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwl.ipc import arena, codec, wire
from hwl.kernel import exec as kexec
from hwl.kernel.calls import Calls
from hwl.kernel.channels import Channels
from hwl.kernel.errno import Errno
from hwl.kernel.ipc import EVENT_EXIT, Ipc
from hwl.kernel.irq import Irqs
from hwl.kernel.priv import Priv
from hwl.kernel.proc import ExitRecord, Proc, ProcTable
from hwl.link.link import Link

log = logging.getLogger("hwl.kernel")

# While a stub request or an IRQ is outstanding, the loop also wakes on its own
# after this long, a safety net only: the doorbell is a byte on a TCP socket, and
# before both ends set TCP_NODELAY, Nagle held about one bell in 80 back past it.
LINK_SLICE = 0.002
EXITS_KEEP = 1024
WATCHDOG_PERIOD = 1.0  # s between looks for channel call cycles
# The root (RS) is restarted when it dies, unless it died more than ROOT_RESTARTS
# times within ROOT_WINDOW_S: then it keeps dying for a reason a restart does not
# cure, and the kernel says so and leaves it dead.
ROOT_RESTARTS = 5
ROOT_WINDOW_S = 10.0

_MESSAGE_HEADER = wire.RESPONSE.pack  # bound once: it runs for every message
_PEERCRED = struct.Struct("3i")


def _pidfd_ready(pidfd: int) -> bool:
    """Whether a pidfd says its process ended."""
    if pidfd < 0:
        return False
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


@dataclass
class Child:
    """A process the kernel started, until it is reaped."""

    pid: int
    pidfd: int
    endpoint: int
    label: str
    parent: int
    popen: subprocess.Popen[bytes] | None  # None: forked by the fork server


@dataclass
class RootSpec:
    """How the root program was started, to start it again after its death."""

    argv: list[str]
    label: str
    env: dict[str, str] | None
    arena_size: int
    cold: bool


class Kernel:
    """Run with :meth:`serve_forever`; :meth:`stop` (or SIGTERM) ends it."""

    def __init__(self, run_dir: Path, link: Link | None) -> None:
        self.run_dir = run_dir
        self.link = link
        self.table = ProcTable()
        self.ipc = Ipc(self.table, self)
        self.channels = Channels(self.table, self.ipc)
        self._next_watch = 0.0  # the channel-cycle watchdog's next look
        self.irqs = Irqs(self)
        self.calls = Calls(self)
        self._epoll = select.epoll()
        self._callbacks: dict[int, Callable[[], None]] = {}
        self.children: dict[int, Child] = {}  # by pid
        self.alarms: dict[Proc, float] = {}
        self.doomed: list[tuple[Proc, str]] = []
        self.stopping = False
        self.listener: socket.socket | None = None
        self.forkserver: kexec.ForkServer | None = None
        self.root_endpoint = wire.NONE  # the process started with every privilege
        # A root the kernel spawned is restarted at its death (same label, argv,
        # privileges and endpoint); exits of its children meanwhile wait for it.
        self.root_spec: RootSpec | None = None
        self.root_deaths: deque[float] = deque()
        self.root_gave_up = False
        self._root_due = False
        self.held_exits: list[ExitRecord] = []
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
        frame = _MESSAGE_HEADER(wire.Kind.MESSAGE, 0, spare, 0, source, m_type) + payload
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
            self.doom(proc, "does not read its replies")
        except OSError as exc:
            self.doom(proc, f"its connection failed ({exc.strerror or exc})")

    def doom(self, proc: Proc, reason: str) -> None:
        """Mark a process dead at the end of this loop turn (not inside an IPC step)."""
        if proc.alive and all(p is not proc for p, _ in self.doomed):
            self.doomed.append((proc, reason))

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
            proc = self.add_process(conn, f"user-{pid}", Priv.user(f"user-{pid}"))
        except LookupError as exc:
            log.warning("refused pid %d: %s", pid, exc)
            conn.close()
            return
        log.info("user process %s attached: %s", proc.label, wire.endpoint_name(proc.endpoint))

    def add_process(
        self,
        conn: socket.socket,
        label: str,
        priv: Priv,
        *,
        parent: int = wire.NONE,
        arena_size: int = arena.DEFAULT_SIZE,
        endpoint: int | None = None,
        root: bool = False,
    ) -> Proc:
        """Give a connection a slot, an endpoint and an arena, and say hello.
        ``root``: this is the root process, whose endpoint every hello names."""
        if endpoint is None:
            endpoint = self.table.new_endpoint()
        if root:
            self.root_endpoint = endpoint
        fd = os.memfd_create(f"hwl-arena-{label}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, arena_size)
            mapping = mmap.mmap(fd, arena_size)
            hello = codec.encode(
                {
                    "endpoint": endpoint,
                    "label": label,
                    "arena": arena_size,
                    "hz": wire.HZ,
                    "parent": parent,
                    "system": priv.system,
                    "root": self.root_endpoint,
                }
            )
            frame = _MESSAGE_HEADER(wire.Kind.HELLO, 0, 0, 0, wire.KERNEL, 0) + hello
            socket.send_fds(conn, [frame], [fd])
        finally:
            os.close(fd)
        conn.setblocking(False)
        proc = Proc(
            slot=wire.endpoint_slot(endpoint),
            endpoint=endpoint,
            label=label,
            priv=priv,
            sock=conn,
            arena=mapping,
            arena_view=memoryview(mapping),
            parent=parent,
        )
        self.table.add(proc)
        self._watch_requests(proc)
        return proc

    def _watch_requests(self, proc: Proc) -> None:
        """Run what arrives on the process's connection as its requests."""
        self.unwatch(proc.sock.fileno())
        self.watch(proc.sock.fileno(), lambda: self._on_request(proc))

    def spawn(
        self,
        parent: Proc | None,
        argv: list[str],
        label: str,
        priv: Priv,
        *,
        env: dict[str, str] | None = None,
        arena_size: int = arena.DEFAULT_SIZE,
        endpoint: int | None = None,
        cold: bool = False,
        root: bool = False,
    ) -> Proc:
        """Start ``argv`` as a new process holding a fresh connection (an inherited
        fd, so no other process can claim its endpoint): forked from the fork
        server, or with ``cold`` (or when the fork server fails) started afresh.
        Raises OSError if the program cannot be started, LookupError if no slot
        is free."""
        kexec.check_program(argv)
        endpoint = self.table.new_endpoint(endpoint)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent_ep = parent.endpoint if parent else wire.NONE
        try:
            proc = self.add_process(
                ours,
                label,
                priv,
                parent=parent_ep,
                arena_size=arena_size,
                endpoint=endpoint,
                root=root,
            )
        except BaseException:
            ours.close()
            theirs.close()
            raise
        log_path = self.run_dir / f"{label}.log"
        popen: subprocess.Popen[bytes] | None = None
        try:
            forked = None
            if not cold and self.forkserver is not None:
                try:
                    forked = self.forkserver.spawn(argv, theirs.fileno(), log_path, env)
                except OSError as exc:
                    log.warning("fork server failed (%s); starting %s cold", exc, label)
            if forked is None:
                popen = kexec.start(argv, theirs.fileno(), log_path, env)
                forked = popen.pid, os.pidfd_open(popen.pid)  # ours to reap: no race
        except OSError:
            self._release(proc)
            raise
        finally:
            theirs.close()
        pid, pidfd = forked
        proc.pid = pid
        if root:
            self.root_spec = RootSpec(list(argv), label, env, arena_size, cold)
        child = Child(pid, pidfd, proc.endpoint, label, parent_ep, popen)
        self.children[pid] = child
        self.watch(pidfd, lambda: self._on_child(child))
        how = "cold" if popen is not None else "forked"
        log.info("spawned %s (%s): pid %d, %s", label, how, pid, wire.endpoint_name(proc.endpoint))
        return proc

    def start_forkserver(self) -> None:
        self.forkserver = kexec.ForkServer(self.run_dir)
        self.watch(self.forkserver.fileno(), self._on_forkserver)

    def _on_forkserver(self) -> None:
        assert self.forkserver is not None
        for pid, code in self.forkserver.take_exits():
            child = self.children.get(pid)
            if child is not None:
                self._child_exited(child, code)

    def _on_child(self, child: Child) -> None:
        """The pidfd says the process ended. A cold child is reaped here; a forked
        one is the fork server's to reap: its endpoint dies now, its exit code
        comes with the fork server's report."""
        if not _pidfd_ready(child.pidfd):
            # A stale event of this loop turn: the pidfd it was for was closed
            # (the fork server's report came first) and its number reused by
            # this newer child's pidfd.
            return
        if child.popen is None:
            self._close_pidfd(child)
            proc = self.table.lookup(child.endpoint)
            if proc is not None and proc.pid == child.pid:
                self.kill_process(proc, "exited")
            return
        try:
            pid, status = os.waitpid(child.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = child.pid, 0
        if pid == 0:
            return
        child.popen.returncode = os.waitstatus_to_exitcode(status)
        self._child_exited(child, child.popen.returncode)

    def _close_pidfd(self, child: Child) -> None:
        if child.pidfd >= 0:
            self.unwatch(child.pidfd)
            os.close(child.pidfd)
            child.pidfd = -1

    def _child_exited(self, child: Child, code: int) -> None:
        self._close_pidfd(child)
        self.children.pop(child.pid, None)
        proc = self.table.lookup(child.endpoint)
        if proc is not None and proc.pid == child.pid:
            how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
            self.kill_process(proc, how)
        record = ExitRecord(
            child.endpoint,
            child.pid,
            child.label,
            code if code >= 0 else None,
            -code if code < 0 else None,
        )
        parent = self.table.lookup(child.parent)
        if parent is not None:
            parent.exits.append(record)
            del parent.exits[:-EXITS_KEEP]
            self.ipc.post_notify(parent, wire.SYSTEM, EVENT_EXIT)
        elif self._restarts_root(child.parent):
            # No root runs right now: the next one learns of this death from it.
            self.held_exits.append(record)
            del self.held_exits[:-EXITS_KEEP]

    def _restarts_root(self, endpoint: int) -> bool:
        """Whether ``endpoint`` is a root the kernel restarts (or is restarting)."""
        return (
            endpoint == self.root_endpoint
            and self.root_spec is not None
            and not self.root_gave_up
            and not self.stopping
        )

    def _root_died(self, proc: Proc) -> None:
        """The root is dead: keep its unread exit records and restart it at the end
        of this loop turn (after every death of the turn is known)."""
        self.held_exits[:0] = proc.exits
        del self.held_exits[:-EXITS_KEEP]
        proc.exits = []
        self._root_due = True

    def restart_root(self) -> Proc | None:
        """Start the root program again, at the same endpoint (clients name RS by
        the endpoint their hello gave), and hand it the exits held meanwhile.
        None when it died too often or cannot be started: then it stays dead."""
        self._root_due = False
        spec = self.root_spec
        assert spec is not None
        now = time.monotonic()
        self.root_deaths.append(now)
        while self.root_deaths and self.root_deaths[0] < now - ROOT_WINDOW_S:
            self.root_deaths.popleft()
        if len(self.root_deaths) > ROOT_RESTARTS:
            log.error("root %s died %d times within %.0f s: not restarted again; "
                      "nothing recovers the services now", spec.label,
                      len(self.root_deaths), ROOT_WINDOW_S)  # fmt: skip
            self._give_up_root()
            return None
        try:
            proc = self.spawn(
                None,
                spec.argv,
                spec.label,
                Priv.root(spec.label),
                env=spec.env,
                arena_size=spec.arena_size,
                endpoint=self.root_endpoint,
                cold=spec.cold,
                root=True,
            )
        except (OSError, LookupError) as exc:
            log.error("root %s cannot be restarted: %s; nothing recovers the services now",
                      spec.label, exc)  # fmt: skip
            self._give_up_root()
            return None
        log.warning("root %s restarted (%d deaths within %.0f s): pid %s at %s, %d exits held",
                    spec.label, len(self.root_deaths), ROOT_WINDOW_S, proc.pid,
                    wire.endpoint_name(proc.endpoint), len(self.held_exits))  # fmt: skip
        if self.held_exits:
            proc.exits, self.held_exits = self.held_exits, []
            self.ipc.post_notify(proc, wire.SYSTEM, EVENT_EXIT)
        return proc

    def _give_up_root(self) -> None:
        self.root_gave_up = True
        self.held_exits.clear()

    def update(self, a: Proc, b: Proc) -> None:
        """Swap the OS processes behind two endpoints (MINIX's SYS_UPDATE): each
        connection, arena, pid, label, privileges and blocked call moves to the
        other endpoint; what waits on an endpoint stays with it. Neither may be
        sending (it sits in a callers queue) or in a kernel call."""
        a.swap_process(b)
        for proc in (a, b):
            self._watch_requests(proc)
            child = self.children.get(proc.pid) if proc.pid is not None else None
            if child is not None:
                child.endpoint, child.parent = proc.endpoint, proc.parent
        self.channels.updated(a, b)
        for proc in (a, b):
            self.ipc.resume_receive(proc)

    def kill_process(self, proc: Proc, reason: str) -> None:
        """The process is gone (or cut off): everything blocked on it learns so."""
        if not proc.alive:
            return
        log.info("%s (%s) is dead: %s", proc.label, wire.endpoint_name(proc.endpoint), reason)
        self.ipc.process_died(proc)
        self.channels.process_died(proc)
        self._release(proc)
        if self._restarts_root(proc.endpoint):
            self._root_died(proc)
        if proc.pid is not None and proc.pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)  # no connection, nothing left to do

    def _release(self, proc: Proc) -> None:
        """Free the slot and everything the process held: its PCI functions' bus
        mastering goes off before its DMA buffers are freed or kept (calls.release)."""
        proc.alive = False
        self.table.remove(proc)
        self.irqs.release(proc)
        self.calls.release(proc)
        self.alarms.pop(proc, None)
        if proc.event_fd >= 0:
            os.close(proc.event_fd)
            proc.event_fd, proc.armed = -1, False
        with contextlib.suppress(OSError):
            self.unwatch(proc.sock.fileno())
        proc.sock.close()
        try:
            proc.arena_view.release()
            proc.arena.close()
        except BufferError:
            log.debug("arena of %s still referenced; left to the garbage collector", proc.label)

    # -------------------------------------------------------------- requests
    def _on_request(self, proc: Proc) -> None:
        try:
            data = proc.sock.recv(wire.MAX_REQUEST + 1)
        except BlockingIOError:
            return
        except OSError as exc:
            self.doom(proc, f"its connection failed ({exc.strerror or exc})")
            return
        if not data:
            self.doom(proc, "closed its connection")
            return
        self.handle(proc, data)

    def handle(self, proc: Proc, data: bytes) -> None:
        """Run one request frame from ``proc``."""
        if len(data) < wire.REQUEST.size:
            self._refuse(proc, Errno.EINVAL, f"a {len(data)}-byte frame is shorter than a header")
            return
        if len(data) > wire.MAX_REQUEST:
            self._refuse(proc, Errno.EMSGSIZE, f"a frame over {wire.MAX_REQUEST} bytes")
            return
        op, flags, _spare, peer, m_type = wire.REQUEST.unpack_from(data)
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
        if not self.alarms and not link_busy and kept is None:
            return -1
        timeout = LINK_SLICE if link_busy else 3600.0
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
            if self.alarms:
                self._fire_alarms(time.monotonic())
            if self.calls.keeper:
                self.calls.expire_kept(time.monotonic())
            if self.channels and time.monotonic() >= self._next_watch:
                self.channels.watch_cycles()
                self._next_watch = time.monotonic() + WATCHDOG_PERIOD
            while self.doomed:
                proc, reason = self.doomed.pop(0)
                self.kill_process(proc, reason)
            if self._root_due and not self.stopping:
                self.restart_root()

    def stop(self, *_args: Any) -> None:
        self.stopping = True

    def shutdown(self) -> None:
        """Kill every process the kernel started and close everything."""
        for proc in list(self.table):
            self.kill_process(proc, "the kernel is shutting down")
        deadline = time.monotonic() + 2
        for child in list(self.children.values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)
            if child.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            if child.pidfd >= 0:
                os.close(child.pidfd)
        self.children.clear()
        if self.forkserver is not None:
            self.forkserver.close()  # it reaps what it forked, then goes
        if self.listener is not None:
            self.listener.close()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
        self._epoll.close()

    def uptime(self) -> float:
        return time.monotonic() - self.ipc.boot
