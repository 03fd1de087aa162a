"""Where QEMU's threads and hwl's processes run (docs/placement.md).

On this machine class a wake-up across cores is the dearest thing a message
pays, and QEMU's vCPU thread spins for milliseconds after each request. So by
default QEMU (all its threads: they inherit the affinity set before its exec)
gets core(s) of its own, and the kernel, its children (fork server, services,
drivers) and the client process that started the machine share the others.

The policy is one value, from ``Machine(placement=...)``, else the environment
variable ``HWL_PLACEMENT``, else ``auto``:

- ``auto``: :func:`choose` on the cores this process may use;
- ``off``: nothing is pinned;
- ``qemu:LIST;hwl:LIST`` (either part may be left out: that side stays
  unpinned), LIST as in taskset: ``1``, ``0-1``, ``0,2-3``.

Where it cannot apply (one core, or setting an affinity is not permitted) hwl
logs it once and runs unpinned.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from hwl.errors import HwlError

log = logging.getLogger(__name__)

ENV = "HWL_PLACEMENT"
AUTO = "auto"
OFF = "off"
SIDES = ("qemu", "hwl")

Cpus = frozenset[int]


class PlacementError(HwlError):
    """A placement value that cannot be parsed or names cores this process may not use."""


@dataclass(frozen=True)
class Placement:
    """Resolved placement: the cores for QEMU and for hwl's processes (None: unpinned)."""

    qemu: Cpus | None = None
    hwl: Cpus | None = None
    text: str = OFF  # what it was made from, for logs and reports

    @property
    def active(self) -> bool:
        return self.qemu is not None or self.hwl is not None

    def describe(self) -> str:
        return f"qemu:{format_cpus(self.qemu)};hwl:{format_cpus(self.hwl)}"


UNPINNED = Placement()

# ------------------------------------------------------------------ parsing


def parse_cpus(text: str, value: str, source: str) -> Cpus:
    """A taskset-style list (``0``, ``0-1``, ``0,2-3``) as a set of core numbers."""
    cpus: set[int] = set()
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            first = int(lo)
            last = int(hi) if sep else first
        except ValueError:
            raise _error(value, source, f"'{part.strip()}' is not a core number or range") from None
        if first < 0 or last < first:
            raise _error(value, source, f"'{part.strip()}' is not a core range")
        cpus.update(range(first, last + 1))
    return frozenset(cpus)


def parse(value: str, source: str = ENV) -> str | Placement:
    """``auto``, ``off``, or an explicit :class:`Placement`; syntax only."""
    text = value.strip()
    if text.lower() in (AUTO, OFF):
        return text.lower()
    sides: dict[str, Cpus] = {}
    for item in (p for p in text.split(";") if p.strip()):
        name, colon, cpus = item.partition(":")
        name = name.strip().lower()
        if not colon or name not in SIDES:
            raise _error(value, source, f"'{item.strip()}' is not qemu:CORES or hwl:CORES")
        if name in sides:
            raise _error(value, source, f"'{name}' is given twice")
        sides[name] = parse_cpus(cpus, value, source)
    if not sides:
        raise _error(value, source, "it is empty")
    return Placement(sides.get("qemu"), sides.get("hwl"), text)


def _error(value: str, source: str, why: str) -> PlacementError:
    return PlacementError(
        f"bad placement {value!r} ({source}): {why}; "
        "use auto, off, or qemu:CORES;hwl:CORES (e.g. 'qemu:0;hwl:1')"
    )


def format_cpus(cpus: Cpus | None) -> str:
    if cpus is None:
        return "any"
    return ",".join(str(c) for c in sorted(cpus))


# ------------------------------------------------------------------ choosing


