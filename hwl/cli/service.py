"""``service``: MINIX's command for starting, stopping and updating system services
(docs/services.md).

The syntax is MINIX 3's (``minix/commands/minix-service``), so its manual and its
system scripts read the same here::

    service [-o] [-x] [-y] [-z] [-q] [-c] [-r] [--run-dir DIR] REQUEST ...

Options come before the request, as with MINIX's getopt; the request's own options
are ``-name value`` pairs after its first argument. What hwl changes:

- PROGRAM is a ``.py`` file, an executable, or a module run with ``python -m``
  (``hwl.servers.ds``), not only an absolute path (:func:`hwl.system.rs.program_argv`).
- ``edit LABEL [options]`` names the service directly; MINIX's ``edit PROGRAM
  -label LABEL [options]`` also works and sets the program too.
- ``lookup LABEL`` (print the endpoint) and ``status`` (print RS's table, with
  each service's recovery policy and flags) are new; ``-policy`` and ``-cold``
  are hwl's.
- ``-q update ...`` queues the update (answered at once) and ``sysctl upd_run``
  updates the queue together, rolling all of it back on any failure, as MINIX's
  multi-component live update; ``sysctl upd_start`` starts it and returns at
  once, ``upd_stop`` drops the queue (or aborts it), ``upd_status`` and
  ``srv_status`` print the queue and every service instance. RS prints nothing
  on a console here: the command prints what RS answers.
- ``run PROGRAM [options of up]`` starts a service RS never restarts, as MINIX's.
- ``fi LABEL`` asks the service to crash itself, as MINIX's; ``-type`` chooses
  hwl's other faults: ``hang`` (it stops answering; the heartbeat catches it),
  ``exception`` (raised inside its next request), ``drop-reply`` (its next reply
  is not sent), ``corrupt-reply`` (its next reply's payload is garbled).

Installed as ``minix-service`` (MINIX 3.4's own name; Debian's ``service`` in
/usr/sbin is another program) and as ``hwl service``.
- ``-config FILE`` sends the entry for the label from FILE; without it RS uses the
  entry in its own system.conf.
- ``-x -y -z -q`` apply to ``update`` only: ``up`` has no flags field in hwl's protocol.
  ``-c`` and ``-r`` (copy or reuse the executable image) are accepted and do nothing:
  RS starts every service from its fork server's preloaded interpreter.
- ``-restarts -1`` means no limit (the default); MINIX accepts only N >= 0.

The kernel is found through the machine's run directory: ``--run-dir DIR`` or
``$HWL_RUN_DIR``. Exit status, as MINIX's: 0, or the positive errno RS answered;
EINVAL for a malformed command line (ENOSYS for an unknown request), ENOENT for a
missing program, 1 for a system.conf that does not parse.

Parsing is :func:`parse_command`, a function of the arguments alone, so that tests
can check every request without RS.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

from hwl.config import SystemConfError, load
from hwl.errors import HwlError
from hwl.ipc import codec
from hwl.kernel.errno import Errno
from hwl.proto.rs import RS_FI, RS_SYSCTL, SysctlType
from hwl.proto.sef import FiType
from hwl.proto.wire import NONE
from hwl.system import proto
from hwl.system.durations import format_ticks, parse_ticks
from hwl.system.proto import LU_STATE_CUSTOM_BASE, LuState, Policy, UpdateFlag
from hwl.system.rs import (
    KERNEL_SOCKET,
    ProgramNotFound,
    Rs,
    RsError,
    ServiceStatus,
    SrvStatus,
    UpdateStatus,
    default_label,
    edit_fields,
    parse_srv_status,
    parse_status,
    parse_upd_status,
    program_argv,
    reply_endpoint,
    up_fields,
    update_fields,
)

RUN_DIR_ENV: Final = "HWL_RUN_DIR"
CONFIG_ERROR: Final = 1  # MINIX: errx(1, "couldn't parse config")

USAGE: Final = """\
usage: service [-o] [-x] [-y] [-z] [-q] [-c] [-r] [--run-dir DIR] REQUEST ...
  service up PROGRAM [-args "ARGS"] [-dev DEV] [-label LABEL] [-period T]
             [-script PATH] [-config FILE] [-restarts N] [-policy reset|restart] [-cold]
  service run PROGRAM [the options of up]    (up, never restarted)
  service fi LABEL [-type crash|hang|exception|drop-reply|corrupt-reply]
  service edit LABEL [the options of up but -label]
  service edit PROGRAM -label LABEL [the options of up]
  service update PROGRAM|self [-label LABEL] [-state S] [-maxtime T] [-args "ARGS"]
             [-config FILE]
  service down|refresh|restart|clone|unclone|lookup LABEL
  service shutdown
  service status
  service sysctl srv_status|upd_start|upd_run|upd_stop|upd_status
