"""pytest plugin: boot hwl machines and whole systems from tests, attach their logs
when a test fails.

Registered through the ``pytest11`` entry point, so installing hwl is enough.

- ``hwl_machines``: a session-scoped factory. ``hwl_machines.boot("pc")`` boots a
  machine that lives until you close it or the session ends; wrap it in a
  module-scoped fixture to boot once per module.
- ``hwl_machine``: one machine of the default profile for a single test.
- ``hwl_system``: a running system (hwl.system.running): the machine, its kernel
  with RS, the profile's boot services, and ``.rs``, ``.ds``, ``.vfs``, ``.inet``.
  The profile is ``--hwl-profile`` or a ``hwl_profile("NAME")`` marker; the scope
  is ``--hwl-system-scope`` (module by default). ``hwl_systems.boot(...)`` boots
  more, closed at the end of the session.
- ``hwl_seed``: the session's seed (``--hwl-seed``, else drawn and printed in the
  header, so a failing run can be repeated); ``hwl_rng`` a ``random.Random`` per
  test, seeded from it and the test's id.
- ``hwl_fault(make)`` marker: ``make(hwl_system)`` builds a fault (hwl.faults)
  that ``hwl_faults`` injects before the test and heals after it; ``hwl_faults``
  is the list of them. Every fault a test left injected is healed at its
  teardown, also when it fails, with or without the fixture; a failed test's
  report lists those still active.
- ``--hwl-accel``: tcg, kvm or auto; ``--hwl-keep-run-dir``: keep run directories
  (QEMU stderr, serial log, QMP events) after the machines close.
- ``--hwl-placement``: auto, off or ``qemu:CORES;hwl:CORES`` for every machine the
  session boots (it sets ``$HWL_PLACEMENT``; hwl/machine/placement.py).

The ``qemu`` marker names the tests that boot a machine, so ``pytest -m "not
qemu"`` runs the rest in seconds; a test that boots one without the marker fails
and says so, which keeps the marker true.

A failed test's report carries, for each machine still up, QEMU's logs, the
event log (restarts, faults), the kernel's and every service's own log, and its
network namespace as ``ip -s link`` and ``ip neigh`` saw it. When QEMU, the
kernel or RS of a system dies, the test that notices fails naming which died
and how, and that system is closed.

SIGTERM (a CI runner's timeout) stops the session as Ctrl-C does, so fixtures
tear down and every machine closes, its namespace and taps deleted with it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from hwl.errors import HwlError
from hwl.machine import placement as placing
from hwl.machine.machine import ACCELS, BOOT_TALLY_ENV, Machine
from hwl.system.running import RunningSystem

if TYPE_CHECKING:
    from hwl.faults.base import Fault

LOG_FILES = ("qemu.stderr", "serial.log", "qmp-events.jsonl", "events.jsonl")
TAIL = 4000
SCOPES = ("function", "module", "package", "session")
_SEED = pytest.StashKey[int]()
_BOOTS_BEFORE = pytest.StashKey[int]()
_TALLY = pytest.StashKey[Path]()


class MachineFactory:
    """Boots machines with the session's options and closes what is left at the end."""

    def __init__(self, accel: str, keep_run_dir: bool) -> None:
        self.accel = accel
        self.keep_run_dir = keep_run_dir
        self.machines: list[Machine] = []

    def boot(self, profile: str | Path = "pc", **kwargs: Any) -> Machine:
        kwargs.setdefault("accel", self.accel)
        kwargs.setdefault("keep_run_dir", self.keep_run_dir)
        machine = Machine(profile, **kwargs)
        self.machines.append(machine)
        return machine.start()

    def live(self) -> list[Machine]:
        return [m for m in self.machines if not m.closed]

    def close_all(self) -> None:
        for machine in self.machines:
            machine.close()
        self.machines.clear()


class SystemFactory:
    """Boots running systems with the session's options; closes what is left."""

    def __init__(self, machines: MachineFactory) -> None:
        self.machines = machines
        self.systems: list[RunningSystem] = []

    def boot(
        self, profile: str | Path = "pc", *, backoff_unit: float = 0.0, **kwargs: Any
    ) -> RunningSystem:
        kwargs.setdefault("accel", self.machines.accel)
        kwargs.setdefault("keep_run_dir", self.machines.keep_run_dir)
        system = RunningSystem.boot(profile, backoff_unit=backoff_unit, **kwargs)
        self.systems.append(system)
        self.machines.machines.append(system.machine)  # its logs go in failure reports
        return system

    def live(self) -> list[RunningSystem]:
        return [s for s in self.systems if not s.closed]

    def close_all(self) -> None:
        for system in self.systems:
            system.close()
        self.systems.clear()


