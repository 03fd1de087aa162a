"""``hwl up PROFILE``: boot the machine, the kernel, RS and the boot services.

It prints the status table, then (with ``--kill LABEL``) shows recovery: it
kills the service's process with SIGKILL, waits for RS's restart event and
prints how long the service was gone and the table again. For a disk driver
(at_wini), a reader goes through VFS across the kill and its bytes are
compared with the disk image on the host. With ``--tcp-transfer MIB`` (a profile
running inet) it sends MIB MiB over TCP to Linux's own socket in the machine's
namespace while INET's NIC driver is SIGKILLed, and says whether every byte
arrived (SHA-256) and the connection stayed up (hwl.net.demo). Without ``--once``
it keeps the system up until Ctrl-C; ``service`` commands reach it through the
run directory it prints (``export HWL_RUN_DIR=...``).

Meanwhile it watches the trusted core: if QEMU or the kernel dies, which nothing
recovers, it says at once which and how, stops the rest (the machine closed, its
namespace and run directory removed) and exits with CORE_DIED. RS's death is said
too, with the pid the kernel restarted it as (the new RS adopts the running
services), and watched on; only when the kernel gives up restarting RS does
``hwl up`` stop and exit with CORE_DIED naming RS.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from hwl.cli.service import format_status
from hwl.machine.machine import Machine
from hwl.net import demo as netdemo
from hwl.net.status import interfaces_text
from hwl.system.boot import System
from hwl.system.events import Event
from hwl.system.rs import ServiceStatus
from hwl.system.running import watch_core
from hwl.system.vfs import Vfs
from hwl.system.watch import CoreWatch, Death, Restarted

# Block drivers whose device a reader goes through VFS for while they are killed:
# label -> (device file, the profile's disk image behind it).
DISKS = {"at_wini": ("/dev/c0d0", "hd0"), "at_wini1": ("/dev/c1d0", "hd1")}
READ_BYTES = 16 << 20
READ_AT = 8 << 20
CORE_DIED = 3  # the exit status when QEMU or the kernel died under hwl up, or RS for good
POLL_S = 0.1  # how often a Ctrl-C or SIGTERM is looked for while watching


class Reader(threading.Thread):
    """Reads ``size`` bytes of a disk from ``at`` through VFS, in 256 KiB calls,
    while its driver (or RS) is killed; notes the error, if any, and a hash.
    ``started`` is set once the first call has come back."""

    CHUNK = 256 << 10

    def __init__(
        self, run_dir: Path, device: str, at: int = READ_AT, size: int = READ_BYTES
    ) -> None:
        super().__init__(daemon=True)
        self.run_dir, self.device, self.at, self.size = run_dir, device, at, size
        self.started = threading.Event()
        self.digest = ""
        self.error: BaseException | None = None

    def run(self) -> None:
        digest = hashlib.sha256()
        try:
            with Vfs.attach(self.run_dir, timeout=30) as vfs, vfs.open(self.device, "rb") as f:
                f.seek(self.at)
                for _ in range(self.size // self.CHUNK):
                    digest.update(f.read(self.CHUNK))
                    self.started.set()
        except BaseException as exc:
            self.error = exc
        finally:
            self.started.set()
        self.digest = digest.hexdigest()


def image_digest(path: Path) -> str:
    with path.open("rb") as f:
        f.seek(READ_AT)
        return hashlib.sha256(f.read(READ_BYTES)).hexdigest()


def show_recovery(system: System, label: str) -> None:
    before = {row.label: row for row in system.rs.status()}
    if label not in before or before[label].pid <= 0:
        raise SystemExit(f"hwl up: no running service '{label}' to kill")
    victim = before[label]
    seen = len(system.events())
    reader = None
    if label in DISKS and "vfs" in before:
        device, disk = DISKS[label]
        reader = Reader(system.run_dir, device)
        reader.start()
        reader.started.wait(30)
        print(f"\nreading {READ_BYTES >> 20} MiB of {device} through VFS; meanwhile:")
    print(f"\nkill -9 {victim.pid} ({label}, endpoint {victim.endpoint})")
    killed_at = time.monotonic()  # the clock of the events' "mono"
    os.kill(victim.pid, signal.SIGKILL)

    def after_kill(event: Event, *names: str) -> bool:
        ours = event.get("label") == label and event["mono"] >= killed_at
        return ours and event["event"] in names

    crash = system.wait_event(lambda e: after_kill(e, "crash", "exit"))
    back = system.wait_event(lambda e: after_kill(e, "restart"))
    for event in system.events()[seen:]:
        if event.get("label") == label:
            detail = {k: v for k, v in event.items() if k not in ("time", "mono", "event", "label")}
            print(f"  event {event['event']:<8} {detail}")
    gone_ms = (back["mono"] - crash["mono"]) * 1000
    print(f"{label} is back as pid {back['pid']}: restarted {gone_ms:.1f} ms after RS saw it die")
    if reader is not None:
        reader.join(60)
        if reader.error is not None:
            raise SystemExit(f"hwl up: reading {device} across the kill failed: {reader.error}")
        same = reader.digest == image_digest(system.run_dir / f"{disk}.img")
        print(f"read {READ_BYTES >> 20} MiB of {device} across the kill: no error, "
              f"{'every byte matches' if same else 'BYTES DIFFER from'} {disk}.img")  # fmt: skip
        if not same:
            raise SystemExit(1)
    print(format_status(system.rs.status()))


def show_tcp_transfer(machine: Machine, services: list[ServiceStatus], mib: int) -> None:
    """A TCP transfer to Linux in the namespace while INET's NIC driver is killed."""
    if not any(s.label == "inet" for s in services):
        raise SystemExit("hwl up: --tcp-transfer needs a profile that runs inet (inet, "
                         "inet-ne2k, inet-rtl8139)")  # fmt: skip
    if not netdemo.demo(machine, mib):
        raise SystemExit(1)