PROGRAM: a .py file, an executable, or a module run with python -m (hwl.servers.ds).
T: ticks (120) or seconds as NHZ (2HZ). S: a number, or work_free, request_free,
protocol_free. update: -maxtime 0 means no limit, -label is needed with self.
Options: -o prepare only, -x/-y/-z force init crash/fail/timeout, -q queue it
for 'sysctl upd_run', which updates the queue together (update); -c/-r accepted,
no effect. --run-dir DIR or $HWL_RUN_DIR: the machine's run directory (it holds
kernel.sock).
Exit status: 0, or the errno RS answered (EINVAL: bad command line)."""


class CommandError(HwlError):
    """The command cannot be sent: ``code`` is the exit status, ``usage`` whether to
    print the usage after the message (MINIX does for command-line mistakes)."""

    def __init__(self, message: str, code: int = Errno.EINVAL, *, usage: bool = False) -> None:
        super().__init__(message)
        self.code = int(code)
        self.usage = usage


def _usage(message: str, code: int = Errno.EINVAL) -> CommandError:
    return CommandError(message, code, usage=True)


@dataclass(frozen=True)
class Request:
    """One request to RS, ready to send: its name, message type and fields."""

    name: str
    m_type: int
    fields: dict[str, codec.Value] = field(default_factory=dict)


@dataclass(frozen=True)
class Command:
    """A parsed command line: the request (None with ``-h``) and where the kernel is."""

    request: Request | None
    run_dir: str | None = None


# ------------------------------------------------------------ global options

_UPDATE_FLAGS: Final = {
    "o": UpdateFlag.PREPARE_ONLY,
    "x": UpdateFlag.FORCE_INIT_CRASH,
    "y": UpdateFlag.FORCE_INIT_FAIL,
    "z": UpdateFlag.FORCE_INIT_TIMEOUT,
    "q": UpdateFlag.BATCH,
}
_NO_EFFECT: Final = frozenset("cr")
_NOT_IN_HWL: Final = {
    "b": "no binary exponential backoff",
    "n": "unblock the caller at once",
    "p": "create a replica (use 'service clone LABEL')",
    "a": "ASR update",
    "s": "force self update",
    "d": "force the default init callback",
    "u": "unused",
    "m": "do not inherit mmapped regions",
    "e": "detach on update or restart",
    "f": "do not restart",
    "t": "force init state transfer",
}


def parse_command(argv: Sequence[str]) -> Command:
    """The request ``argv`` (without the program name) asks for; CommandError if none.

    Looks at the file system (PROGRAM, ``-config``, ``-script``) but not at RS.
    """
    flags = UpdateFlag.NONE
    run_dir: str | None = None
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        word = argv[i]
        i += 1
        if word == "--":
            break
        if word in ("-h", "--help"):
            return Command(None, run_dir)
        if word == "--run-dir" or word.startswith("--run-dir="):
            if "=" in word:
                run_dir = word.partition("=")[2]
            elif i < len(argv):
                run_dir, i = argv[i], i + 1
            else:
                raise _usage("option --run-dir needs a directory")
            if not run_dir:
                raise _usage("option --run-dir needs a directory")
            continue
        if word.startswith("--"):
            raise _usage(f"unknown option {word}")
        for letter in word[1:]:
            flags |= _flag(letter)
    if i >= len(argv):
        raise _usage("no request given")
    name, words = argv[i], list(argv[i + 1 :])
    parser = _REQUESTS.get(name)
    if parser is None:
        raise _usage(f"illegal request type '{name}'", Errno.ENOSYS)
    if flags and name != "update":
        letters = "".join(k for k, v in _UPDATE_FLAGS.items() if v in flags)
        raise _usage(f"options -{letters} apply only to update, not {name}")
    return Command(parser(name, words, flags), run_dir)


def _flag(letter: str) -> UpdateFlag:
    """One getopt letter before the request."""
    if letter in _UPDATE_FLAGS:
        return _UPDATE_FLAGS[letter]
    if letter in _NO_EFFECT:
        return UpdateFlag.NONE
    if letter in _NOT_IN_HWL:
        raise _usage(f"option -{letter} ({_NOT_IN_HWL[letter]}) is not supported in hwl")
    raise _usage(f"unknown option -{letter}")


# ------------------------------------------------------------ request options

_UP_OPTIONS: Final = frozenset(
    {"-args", "-dev", "-label", "-period", "-script", "-config", "-restarts", "-policy"}
)
_UPDATE_OPTIONS: Final = frozenset({"-label", "-state", "-maxtime", "-args", "-config"})
_SWITCHES: Final = frozenset({"-cold"})  # options without a value


def _options(
    request: str, words: Sequence[str], pairs: frozenset[str], switches: frozenset[str]
) -> dict[str, str]:
    """``-name value`` pairs (and bare switches, as ``""``) after the first argument."""
    found: dict[str, str] = {}
    i = 0
    while i < len(words):
        name = words[i]
        if name in switches:
            value, i = "", i + 1
        elif name in pairs:
            if i + 1 >= len(words):
                raise _usage(f"{request}: option {name} needs a value")
            value, i = words[i + 1], i + 2
        elif name.startswith("-"):
            known = " ".join(sorted(pairs | switches))
            raise _usage(f"{request}: unknown option {name} (known: {known})")
        else:
            raise _usage(f"{request}: unexpected argument '{name}'")
        if name in found:
            raise _usage(f"{request}: option {name} given twice")
        if name == "-label" and not value:
            raise _usage(f"{request}: option -label needs a non-empty label")
        found[name] = value
    return found


def _first(request: str, words: Sequence[str], what: str) -> str:
    """The request's first argument (a program or label), which must be there."""
    if not words or (words[0].startswith("-") and words[0] != "-"):
        raise _usage(f"{request} needs {what}")
    return words[0]


