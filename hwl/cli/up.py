"""``hwl up PROFILE``: boot the machine, the kernel, RS and the boot services.

It prints the status table, then (with ``--kill LABEL``) shows recovery: it
kills the service's process with SIGKILL, waits for RS's restart event and
prints how long the service was gone and the table again. Without ``--once``
it keeps the system up until Ctrl-C; ``service`` commands reach it through the
run directory it prints (``export HWL_RUN_DIR=...``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading

from hwl.cli.service import format_status
from hwl.machine.machine import Machine
from hwl.system.boot import System


def show_recovery(system: System, label: str) -> None:
    before = {row.label: row for row in system.rs.status()}
    if label not in before or before[label].pid <= 0:
        raise SystemExit(f"hwl up: no running service '{label}' to kill")
    victim = before[label]
    seen = len(system.events())
    print(f"\nkill -9 {victim.pid} ({label}, endpoint {victim.endpoint})")
    os.kill(victim.pid, signal.SIGKILL)
    events = system.events
    crash = system.wait_event(lambda e: e.get("label") == label and e["event"] in ("crash", "exit"))
    back = system.wait_event(
        lambda e: (
            e.get("label") == label
            and e["event"] == "restart"
            and e.get("pid") != victim.pid
            and e["mono"] >= crash["mono"]
        )
    )
    for event in events()[seen:]:
        if event.get("label") == label:
            detail = {k: v for k, v in event.items() if k not in ("time", "mono", "event", "label")}
            print(f"  event {event['event']:<8} {detail}")
    gone_ms = (back["mono"] - crash["mono"]) * 1000
    print(f"{label} is back as pid {back['pid']}: restarted {gone_ms:.1f} ms after RS saw it die")
    print(format_status(system.rs.status()))


def cmd_up(args: argparse.Namespace) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Machine(args.profile, accel=args.accel, keep_run_dir=args.keep_run_dir) as machine:
        system = System.start(machine)
        try:
            print(f"machine '{machine.profile.name}' up: QEMU pid {machine.pid}, accel "
                  f"{machine.accel}; kernel pid {system.kernel.proc.pid}")  # fmt: skip
            print(f"run dir {system.run_dir} (export HWL_RUN_DIR={system.run_dir} for `service`)")
            print(format_status(system.rs.status()))
            for label in args.kill or ():
                show_recovery(system, label)
            if not args.once:
                print("\nup; Ctrl-C stops the system")
                with contextlib.suppress(KeyboardInterrupt):
                    stop.wait()
        finally:
            system.stop()
    return 0


def add_parser(top: argparse._SubParsersAction[argparse.ArgumentParser], accels: list[str]) -> None:
    up = top.add_parser("up", help="boot machine, kernel, RS and the boot services")
    up.add_argument("profile", help="profile name in qemu-configs/ (e.g. pc) or a .cfg path")
    up.add_argument("--accel", default="auto", choices=accels)
    up.add_argument("--keep-run-dir", action="store_true", help="keep the run directory")
    up.add_argument(
        "--kill", action="append", metavar="LABEL", help="show recovery: kill LABEL once booted"
    )
    up.add_argument("--once", action="store_true", help="stop after printing, do not wait")
    up.set_defaults(func=cmd_up)
