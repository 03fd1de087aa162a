"""``hwl``: machine control and benchmarks from the shell.

hwl machine up PROFILE      boot, print the handshake, run until Ctrl-C
hwl machine pci PROFILE     boot and print the PCI devices the link finds
hwl up PROFILE [--kill L]   boot machine, kernel, RS and the boot services; show recovery
hwl bench link [--json]     the link benchmark (bench/link.py)
hwl bench ipc [--json]      the kernel's IPC benchmark (bench/ipc.py)
hwl bench recovery [--json] restart and live-update downtime (bench/recovery.py)
hwl bench disk [--json]     the whole block path against the stub's native loops (bench/disk.py)
hwl bench filter [--json]   the filter driver against the same path without it (bench/filter.py)
hwl net frames PROFILE      ARP and ICMP echo to Linux through the profile's NIC drivers
hwl bench nic [--nic N]     NIC drivers against the stub's native loop and Linux (bench/nic.py)
hwl bench net [--nic N]     INET's UDP and TCP against Linux, also under driver kills (bench/net.py)
hwl service ...             MINIX's service command (hwl.cli.service; also `minix-service`)
hwl campaign run|replay    fault campaigns with invariants per trial (docs/campaigns.md)
hwl report DIR [--html F]  a campaign's outcome tables and figures

Commands that boot a machine take --placement auto|off|'qemu:CORES;hwl:CORES'
(default: $HWL_PLACEMENT, else auto: QEMU on its own core, hwl's processes on
the others; docs/placement.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

from hwl.cli import campaign as campaign_cli
from hwl.cli import net as net_cli
from hwl.cli import report as report_cli
from hwl.cli import service as hwl_service
from hwl.cli import up as up_cli
from hwl.errors import HwlError
from hwl.hw import ata
from hwl.link.pci import PciDevice
from hwl.machine import placement as placing
from hwl.machine.machine import ACCELS, Machine

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def _machine(args: argparse.Namespace) -> Machine:
    return Machine(args.profile, accel=args.accel, keep_run_dir=args.keep_run_dir)


def print_machine(m: Machine) -> None:
    """What booted: QEMU, the stub's handshake, and the disks on the IDE channels."""
    hs = m.handshake
    print(f"machine '{m.profile.name}' up: QEMU pid {m.pid}, accel {m.accel}, run dir {m.run_dir}")
    print(
        f"stub: abi {hs['abi']}, TSC {hs['tsc_khz'] / 1000:.1f} MHz, "
        f"RAM {hs['ram'] >> 20} MiB, ctl {hs['ctl']:#x}, slots {hs['slots']:#x}"
    )
    for name, channel in (("primary", ata.PRIMARY), ("secondary", ata.SECONDARY)):
        try:
            info = ata.identify(m.link, channel)
        except HwlError as exc:
            print(f"ide {name} master: none ({exc})")
            continue
        mib = info.sectors48 * ata.SECTOR >> 20
        print(
            f"ide {name} master: {info.model!r} serial {info.serial!r}, "
            f"{info.sectors48} sectors ({mib} MiB)"
        )


def cmd_machine_up(args: argparse.Namespace) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # before anything a caller could wait on
    with _machine(args) as m:
        print_machine(m)
        samples = []
        for i in range(200):
            start = time.perf_counter()
            if m.link.nop(i) != i:
                raise HwlError(f"the stub echoed the wrong value for {i}")
            samples.append(time.perf_counter() - start)
        print(f"link round trip: {statistics.median(samples) * 1e6:.1f} µs; Ctrl-C to stop")
        sys.stdout.flush()
        try:
            while not stop.wait(0.5):
                if not m.alive():
                    print(f"QEMU exited:\n{m.stderr_text()}", file=sys.stderr)
                    return 1
        except KeyboardInterrupt:
            pass
    print("machine stopped")
    return 0