def wait_until_stopped(watch: CoreWatch, stop: threading.Event) -> Death | None:
    """Until Ctrl-C, SIGTERM or a death in the core (returned)."""
    with contextlib.suppress(KeyboardInterrupt):
        while not stop.is_set():
            death = watch.wait(POLL_S)
            if death is not None:
                return death
    return None


def say_restarted(restarted: Restarted) -> None:
    """RS died and the kernel restarted it: the system recovers, so it goes on."""
    print(f"hwl up: {restarted}; the new RS adopts the running services", flush=True)


def cmd_up(args: argparse.Namespace) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    death: Death | None = None
    with Machine(args.profile, accel=args.accel, keep_run_dir=args.keep_run_dir) as machine:
        system = System.start(machine)
        try:
            with watch_core(machine, system) as watch:
                watch.on_restart = say_restarted
                print(f"machine '{machine.profile.name}' up: QEMU pid {machine.pid}, accel "
                      f"{machine.accel}; kernel pid {system.kernel.proc.pid}")  # fmt: skip
                print(f"run dir {system.run_dir} (export HWL_RUN_DIR={system.run_dir} "
                      "for `minix-service`)")  # fmt: skip
                services = system.rs.status()
                print(format_status(services))
                if (interfaces := interfaces_text(system.run_dir, services)) is not None:
                    print(f"\n{interfaces}")  # INET's, next to the services
                for label in args.kill or ():
                    show_recovery(system, label)
                if args.tcp_transfer:
                    show_tcp_transfer(machine, services, args.tcp_transfer)
                death = watch.wait(0)
                if death is None and not args.once:
                    print("\nup; Ctrl-C stops the system", flush=True)
                    death = wait_until_stopped(watch, stop)
                if death is not None:
                    print(f"hwl up: {death}; nothing recovers it: stopping the system",
                          file=sys.stderr, flush=True)  # fmt: skip
        finally:
            system.stop()
    if death is not None:
        print(f"hwl up: stopped: machine closed, processes ended ({death.component} died)",
              file=sys.stderr)  # fmt: skip
        return CORE_DIED
    return 0


def add_parser(
    top: argparse._SubParsersAction[argparse.ArgumentParser],
    machine_opts: Callable[[argparse.ArgumentParser], None],
) -> None:
    """``hwl up``: ``machine_opts`` adds the profile, --accel and --keep-run-dir."""
    up = top.add_parser("up", help="boot machine, kernel, RS and the boot services")
    machine_opts(up)
    up.add_argument(
        "--kill", action="append", metavar="LABEL", help="show recovery: kill LABEL once booted"
    )
    up.add_argument(
        "--tcp-transfer",
        type=int,
        metavar="MIB",
        help="inet profiles: send MIB MiB to Linux over TCP while the NIC driver is killed",
    )
    up.add_argument("--once", action="store_true", help="stop after printing, do not wait")
    up.set_defaults(func=cmd_up)
