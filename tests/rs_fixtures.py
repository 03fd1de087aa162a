"""A kernel whose root process is RS, and what RS tests do with it.

:class:`RsSystem` starts ``python -m hwl.servers.rs`` as the kernel's root in a short
run directory under /tmp (Unix socket paths must stay short), attaches to the
kernel as a user process (the operator, as the ``service`` command does) and
talks to RS through :class:`hwl.system.rs.Rs`. At the end it stops the kernel,
checks that every process RS ever reported (services, replicas, new versions of
live updates) is gone, and removes the run directory.

The test programs: ``hwl.servers.echo`` (the stock SEF service: answers ECHO with
tag, pid, request count and restarts, HANG stops serving) and
``tests/programs/rs_service.py`` (init failures, SIGTERM ignored). Recovery
scripts live in ``tests/programs/scripts``; they log their arguments to
:attr:`RsSystem.calls_path`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from hwl.ipc import codec
from hwl.ipc.client import Connection, Message
from hwl.kernel.errno import Errno
from hwl.kernel.launcher import KernelProcess
from hwl.procs import descendants
from hwl.proto.rs import RS_LABEL
from hwl.system.boot import rs_argv
from hwl.system.events import read_events
from hwl.system.proto import LuState
from hwl.system.rs import Rs, RsError, ServiceStatus

PROGRAMS = Path(__file__).resolve().parent / "programs"
SCRIPTS = PROGRAMS / "scripts"
RS_SERVICE = str(PROGRAMS / "rs_service.py")
BACKOFF_UNIT = 0.05  # seconds; RS's --backoff-unit
INIT_TIMEOUT = 2.0  # seconds; RS's --init-timeout
CALLS = "recovery.calls"  # what the recovery scripts log, in the run directory

# The echo service's requests (servers/echo/main.py).
ECHO, HANG, EXIT = 1, 2, 3

T = TypeVar("T")


def echo_argv(tag: str, *extra: str) -> list[str]:
    """The stock echo service with a tag (it answers with it: which version serves)."""
    return [sys.executable, "-m", "hwl.servers.echo", "--tag", tag, *extra]


def service_argv(*args: str) -> list[str]:
    """tests/programs/rs_service.py with options (``--init fail``, ``--ignore-term``)."""
    return [sys.executable, RS_SERVICE, *args]


def script(name: str) -> str:
    """A recovery script from tests/programs/scripts, by file name."""
    path = SCRIPTS / name
    assert os.access(path, os.X_OK), f"{path} is not executable"
    return str(path)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 5.0) -> T:
    """Poll ``check`` until it returns something other than None (or False)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