def format_pci_table(devices: list[PciDevice]) -> str:
    rows = [("BDF", "VID:DID", "CLASS", "IRQ", "BARS")]
    for d in devices:
        bars = " ".join(
            f"{b.index}:{b.kind}@{b.address:#x}/{b.size:#x}{'(64)' if b.is64 else ''}"
            for b in d.bars
        )
        irq = f"{d.irq_line} ({'-ABCD'[d.irq_pin]})" if d.irq_pin else "-"
        rows.append((d.bdf, d.ids, f"{d.class_code:06x}", irq, bars or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
        for r in rows
    )


def cmd_machine_pci(args: argparse.Namespace) -> int:
    with _machine(args) as m:
        print_machine(m)
        print()
        print(format_pci_table(m.link.pci_scan()))
    return 0


def load_bench(name: str) -> ModuleType:
    """Benchmarks live in bench/ at the top of the tree, beside the package."""
    path = BENCH_DIR / f"{name}.py"
    if not path.is_file():
        raise HwlError(f"no benchmark '{name}' in {BENCH_DIR}")
    spec = importlib.util.spec_from_file_location(f"hwl_bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def cmd_bench(args: argparse.Namespace) -> int:
    result: int = load_bench(args.name).main(args)
    return result


def placement_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--placement",
        metavar="auto|off|qemu:CORES;hwl:CORES",
        help="where QEMU and hwl's processes run (default: $HWL_PLACEMENT, else auto)",
    )


def apply_placement(args: argparse.Namespace) -> None:
    """--placement, checked, for every machine this command makes (benchmarks make
    their own, so it goes through the environment, as $HWL_PLACEMENT would)."""
    value = getattr(args, "placement", None)
    if value is not None:
        placing.resolve(value, source="--placement")
        os.environ[placing.ENV] = value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hwl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    top = parser.add_subparsers(dest="command", required=True)

    def machine_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("profile", help="profile name in qemu-configs/ (e.g. pc) or a .cfg path")
        p.add_argument("--accel", default="auto", choices=ACCELS)
        p.add_argument("--keep-run-dir", action="store_true", help="keep the run directory")
        placement_opt(p)

    machine = top.add_parser("machine", help="boot and inspect machines").add_subparsers(
        dest="action", required=True
    )
    up = machine.add_parser("up", help="boot, print the handshake, run until Ctrl-C")
    machine_opts(up)
    up.set_defaults(func=cmd_machine_up)
    pci = machine.add_parser("pci", help="boot and list the PCI devices found through the link")
    machine_opts(pci)
    pci.set_defaults(func=cmd_machine_pci)

    up_cli.add_parser(top, machine_opts)
    net_cli.add_parser(top, machine_opts)
    campaign_cli.add_parser(top)
    report_cli.add_parser(top)

    bench = top.add_parser("bench", help="benchmarks (bench/)")
    bench.add_argument("name", choices=sorted(p.stem for p in BENCH_DIR.glob("[a-z]*.py")) or None)
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--accel", default="auto", choices=ACCELS)
    bench.add_argument("--profile", default="pc")
    placement_opt(bench)
    bench.add_argument("--nic", choices=["ne2k_pci", "rtl8139", "e1000"], help="nic: only this one")
    bench.add_argument(
        "--no-machine", action="store_true", help="no QEMU: only what needs none (ipc)"
    )
    bench.add_argument(
        "--repeat", type=int, default=0, help="repetitions (0: the benchmark's default)"
    )
    bench.add_argument(
        "--seconds",
        type=float,
        default=0,
        help="length of each timed phase (0: the benchmark's default; disk, net)",
    )
    bench.set_defaults(func=cmd_bench)

    service = top.add_parser("service", help="MINIX's service command: service -h for its usage")
    service.add_argument("args", nargs=argparse.REMAINDER)
    service.set_defaults(func=lambda args: hwl_service.main(args.args))
    return parser


def _terminated(signo: int, _frame: object) -> None:
    raise SystemExit(128 + signo)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["service"]:  # its own syntax (MINIX's): argparse would take its -o, -x...
        return hwl_service.main(argv[1:])
    args = build_parser().parse_args(argv)
    # SIGTERM (``timeout``, a CI runner) ends the command as an exception would, so
    # its machines close: QEMU stopped, the network namespace and taps deleted.
    # Commands that wait until told to stop install their own handler.
    signal.signal(signal.SIGTERM, _terminated)
    if not args.verbose:  # qemu.qmp logs each failed connect while QEMU dies; hwl reports why
        logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(name)s: %(message)s"
    )
    try:
        apply_placement(args)
        code: int = args.func(args)
        return code
    except HwlError as exc:
        print(f"hwl: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
