"""The SPEC of a campaign: what the client does (disk operations through VFS, or a
TCP stream through INET), which faults hit it, how often and when, and the bounds
the invariants use. A TOML file (docs/campaigns.md) or a
builtin (:data:`BUILTINS`); both become a :class:`Spec`, which travels to workers
as plain JSON (:meth:`Spec.to_dict`), never pickled objects.

Errors name the file and the key, as hwl's other config formats do.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hwl.errors import HwlError
from hwl.system.nicrig import NETDEVS

#: The fault kinds a spec may name, and the settings each takes besides the common ones.
KINDS: dict[str, frozenset[str]] = {
    "kill": frozenset({"signal"}),
    "stop": frozenset(),
    "fi": frozenset({"type"}),
    "disk-error": frozenset({"once", "op"}),
    "slow-disk": frozenset({"bps"}),
    "disk-stall": frozenset(),
    "pause": frozenset(),
    "link-down": frozenset(),
}
#: Faults of a service process (the target is a label); the rest hit a drive or the machine.
PROCESS_KINDS = frozenset({"kill", "stop", "fi"})
#: Faults of a drive: for the disk workload only; a NIC's link: for the tcp workload only.
DISK_KINDS = frozenset({"disk-error", "slow-disk", "disk-stall"})
NET_KINDS = frozenset({"link-down"})
#: The workloads: disk operations through VFS, or a TCP stream through INET.
WORKLOADS = ("disk", "tcp")
#: When a fault is injected: after the client moved K bytes; at a random moment of the
#: workload; while at_wini's command waits for its interrupt (a stalled disk holds it).
TIMINGS = ("after-bytes", "at-random", "in-command")
FI_TYPES = ("crash", "hang", "exception", "drop-reply", "corrupt-reply")
OPS = ("seq-read", "seq-write", "rand-read", "rand-write")
_COMMON = frozenset({"kind", "weight", "targets", "timing", "heal_after_ms"})
_TOP = frozenset(
    {"name", "profile", "trial_timeout", "recovery_bound_ms", "workload", "timing", "fault"}
)
_WORKLOAD = frozenset(
    {"kind", "device", "drive", "offset", "region", "bytes", "chunk", "rand_size", "mix"}
)
_TCP_WORKLOAD = frozenset({"kind", "nic", "bytes", "chunk"})
_TIMING = frozenset({"after_bytes", "at_ms", "hold_ms"})
#: A TCP round's most: INET's receive window (65535, no window scaling) holds its echo.
MAX_CHUNK = 64 << 10
_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]?)(i?B)?\s*$", re.IGNORECASE)


class SpecError(HwlError):
    """A SPEC that cannot be run: says which file and key, and why."""


def size_of(value: object, where: str) -> int:
    """Bytes from an int or "16M", "4K", "1GiB" (powers of two)."""
    if isinstance(value, bool):
        raise SpecError(f"{where}: {value!r} is not a size")
    if isinstance(value, int):
        if value < 0:
            raise SpecError(f"{where}: {value} is negative")
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2).upper()]
    raise SpecError(f"{where}: {value!r} is not a size (bytes, or like 4K, 16M)")


@dataclass(frozen=True)
class Workload:
    """The client: disk operations through VFS on ``device`` over ``region`` bytes
    from ``offset`` of ``drive`` (the profile's drive behind it, whose image on the
    host is the model), ``bytes`` moved in all, ops drawn by ``mix`` weights."""

    device: str = "/dev/c0d0"
    drive: str = "hd0"
    offset: int = 32 << 20
    region: int = 8 << 20
    bytes: int = 24 << 20
    chunk: int = 256 << 10  # a sequential op
    rand_size: tuple[int, int] = (4 << 10, 64 << 10)  # a random op: min, max
    mix: dict[str, float] = field(
        default_factory=lambda: {"seq-read": 4.0, "rand-read": 3.0, "rand-write": 2.0}
    )
    kind: str = "disk"


@dataclass(frozen=True)
class TcpWorkload:
    """The client: one TCP connection through INET to an echo server on Linux's own
    stack in the machine's namespace; ``chunk`` bytes sent, then the same read back,
    round after round, ``bytes`` each way at least (hwl/campaign/tcp.py). ``nic`` is
    the NIC driver's label INET sends through: process faults hit it, a link-down
    hits its card."""

    nic: str = "e1000"
    bytes: int = 4 << 20
    chunk: int = 32 << 10
    kind: str = "tcp"

    @property
    def netdev(self) -> str:
        """The id of the nic's ``[hwl-net]`` (its TAP), which ``set_link`` takes."""
        return NETDEVS.get(self.nic, self.nic)


