"""A running system: one machine, its kernel with RS as root, the boot services up,
the clients a user of the system calls, and a watch on the trusted core.

What the pytest fixtures, ``hwl up`` and a campaign share: boot from a profile,
hand out the RS, DS, VFS and INET clients (each opened on first use), notice at
once when QEMU, the kernel or RS has died (nothing recovers them), and close
everything, also after a failure.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hwl.errors import HwlError
from hwl.machine.machine import Machine
from hwl.machine.qmp import Qmp
from hwl.proto.rs import RS_LABEL
from hwl.system.boot import System
from hwl.system.ds import Ds
from hwl.system.events import Event, read_events
from hwl.system.rs import Rs
from hwl.system.vfs import Vfs
from hwl.system.watch import (
    CoreWatch,
    Death,
    Restarted,
    kernel_log_says,
    kernel_restarted,
    rs_pid,
)

if TYPE_CHECKING:
    from hwl.net.client import Inet


class CoreDied(HwlError):
    """QEMU or the kernel is dead, or RS and the kernel gave up restarting it: the
    system can no longer recover anything."""

    def __init__(self, death: Death, run_dir: Path) -> None:
        super().__init__(f"{death}; nothing recovers it (logs in {run_dir})")
        self.death = death


def watch_core(machine: Machine | None, system: System) -> CoreWatch:
    """QEMU, the kernel and RS, in the order a death is blamed when several are
    seen at once (QEMU's takes the kernel's link, the kernel's takes RS). RS's
    death is a restart (``watch.restarts``) while the kernel restarts it."""
    watch = CoreWatch()
    if machine is not None and machine.proc is not None:
        watch.add_child("QEMU", machine.proc)
    watch.add_child("the kernel", system.kernel.proc)
    run_dir = system.run_dir
    watch.add_pid(
        "RS",
        rs_pid(run_dir),
        lambda: kernel_log_says(run_dir, RS_LABEL),
        kernel_restarted(run_dir, RS_LABEL),
    )
    return watch


class RunningSystem:
    """A booted profile and its clients; :meth:`close` ends all of it."""

    def __init__(self, machine: Machine, system: System) -> None:
        self.machine = machine
        self.system = system
        self.watch = watch_core(machine, system)
        self._ds: Ds | None = None
        self._vfs: Vfs | None = None
        self._inet: Inet | None = None
        self.closed = False
        self.died: Death | None = None  # the core's death, once seen

    @classmethod
    def boot(
        cls, profile: str | Path = "pc", *, backoff_unit: float = 0.0, **machine_options: Any
    ) -> RunningSystem:
        """Boot ``profile`` and its boot services (``backoff_unit`` 0: RS restarts at
        once, as a test wants; 1.0 is MINIX's backoff, as ``hwl up`` runs)."""
        machine = Machine(profile, **machine_options).start()
        try:
            return cls(machine, System.start(machine, backoff_unit=backoff_unit))
        except BaseException:
            machine.close()
            raise

    @property
    def run_dir(self) -> Path:
        return self.system.run_dir

    @property
    def rs(self) -> Rs:
        return self.system.rs

    @property
    def qmp(self) -> Qmp | None:
        """The machine's QMP client: a RunningSystem is a host for every hwl.faults
        fault, process and QEMU alike."""
        return self.machine.qmp

    @property
    def ds(self) -> Ds:
        if self._ds is None:
            self._ds = Ds.find(self.system.rs.conn)
        return self._ds

    @property
    def vfs(self) -> Vfs:
        if self._vfs is None:
            self._vfs = Vfs.attach(self.run_dir)
        return self._vfs

    @property
    def inet(self) -> Inet:
        """INET's client; the profile must run ``inet``."""
        if self._inet is None:
            if not any(svc.label == "inet" for svc in self.machine.profile.services):
                raise HwlError(
                    f"profile '{self.machine.profile.name}' runs no inet (try inet, inet-nics)"
                )
            # INET's client is loaded when asked for: hwl.net finds INET through
            # RS's client (hwl.system.rs), so hwl.system imports it only here.
            from hwl.net.client import Inet

            self._inet = Inet.attach(self.run_dir)
        return self._inet

    def events(self) -> list[Event]:
        return read_events(self.system.events_path)

    def death(self) -> Death | None:
        """The core's first death, if one happened; None while all of it lives."""
        if self.closed:
            return self.died
        if self.died is None:
            self.died = self.watch.wait(0)
        return self.died

    def restarts(self) -> list[Restarted]:
        """RS's deaths the kernel recovered from, so far."""
        self.death()
        return list(self.watch.restarts)

    def check_core(self) -> None:
        """Raise :class:`CoreDied` if QEMU or the kernel has died, or RS for good."""
        death = self.death()
        if death is not None:
            raise CoreDied(death, self.run_dir)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for client in (self._inet, self._vfs):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
        self.watch.close()
        try:
            self.system.stop()
        finally:
            self.machine.close()

    def __enter__(self) -> RunningSystem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
