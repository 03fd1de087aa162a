"""Process lifecycle: a process's start (a connection, a slot, an endpoint, an
arena, its hello), its swap with another (live update), its death and reaping, and
the root's restart, out of the kernel's loop (hwl.kernel.kernel).

A process is spawned with a fresh connection as an inherited fd (so no other
process can claim its endpoint), forked from the fork server or started cold.
Its death, however it is learnt (its pidfd, the fork server's report, a closed
connection, a kill), frees everything it held and fails every call blocked on
it; its parent gets an exit record and a SYSTEM notify. The root (RS) is
restarted at its endpoint when it dies, unless it died more than ROOT_RESTARTS
times within ROOT_WINDOW_S: then it keeps dying for a reason a restart does not
cure, and the kernel says so and leaves it dead. Exits of its children while no
root runs are held for the next one.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import select
import signal
import socket
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hwl.ipc import arena, codec, wire
from hwl.kernel import exec as kexec
from hwl.kernel.channels import Channels
from hwl.kernel.ipc import EVENT_EXIT, Ipc
from hwl.kernel.priv import Priv
from hwl.kernel.proc import ExitRecord, Proc, ProcTable

log = logging.getLogger("hwl.kernel")

EXITS_KEEP = 1024
ROOT_RESTARTS = 5
ROOT_WINDOW_S = 10.0

_HELLO_HEADER = wire.RESPONSE.pack


class Loop(Protocol):
    """What the lifecycle needs of the kernel's loop."""

    @property
    def stopping(self) -> bool: ...

    def watch(self, fd: int, callback: Callable[[], None]) -> None: ...

    def unwatch(self, fd: int) -> None: ...

    def watch_requests(self, proc: Proc) -> None:
        """Run what arrives on the process's connection as its requests."""

    def released(self, proc: Proc) -> None:
        """Free what the loop's other parts hold for a dead process (IRQ hooks, DMA
        buffers and devices, alarms), before its connection closes."""


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


class Lifecycle:
    def __init__(
        self, run_dir: Path, table: ProcTable, ipc: Ipc, channels: Channels, loop: Loop
    ) -> None:
        self.run_dir = run_dir
        self.table = table
        self.ipc = ipc
        self.channels = channels
        self.loop = loop
        self.children: dict[int, Child] = {}  # by pid
        self.doomed: list[tuple[Proc, str]] = []
        self.forkserver: kexec.ForkServer | None = None
        self.root_endpoint = wire.NONE  # the process started with every privilege
        # A root the kernel spawned is restarted at its death (same label, argv,
        # privileges and endpoint); exits of its children meanwhile wait for it.
        self.root_spec: RootSpec | None = None
        self.root_deaths: deque[float] = deque()
        self.root_gave_up = False
        self.root_due = False
        self.held_exits: list[ExitRecord] = []

    def doom(self, proc: Proc, reason: str) -> None:
        """Mark a process dead at the end of this loop turn (not inside an IPC step)."""
        if proc.alive and all(p is not proc for p, _ in self.doomed):
            self.doomed.append((proc, reason))

    def dying(self, proc: Proc) -> bool:
        """Whether ``proc`` is doomed to die at the end of this loop turn."""
        return any(p is proc for p, _ in self.doomed)

    def settle(self) -> None:
        """The end of a loop turn: the doomed die, then a dead root restarts."""
        while self.doomed:
            proc, reason = self.doomed.pop(0)
            self.kill_process(proc, reason)
        if self.root_due and not self.loop.stopping:
            self.restart_root()

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
            frame = _HELLO_HEADER(wire.Kind.HELLO, 0, 0, 0, wire.KERNEL, 0) + hello
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
        self.loop.watch_requests(proc)
        return proc

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
                    forked = self.forkserver.spawn(argv, theirs.fileno(), log_path, env, label)
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
        self.loop.watch(pidfd, lambda: self._on_child(child))
        how = "cold" if popen is not None else "forked"
        log.info("spawned %s (%s): pid %d, %s", label, how, pid, wire.endpoint_name(proc.endpoint))
        return proc

    def start_forkserver(self) -> None:
        self.forkserver = kexec.ForkServer(self.run_dir)
        self.loop.watch(self.forkserver.fileno(), self._on_forkserver)

    def _on_forkserver(self) -> None:
        assert self.forkserver is not None
        for pid, code in self.forkserver.take_exits():
            child = self.children.get(pid)
            if child is not None:
                self.child_exited(child, code)

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
        self.child_exited(child, child.popen.returncode)

    def _close_pidfd(self, child: Child) -> None:
        if child.pidfd >= 0:
            self.loop.unwatch(child.pidfd)
            os.close(child.pidfd)
            child.pidfd = -1

    def child_exited(self, child: Child, code: int) -> None:
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
            and not self.loop.stopping
        )

    def _root_died(self, proc: Proc) -> None:
        """The root is dead: keep its unread exit records and restart it at the end
        of this loop turn (after every death of the turn is known)."""
        self.held_exits[:0] = proc.exits
        del self.held_exits[:-EXITS_KEEP]
        proc.exits = []
        self.root_due = True

    def restart_root(self) -> Proc | None:
        """Start the root program again, at the same endpoint (clients name RS by
        the endpoint their hello gave), and hand it the exits held meanwhile.
        None when it died too often or cannot be started: then it stays dead."""
        self.root_due = False
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
            self.loop.watch_requests(proc)
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
        mastering goes off before its DMA buffers are freed or kept (the DMA calls'
        release, through ``loop.released``)."""
        proc.alive = False
        self.table.remove(proc)
        self.loop.released(proc)
        if proc.event_fd >= 0:
            os.close(proc.event_fd)
            proc.event_fd, proc.armed = -1, False
        with contextlib.suppress(OSError):
            self.loop.unwatch(proc.sock.fileno())
        proc.sock.close()
        try:
            proc.arena_view.release()
            proc.arena.close()
        except BufferError:
            log.debug("arena of %s still referenced; left to the garbage collector", proc.label)

    def shutdown(self) -> None:
        """Kill every process the kernel started, and the fork server."""
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