@dataclass(frozen=True)
class Timing:
    """The ranges a plan draws its timing from (uniformly, with the trial's seed)."""

    after_bytes: tuple[int, int] = (1 << 20, 16 << 20)
    at_ms: tuple[int, int] = (5, 150)
    hold_ms: int = 30  # in-command: how long the stalled command waits before the fault


@dataclass(frozen=True)
class FaultSpec:
    """One entry of the mix: a kind, its weight, the targets and timings drawn from,
    how long a fault that can be healed stays (a range in ms), and its settings."""

    kind: str
    weight: float = 1.0
    targets: tuple[str, ...] = ("at_wini",)
    timing: tuple[str, ...] = ("after-bytes", "at-random")
    heal_after_ms: tuple[int, int] = (100, 400)
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Spec:
    name: str
    faults: tuple[FaultSpec, ...]
    profile: str = "pc"
    trial_timeout: float = 60.0  # seconds: the whole trial, boot to close
    recovery_bound_ms: float = 5000.0  # a crash -> restart and a good reply within this
    workload: Workload | TcpWorkload = field(default_factory=Workload)
    timing: Timing = field(default_factory=Timing)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Spec:
        """The inverse of :meth:`to_dict` (a record's spec, a worker's task)."""
        w, t = d["workload"], d["timing"]
        workload: Workload | TcpWorkload
        if w.get("kind", "disk") == "tcp":
            workload = TcpWorkload(**w)
        else:
            workload = Workload(**{**w, "rand_size": tuple(w["rand_size"])})
        return cls(
            name=d["name"],
            faults=tuple(
                FaultSpec(
                    kind=f["kind"],
                    weight=f["weight"],
                    targets=tuple(f["targets"]),
                    timing=tuple(f["timing"]),
                    heal_after_ms=(f["heal_after_ms"][0], f["heal_after_ms"][1]),
                    settings=dict(f["settings"]),
                )
                for f in d["faults"]
            ),
            profile=d["profile"],
            trial_timeout=d["trial_timeout"],
            recovery_bound_ms=d["recovery_bound_ms"],
            workload=workload,
            timing=Timing(
                after_bytes=(t["after_bytes"][0], t["after_bytes"][1]),
                at_ms=(t["at_ms"][0], t["at_ms"][1]),
                hold_ms=t["hold_ms"],
            ),
        )


# ----------------------------------------------------------------- parsing


def _pair(value: object, where: str, unit: str = "size") -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2:
        raise SpecError(f"{where}: give a range [low, high]")
    if unit == "size":
        low, high = size_of(value[0], where), size_of(value[1], where)
    else:
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
            raise SpecError(f"{where}: give whole milliseconds, at least 0")
        low, high = value[0], value[1]
    if low > high:
        raise SpecError(f"{where}: {low} > {high}")
    return low, high


def _number(value: object, where: str, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"{where}: {value!r} is not a number")
    if positive and value <= 0:
        raise SpecError(f"{where}: must be more than 0")
    return float(value)


def _unknown(table: dict[str, Any], known: frozenset[str], where: str) -> None:
    extra = sorted(set(table) - known)
    if extra:
        raise SpecError(f"{where}: unknown key {extra[0]!r} (known: {', '.join(sorted(known))})")