_factory: MachineFactory | None = None
_systems: SystemFactory | None = None


def pytest_configure(config: pytest.Config) -> None:
    value = config.getoption("--hwl-placement", None)
    if value is not None:
        try:
            placing.resolve(value, source="--hwl-placement")
        except placing.PlacementError as exc:
            raise pytest.UsageError(str(exc)) from None
        os.environ[placing.ENV] = value  # every Machine of the session, however made
    seed = config.getoption("--hwl-seed", None)
    config.stash[_SEED] = random.SystemRandom().randrange(1 << 32) if seed is None else seed
    if BOOT_TALLY_ENV not in os.environ:  # an outer session's tally counts for both
        fd, tally = tempfile.mkstemp(prefix="hwl-boots-")
        os.close(fd)
        os.environ[BOOT_TALLY_ENV] = tally
        config.stash[_TALLY] = Path(tally)
    config.addinivalue_line("markers", "qemu: the test boots a QEMU machine")
    config.addinivalue_line("markers", "hwl_profile(name): the profile hwl_system boots")
    config.addinivalue_line(
        "markers", "hwl_fault(make): make(hwl_system) -> a fault hwl_faults injects and heals"
    )
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupted)


def pytest_unconfigure(config: pytest.Config) -> None:
    tally = config.stash.get(_TALLY, None)
    if tally is not None:
        tally.unlink(missing_ok=True)
        os.environ.pop(BOOT_TALLY_ENV, None)


def boot_count() -> int:
    """Machines started so far by this session and the processes it ran (hwl up)."""
    try:
        return Path(os.environ[BOOT_TALLY_ENV]).read_text(encoding="ascii").count("\n")
    except (KeyError, OSError):
        return 0


def _interrupted(signo: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signo}")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hwl", "hwl machines")
    group.addoption(
        "--hwl-accel", default="auto", choices=ACCELS, help="QEMU accelerator (default: auto)"
    )
    group.addoption(
        "--hwl-keep-run-dir",
        action="store_true",
        help="keep machine run directories after the session",
    )
    group.addoption(
        "--hwl-placement",
        default=None,
        metavar="auto|off|qemu:CORES;hwl:CORES",
        help="where QEMU and hwl's processes run (default: $HWL_PLACEMENT, else auto)",
    )
    group.addoption("--hwl-profile", default="pc", help="hwl_system's profile (default: pc)")
    group.addoption(
        "--hwl-system-scope",
        default="module",
        choices=SCOPES,
        help="how long one hwl_system lives (default: module)",
    )
    group.addoption(
        "--hwl-seed", type=int, default=None, help="the seed of hwl_rng (default: drawn, shown)"
    )


def pytest_report_header(config: pytest.Config) -> str:
    seed = config.stash[_SEED]
    return f"hwl: seed {seed} (repeat with --hwl-seed {seed})"


@pytest.fixture(scope="session")
def hwl_machines(request: pytest.FixtureRequest) -> Iterator[MachineFactory]:
    global _factory
    _factory = MachineFactory(
        request.config.getoption("--hwl-accel"), request.config.getoption("--hwl-keep-run-dir")
    )
    try:
        yield _factory
    finally:
        _factory.close_all()
        _factory = None


@pytest.fixture
def hwl_machine(hwl_machines: MachineFactory) -> Iterator[Machine]:
    machine = hwl_machines.boot("pc")
    try:
        yield machine
    finally:
        machine.close()


@pytest.fixture(scope="session")
def hwl_systems(hwl_machines: MachineFactory) -> Iterator[SystemFactory]:
    global _systems
    _systems = SystemFactory(hwl_machines)
    try:
        yield _systems
    finally:
        _systems.close_all()
        _systems = None


def _system_scope(fixture_name: str, config: pytest.Config) -> Any:
    return config.getoption("--hwl-system-scope")


@pytest.fixture(scope=_system_scope)
def hwl_system(
    request: pytest.FixtureRequest, hwl_systems: SystemFactory
) -> Iterator[RunningSystem]:
    marker = request.node.get_closest_marker("hwl_profile")
    profile = marker.args[0] if marker is not None else request.config.getoption("--hwl-profile")
    system = hwl_systems.boot(profile)
    try:
        yield system
    finally:
        system.close()