class RsSystem:
    """RS as the kernel's root, an operator connection, and helpers for tests."""

    def __init__(self, kernel: KernelProcess, run_dir: Path, conn: Connection) -> None:
        self.kernel = kernel
        self.run_dir = run_dir
        self.conn = conn
        self.rs = Rs(conn, timeout=30)
        self.endpoint = conn.root_endpoint
        self.calls_path = run_dir / CALLS
        self._labels = itertools.count()

    @classmethod
    @contextlib.contextmanager
    def running(cls) -> Iterator[RsSystem]:
        run_dir = Path(tempfile.mkdtemp(prefix="hwl-rs-", dir="/tmp"))
        kernel: KernelProcess | None = None
        try:
            kernel = KernelProcess.start(
                run_dir=run_dir,
                root_label=RS_LABEL,
                root_argv=rs_argv(
                    run_dir,
                    *("--backoff-unit", str(BACKOFF_UNIT)),
                    *("--init-timeout", str(INIT_TIMEOUT)),
                ),
            )
            with Connection.attach(kernel.socket_path) as conn:
                yield cls(kernel, run_dir, conn)
        finally:
            pids = _reported_pids(run_dir)
            if kernel is not None:
                pids |= descendants(kernel.pid)
                kernel.stop()
            left = [pid for pid in pids if pid_alive(pid)]
            deadline = time.monotonic() + 5
            while left and time.monotonic() < deadline:
                time.sleep(0.02)
                left = [pid for pid in left if pid_alive(pid)]
            shutil.rmtree(run_dir, ignore_errors=True)
            assert not left, f"processes RS started are still running: {left}"

    # ------------------------------------------------------------ services
    def label(self, stem: str) -> str:
        """A label no other test uses."""
        return f"{stem}{next(self._labels)}"

    def status(self, label: str) -> ServiceStatus | None:
        for row in self.rs.status():
            if row.label == label:
                return row
        return None

    def row(self, label: str) -> ServiceStatus:
        row = self.status(label)
        assert row is not None, f"{label} is not in RS's status"
        return row

    def wait_up(self, label: str, restarts: int, timeout: float = 5.0) -> ServiceStatus:
        """The status row once ``label`` is up with (at least) ``restarts`` restarts."""

        def check() -> ServiceStatus | None:
            row = self.status(label)
            if row is not None and row.state == "up" and row.restarts >= restarts:
                return row
            return None

        return wait_for(f"{label} up after {restarts} restarts", check, timeout)

    def down(self, label: str) -> None:
        """Stop a service at the end of a test (already gone is fine)."""
        with contextlib.suppress(RsError):
            self.rs.down(label)

    def request(self, m_type: int, fields: dict[str, codec.Value]) -> Message:
        """A raw request to RS (no client-side checks): the reply, whatever it is."""
        return self.conn.sendrec(self.endpoint, m_type, fields, timeout=30)

    def echo(self, endpoint: int, conn: Connection | None = None) -> dict[str, Any]:
        """One ECHO request to a service: its answer's fields."""
        reply = (conn or self.conn).sendrec(endpoint, ECHO, {}, timeout=10)
        assert reply.m_type == 0, reply
        return dict(reply.fields)

    # -------------------------------------------------------------- events
    def events(self, label: str | None = None) -> list[dict[str, Any]]:
        found = read_events(self.run_dir / "events.jsonl")
        return [e for e in found if label is None or e.get("label") == label]

    def event_names(self, label: str) -> list[str]:
        return [str(e["event"]) for e in self.events(label)]

    def wait_event(self, label: str, event: str, count: int = 1, timeout: float = 5.0) -> Any:
        """The ``count``-th event named ``event`` for ``label``."""

        def check() -> dict[str, Any] | None:
            found = [e for e in self.events(label) if e["event"] == event]
            return found[count - 1] if len(found) >= count else None

        return wait_for(f"event {event} #{count} of {label}", check, timeout)

    # -------------------------------------------------------- recovery scripts
    def calls(self, label: str) -> list[list[str]]:
        """The lines the recovery scripts logged for ``label``, split in words."""
        if not self.calls_path.exists():
            return []
        lines = [line.split() for line in self.calls_path.read_text().splitlines()]
        return [words for words in lines if len(words) > 1 and words[1] == label]

    def wait_calls(self, label: str, count: int, timeout: float = 10.0) -> list[list[str]]:
        def check() -> list[list[str]] | None:
            found = self.calls(label)
            return found if len(found) >= count else None

        return wait_for(f"{count} recovery-script lines for {label}", check, timeout)


def _reported_pids(run_dir: Path) -> set[int]:
    pids: set[int] = set()
    for event in read_events(run_dir / "events.jsonl"):
        pid = event.get("pid")
        if isinstance(pid, int) and pid > 0:
            pids.add(pid)
    return pids


@contextlib.contextmanager
def update_under_way(rs: RsSystem, label: str, maxtime: int) -> Iterator[list[Errno | None]]:
    """An update of ``label`` (a service that never reaches the state) asked by
    another client in a thread; inside the block RS shows it updating. The list
    gets the update's result (None: it succeeded) once the block is left."""
    results: list[Errno | None] = []

    def update() -> None:
        with Connection.attach(rs.kernel.socket_path) as client:
            try:
                Rs(client, timeout=10).update(label, state=LuState.REQUEST_FREE, maxtime=maxtime)
                results.append(None)
            except RsError as exc:
                results.append(exc.errno)

    thread = threading.Thread(target=update)
    thread.start()
    try:
        wait_for("the update to start", lambda: rs.row(label).state == "updating")
        yield results
    finally:
        thread.join(10)
