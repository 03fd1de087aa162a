"""Booting a system: the kernel with RS as its root, and the boot services up.

``System.start(machine)`` is what ``hwl up`` does: the machine's kernel starts
RS (``hwl.servers.rs``), RS starts the profile's ``[hwl-service]`` entries one by
one, each initialised before the next, and writes ``boot-done`` (or
``boot-failed``, naming the service) to the event log, which this module waits
for. The caller is then an operator: a user process talking to RS through
``System.rs``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from hwl.errors import HwlError, ProfileError
from hwl.ipc import codec
from hwl.kernel.launcher import KernelProcess
from hwl.proto.rs import RS_LABEL
from hwl.system.durations import parse_ticks
from hwl.system.events import Event, read_events, wait_event
from hwl.system.proto import Policy
from hwl.system.rs import Rs, program_argv, up_fields

if TYPE_CHECKING:
    from hwl.machine.machine import Machine
    from hwl.machine.profile import Profile


class BootError(HwlError):
    """The system did not come up: which service failed, and why."""


def boot_entries(profile: Profile) -> list[dict[str, codec.Value]]:
    """The profile's ``[hwl-service]`` groups as RS_UP fields, checked here so a
    mistake names the profile's file and line."""
    entries = []
    for svc in profile.services:
        o = svc.options
        try:
            script = o.get("script", "")
            if script and not Path(script).is_absolute():
                script = str((profile.path.parent / script).resolve())
            cold = o.get("cold", "no")
            if cold not in ("yes", "no"):
                raise ValueError(f"cold = '{cold}': use yes or no")
            policy = o.get("policy", "reset")
            if policy not in ("reset", "restart"):
                raise ValueError(f"policy = '{policy}': use reset or restart")
            entries.append(
                up_fields(
                    program_argv(o["program"], shlex.split(o.get("args", ""))),
                    label=svc.label,
                    period=parse_ticks(o.get("period", "0"), "period"),
                    script=script,
                    restarts=int(o.get("restarts", "-1")),
                    policy=Policy[policy.upper()],
                    cold=cold == "yes",
                )
            )
        except (ValueError, HwlError) as exc:
            raise ProfileError(
                f'{profile.path}:{svc.line}: [hwl-service "{svc.label}"]: {exc}'
            ) from None
    return entries


def rs_argv(run_dir: Path, *options: str) -> list[str]:
    """The command line of RS as the kernel's root for ``run_dir`` (its events,
    its table), with more of RS's ``options`` (``--backoff-unit 0`` ...)."""
    return [sys.executable, "-m", "hwl.servers.rs", "--run-dir", str(run_dir), *options]


class System:
    """A running kernel whose root is RS, with its boot services up."""

    def __init__(self, kernel: KernelProcess, run_dir: Path, own_dir: bool) -> None:
        self.kernel = kernel
        self.run_dir = run_dir
        self.events_path = run_dir / "events.jsonl"
        self._own_dir = own_dir
        self.rs = Rs.attach(run_dir)

    @classmethod
    def start(
        cls,
        machine: Machine | None = None,
        boot: list[dict[str, codec.Value]] | None = None,
        *,
        backoff_unit: float = 1.0,
        timeout: float = 30.0,
    ) -> System:
        """Start the kernel and RS on ``machine`` (or, without one, in a temporary
        directory) and wait until the boot list (default: the machine profile's)
        is up."""
        own_dir = machine is None
        if machine is not None:
            run_dir = machine.run_dir
            if boot is None:
                boot = boot_entries(machine.profile)
        else:
            run_dir = Path(tempfile.mkdtemp(prefix="hwl-sys-", dir=os.environ.get("HWL_RUN_ROOT")))
        argv = rs_argv(
            run_dir, "--backoff-unit", str(backoff_unit), "--boot", json.dumps(boot or [])
        )
        kernel = KernelProcess.start(machine, run_dir=run_dir, root_argv=argv, root_label=RS_LABEL)
        try:
            done = wait_event(
                run_dir / "events.jsonl",
                lambda e: e["event"] in ("boot-done", "boot-failed"),
                timeout,
                alive=lambda: kernel.proc.poll() is None,
            )
            if done["event"] == "boot-failed":
                raise BootError(
                    f"boot failed at service '{done.get('label')}': {done.get('reason')}"
                    f" (logs in {run_dir})"
                )
            return cls(kernel, run_dir, own_dir)
        except BaseException:
            kernel.stop()
            if own_dir:
                shutil.rmtree(run_dir, ignore_errors=True)
            raise

    def events(self) -> list[Event]:
        return read_events(self.events_path)

    def wait_event(self, predicate: Callable[[Event], bool], timeout: float = 10.0) -> Event:
        return wait_event(self.events_path, predicate, timeout)

    def stop(self) -> None:
        self.rs.close()
        self.kernel.stop()
        if self._own_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> System:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