@pytest.fixture(autouse=True)
def _hwl_core_alive(request: pytest.FixtureRequest) -> Iterator[None]:
    """Before and after each test: a system whose QEMU, kernel or RS died is closed
    and the test fails naming the death, instead of timing out against it."""
    if "hwl_system" in request.fixturenames:
        system = request.getfixturevalue("hwl_system")
        if system.died is not None:
            pytest.fail(f"hwl_system's core died in an earlier test: {system.died}")
    _fail_on_core_death(request.node, "setup", "before")
    yield
    _fail_on_core_death(request.node, "teardown", "during")


def _fail_on_core_death(item: pytest.Item, phase: str, when: str) -> None:
    """Fail ``item`` if a system's core is dead; its logs go in the report before
    the system is closed (and its run directory with it)."""
    if _systems is None:
        return
    deaths = []
    for system in _systems.live():
        death = system.death()
        if death is not None:
            deaths.append(f"{death} (run dir {system.run_dir})")
            for title, text in _log_sections(system.machine):
                item.add_report_section(phase, title, text)
            system.close()
    if deaths:
        pytest.fail(f"the trusted core died {when} this test: " + "; ".join(deaths))


@pytest.fixture
def hwl_faults(request: pytest.FixtureRequest, hwl_system: RunningSystem) -> Iterator[list[Fault]]:
    """The faults the test's ``hwl_fault`` markers declare, injected in order."""
    declared = [
        m.args[0](hwl_system) for m in reversed(list(request.node.iter_markers("hwl_fault")))
    ]
    for fault in declared:
        fault.inject()
    yield declared  # _hwl_heal_faults heals them after every fixture of the test


@pytest.fixture(autouse=True)
def _hwl_heal_faults() -> Iterator[None]:
    """Heals whatever fault a test left injected; a failed heal fails the test."""
    yield
    if "hwl.faults.base" not in sys.modules:  # no test used hwl.faults: nothing to heal
        return
    from hwl.faults.base import heal_all

    failed = heal_all()
    if failed:
        pytest.fail("healing faults failed: " + "; ".join(f"{f}: {e}" for f, e in failed))


@pytest.fixture(scope="session")
def hwl_seed(request: pytest.FixtureRequest) -> int:
    return request.config.stash[_SEED]


@pytest.fixture
def hwl_rng(request: pytest.FixtureRequest, hwl_seed: int) -> random.Random:
    return random.Random(f"{hwl_seed}:{request.node.nodeid}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    item.stash[_BOOTS_BEFORE] = boot_count()
    return (yield)


def _unmarked_boot(item: pytest.Item) -> bool:
    before = item.stash.get(_BOOTS_BEFORE, None)
    return before is not None and item.get_closest_marker("qemu") is None and boot_count() > before


def _tail(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return "(missing)"
    return data[-TAIL:].decode(errors="replace") or "(empty)"


def _namespace_state(machine: Machine) -> str | None:
    """Links, counters and neighbours in the machine's namespace, if it has one."""
    try:
        peer = machine.peer
    except HwlError:
        return None
    parts = []
    for argv in (["ip", "-s", "link"], ["ip", "neigh"]):
        try:
            done = peer.run(argv, timeout=5)
            parts.append(f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}")
        except Exception as exc:
            parts.append(f"$ {' '.join(argv)}\n{exc}")
    return "\n".join(parts)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if call.when == "teardown" and report.passed and _unmarked_boot(item):
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} boots a QEMU machine but is not marked qemu: add "
            "pytestmark = pytest.mark.qemu to its module (pytest -m 'not qemu' relies on it)"
        )
    if not report.failed or _factory is None:
        return report
    if "hwl.faults.base" in sys.modules:
        from hwl.faults.base import active

        if faults := active():
            listing = "\n".join(json.dumps(f.describe()) for f in faults)
            report.sections.append(("hwl faults still injected", listing))
    for machine in _factory.live():
        report.sections.extend(_log_sections(machine))
    return report


def _log_sections(machine: Machine) -> list[tuple[str, str]]:
    """QEMU's logs, the event log, the kernel's and every service's log, and the
    namespace's links and neighbours, as report sections."""
    sections = []
    logs = [machine.run_dir / name for name in LOG_FILES]
    logs += sorted(machine.run_dir.glob("*.log"))
    for path in logs:
        if path.exists():
            sections.append(
                (f"hwl {machine.profile.name} ({machine.run_dir}) {path.name}", _tail(path))
            )
    state = _namespace_state(machine)
    if state is not None:
        sections.append((f"hwl {machine.profile.name} namespace {machine.peer.namespace}", state))
    return sections
