"""The client side of RS: start, stop, restart, update and inspect services from Python.

Everything here is one ``sendrec`` to RS (the kernel's root process) with the fields
:mod:`hwl.system.proto` fixes; the ``service`` command (:mod:`hwl.cli.service`) is a
thin shell over it. RS answers 0 or a negative MINIX errno with an ``error`` field;
a failure becomes :class:`RsError`, which keeps the errno so that a command line
tool can exit with it, as MINIX's ``service`` does.

A program to start is an argv list. :func:`program_argv` builds one from what a
user types: a ``.py`` file, an executable, or an importable module name run with
``python -m``. The argv names files by absolute path because RS, not the caller,
starts the process, from its own working directory.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any, ClassVar, Final, Self, TypeVar, get_type_hints

from hwl.errors import CallError, HwlError
from hwl.ipc.client import Connection, IpcError, Message
from hwl.proto import codec, wire
from hwl.proto import rs as rsp
from hwl.proto.errno import Errno
from hwl.proto.rs import Policy, SysctlType, UpdateFlag
from hwl.proto.sef import FiType, LuState
from hwl.system import call

KERNEL_SOCKET: Final = wire.SOCKET_NAME  # where user processes attach
T = TypeVar("T")
R = TypeVar("R")
_ABSENT: Any = object()  # a row field with no default must be there


class RsError(CallError):
    """RS refused or failed a request: ``errno`` is its answer, ``detail`` its reason
    (the errno's description if RS gave none); ``request`` is the call's name."""

    def __init__(self, errno: Errno, request: str, detail: str = "") -> None:
        super().__init__(errno, request, detail or errno.description)

    @property
    def request(self) -> str:
        return self.call

    def __str__(self) -> str:
        return f"{self.call} failed: {self.errno.name}: {self.detail}"


class ProgramNotFound(HwlError):
    """``PROGRAM`` is neither a file nor an importable module."""


# ------------------------------------------------------------------ programs


def program_argv(program: str, args: Sequence[str] = ()) -> list[str]:
    """The command line RS should run for ``program`` with ``args``.

    - a ``.py`` file: ``[sys.executable, /abs/file.py, *args]``;
    - another executable file: ``[/abs/file, *args]``;
    - a dotted module name that imports here (``hwl.servers.ds``):
      ``[sys.executable, "-m", name, *args]``; a package needs a ``__main__``.

    Anything that names a path (has a ``/`` or ends in ``.py``) is taken as a
    path; a module is only looked for when no such file exists. Raises
    :class:`ProgramNotFound` saying what was tried.
    """
    if not program:
        raise ProgramNotFound("no such program: the program name is empty")
    path = Path(program)
    looks_like_path = os.sep in program or program.endswith(".py")
    if path.is_file():
        absolute = str(path.resolve())
        if program.endswith(".py"):
            return [sys.executable, absolute, *args]
        if os.access(absolute, os.X_OK):
            return [absolute, *args]
        raise ProgramNotFound(
            f"no such program: {program!r} is a file, but neither a .py file nor executable"
        )
    if path.exists():
        raise ProgramNotFound(f"no such program: {program!r} is not a regular file")
    if not looks_like_path and _runnable_module(program):
        return [sys.executable, "-m", program, *args]
    tried = "no such file" if looks_like_path else "no such file, and no importable module"
    raise ProgramNotFound(f"no such program: {program!r} ({tried} by that name)")


def _runnable_module(name: str) -> bool:
    """Whether ``python -m name`` would run something: a module, or a package with
    ``__main__``. Finding a submodule imports its parent packages, as ``-m`` does."""
    if not all(part.isidentifier() for part in name.split(".")):
        return False
    try:
        spec = importlib.util.find_spec(name)
        if spec is None:
            return False
        if spec.submodule_search_locations is not None:  # a package
            return importlib.util.find_spec(f"{name}.__main__") is not None
    except (ImportError, ValueError):
        return False
    return True


def default_label(argv: Sequence[str]) -> str:
    """The label a service gets when none is given, from its argv: the module's last
    dotted component for ``python -m``, else the program's file name without ``.py``."""
    if not argv:
        raise ValueError("an empty argv has no label")
    if len(argv) >= 3 and argv[1] == "-m":
        return argv[2].rsplit(".", 1)[-1]
    program = argv[0]
    if len(argv) >= 2 and argv[1].endswith(".py") and _is_python(argv[0]):
        program = argv[1]
    return Path(program).name.removesuffix(".py")


def _is_python(program: str) -> bool:
    """Whether ``program`` is a Python interpreter (then argv[1] is the script)."""
    return program == sys.executable or Path(program).name.startswith("python")


# ------------------------------------------------------------------- status


@dataclass(frozen=True)
class ServiceStatus:
    """One row of RS's service table, as ``service status`` prints it."""

    label: str
    endpoint: int
    pid: int  # -1: no process (down, or between restarts)
    restarts: int
    period: int  # heartbeat period in ticks; 0: no heartbeat
    last_heartbeat: float  # seconds since the last answer to a ping; -1.0: none yet
    state: str  # "up", "starting", "restarting", "updating", "down", ...
    policy: str
    program: str
    flags: str = ""  # comma-separated: run, cold, script, clone, fi

    @classmethod
    def from_fields(cls, row: codec.Value) -> ServiceStatus:
        """A row of the status reply; ValueError says which field is wrong."""
        return _read_row(cls, row, "a status row")


def _row_getter(row: codec.Value, what: str) -> Any:
    """A typed field reader for one row of a reply, ``get(name, kind[, default])``
    (an int is also a float; a bool is nothing else); ValueError names the field."""
    if not isinstance(row, dict):
        raise ValueError(f"{what} is a {type(row).__name__}, not a dict")

    def get(name: str, kind: type[Any], default: Any = _ABSENT) -> Any:
        if default is not _ABSENT and name not in row:
            return default
        value = row.get(name)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            raise ValueError(f"{what} field {name!r} is {value!r}, not a {kind.__name__}")
        return value

    return get


def _read_row(cls: type[R], row: codec.Value, what: str) -> R:
    """A reply row as the dataclass ``cls``: each field read as its annotated type
    (update flags checked; a field with a default may be absent)."""
    get = _row_getter(row, what)
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclass_fields(cls):  # type: ignore[arg-type]
        kind = hints[f.name]
        if kind is UpdateFlag:
            values[f.name] = UpdateFlag.checked(get(f.name, int))
        else:
            values[f.name] = get(f.name, kind, _ABSENT if f.default is MISSING else f.default)
    return cls(**values)


@dataclass(frozen=True)
class UpdateRow:
    """One service's part of an update, as ``sysctl upd_status`` shows it."""

    label: str
    phase: str  # queued, spawning, preparing, prepared, init, ready, swapped
    state: int  # the live-update state asked for
    flags: UpdateFlag
    maxtime: float  # seconds
    endpoint: int
    new_endpoint: int  # of the new version (NONE: prepare only)
    program: str
    batch: bool  # part of the multi-component update (-q)

    @classmethod
    def from_fields(cls, row: codec.Value) -> UpdateRow:
        return _read_row(cls, row, "an update row")


@dataclass(frozen=True)
class UpdateStatus:
    """``sysctl upd_status``: the queue ("none", "queued" or "running") and every
    update under way, the queue's in its order first."""

    batch: str
    updates: tuple[UpdateRow, ...]


@dataclass(frozen=True)
class InstanceRow:
    """One process RS runs for a service (``sysctl srv_status``)."""

    label: str
    role: str  # current, replica, or new (the new version of an update)
    endpoint: int
    pid: int
    state: str

    @classmethod
    def from_fields(cls, row: codec.Value) -> InstanceRow:
        return _read_row(cls, row, "an instance row")


@dataclass(frozen=True)
class SrvStatus:
    """``sysctl srv_status``: the service table and every instance behind it."""

    services: tuple[ServiceStatus, ...]
    instances: tuple[InstanceRow, ...]


# ------------------------------------------------------------ request fields
# Built here, checked once, for both the Rs methods and the service command.

#: What ``edit`` may change, with the type each value must have.
EDITABLE: Final[dict[str, type]] = {
    "argv": list,
    "period": int,
    "script": str,
    "conf": str,
    "dev": str,
    "restarts": int,
    "policy": int,
    "cold": bool,
}


def up_fields(
    program_argv: Sequence[str],
    label: str | None = None,
    period: int = 0,
    script: str | None = None,
    conf: str | None = None,
    dev: str | None = None,
    restarts: int = -1,
    policy: Policy = Policy.RESET,
    cold: bool = False,
    run: bool = False,
) -> dict[str, codec.Value]:
    """The fields of ``RS_UP`` (see :meth:`Rs.up`); ValueError for a bad value.
    ``run``: never restart it (``service run``)."""
    argv = _argv(program_argv)
    run_field: dict[str, codec.Value] = {"run": True} if run else {}
    return {
        "argv": argv,
        "label": default_label(program_argv) if label is None else _label(label),
        "period": _nonneg(period, "period"),
        "script": script or "",
        "conf": conf or "",
        "dev": dev or "",
        "restarts": _restarts(restarts),
        "policy": int(Policy(policy)),
        "cold": bool(cold),
        **run_field,
    }


def update_fields(
    label: str,
    argv: Sequence[str] | None = None,
    state: int = LuState.WORK_FREE,
    maxtime: int = 0,
    flags: UpdateFlag = UpdateFlag.NONE,
    conf: str | None = None,
) -> dict[str, codec.Value]:
    """The fields of ``RS_UPDATE`` (see :meth:`Rs.update`); ValueError for a bad value."""
    if isinstance(state, bool) or not isinstance(state, int) or state <= LuState.NULL:
        raise ValueError(f"state {state!r} is no live-update state (it must be >= 1)")
    if isinstance(maxtime, bool) or not isinstance(maxtime, int) or maxtime < -1:
        raise ValueError(f"maxtime {maxtime!r} is neither ticks, 0 (default) nor -1 (no limit)")
    flags = UpdateFlag.checked(int(flags))
    return {
        "label": _label(label),
        "argv": _argv(argv) if argv else [],
        "state": int(state),
        "maxtime": maxtime,
        "flags": int(flags),
        "conf": conf or "",
    }


def edit_fields(label: str, **changes: Any) -> dict[str, codec.Value]:
    """The fields of ``RS_EDIT``: the label and only what changes (see :meth:`Rs.edit`)."""
    fields: dict[str, codec.Value] = {"label": _label(label)}
    for name, value in changes.items():
        kind = EDITABLE.get(name)
        if kind is None:
            raise TypeError(f"edit: RS cannot change {name!r} (it can: {', '.join(EDITABLE)})")
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise TypeError(f"edit: {name} must be a {kind.__name__}, not {value!r}")
        fields[name] = _edited(name, value)
    if len(fields) == 1:
        raise ValueError("edit: nothing to change")
    return fields


def _rows(
    reply: Message, name: str, read: Callable[[codec.Value], T], request: str
) -> tuple[T, ...]:
    """The list ``name`` of a reply to ``request``, each row read by ``read``;
    RsError if RS sent something else."""
    rows = reply.get(name)
    if not isinstance(rows, list):
        raise RsError(Errno.EGENERIC, request, f"RS's reply has no list {name!r}: {rows!r}")
    try:
        return tuple(read(row) for row in rows)
    except ValueError as exc:
        raise RsError(Errno.EGENERIC, request, f"RS's reply is malformed: {exc}") from exc


def parse_status(reply: Message) -> list[ServiceStatus]:
    """The rows of an ``RS_STATUS`` reply; RsError if RS sent something else."""
    return list(_rows(reply, "services", ServiceStatus.from_fields, "status"))


def parse_upd_status(reply: Message) -> UpdateStatus:
    """The ``sysctl upd_status`` reply; RsError if RS sent something else."""
    mode = reply.get("batch")
    if not isinstance(mode, str):
        raise RsError(Errno.EGENERIC, "sysctl", f"RS's upd_status reply is malformed: {mode!r}")
    return UpdateStatus(mode, _rows(reply, "updates", UpdateRow.from_fields, "sysctl"))


def parse_srv_status(reply: Message) -> SrvStatus:
    """The ``sysctl srv_status`` reply; RsError if RS sent something else."""
    instances = _rows(reply, "instances", InstanceRow.from_fields, "sysctl")
    return SrvStatus(tuple(parse_status(reply)), instances)


def reply_endpoint(reply: Message, request: str) -> int:
    """The ``endpoint`` field of an up or lookup reply."""
    value = reply.get("endpoint")
    if not isinstance(value, int) or isinstance(value, bool):
        raise RsError(Errno.EGENERIC, request, f"RS's reply has no integer endpoint: {value!r}")
    return value


# ---------------------------------------------------------------------- API


class Rs(call.Attachable):
    """Requests to RS over one connection; ``with Rs.attach(run_dir) as rs: ...``.

    ``Rs(conn)`` talks to ``conn.root_endpoint`` (RS is the kernel's root process)
    unless ``endpoint`` is given. ``timeout`` (seconds, None: wait as long as RS
    takes) bounds every request; ``up`` and ``update`` wait for the service's init.
    A connection made by :meth:`attach` is closed with the Rs; one passed in is the
    caller's to close.
    """

    def __init__(
        self, conn: Connection, endpoint: int | None = None, *, timeout: float | None = None
    ) -> None:
        self.conn = conn
        self.endpoint = conn.root_endpoint if endpoint is None else endpoint
        self.timeout = timeout

    @classmethod
    def attach(cls, run_dir: str | Path, *, timeout: float | None = None) -> Rs:
        """Attach to the kernel of the machine in ``run_dir`` as a user process."""
        return call.attach(run_dir, lambda conn: cls(conn, timeout=timeout))

    # -------------------------------------------------------------- requests
    def request(self, m_type: int, fields: dict[str, codec.Value] | None = None) -> Message:
        """Send one request and return RS's reply; raise :class:`RsError` on failure.
        RS dying during the request is EDEADSRCDST: the kernel restarts RS at the
        same endpoint, so the same request may be made again."""
        return call.request(
            self.conn, self.endpoint, m_type, fields or {},
            call=rsp.RS_REQUEST_NAMES.get(m_type, f"request {m_type:#x}"),
            server="RS", error=RsError, timeout=self.timeout, no_answer=_no_answer,
        )  # fmt: skip

    def up(
        self,
        program_argv: Sequence[str],
        label: str | None = None,
        period: int = 0,
        script: str | None = None,
        conf: str | None = None,
        dev: str | None = None,
        restarts: int = -1,
        policy: Policy = Policy.RESET,
        cold: bool = False,
    ) -> int:
        """Start a service and return its endpoint once its init succeeded.

        ``program_argv``: the full command line (see :func:`program_argv`);
        ``label``: default from the program (:func:`default_label`); ``period``:
        heartbeat ticks (0: none); ``script``: recovery script, run as ``script
        label reason repetition``; ``conf``: the text of one system.conf entry
        (None: RS's own entry for the label); ``dev``: the device it drives;
        ``restarts``: the most restarts before RS gives up (-1: no limit);
        ``policy``: whether a restart keeps the endpoint; ``cold``: a fresh
        interpreter instead of a fork of the preloaded one.
        """
        fields = up_fields(program_argv, label, period, script, conf, dev, restarts, policy, cold)
        return reply_endpoint(self.request(rsp.RS_UP, fields), "up")

    def down(self, label: str) -> None:
        """Stop a service for good (RS will not restart it)."""
        self._label_request(rsp.RS_DOWN, label)

    def refresh(self, label: str) -> None:
        """Stop a service and let RS start it again (a restart on demand)."""
        self._label_request(rsp.RS_REFRESH, label)

    def restart(self, label: str) -> None:
        """Restart a service; RS accepts this only from its recovery script."""
        self._label_request(rsp.RS_RESTART, label)

    def clone(self, label: str) -> None:
        """Keep a warm replica of a service, ready to take over when it dies."""
        self._label_request(rsp.RS_CLONE, label)

    def unclone(self, label: str) -> None:
        """Drop a service's replica."""
        self._label_request(rsp.RS_UNCLONE, label)

    def lookup(self, label: str) -> int:
        """The endpoint of the service called ``label`` (ESRCH: none)."""
        return reply_endpoint(self._label_request(rsp.RS_LOOKUP, label), "lookup")

    def shutdown(self) -> None:
        """Stop every service; RS restarts nothing from then on."""
        self.request(rsp.RS_SHUTDOWN)

    def update(
        self,
        label: str,
        argv: Sequence[str] | None = None,
        state: int = LuState.WORK_FREE,
        maxtime: int = 0,
        flags: UpdateFlag = UpdateFlag.NONE,
        conf: str | None = None,
    ) -> None:
        """Live-update a service to ``argv`` (None or empty: the same program again).

        ``state``: the live-update state to reach first (a :class:`LuState`, or a
        custom state >= ``LU_STATE_CUSTOM_BASE``); ``maxtime``: ticks to reach it,
        0 for RS's default and -1 for no limit (MINIX's ``prepare_maxtime``);
        ``flags``: :class:`UpdateFlag` (prepare only, forced init failures;
        ``BATCH`` queues it instead, answered at once: see :meth:`queue_update`);
        ``conf``: the new version's system.conf entry (None: keep RS's).
        """
        self.request(rsp.RS_UPDATE, update_fields(label, argv, state, maxtime, flags, conf))

    def queue_update(
        self,
        label: str,
        argv: Sequence[str] | None = None,
        state: int = LuState.WORK_FREE,
        maxtime: int = 0,
        flags: UpdateFlag = UpdateFlag.NONE,
        conf: str | None = None,
    ) -> int:
        """Queue an update (``service -q update``) for :meth:`upd_run`, which updates
        the queue together; as :meth:`update`, answered at once: the position."""
        fields = update_fields(label, argv, state, maxtime, flags | UpdateFlag.BATCH, conf)
        position = self.request(rsp.RS_UPDATE, fields).get("position")
        if not isinstance(position, int) or isinstance(position, bool):
            raise RsError(Errno.EGENERIC, "update", f"RS's reply has no position: {position!r}")
        return position

    def sysctl(self, kind: SysctlType) -> Message:
        """``service sysctl``: one of :class:`SysctlType`; RS's reply."""
        return self.request(rsp.RS_SYSCTL, {"subtype": int(SysctlType(kind))})

    def upd_run(self) -> None:
        """Update the queued services together; answered when it is over, with the
        errno of the first failure (every service is then rolled back)."""
        self.sysctl(SysctlType.UPD_RUN)

    def upd_start(self) -> None:
        """As :meth:`upd_run`, answered at once (the result is in the event log)."""
        self.sysctl(SysctlType.UPD_START)

    def upd_stop(self) -> None:
        """Drop the queue, or abort the queued update under way (it fails EINTR)."""
        self.sysctl(SysctlType.UPD_STOP)

    def upd_status(self) -> UpdateStatus:
        """The queued or running update, and single updates under way."""
        return parse_upd_status(self.sysctl(SysctlType.UPD_STATUS))

    def srv_status(self) -> SrvStatus:
        """The service table and every process behind it (new versions included)."""
        return parse_srv_status(self.sysctl(SysctlType.SRV_STATUS))

    def edit(self, label: str, **changes: Any) -> None:
        """Change what RS uses for a service's next start: any of ``argv``, ``period``,
        ``script``, ``conf``, ``dev``, ``restarts``, ``policy``, ``cold`` (as in
        :meth:`up`; ``""`` clears a string)."""
        self.request(rsp.RS_EDIT, edit_fields(label, **changes))

    def fi(self, label: str, kind: FiType = FiType.CRASH) -> None:
        """Ask a service to inject a fault into itself (``service fi``); RS answers
        once it has asked, the crash and restart come as events."""
        self.request(rsp.RS_FI, {"label": _label(label), "type": int(kind)})

    def status(self) -> list[ServiceStatus]:
        """RS's service table, one row per service."""
        return parse_status(self.request(rsp.RS_STATUS))

    def _label_request(self, m_type: int, label: str) -> Message:
        return self.request(m_type, {"label": _label(label)})


class ServerClient:
    """A client of the server at ``endpoint``, called over ``conn``; ``timeout`` bounds
    each call. A subclass names the server's ``label`` at RS and its ``error`` class."""

    label: ClassVar[str]
    error: ClassVar[type[CallError]]

    def __init__(self, conn: Connection, endpoint: int, timeout: float | None = None) -> None:
        self.conn = conn
        self.endpoint = endpoint
        self.timeout = timeout

    @classmethod
    def find(cls, conn: Connection, timeout: float | None = None) -> Self:
        """The server as RS knows it (``RS_LOOKUP`` of ``label``); ``error`` if RS fails."""
        try:
            return cls(conn, Rs(conn, timeout=timeout).lookup(cls.label), timeout)
        except RsError as exc:
            raise cls.error(exc.errno, "find", exc.detail) from exc


# ------------------------------------------------------------ field checks


def _no_answer(exc: IpcError) -> str:
    detail = f"no answer from RS: {exc.detail or exc}"
    if exc.errno is Errno.EDEADSRCDST:
        detail += " (RS died; the kernel restarts it: the request may be retried)"
    return detail


def _label(label: str) -> str:
    if not isinstance(label, str) or not label:
        raise ValueError(f"a service label must be a non-empty string, not {label!r}")
    return label


def _argv(argv: Sequence[str] | None) -> list[codec.Value]:
    if isinstance(argv, str) or not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError(f"argv must be a non-empty list of strings, not {argv!r}")
    return list[codec.Value](argv)


def _nonneg(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a whole number >= 0, not {value!r}")
    return value


def _restarts(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < -1:
        raise ValueError(f"restarts must be >= 0, or -1 for no limit, not {value!r}")
    return value


def _edited(name: str, value: Any) -> codec.Value:
    """One edit field, checked as :func:`up_fields` checks it."""
    if name == "argv":
        return _argv(value)
    if name == "period":
        return _nonneg(value, "period")
    if name == "restarts":
        return _restarts(value)
    if name == "policy":
        return int(Policy(value))
    result: codec.Value = value
    return result