def _duration(text: str, what: str) -> int:
    try:
        return parse_ticks(text, what)
    except ValueError as exc:
        raise _usage(str(exc)) from exc


def _args(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise _usage(f"-args {text!r} cannot be split: {exc}") from exc


def _program(program: str, args: Sequence[str]) -> list[str]:
    try:
        return program_argv(program, args)
    except ProgramNotFound as exc:
        raise CommandError(str(exc), Errno.ENOENT) from exc  # MINIX: exit(errno) from stat


def _restarts(text: str) -> int:
    if re.fullmatch(r"-1|[0-9]{1,9}", text) is None:
        raise _usage(f"bad number of restarts {text!r}: expected N >= 0, or -1 for no limit")
    return int(text)


def _policy(text: str) -> Policy:
    try:
        return Policy[text.upper()]
    except KeyError:
        raise _usage(f"bad policy {text!r}: expected reset or restart") from None


def _state(text: str) -> int:
    """``-state``: a number or a state's name; MINIX's eval expressions are not in hwl."""
    if text.isdigit():
        state = int(text)
    elif text.upper() in LuState.__members__:
        state = int(LuState[text.upper()])
    else:
        raise _usage(
            f"bad live update state {text!r}: expected a number (custom states from "
            f"{LU_STATE_CUSTOM_BASE}) or work_free, request_free, protocol_free "
            "(hwl has no eval expressions)"
        )
    if state == LuState.NULL:
        raise _usage("null live update state")
    return state


def _script(text: str) -> str:
    """A recovery script that exists here is sent by absolute path: RS runs it."""
    return str(Path(text).resolve()) if text and Path(text).exists() else text


def _config(path: str, label: str) -> str:
    """The system.conf text of ``label``'s entry in the file at ``path``."""
    try:
        conf = load(path)
    except SystemConfError as exc:
        raise CommandError(f"couldn't parse config: {exc}", CONFIG_ERROR) from exc
    entry = conf.get(label)
    if entry is None:
        names = ", ".join(conf.services) or "none"
        raise CommandError(f"{path}: no entry 'service {label}' (entries: {names})", CONFIG_ERROR)
    return entry.to_text()


def _up_changes(options: dict[str, str], label: str) -> dict[str, Any]:
    """The up/edit fields the options set, by :func:`hwl.system.rs.up_fields` name."""
    changes: dict[str, Any] = {}
    if "-period" in options:
        changes["period"] = _duration(options["-period"], "period")
    if "-script" in options:
        changes["script"] = _script(options["-script"])
    if "-dev" in options:
        changes["dev"] = options["-dev"]
    if "-restarts" in options:
        changes["restarts"] = _restarts(options["-restarts"])
    if "-policy" in options:
        changes["policy"] = _policy(options["-policy"])
    if "-cold" in options:
        changes["cold"] = True
    if "-config" in options:
        changes["conf"] = _config(options["-config"], label)
    return changes


def _checked(request: str, build: Callable[[], dict[str, codec.Value]]) -> dict[str, codec.Value]:
    """Fields from a builder in hwl.system.rs, its ValueError a usage error."""
    try:
        return build()
    except (ValueError, TypeError) as exc:
        raise _usage(f"{request}: {exc}") from exc


# ------------------------------------------------------------------ requests


def _parse_up(name: str, words: list[str], flags: UpdateFlag) -> Request:
    """up, and run (the same request with run set: RS never restarts it)."""
    program = _first(name, words, "a program to start")
    options = _options(name, words[1:], _UP_OPTIONS, _SWITCHES)
    argv = _program(program, _args(options.get("-args", "")))
    label = options["-label"] if "-label" in options else default_label(argv)
    changes = _up_changes(options, label)
    if name == "run":
        changes["run"] = True
    fields = _checked(name, lambda: up_fields(argv, label, **changes))
    return Request(name, proto.RS_UP, fields)


_FI_TYPES: Final = {kind.option: kind for kind in FiType}


def _parse_fi(name: str, words: list[str], flags: UpdateFlag) -> Request:
    label = _first(name, words, "a target label")
    options = _options(name, words[1:], frozenset({"-type"}), frozenset())
    text = options.get("-type", FiType.CRASH.option)
    kind = _FI_TYPES.get(text)
    if kind is None:
        raise _usage(f"{name}: bad fault type {text!r}: expected {'|'.join(_FI_TYPES)}")
    return Request(name, RS_FI, {"label": label, "type": int(kind)})


def _parse_edit(name: str, words: list[str], flags: UpdateFlag) -> Request:
    first = _first(name, words, "a label")
    options = _options(name, words[1:], _UP_OPTIONS, _SWITCHES)
    changes: dict[str, Any] = {}
    if "-label" in options:  # MINIX's form: edit PROGRAM -label LABEL
        label = options["-label"]
        changes["argv"] = _program(first, _args(options.get("-args", "")))
    elif "-args" in options:
        raise _usage(
            f"{name}: -args needs the program: service edit PROGRAM -label {first} -args ..."
        )
    else:
        label = first
    changes |= _up_changes(options, label)
    if not changes:
        raise _usage(f"{name}: nothing to change for '{label}'")
    return Request(name, proto.RS_EDIT, _checked(name, lambda: edit_fields(label, **changes)))


def _parse_update(name: str, words: list[str], flags: UpdateFlag) -> Request:
    program = _first(name, words, "a program, or self")
    options = _options(name, words[1:], _UPDATE_OPTIONS, frozenset())
    label = options.get("-label")
    if program == "self":
        if label is None:
            raise _usage(f"{name}: label option mandatory for update self")
        if "-args" in options:
            raise _usage(f"{name}: -args cannot be given with self (it runs the same program)")
        argv: list[str] = []
    else:
        argv = _program(program, _args(options.get("-args", "")))
        label = label or default_label(argv)
    state = _state(options["-state"]) if "-state" in options else int(LuState.WORK_FREE)
    maxtime = 0  # RS's default
    if "-maxtime" in options:
        maxtime = _duration(options["-maxtime"], "maxtime") or -1  # MINIX: 0 is no limit
    conf = _config(options["-config"], label) if "-config" in options else None
    fields = _checked(name, lambda: update_fields(label, argv, state, maxtime, flags, conf))
    return Request(name, proto.RS_UPDATE, fields)


_LABEL_REQUESTS: Final = {
    "down": proto.RS_DOWN,
    "refresh": proto.RS_REFRESH,
    "restart": proto.RS_RESTART,
    "clone": proto.RS_CLONE,
    "unclone": proto.RS_UNCLONE,
    "lookup": proto.RS_LOOKUP,
}
_PLAIN_REQUESTS: Final = {"shutdown": proto.RS_SHUTDOWN, "status": proto.RS_STATUS}


def _parse_label_request(name: str, words: list[str], flags: UpdateFlag) -> Request:
    label = _first(name, words, "a target label")
    if len(words) > 1:
        raise _usage(f"{name}: unexpected argument '{words[1]}'")
    return Request(name, _LABEL_REQUESTS[name], {"label": label})


_SYSCTL_TYPES: Final = {kind.option: kind for kind in SysctlType}


def _parse_sysctl(name: str, words: list[str], flags: UpdateFlag) -> Request:
    if not words:
        raise _usage(f"{name} requires an action type ({'|'.join(_SYSCTL_TYPES)})")
    kind = _SYSCTL_TYPES.get(words[0])
    if kind is None:
        raise _usage(f"bad sysctl type '{words[0]}' (known: {'|'.join(_SYSCTL_TYPES)})")
    if len(words) > 1:
        raise _usage(f"{name}: unexpected argument '{words[1]}'")
    return Request(f"{name} {kind.option}", RS_SYSCTL, {"subtype": int(kind)})


def _parse_plain(name: str, words: list[str], flags: UpdateFlag) -> Request:
    if words:
        raise _usage(f"{name}: unexpected argument '{words[0]}'")
    return Request(name, _PLAIN_REQUESTS[name])


_REQUESTS: Final[dict[str, Callable[[str, list[str], UpdateFlag], Request]]] = {
    "up": _parse_up,
    "run": _parse_up,
    "fi": _parse_fi,
    "edit": _parse_edit,
    "update": _parse_update,
    "sysctl": _parse_sysctl,
    **dict.fromkeys(_LABEL_REQUESTS, _parse_label_request),
    **dict.fromkeys(_PLAIN_REQUESTS, _parse_plain),
}


# ------------------------------------------------------------------- running


def format_status(rows: Sequence[ServiceStatus]) -> str:
    """RS's table as ``service status`` prints it, one aligned row per service."""
    table = [
        ("LABEL", "ENDPOINT", "PID", "RESTARTS", "PERIOD", "HEARTBEAT", "STATE", "POLICY", "FLAGS")
    ]
    for row in rows:
        table.append(
            (
                row.label,
                str(row.endpoint),
                "-" if row.pid < 0 else str(row.pid),
                str(row.restarts),
                format_ticks(row.period) if row.period else "-",
                "-" if row.last_heartbeat < 0 else f"{row.last_heartbeat:.1f}s ago",
                row.state,
                row.policy,
                row.flags or "-",
            )
        )
    return _aligned(table)


def _flag_letters(flags: UpdateFlag) -> str:
    """An update's flags as the command's letters (-q left out: the queue says it)."""
    letters = "".join(k for k, v in _UPDATE_FLAGS.items() if v in flags and k != "q")
    return f"-{letters}" if letters else "-"


def format_upd_status(status: UpdateStatus) -> str:
    """``sysctl upd_status``: what is queued or under way, each service's phase."""
    if not status.updates:
        return "No update is in progress or queued"
    queued = [row for row in status.updates if row.batch]
    lines = []
    if queued:
        what = "is queued (sysctl upd_run runs it)" if status.batch == "queued" else "is running"
        lines.append(f"A {len(queued)}-service update {what}:")
    table = [("#", "LABEL", "PHASE", "STATE", "FLAGS", "MAXTIME", "ENDPOINT", "NEW", "PROGRAM")]
    for i, row in enumerate(status.updates, 1):
        table.append(
            (
                str(i) if row.batch else "-",
                row.label,
                row.phase,
                str(row.state),
                _flag_letters(row.flags),
                f"{row.maxtime:g}s",
                str(row.endpoint),
                str(row.new_endpoint) if row.new_endpoint != NONE else "-",
                row.program,
            )
        )
    return "\n".join([*lines, _aligned(table)])


def format_srv_status(status: SrvStatus) -> str:
    """``sysctl srv_status``: the table, then every process behind it (MINIX's list
    of service instances, new versions of updates and replicas included)."""
    table = [("LABEL", "ROLE", "ENDPOINT", "PID", "STATE")]
    for inst in status.instances:
        table.append((inst.label, inst.role, str(inst.endpoint), str(inst.pid), inst.state))
    active = sum(row.state in ("up", "updating") for row in status.services)
    found = (
        f"Found {len(status.instances)} service instances, of which {active} are active services"
    )
    return "\n".join([format_status(status.services), "", _aligned(table), found])


def _aligned(table: Sequence[Sequence[str]]) -> str:
    """Rows of cells in columns two spaces apart."""
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in table
    )


