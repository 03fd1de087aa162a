"""Watching the trusted core: QEMU, the kernel and RS.

RS recovers every service, and the kernel recovers RS (in MINIX, RS's death is a
panic; hwl's kernel restarts it, at most ROOT_RESTARTS times in a window), but
nothing recovers QEMU or the kernel. Whoever started them (``hwl up``, the pytest
fixtures, the campaign runner) must notice their death at once, say which died
and how, clean up and stop, rather than go on with a system that can no longer
recover. RS's death is said too, with the pid the kernel restarted it as, and
watched on; it is a death only when the kernel gives up on it. One pidfd per
process, all polled together: a death is seen within one poll, not at the next
command.

See docs/services.md.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwl.errors import HwlError
from hwl.proto.rs import RS_LABEL

#: How long to look for the kernel's word on how a process it started ended.
KERNEL_LOG_WAIT_S = 2.0
#: After a death, how long a process named before it (its likely cause) may take
#: to be seen dead too.
SETTLE_S = 0.5
#: How long to wait for the kernel's word that it restarted RS (or gave up).
RESTART_WAIT_S = 5.0


@dataclass(frozen=True)
class Death:
    """A core process that died: which, its pid, and how it ended."""

    component: str  # "QEMU", "the kernel", "RS"
    pid: int
    how: str  # "killed by signal 9 (SIGKILL)", "exited with status 1"

    def __str__(self) -> str:
        return f"{self.component} (pid {self.pid}) died: {self.how}"


@dataclass(frozen=True)
class Restarted:
    """A core process that died and was started again (RS, by the kernel)."""

    component: str
    pid: int
    how: str
    new_pid: int

    def __str__(self) -> str:
        return (
            f"{self.component} (pid {self.pid}) died: {self.how}; "
            f"the kernel restarted it: pid {self.new_pid}"
        )


def describe_exit(code: int | None) -> str:
    """A return code as Popen gives it (negative: the signal), in words."""
    if code is None:
        return "ended, how unknown"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {-code} ({name})"
    return f"exited with status {code}"


def kernel_log_says(run_dir: Path, label: str, timeout: float = KERNEL_LOG_WAIT_S) -> str:
    """How the kernel says its process ``label`` ended ("killed by signal 9 (SIGKILL)"):
    only the kernel, its parent, can reap it. Read from kernel.log, where its line
    may come a moment after the death."""
    pattern = re.compile(rf" {re.escape(label)} \(ep .*\) is dead: (.+)$", re.MULTILINE)
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = pattern.findall((run_dir / "kernel.log").read_text(errors="replace"))
        except OSError:
            found = []
        if found:
            how = str(found[-1]).strip()
            signo = re.fullmatch(r"killed by signal (\d+)", how)
            return describe_exit(-int(signo.group(1))) if signo else how
        if time.monotonic() > deadline:
            return "ended (the kernel's log does not say how)"
        time.sleep(0.02)


def kernel_log_pid(run_dir: Path, label: str) -> int | None:
    """The pid of the first process the kernel spawned as ``label``, from kernel.log."""
    pids = kernel_log_pids(run_dir, label)
    return pids[0] if pids else None


def kernel_log_pids(run_dir: Path, label: str) -> list[int]:
    """The pids of every process the kernel spawned as ``label``, in order: the
    root (RS) again after each restart by the kernel."""
    pattern = re.compile(rf" spawned {re.escape(label)} \((?:cold|forked)\): pid (\d+)")
    try:
        text = (run_dir / "kernel.log").read_text(errors="replace")
    except OSError:
        return []
    return [int(pid) for pid in pattern.findall(text)]


def rs_pid(run_dir: Path) -> int:
    """RS's pid, as the kernel logged it when it spawned RS, the last time (the
    operator may not read the kernel's process table, and a forked RS's command
    line is the fork server's)."""
    pids = kernel_log_pids(run_dir, RS_LABEL)
    if not pids:
        raise HwlError(f"the kernel's log names no pid for RS (in {run_dir})")
    return pids[-1]


