"""One trial: a fresh system, the workload with the plan's fault, the invariants.

The workload is the disk's (here) or the TCP stream's (:mod:`hwl.campaign.tcp`);
the rest of a trial is the same for both.

The system is booted for the trial alone (trials stay independent, and a trial's
run directory is its own), the workload runs until its bytes are moved and the
fault has played out (injected, healed, and for a crash the target restarted and
a request answered after it), then the system is closed and the invariants are
checked: the disk image against the model, the processes against what booted.

What comes back is the trial's record without the campaign's header
(:mod:`hwl.campaign.record` adds it): plain JSON.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwl import procs
from hwl.campaign import invariants, tcp
from hwl.campaign.inject import REQUEST_TIMEOUT, Injector, expects_restart, settled
from hwl.campaign.schedule import Plan
from hwl.campaign.spec import Spec, TcpWorkload, Workload
from hwl.campaign.workload import Model, first_differences, operations
from hwl.errors import HwlError
from hwl.ipc.client import IpcError
from hwl.proto.errno import Errno
from hwl.system import vfs as vp
from hwl.system.events import Event
from hwl.system.running import RunningSystem
from hwl.system.vfs import Vfs, VfsError
from hwl.system.watch import rs_pid

log = logging.getLogger(__name__)


@dataclass
class Observed:
    """What a trial saw, for the invariants and the record."""

    plan: Plan
    expect_restart: bool
    start_mono: float = 0.0
    boot_ms: float = 0.0
    workload_ms: float = 0.0
    ops: int = 0
    moved: int = 0
    corrupt_reads: list[dict[str, Any]] = field(default_factory=list)
    image_mismatches: list[int] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)  # client errors
    timed_out: str | None = None  # why the workload stopped before its end
    before: dict[str, tuple[int, int]] = field(default_factory=dict)  # label: (pid, restarts)
    after: dict[str, tuple[int, int]] = field(default_factory=dict)
    core_death: str | None = None
    core_restarts: list[str] = field(default_factory=list)  # RS restarted by the kernel
    events: list[Event] = field(default_factory=list)
    fault: dict[str, Any] = field(default_factory=dict)
    fault_error: str | None = None
    timeline: list[list[float]] = field(default_factory=list)  # [end ms, bytes, ok]
    pids: set[int] = field(default_factory=set)
    leftovers: list[int] = field(default_factory=list)
    infra: str | None = None  # the harness, not the system, failed
    during_request: bool | None = None  # the fault came while a request was under way
    model: Model | None = None  # the disk workload's
    tcp: dict[str, Any] | None = None  # the tcp workload's (hwl/campaign/tcp.py)

    def ms(self, mono: float | None) -> float | None:
        return None if mono is None else round((mono - self.start_mono) * 1000, 3)


def errno_name(number: int | None) -> str:
    try:
        return Errno(number or 0).name
    except ValueError:
        return str(number)


def _table(system: RunningSystem) -> dict[str, tuple[int, int]]:
    return {r.label: (r.pid, r.restarts) for r in system.rs.status()}


def _disk(w: Workload, spec: Spec, system: RunningSystem, obs: Observed, inj: Injector) -> None:
    """The disk workload: operations through VFS, each read checked against the model."""
    model = Model(system.machine.disks[w.drive], w.offset, w.region)
    vfs = Vfs.attach(system.run_dir, timeout=REQUEST_TIMEOUT)
    deadline = time.monotonic() + spec.trial_timeout
    try:
        fd = vfs.open_fd(w.device, vp.O_RDWR)
        obs.start_mono = time.monotonic()
        inj.start(obs.start_mono)
        good_after = 0  # good replies since the fault was done
        for op, data in operations(w, obs.plan.seed):
            if time.monotonic() > deadline:
                obs.timed_out = f"the workload did not end within {spec.trial_timeout} s"
                break
            ok = True
            begun = obs.ms(time.monotonic())
            try:
                inj.busy.set()  # an inject now meets this request under way
                try:
                    if op.write:
                        done, got = vfs.pwrite(fd, data, op.position), b""
                    else:
                        done, got = 0, vfs.pread(fd, op.size, op.position)
                finally:
                    inj.busy.clear()
                if op.write and done == op.size:
                    model.write(op.position, data)
                elif op.write:  # a short write: what reached the disk is unknown
                    ok = False
                    obs.errors.append({"op": op.name, "position": op.position,
                                       "size": op.size, "errno": "short", "start_ms": begun,
                                       "t_ms": obs.ms(time.monotonic())})  # fmt: skip
                elif got != (want := model.expect(op.position, op.size)):
                    ok = False
                    obs.corrupt_reads.append({
                        "position": op.position, "size": op.size,
                        "sectors": first_differences(op.position, want, got),
                        "t_ms": obs.ms(time.monotonic()),
                    })  # fmt: skip
            except VfsError as exc:
                ok = False
                obs.errors.append({"op": op.name, "position": op.position, "size": op.size,
                                   "errno": errno_name(exc.errno), "start_ms": begun,
                                   "t_ms": obs.ms(time.monotonic())})  # fmt: skip
                if op.write:  # a failed write may have reached part of the disk
                    model.write(op.position, data)  # the image check then says so
            except IpcError as exc:  # a timeout or a dead VFS: the client is stuck
                obs.timed_out = f"{op.name} at {op.position}: {exc}"
                break
            end = time.monotonic()
            obs.ops += 1
            obs.moved += op.size
            obs.timeline.append([obs.ms(end) or 0.0, op.size, 1 if ok else 0])
            inj.after_op(op.size)
            if inj.done and ok:
                good_after += 1
            if obs.moved >= w.bytes and settled(inj, system, obs, good_after):
                break
        with contextlib.suppress(HwlError, OSError):
            vfs.close_fd(fd)
    finally:
        obs.workload_ms = (time.monotonic() - obs.start_mono) * 1000 if obs.start_mono else 0.0
        with contextlib.suppress(Exception):
            vfs.close()
    obs.model = model


def _pids(system: RunningSystem) -> set[int]:
    """Every process of this system: QEMU, the kernel and all below it, RS, and
    every incarnation the event log names."""
    pids: set[int] = set()
    if system.machine.proc is not None:
        pids.add(system.machine.proc.pid)
    kernel = system.system.kernel.proc.pid
    pids.add(kernel)
    pids |= procs.descendants(kernel)
    with contextlib.suppress(HwlError):
        pids.add(rs_pid(system.run_dir))
    pids |= {int(e["pid"]) for e in system.events() if isinstance(e.get("pid"), int)}
    return {p for p in pids if p > 0}


def _alive(pid: int) -> bool:
    """Alive and not a zombie (a zombie has ended; its parent reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


def _leftovers(pids: set[int], wait: float = 3.0) -> list[int]:
    deadline = time.monotonic() + wait
    while True:
        left = sorted(p for p in pids if _alive(p))
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def run(spec: Spec, plan: Plan, run_dir: Path, keep: bool = False) -> dict[str, Any]:
    """Run one trial in ``run_dir`` (removed afterwards unless it failed or ``keep``)."""
    obs = Observed(plan, expects_restart(plan))
    t0 = time.monotonic()
    system: RunningSystem | None = None
    inj: Injector | None = None
    try:
        system = RunningSystem.boot(spec.profile, run_dir=run_dir, backoff_unit=1.0)
        obs.boot_ms = (time.monotonic() - t0) * 1000
        death = system.death()
        restarts = system.restarts()
        if death is not None or restarts:  # before any fault: not the trial planned
            raise HwlError(f"at boot, before the fault: {death or restarts[0]}")
        obs.before = _table(system)
        w = spec.workload
        inj = Injector(system, plan, w.drive if isinstance(w, Workload) else None)
        try:
            if isinstance(w, TcpWorkload):
                tcp.run(w, spec, system, obs, inj)
            else:
                _disk(w, spec, system, obs, inj)
        finally:
            inj.close()
        obs.fault_error = inj.error
        obs.during_request = inj.during_request
        obs.fault = inj.describe() if inj.inject_mono is not None else {}
        death = system.death()
        obs.core_death = str(death) if death is not None else None
        obs.core_restarts = [str(r) for r in system.restarts()]
        if death is None:
            obs.after = _table(system)
        obs.events = system.events()
        obs.pids = _pids(system)
    except Exception as exc:
        obs.infra = f"{type(exc).__name__}: {exc}"
        log.debug("trial %d: %s", plan.index, traceback.format_exc())
    finally:
        if system is not None:
            if not obs.events:
                with contextlib.suppress(Exception):
                    obs.events = system.events()
            try:
                system.close()
            except Exception as exc:
                obs.infra = obs.infra or f"close: {type(exc).__name__}: {exc}"
            obs.leftovers = _leftovers(obs.pids)
    model = obs.model
    if system is not None and model is not None and isinstance(spec.workload, Workload):
        image = system.machine.disks[spec.workload.drive]
        try:
            obs.image_mismatches = model.mismatches(image)
        except OSError as exc:
            obs.infra = obs.infra or f"image: {exc}"
    result = invariants.judge(spec, obs)
    result["timings"]["total_ms"] = round((time.monotonic() - t0) * 1000, 1)
    if result["ok"] and not keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        for image in run_dir.glob("*.img"):  # the evidence is in the logs and the record
            image.unlink(missing_ok=True)
        result["run_dir"] = str(run_dir)
    return result