def run_dir_of(command: Command, environ: Mapping[str, str]) -> Path:
    """Where the kernel's socket is: --run-dir, else $HWL_RUN_DIR."""
    run_dir = command.run_dir or environ.get(RUN_DIR_ENV)
    if not run_dir:
        raise CommandError(
            f"no machine to talk to: give --run-dir DIR or set ${RUN_DIR_ENV} "
            f"to the machine's run directory (the one holding {KERNEL_SOCKET})"
        )
    return Path(run_dir)


def send(rs: Rs, request: Request, out: TextIO) -> None:
    """Send ``request`` and print what it answers (lookup, status); RsError on failure."""
    reply = rs.request(request.m_type, request.fields)
    if request.m_type == proto.RS_LOOKUP:
        print(reply_endpoint(reply, request.name), file=out)
    elif request.m_type == proto.RS_STATUS:
        print(format_status(parse_status(reply)), file=out)
    elif request.m_type == RS_SYSCTL and request.fields.get("subtype") == SysctlType.UPD_STATUS:
        print(format_upd_status(parse_upd_status(reply)), file=out)
    elif request.m_type == RS_SYSCTL and request.fields.get("subtype") == SysctlType.SRV_STATUS:
        print(format_srv_status(parse_srv_status(reply)), file=out)


