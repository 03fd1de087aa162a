"""The RS protocol: requests to the reincarnation server, and services' answers to it.

Requests to RS (``RS_*``) come from the ``service`` command or the Python API
(``hwl.system.rs``), by ``sendrec``; RS answers with a non-blocking reply, later
for the calls that wait for a service's init (up, update, restart). Replies carry
the result in ``m_type``: 0 (OK) or a negative MINIX errno, with an ``error`` field
that says why, as the kernel's own replies do.

A service answers SEF_INIT with ``RS_INIT`` (``result``) by ``send``, and
SEF_LU_PREPARE with ``RS_LU_PREPARE`` by ``sendrec`` (see :mod:`hwl.proto.sef`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from hwl.proto.fields import FieldError, get_int, get_name, get_str, get_str_list

RS_LABEL = "rs"  # RS's own label (the kernel's root): not a row of its own table

RS_BASE = 0x700
RS_UP = RS_BASE + 1  # argv, label, [period, script, conf, dev, restarts, policy, cold, run]
RS_DOWN = RS_BASE + 2  # label
RS_REFRESH = RS_BASE + 3  # label: stop it and let RS start it again
RS_RESTART = RS_BASE + 4  # label: only from the service's recovery script
RS_SHUTDOWN = RS_BASE + 5  # stop every service; RS restarts nothing from then on
RS_UPDATE = RS_BASE + 6  # label, argv or self, state, maxtime, flags (UpdateFlag)
RS_CLONE = RS_BASE + 7  # label: keep a warm replica for recovery
RS_EDIT = RS_BASE + 8  # label, and up fields to change for the next start
RS_LOOKUP = RS_BASE + 9  # label -> endpoint
RS_STATUS = RS_BASE + 10  # -> services: list of status rows (dicts)
RS_UNCLONE = RS_BASE + 11  # label: drop the replica
RS_FI = RS_BASE + 12  # label, type (hwl.proto.sef.FiType): the service injects a fault
RS_SYSCTL = RS_BASE + 13  # subtype (SysctlType): the update queue, and status reports

# Messages from services to RS.
RS_INIT = RS_BASE + 0x40  # result (0 or -errno): a service's init is done
RS_LU_PREPARE = RS_BASE + 0x41  # result, state, saved (bytes): ready, or refused

RS_REQUEST_NAMES = {
    RS_UP: "up",
    RS_DOWN: "down",
    RS_REFRESH: "refresh",
    RS_RESTART: "restart",
    RS_SHUTDOWN: "shutdown",
    RS_UPDATE: "update",
    RS_CLONE: "clone",
    RS_EDIT: "edit",
    RS_LOOKUP: "lookup",
    RS_STATUS: "status",
    RS_UNCLONE: "unclone",
    RS_FI: "fi",
    RS_SYSCTL: "sysctl",
}


class UpdateFlag(IntFlag):
    """Options of ``service update`` (MINIX's -o -x -y -z)."""

    NONE = 0
    PREPARE_ONLY = 0x1  # -o: reach the state, then resume without updating
    FORCE_INIT_CRASH = 0x2  # -x
    FORCE_INIT_FAIL = 0x4  # -y
    FORCE_INIT_TIMEOUT = 0x8  # -z
    BATCH = 0x10  # -q: queue it; ``sysctl upd_run`` updates the queue together

    @classmethod
    def checked(cls, bits: int) -> UpdateFlag:
        """The flags in ``bits``; ValueError for a bit no flag has (an IntFlag
        would keep it silently)."""
        known = sum(cls)
        if bits < 0 or bits & ~known:
            raise ValueError(f"unknown update flags {bits:#x} (known: {known:#x})")
        return cls(bits)


class SysctlType(IntEnum):
    """What ``service sysctl`` asks for (MINIX's RS_SYSCTL_*, same numbers)."""

    SRV_STATUS = 1  # every service instance, the new versions of updates included
    UPD_START = 2  # start the queued update; answered at once
    UPD_RUN = 3  # start the queued update; answered with its result
    UPD_STOP = 4  # drop the queue, or abort the update under way (EINTR)
    UPD_STATUS = 5  # the queued or running update, each service's phase

    @property
    def option(self) -> str:
        """The name ``service sysctl`` takes (``upd_run``)."""
        return self.name.lower()


class Policy(IntEnum):
    """What a restart keeps (MINIX's relpol): RESET gives a new endpoint, RESTART
    keeps the old one so clients need not look the service up again."""

    RESET = 0
    RESTART = 1


# ------------------------------------------------------------ typed requests
# Built from a request's fields; a bad field raises FieldError, which RS answers
# with EINVAL and the reason.
Fields = Mapping[str, object]
_I64 = (-(1 << 63), (1 << 63) - 1)
MAX_ARGV = 4096


@dataclass(frozen=True)
class RsLabel:
    """The ``label`` every request about one service names."""

    label: str

    @classmethod
    def from_fields(cls, fields: Fields) -> RsLabel:
        return cls(get_name(fields, "label"))


@dataclass(frozen=True)
class RsUp:
    """What RS_UP (and RS_EDIT, and a boot list entry) says about a service to start."""

    argv: tuple[str, ...]
    conf: str = ""
    period: int = 0
    script: str = ""
    dev: str = ""
    restarts: int = -1
    policy: Policy = Policy.RESET
    cold: bool = False
    run: bool = False  # service run: never restarted (MINIX's RSS_NORESTART)

    @classmethod
    def from_fields(cls, fields: Fields) -> RsUp:
        argv = get_str_list(fields, "argv", MAX_ARGV, [])
        if not argv:
            raise FieldError("no program to start (argv is empty)")
        period = get_int(fields, "period", *_I64, 0)
        if period < 0:
            raise FieldError(f"period {period} is negative")
        try:
            policy = Policy(get_int(fields, "policy", *_I64, 0))
        except ValueError as exc:
            raise FieldError(f"unknown policy: {exc}") from exc
        return cls(
            argv=tuple(argv),
            conf=get_str(fields, "conf", ""),
            period=period,
            script=get_str(fields, "script", ""),
            dev=get_str(fields, "dev", ""),
            restarts=get_int(fields, "restarts", *_I64, -1),
            policy=policy,
            cold=bool(fields.get("cold", False)),
            run=bool(fields.get("run", False)),
        )


@dataclass(frozen=True)
class RsUpdate:
    """RS_UPDATE; ``maxtime`` in ticks as MINIX's: 0 the default, -1 no limit."""

    label: str
    argv: tuple[str, ...]
    conf: str
    maxtime: int
    flags: UpdateFlag
    state: int

    @classmethod
    def from_fields(cls, fields: Fields) -> RsUpdate:
        maxtime = get_int(fields, "maxtime", *_I64, 0)
        if maxtime < -1:
            raise FieldError(f"maxtime {maxtime} is not a duration")
        try:
            flags = UpdateFlag.checked(get_int(fields, "flags", *_I64, 0))
        except ValueError as exc:
            raise FieldError(str(exc)) from exc
        return cls(
            label=get_name(fields, "label"),
            argv=tuple(get_str_list(fields, "argv", MAX_ARGV, [])),
            conf=get_str(fields, "conf", ""),
            maxtime=maxtime,
            flags=flags,
            state=get_int(fields, "state", *_I64, 1),
        )


@dataclass(frozen=True)
class RsSysctl:
    """RS_SYSCTL: which one."""

    subtype: SysctlType

    @classmethod
    def from_fields(cls, fields: Fields) -> RsSysctl:
        number = get_int(fields, "subtype", *_I64, 0)
        try:
            return cls(SysctlType(number))
        except ValueError as exc:
            raise FieldError(f"bad sysctl type {number}") from exc
