"""at_wini's command line: MINIX-style ``key=value`` arguments (docs/drivers.md)."""

from __future__ import annotations

from dataclasses import dataclass

from hwl.hw import ata

PATHS = ("new", "old")  # DMA: a patched batch in one call per command, or the path before
CHANNELS = {0: ata.PRIMARY, 1: ata.SECONDARY}


@dataclass
class Args:
    instance: int = 0
    pio: bool = False
    lba48: bool = False
    timeout: float = 2.0
    debug: bool = False
    hold: float = 0.0
    pio32: bool = True
    path: str = "new"  # DMA: "new" (patched batch, one call per command) or "old"
    ring: bool = True  # small commands to and from its own memory by the command ring


def parse_args(argv: list[str]) -> Args:
    args = Args()
    for item in argv:
        key, _, value = item.partition("=")
        if key == "instance":
            args.instance = int(value)
        elif key == "pio":
            args.pio = value not in ("0", "no")
        elif key == "lba48":
            args.lba48 = value not in ("0", "no")
        elif key == "pio32":
            args.pio32 = value not in ("0", "no")
        elif key == "timeout":
            args.timeout = float(value)
        elif key == "debug":
            args.debug = value not in ("0", "no")
        elif key == "ring":
            args.ring = value not in ("0", "no")
        elif key == "hold":
            args.hold = float(value)
        elif key == "path":
            if value not in PATHS:
                raise SystemExit(f"at_wini: path={value!r} is not one of {', '.join(PATHS)}")
            args.path = value
        else:
            raise SystemExit(f"at_wini: unknown argument {item!r}")
    if args.instance not in CHANNELS:
        raise SystemExit(f"at_wini: instance {args.instance} is not 0 or 1")
    return args