def _connect(run_dir: Path) -> Rs:
    try:
        return Rs.attach(run_dir)
    except (OSError, HwlError) as exc:
        raise CommandError(
            f"cannot reach the kernel at {run_dir / KERNEL_SOCKET}: {exc} "
            "(is the machine running, and is this its run directory?)",
            Errno.ECONNREFUSED,
        ) from exc


def main(argv: list[str] | None = None) -> int:
    """Run one ``service`` command; the exit status as MINIX's ``service`` gives it."""
    args = sys.argv[1:] if argv is None else argv
    try:
        command = parse_command(args)
        if command.request is None:
            print(USAGE)
            return 0
        with _connect(run_dir_of(command, os.environ)) as rs:
            send(rs, command.request, sys.stdout)
    except CommandError as exc:
        print(f"service: {exc}", file=sys.stderr)
        if exc.usage:
            print(USAGE, file=sys.stderr)
        return exc.code
    except RsError as exc:
        print(f"service: {exc}", file=sys.stderr)
        return int(exc.errno)
    except HwlError as exc:  # the kernel went away mid-request
        print(f"service: {exc}", file=sys.stderr)
        return int(Errno.ECONNREFUSED)
    except KeyboardInterrupt:
        print("service: interrupted", file=sys.stderr)
        return int(Errno.EINTR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
