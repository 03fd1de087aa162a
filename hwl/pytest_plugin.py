"""pytest plugin: boot hwl machines from tests, attach their logs when a test fails.

Registered through the ``pytest11`` entry point, so installing hwl is enough.

- ``hwl_machines``: a session-scoped factory. ``hwl_machines.boot("pc")`` boots a
  machine that lives until you close it or the session ends; wrap it in a
  module-scoped fixture to boot once per module.
- ``hwl_machine``: one machine of the default profile for a single test.
- ``--hwl-accel``: tcg, kvm or auto; ``--hwl-keep-run-dir``: keep run directories
  (QEMU stderr, serial log, QMP events) after the machines close.
- ``--hwl-placement``: auto, off or ``qemu:CORES;hwl:CORES`` for every machine the
  session boots (it sets ``$HWL_PLACEMENT``; hwl/machine/placement.py).

A failed test's report also shows each machine's network namespace as
``ip -s link`` and ``ip neigh`` saw it (hwl/machine/netpeer.py).

SIGTERM (a CI runner's timeout) stops the session as Ctrl-C does, so fixtures
tear down and every machine closes, its namespace and taps deleted with it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from hwl.errors import HwlError
from hwl.machine import placement as placing
from hwl.machine.machine import ACCELS, Machine

LOG_FILES = ("qemu.stderr", "serial.log", "qmp-events.jsonl")
TAIL = 4000


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


_factory: MachineFactory | None = None


def pytest_configure(config: pytest.Config) -> None:
    value = config.getoption("--hwl-placement", None)
    if value is not None:
        try:
            placing.resolve(value, source="--hwl-placement")
        except placing.PlacementError as exc:
            raise pytest.UsageError(str(exc)) from None
        os.environ[placing.ENV] = value  # every Machine of the session, however made
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupted)


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
    if not report.failed or _factory is None:
        return report
    for machine in _factory.live():
        for name in LOG_FILES:
            report.sections.append(
                (
                    f"hwl {machine.profile.name} ({machine.run_dir}) {name}",
                    _tail(machine.run_dir / name),
                )
            )
        state = _namespace_state(machine)
        if state is not None:
            title = f"hwl {machine.profile.name} namespace {machine.peer.namespace}"
            report.sections.append((title, state))
    return report