def kernel_restarted(
    run_dir: Path, label: str, timeout: float = RESTART_WAIT_S
) -> Callable[[int], int | None]:
    """For CoreWatch: the pid the kernel restarted its root ``label`` as after the
    death of ``pid`` (from kernel.log), or None when the kernel says it gave up,
    or says nothing within ``timeout``."""
    gave_up = re.compile(
        rf"root {re.escape(label)} (?:died \d+ times .* not restarted again|cannot be restarted)"
    )

    def successor(pid: int) -> int | None:
        deadline = time.monotonic() + timeout
        while True:
            pids = kernel_log_pids(run_dir, label)
            if pid in pids and pids[-1] != pid:
                return pids[pids.index(pid) + 1]
            try:
                text = (run_dir / "kernel.log").read_text(errors="replace")
            except OSError:
                text = ""
            if gave_up.search(text) or time.monotonic() > deadline:
                return None
            time.sleep(0.02)

    return successor


# Linux's process events connector (linux/cn_proc.h, linux/connector.h).
_NETLINK_CONNECTOR = 11
_CN_IDX_PROC = _CN_VAL_PROC = 1
_PROC_CN_MCAST_LISTEN = 1
_PROC_EVENT_EXIT = 0x80000000
_NLMSG_DONE = 3
_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_CN_MSG = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
_EVENT = struct.Struct("=IIQ")  # what, cpu, timestamp
_EXIT = struct.Struct("=iiII")  # pid, tgid, exit_code (a wait status), exit_signal


class ExitEvents:
    """Every process's exit status, from Linux's process events connector: how a
    process that is not our child ended (RS is the fork server's), which its
    pidfd cannot say. Needs CAP_NET_ADMIN (hwl runs as root for its network
    namespaces); :meth:`open` returns None without it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.statuses: dict[int, int] = {}  # pid -> wait status, for the pids asked about

    @classmethod
    def open(cls) -> ExitEvents | None:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_CONNECTOR)
        except OSError:
            return None
        try:
            sock.bind((0, _CN_IDX_PROC))
            op = struct.pack("=I", _PROC_CN_MCAST_LISTEN)
            cn = _CN_MSG.pack(_CN_IDX_PROC, _CN_VAL_PROC, 0, 0, len(op), 0) + op
            sock.send(_NLMSG.pack(_NLMSG.size + len(cn), _NLMSG_DONE, 0, 0, os.getpid()) + cn)
            sock.setblocking(False)
        except OSError:
            sock.close()
            return None
        return cls(sock)

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self, pids: set[int]) -> None:
        """Read what has arrived; keep the exits of ``pids``."""
        while True:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ENOBUFS: events lost to a busy system; later ones still come
                continue
            at = _NLMSG.size + _CN_MSG.size
            if len(data) < at + _EVENT.size + _EXIT.size:
                continue
            what = _EVENT.unpack_from(data, at)[0]
            if what != _PROC_EVENT_EXIT:
                continue
            pid, tgid, status, _signal = _EXIT.unpack_from(data, at + _EVENT.size)
            if pid == tgid and pid in pids:
                self.statuses[pid] = status

    def how(self, pid: int) -> str | None:
        """How ``pid`` ended, if its exit event came."""
        self.drain({pid})
        status = self.statuses.get(pid)
        return None if status is None else describe_exit(os.waitstatus_to_exitcode(status))

    def close(self) -> None:
        self.sock.close()


def zombie_exit(pid: int) -> str | None:
    """How ``pid`` ended, read from /proc while it is a zombie (its parent has not
    reaped it yet): the way to know for a process that is not our child. None if
    it is reaped already (or alive)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] != "Z" or len(fields) < 50:
        return None
    return describe_exit(os.waitstatus_to_exitcode(int(fields[49])))


@dataclass
class _Watched:
    component: str
    pid: int
    fd: int  # the pidfd; -1: it was gone before the watch began
    how: Callable[[], str]
    successor: Callable[[int], int | None] | None = None  # who restarts it, if anyone
    fallback: Callable[[], str] | None = None  # how it ended, when nothing else says