def _strings(value: object, where: str, allowed: tuple[str, ...] | None = None) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        raise SpecError(f"{where}: give a string or a non-empty list of strings")
    for item in items:
        if allowed is not None and item not in allowed:
            raise SpecError(f"{where}: {item!r} is not one of {', '.join(allowed)}")
    return tuple(items)


def _one(value: object, where: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise SpecError(f"{where}: {value!r} is not one of {', '.join(allowed)}")
    return value


def _tcp_workload(t: dict[str, Any], where: str) -> TcpWorkload:
    _unknown(t, _TCP_WORKLOAD, where)
    base = TcpWorkload()
    nic = t.get("nic", base.nic)
    if not isinstance(nic, str) or not nic:
        raise SpecError(f"{where}.nic: the NIC driver's label, like e1000")
    w = TcpWorkload(
        nic=nic,
        bytes=size_of(t.get("bytes", base.bytes), f"{where}.bytes"),
        chunk=size_of(t.get("chunk", base.chunk), f"{where}.chunk"),
    )
    if w.bytes <= 0 or not 0 < w.chunk <= MAX_CHUNK:
        raise SpecError(f"{where}: bytes above 0, chunk above 0 and at most {MAX_CHUNK}")
    return w


def _workload(t: dict[str, Any], where: str) -> Workload | TcpWorkload:
    kind = _one(t.get("kind", "disk"), f"{where}.kind", WORKLOADS)
    if kind == "tcp":
        return _tcp_workload(t, where)
    _unknown(t, _WORKLOAD, where)
    base = Workload()
    mix = base.mix
    if "mix" in t:
        if not isinstance(t["mix"], dict) or not t["mix"]:
            raise SpecError(f"{where}.mix: give a table of op = weight")
        _unknown(t["mix"], frozenset(OPS), f"{where}.mix")
        mix = {op: _number(w, f"{where}.mix.{op}") for op, w in t["mix"].items()}
    device = t.get("device", base.device)
    drive = t.get("drive", base.drive)
    if not isinstance(device, str) or not isinstance(drive, str):
        raise SpecError(f"{where}: device and drive are strings")
    w = Workload(
        device=device,
        drive=drive,
        offset=size_of(t.get("offset", base.offset), f"{where}.offset"),
        region=size_of(t.get("region", base.region), f"{where}.region"),
        bytes=size_of(t.get("bytes", base.bytes), f"{where}.bytes"),
        chunk=size_of(t.get("chunk", base.chunk), f"{where}.chunk"),
        rand_size=_pair(t["rand_size"], f"{where}.rand_size")
        if "rand_size" in t
        else base.rand_size,
        mix=mix,
    )
    for key in ("region", "bytes", "chunk"):
        if getattr(w, key) <= 0:
            raise SpecError(f"{where}.{key}: must be more than 0")
    if w.offset % 512 or w.region % 512:
        raise SpecError(f"{where}: offset and region are whole sectors (512 bytes)")
    if w.chunk > w.region or w.rand_size[1] > w.region or w.rand_size[0] == 0:
        raise SpecError(f"{where}: chunk and rand_size must fit in the region, and be above 0")
    return w


def _fault(t: object, where: str, workload: Workload | TcpWorkload) -> FaultSpec:
    if not isinstance(t, dict):
        raise SpecError(f"{where}: a [[fault]] is a table")
    kind = t.get("kind")
    if kind not in KINDS:
        raise SpecError(f"{where}.kind: {kind!r} is not one of {', '.join(KINDS)}")
    _unknown(t, _COMMON | KINDS[kind], where)
    wrong = DISK_KINDS if isinstance(workload, TcpWorkload) else NET_KINDS
    if kind in wrong:
        raise SpecError(f"{where}.kind: {kind} is not a fault of the {workload.kind} workload")
    if isinstance(workload, TcpWorkload):
        default_targets = (workload.netdev,) if kind == "link-down" else (workload.nic,)
    else:
        default_targets = ("at_wini",) if kind in PROCESS_KINDS else ("hd0",)
    if kind == "pause":
        default_targets = ("machine",)
    settings = {k: v for k, v in t.items() if k in KINDS[kind]}
    if kind == "fi":
        settings["type"] = _one(settings.get("type", "crash"), f"{where}.type", FI_TYPES)
    if kind == "kill":
        sig = settings.setdefault("signal", "SIGKILL")
        if not isinstance(sig, str) or not sig.startswith("SIG"):
            raise SpecError(f"{where}.signal: a signal's name, like SIGKILL")
    if kind == "disk-error":
        if not isinstance(settings.setdefault("once", True), bool):
            raise SpecError(f"{where}.once: true or false")
        settings["op"] = _one(settings.get("op", "read"), f"{where}.op", ("read", "write", "any"))
    if kind == "slow-disk":
        settings["bps"] = size_of(settings.get("bps", 4 << 20), f"{where}.bps")
    timing = _strings(t.get("timing", ["after-bytes", "at-random"]), f"{where}.timing", TIMINGS)
    if "in-command" in timing and kind not in PROCESS_KINDS:
        raise SpecError(f"{where}.timing: in-command is for process faults (kill, stop, fi)")
    if "in-command" in timing and isinstance(workload, TcpWorkload):
        raise SpecError(f"{where}.timing: in-command is an ATA command's window (disk only)")
    return FaultSpec(
        kind=kind,
        weight=_number(t.get("weight", 1.0), f"{where}.weight"),
        targets=_strings(t.get("targets", list(default_targets)), f"{where}.targets"),
        timing=timing,
        heal_after_ms=_pair(t.get("heal_after_ms", [100, 400]), f"{where}.heal_after_ms", "ms"),
        settings=settings,
    )


def parse(data: dict[str, Any], source: str = "<spec>", base: Path | None = None) -> Spec:
    """A :class:`Spec` from TOML's tables; ``base`` resolves a relative profile path."""
    _unknown(data, _TOP, source)
    name = data.get("name", Path(source).stem)
    if not isinstance(name, str) or not name:
        raise SpecError(f"{source}: name: a non-empty string")
    faults = data.get("fault")
    if not isinstance(faults, list) or not faults:
        raise SpecError(f"{source}: no [[fault]]: a campaign needs at least one")
    profile = data.get("profile", "pc")
    if not isinstance(profile, str):
        raise SpecError(f"{source}: profile: a name in qemu-configs/ or a .cfg path")
    if profile.endswith(".cfg") and base is not None and not Path(profile).is_absolute():
        profile = str((base / profile).resolve())
    timing = data.get("timing", {})
    if not isinstance(timing, dict):
        raise SpecError(f"{source}: [timing] is a table")
    _unknown(timing, _TIMING, f"{source}: timing")
    t0 = Timing()
    hold = timing.get("hold_ms", t0.hold_ms)
    if isinstance(hold, bool) or not isinstance(hold, int) or hold < 0:
        raise SpecError(f"{source}: timing.hold_ms: whole milliseconds, at least 0")
    table = data.get("workload", {})
    if not isinstance(table, dict):
        raise SpecError(f"{source}: [workload] is a table")
    workload = _workload(table, f"{source}: workload")
    return Spec(
        name=name,
        faults=tuple(_fault(f, f"{source}: fault[{i}]", workload) for i, f in enumerate(faults)),
        profile=profile,
        trial_timeout=_number(data.get("trial_timeout", 60.0), f"{source}: trial_timeout"),
        recovery_bound_ms=_number(
            data.get("recovery_bound_ms", 5000.0), f"{source}: recovery_bound_ms"
        ),
        workload=workload,
        timing=Timing(
            after_bytes=_pair(timing["after_bytes"], f"{source}: timing.after_bytes")
            if "after_bytes" in timing
            else t0.after_bytes,
            at_ms=_pair(timing["at_ms"], f"{source}: timing.at_ms", "ms")
            if "at_ms" in timing
            else t0.at_ms,
            hold_ms=hold,
        ),
    )


def load(path: str | Path) -> Spec:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError(f"{path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not TOML: {exc}") from exc
    return parse(data, str(path), path.parent)


# ----------------------------------------------------------------- builtins

#: smoke: crashes of at_wini (kill, fi crash and exception, one mid-command), disk
#: errors once and until healed, a slow disk and short machine pauses. No hang:
#: a hang is found by the 1HZ heartbeat in 2-3 s, which is what `hang` measures.
SMOKE = """
name = "smoke"
profile = "pc"
trial_timeout = 60
recovery_bound_ms = 5000

[workload]
device = "/dev/c0d0"
drive = "hd0"
offset = "32M"
region = "8M"
bytes = "24M"
chunk = "256K"
rand_size = ["4K", "64K"]
mix = { seq-read = 4, rand-read = 3, rand-write = 2 }

[timing]
after_bytes = ["1M", "16M"]
at_ms = [5, 150]
hold_ms = 30

[[fault]]
kind = "kill"
weight = 3
timing = ["after-bytes", "at-random", "in-command"]

[[fault]]
kind = "fi"
type = "crash"
weight = 2

[[fault]]
kind = "fi"
type = "exception"
weight = 1

[[fault]]
kind = "disk-error"
once = true
weight = 2

[[fault]]
kind = "disk-error"
once = false
weight = 1

[[fault]]
kind = "slow-disk"
bps = "4M"
weight = 1

[[fault]]
kind = "pause"
heal_after_ms = [50, 300]
weight = 1
"""

#: hang: the faults only a heartbeat finds (SIGSTOP, fi hang), with their bound.
HANG = """
name = "hang"
profile = "pc"
trial_timeout = 90
recovery_bound_ms = 8000

[workload]
bytes = "16M"

[[fault]]
kind = "stop"
weight = 1
heal_after_ms = [6000, 6000]

[[fault]]
kind = "fi"
type = "hang"
weight = 1
"""

#: tcp-smoke: the e1000 driver under a TCP echo stream through INET: its crashes
#: (kill, fi crash and exception), its card's link down for up to 1 s, short machine
#: pauses. No hang: a heartbeat finds one in 2-3 s (the ``hang`` builtin's matter).
TCP_SMOKE = """
name = "tcp-smoke"
profile = "inet"
trial_timeout = 60
recovery_bound_ms = 5000

[workload]
kind = "tcp"
nic = "e1000"
bytes = "2M"
chunk = "32K"

[timing]
after_bytes = ["128K", "1536K"]
at_ms = [20, 600]

[[fault]]
kind = "kill"
weight = 3

[[fault]]
kind = "fi"
type = "crash"
weight = 2

[[fault]]
kind = "fi"
type = "exception"
weight = 1

[[fault]]
kind = "link-down"
heal_after_ms = [100, 1000]
weight = 2

[[fault]]
kind = "pause"
heal_after_ms = [50, 300]
weight = 1
"""

#: rs: RS itself killed (the kernel restarts it, the new RS adopts every service)
#: and stopped past a driver's heartbeat period (it goes on at the heal), under
#: the disk workload: no service may be restarted, no byte may be wrong.
RS = """
name = "rs"
profile = "pc"
trial_timeout = 60
recovery_bound_ms = 5000

[workload]
bytes = "8M"

[[fault]]
kind = "kill"
targets = ["rs"]
weight = 2
timing = ["after-bytes", "at-random"]

[[fault]]
kind = "stop"
targets = ["rs"]
heal_after_ms = [1500, 2000]
weight = 1
timing = ["after-bytes"]
"""

BUILTINS: dict[str, str] = {"smoke": SMOKE, "hang": HANG, "tcp-smoke": TCP_SMOKE, "rs": RS}


def builtin(name: str) -> Spec:
    if name not in BUILTINS:
        raise SpecError(f"no builtin spec {name!r} (builtins: {', '.join(BUILTINS)})")
    return parse(tomllib.loads(BUILTINS[name]), f"builtin:{name}")