def choose(available: Cpus, vcpus: int = 1) -> Placement:
    """The ``auto`` rule. QEMU gets its vCPU threads plus one for its main loop,
    at most half the cores (at least one); hwl gets the rest. QEMU takes the
    highest-numbered cores. Fewer than two cores: unpinned."""
    cores = sorted(available)
    if len(cores) < 2:
        return UNPINNED
    count = max(1, min(vcpus + 1, len(cores) // 2))
    return Placement(frozenset(cores[-count:]), frozenset(cores[:-count]), AUTO)


def available_cpus() -> Cpus:
    """The cores this process may use: its own affinity, or what it had before a
    machine pinned it (so a second machine sees the same cores as the first)."""
    with _client.lock:
        if _client.original is not None:
            return _client.original
    return frozenset(os.sched_getaffinity(0))


def resolve(
    value: str | Placement | None = None,
    *,
    vcpus: int = 1,
    available: Cpus | None = None,
    source: str = "placement",
) -> Placement:
    """The placement a machine uses: ``value``, else ``$HWL_PLACEMENT``, else auto.
    Raises :class:`PlacementError` for a bad value; logs once and returns
    :data:`UNPINNED` where placement cannot apply."""
    if value is None:
        value, source = os.environ.get(ENV, "").strip() or AUTO, ENV
    spec = parse(value, source) if isinstance(value, str) else value
    cpus = available_cpus() if available is None else available
    if spec == OFF:
        return UNPINNED
    if spec == AUTO:
        chosen = choose(cpus, vcpus)
        if not chosen.active:
            log_once(f"placement: {len(cpus)} core(s) here; QEMU and hwl run unpinned")
        return chosen
    assert isinstance(spec, Placement)
    for side, want in (("qemu", spec.qemu), ("hwl", spec.hwl)):
        if want is not None and not want <= cpus:
            raise PlacementError(
                f"bad placement {spec.text!r} ({source}): {side} names core(s) "
                f"{format_cpus(want - cpus)}, but this process may use only {format_cpus(cpus)}"
            )
    return spec


# ------------------------------------------------------------------ applying

_logged: set[str] = set()
_logged_lock = threading.Lock()


def log_once(message: str) -> None:
    with _logged_lock:
        if message in _logged:
            return
        _logged.add(message)
    log.warning(message)


def target(cpus: Cpus | None) -> Cpus:
    """The cores a started process gets: ``cpus``, or for an unpinned side every
    core this process may use (not the client's, which a placed machine may hold)."""
    return available_cpus() if cpus is None else cpus


def pin_child(cpus: Cpus) -> None:
    """In a child before exec: take ``cpus``; every thread it makes inherits them.
    A refusal is not fatal: the parent checks with :func:`check` and logs it."""
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, cpus)


def check(pid: int, cpus: Cpus, what: str) -> bool:
    """After start: did ``pid`` get ``cpus``? Logs once if not (it runs unpinned)."""
    try:
        got = frozenset(os.sched_getaffinity(pid))
    except OSError as exc:
        log_once(f"placement: cannot read {what}'s affinity ({exc}); it may run unpinned")
        return False
    if got != cpus:
        log_once(
            f"placement: {what} could not be pinned to {format_cpus(cpus)} "
            f"(it may use {format_cpus(got)}); running unpinned"
        )
        return False
    return True


def _set_all_threads(cpus: Cpus) -> bool:
    """Every thread of this process on ``cpus``; threads made later inherit from
    their creator. False if the kernel refused."""
    ok = True
    for name in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(name), cpus)
        except ProcessLookupError:
            continue  # that thread ended meanwhile
        except OSError as exc:
            log_once(f"placement: cannot pin this process to {format_cpus(cpus)} ({exc})")
            ok = False
    return ok


class _ClientPin:
    """The starting (client) process on hwl's cores while at least one placed
    machine is up; its own affinity back when the last one closes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.original: Cpus | None = None
        self.holders = 0

    def hold(self, cpus: Cpus) -> None:
        with self.lock:
            if self.holders == 0:
                self.original = frozenset(os.sched_getaffinity(0))
            self.holders += 1
            _set_all_threads(cpus)

    def release(self) -> None:
        with self.lock:
            if self.holders == 0:
                return
            self.holders -= 1
            if self.holders == 0 and self.original is not None:
                _set_all_threads(self.original)
                self.original = None


_client = _ClientPin()


def hold_client(placement: Placement) -> bool:
    """Pin this process to ``placement.hwl`` until :func:`release_client`.
    True if it held (release once for each True)."""
    if placement.hwl is None:
        return False
    _client.hold(placement.hwl)
    return True


def release_client() -> None:
    _client.release()


@contextlib.contextmanager
def client_cpus(cpus: Cpus | None) -> Iterator[None]:
    """This process's threads on ``cpus`` for a block (None: every core it may
    use), then back as they were: for an A/B with a placed and an unplaced
    machine up at once, run the unplaced side's client inside ``client_cpus(None)``."""
    before = frozenset(os.sched_getaffinity(0))
    _set_all_threads(available_cpus() if cpus is None else cpus)
    try:
        yield
    finally:
        _set_all_threads(before)


def vcpus_of(groups: list[tuple[str, dict[str, str]]]) -> int:
    """The guest's vCPU count from a profile's ``[smp-opts]`` (QEMU's default: 1)."""
    for name, options in groups:
        if name == "smp-opts" and "cpus" in options:
            with contextlib.suppress(ValueError):
                return max(1, int(options["cpus"]))
    return 1