class CoreWatch:
    """pidfds of the core processes; :meth:`wait` returns the first death seen.
    Processes are named in the order added, which is the order a death is
    reported in when several are seen at once (a cause before its effects:
    QEMU, then the kernel, then RS)."""

    def __init__(self) -> None:
        self._watched: list[_Watched] = []
        self.events = ExitEvents.open()
        self.restarts: list[Restarted] = []  # deaths that were recovered, in order
        self.on_restart: Callable[[Restarted], None] | None = None

    def add_child(self, component: str, proc: subprocess.Popen[Any]) -> None:
        """A process this one started: its exit status is ours to read."""

        def how() -> str:
            try:
                return describe_exit(proc.wait(timeout=1))
            except subprocess.TimeoutExpired:
                return "ended, how unknown"

        self._add(component, proc.pid, how)

    def add_pid(
        self,
        component: str,
        pid: int,
        fallback: Callable[[], str] | None = None,
        successor: Callable[[int], int | None] | None = None,
    ) -> None:
        """Another's child: how it ended comes from the exit events, else from
        /proc while it is a zombie, else from ``fallback``. ``successor``
        (the dead pid -> the pid that took its place, or None) makes its death a
        restart, watched on, unless it names no successor."""
        self._add(component, pid, self._how_of(pid, fallback), successor)
        self._watched[-1].fallback = fallback

    def _how_of(self, pid: int, fallback: Callable[[], str] | None) -> Callable[[], str]:
        def how() -> str:
            found = self.events.how(pid) if self.events is not None else None
            found = found or zombie_exit(pid)
            if found is None:
                return fallback() if fallback is not None else "ended, how unknown"
            return found

        return how

    def _add(
        self,
        component: str,
        pid: int,
        how: Callable[[], str],
        successor: Callable[[int], int | None] | None = None,
    ) -> None:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            fd = -1
        self._watched.append(_Watched(component, pid, fd, how, successor))

    def wait(self, timeout: float | None) -> Death | None:
        """The first death within ``timeout`` seconds (None: wait for one), else None."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pids = {w.pid for w in self._watched}
        while True:
            gone = [w for w in self._watched if w.fd < 0]
            if not gone:
                fds = [w.fd for w in self._watched]
                if self.events is not None:
                    fds.append(self.events.fileno())
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                ready, _, _ = select.select(fds, [], [], left)
                if self.events is not None and self.events.fileno() in ready:
                    self.events.drain(pids)  # keep ours, so the queue never overflows
                gone = [w for w in self._watched if w.fd in ready]
            if gone:
                first = self._cause(gone[0])
                how = first.how()
                new_pid = first.successor(first.pid) if first.successor is not None else None
                if new_pid is None:
                    if first.successor is not None:
                        how += "; the kernel gave up restarting it"
                    return Death(first.component, first.pid, how)
                self._restarted(first, how, new_pid)
                continue
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _restarted(self, w: _Watched, how: str, new_pid: int) -> None:
        """``w`` died and ``new_pid`` took its place: watch that one instead."""
        restarted = Restarted(w.component, w.pid, how, new_pid)
        self.restarts.append(restarted)
        if w.fd >= 0:
            os.close(w.fd)
        try:
            w.fd = os.pidfd_open(new_pid)
        except ProcessLookupError:
            w.fd = -1  # dead already: the next look says so
        w.pid = new_pid
        w.how = self._how_of(new_pid, w.fallback)
        if self.on_restart is not None:
            self.on_restart(restarted)

    def _cause(self, seen: _Watched) -> _Watched:
        """The first-named process among ``seen`` and those named before it that
        die within SETTLE_S: a SIGKILLed kernel closes its sockets before it
        becomes a zombie, so RS, cut off, can end first; the kernel is the cause."""
        earlier = [w for w in self._watched[: self._watched.index(seen)] if w.fd >= 0]
        deadline = time.monotonic() + SETTLE_S
        while earlier:
            left = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([w.fd for w in earlier], [], [], left)
            if ready:
                return next(w for w in earlier if w.fd in ready)
            if left == 0.0:
                break
        return seen

    def close(self) -> None:
        for w in self._watched:
            if w.fd >= 0:
                os.close(w.fd)
        self._watched.clear()
        if self.events is not None:
            self.events.close()
            self.events = None

    def __enter__(self) -> CoreWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
