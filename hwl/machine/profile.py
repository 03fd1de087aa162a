"""Machine profiles: QEMU's own -readconfig format, plus what hwl adds.

A profile is a file in qemu-configs/ that QEMU could read itself. hwl takes out
the groups it handles:

- ``[machine]`` and ``[memory]``: hwl needs the machine type and RAM size because
  it adds a shared-file RAM backend and the accelerator to the ``-machine`` line;
- ``[hwl-disk "ID"]`` (``size``, ``fill`` = zero | random, ``seed``): a raw disk
  image created in the run directory and wired to ``[drive "ID"]``, whose
  ``file`` hwl fills in;
- ``[hwl-service "LABEL"]`` (``program``, and optionally ``args``, ``period``,
  ``policy``, ``script``, ``restarts``, ``cold``, as ``service up`` takes them):
  the machine's boot list, started by RS in file order, each up before the next;
- ``[hwl-net "ID"]`` (``peer`` = netns | socket): a NIC backend hwl makes and
  renders as ``-netdev ... id=ID`` at launch (hwl/machine/netpeer.py); a
  ``[device]`` uses it with ``netdev = "ID"``, as QEMU expects.

A drive with an ``[hwl-disk]`` is rendered with node names ``ID-format`` and
``ID-file`` and ``rerror``/``werror`` = ``report`` (unless the profile sets them),
which hwl.faults relies on to put a disk error where the driver sees it.

Everything else is passed to QEMU unchanged through ``-readconfig``.
"""

from __future__ import annotations

import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from hwl.buildcache import cache_root, cached
from hwl.errors import ProfileError
from hwl.share import shared

_GROUP = re.compile(r'^\[\s*([A-Za-z0-9_.-]+)\s*(?:"([^"]*)")?\s*\]$')
_OPTION = re.compile(r'^([A-Za-z0-9_.-]+)\s*=\s*"([^"]*)"$')
_SIZE = re.compile(r"^(\d+)\s*([KMGT]?)$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
HWL_HANDLED = {"machine", "memory", "hwl-disk", "hwl-service", "hwl-net"}
SERVICE_KEYS = {"program", "args", "period", "policy", "script", "restarts", "cold"}
NET_PEERS = ("netns", "socket")


@dataclass
class Group:
    """One ``[name "id"]`` group with its options, and where it was written."""

    name: str
    id: str | None
    line: int
    options: dict[str, str] = field(default_factory=dict)
    option_lines: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class BootService:
    """One ``[hwl-service]`` entry: what ``service up`` would be told."""

    label: str
    options: dict[str, str]
    line: int


@dataclass(frozen=True)
class DiskSpec:
    """A disk image hwl creates on demand for a ``[drive]`` of the same id."""

    id: str
    size: int
    fill: str
    seed: int


@dataclass(frozen=True)
class NetSpec:
    """A NIC backend hwl makes: ``netns`` (a TAP in a namespace with Linux's stack on
    it) or ``socket`` (a UDP pair on loopback with a frame peer in Python)."""

    id: str
    peer: str
    line: int


def parse_size(text: str) -> int:
    """Parse ``64M``-style sizes (K, M, G, T are powers of 1024)."""
    m = _SIZE.match(text.strip())
    if not m:
        raise ValueError(f"'{text}' is not a size like 64M or 1G")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def profile_dir() -> Path:
    """Where named profiles live: $HWL_PROFILE_DIR, qemu-configs/ of the checkout,
    or the installed copy (hwl/share.py)."""
    return shared("qemu-configs", "HWL_PROFILE_DIR")


class Profile:
    """A parsed machine profile."""

    def __init__(self, path: Path, groups: list[Group]) -> None:
        self.path = path
        self.groups = groups
        self.name = path.stem
        self.machine_type = "pc"
        self.memory = 128 << 20
        self.disks: list[DiskSpec] = []
        self.services: list[BootService] = []
        self.nets: list[NetSpec] = []
        self._interpret()

    @classmethod
    def load(cls, name_or_path: str | Path) -> Profile:
        """Load a profile by name (``pc``) from qemu-configs/, or from a path."""
        path = Path(name_or_path)
        if not path.suffix and not path.exists():
            path = profile_dir() / f"{name_or_path}.cfg"
        if not path.is_file():
            known = sorted(p.stem for p in profile_dir().glob("*.cfg"))
            raise ProfileError(f"no machine profile '{name_or_path}' (known: {', '.join(known)})")
        return cls(path, parse_groups(path.read_text(), path))

    def _error(self, line: int, key: str, problem: str) -> ProfileError:
        return ProfileError(f"{self.path}:{line}: key '{key}': {problem}")

    def _size(self, group: Group, key: str) -> int:
        try:
            return parse_size(group.options[key])
        except ValueError as exc:
            raise self._error(group.option_lines[key], key, str(exc)) from None

    def _interpret(self) -> None:
        drives = {g.id for g in self.groups if g.name == "drive"}
        for g in self.groups:
            if g.name == "machine":
                self.machine_type = g.options.get("type", self.machine_type)
                extra = set(g.options) - {"type"}
                if extra:
                    key = sorted(extra)[0]
                    raise self._error(
                        g.option_lines[key], key, "hwl sets the machine's other options itself"
                    )
            elif g.name == "memory" and "size" in g.options:
                self.memory = self._size(g, "size")
            elif g.name == "hwl-disk":
                self.disks.append(self._disk(g, drives))
            elif g.name == "hwl-service":
                self.services.append(self._service(g))
            elif g.name == "hwl-net":
                self.nets.append(self._net(g))
        self._check_netdevs()

    def _net(self, g: Group) -> NetSpec:
        if not g.id:
            raise ProfileError(f'{self.path}:{g.line}: [hwl-net] needs an id: [hwl-net "net0"]')
        for key in g.options:
            if key != "peer":
                raise self._error(g.option_lines[key], key, "unknown; use peer")
        peer = g.options.get("peer", "netns")
        if peer not in NET_PEERS:
            raise self._error(
                g.option_lines["peer"], "peer", f"'{peer}' is not {' or '.join(NET_PEERS)}"
            )
        if any(n.id == g.id for n in self.nets):
            raise ProfileError(f'{self.path}:{g.line}: [hwl-net "{g.id}"] is listed twice')
        return NetSpec(g.id, peer, g.line)

    def _check_netdevs(self) -> None:
        """A device's ``netdev`` must name an [hwl-net] (or a [netdev] written for QEMU)."""
        known = {n.id for n in self.nets} | {g.id for g in self.groups if g.name == "netdev"}
        for g in self.groups:
            if g.name != "device" or "netdev" not in g.options:
                continue
            name = g.options["netdev"]
            if name not in known:
                hint = ", ".join(sorted(i for i in known if i)) or "none defined"
                raise self._error(
                    g.option_lines["netdev"],
                    "netdev",
                    f"'{name}' names no [hwl-net \"{name}\"] (known: {hint})",
                )

    def _service(self, g: Group) -> BootService:
        if not g.id:
            raise ProfileError(
                f'{self.path}:{g.line}: [hwl-service] needs a label: [hwl-service "ds"]'
            )
        for key in g.options:
            if key not in SERVICE_KEYS:
                known = ", ".join(sorted(SERVICE_KEYS))
                raise self._error(g.option_lines[key], key, f"unknown; use {known}")
        if "program" not in g.options:
            raise ProfileError(
                f'{self.path}:{g.line}: [hwl-service "{g.id}"] needs program = "..."'
            )
        if any(s.label == g.id for s in self.services):
            raise ProfileError(f'{self.path}:{g.line}: [hwl-service "{g.id}"] is listed twice')
        return BootService(g.id, dict(g.options), g.line)

    def _disk(self, g: Group, drives: set[str | None]) -> DiskSpec:
        if not g.id:
            raise ProfileError(f'{self.path}:{g.line}: [hwl-disk] needs an id: [hwl-disk "hd0"]')
        if g.id not in drives:
            raise ProfileError(f'{self.path}:{g.line}: [hwl-disk "{g.id}"] has no [drive "{g.id}"]')
        for key in g.options:
            if key not in {"size", "fill", "seed"}:
                raise self._error(g.option_lines[key], key, "unknown; use size, fill or seed")
        if "size" not in g.options:
            raise ProfileError(f'{self.path}:{g.line}: [hwl-disk "{g.id}"] needs size = "..."')
        size = self._size(g, "size")
        if size <= 0 or size % 512:
            raise self._error(g.option_lines["size"], "size", "must be a positive multiple of 512")
        fill = g.options.get("fill", "zero")
        if fill not in {"zero", "random"}:
            raise self._error(g.option_lines["fill"], "fill", f"'{fill}' is not zero or random")
        seed_text = g.options.get("seed", "0")
        if not seed_text.isdigit():
            raise self._error(g.option_lines["seed"], "seed", f"'{seed_text}' is not a number")
        return DiskSpec(g.id, size, fill, int(seed_text))

    def disk_path(self, run_dir: Path, disk_id: str) -> Path:
        return run_dir / f"{disk_id}.img"

    def create_disks(self, run_dir: Path) -> dict[str, Path]:
        """Create every ``[hwl-disk]`` image in the run directory; return id -> path."""
        made = {}
        for disk in self.disks:
            path = self.disk_path(run_dir, disk.id)
            if disk.fill == "random":
                shutil.copyfile(random_image(disk.seed, disk.size), path)
            else:
                with path.open("wb") as fh:
                    fh.truncate(disk.size)
            made[disk.id] = path
        return made

    def render(self, run_dir: Path) -> str:
        """The profile as QEMU should read it: hwl's groups out, disk files filled in."""
        disk_ids = {d.id for d in self.disks}
        out = [f"# generated by hwl from {self.path}"]
        for g in self.groups:
            if g.name in HWL_HANDLED:
                continue
            options = dict(g.options)
            if g.name == "drive" and g.id in disk_ids:
                options.setdefault("file", str(self.disk_path(run_dir, g.id)))
                options.setdefault("format", "raw")
                # hwl.faults: stable node names to insert a blkdebug filter under,
                # and an I/O error reported to the driver rather than stopping the VM.
                options.setdefault("node-name", f"{g.id}-format")
                options.setdefault("file.node-name", f"{g.id}-file")
                options.setdefault("rerror", "report")
                options.setdefault("werror", "report")
            out.append(f'[{g.name} "{g.id}"]' if g.id is not None else f"[{g.name}]")
            out.extend(f'  {k} = "{v}"' for k, v in options.items())
            out.append("")
        return "\n".join(out)


def random_image(seed: int, size: int) -> Path:
    """The seeded random image of ``size`` bytes, made once and kept in the build
    cache (hwl/buildcache.py): generating 160 MiB took most of a machine's boot, a
    copy of it takes a tenth of that."""

    def make(tmp: Path) -> None:
        rng = random.Random(seed)
        with (tmp / "disk.img").open("wb") as fh:
            for at in range(0, size, 1 << 20):
                fh.write(rng.randbytes(min(1 << 20, size - at)))

    return cached(cache_root("disks") / f"random-v1-{seed}-{size}", "disk.img", make)


def parse_groups(text: str, path: Path) -> list[Group]:
    """Parse QEMU's -readconfig syntax, with errors that name the file and line."""
    groups: list[Group] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            m = _GROUP.match(line)
            if not m:
                raise ProfileError(
                    f'{path}:{number}: malformed group header {line!r}: use [name "id"]'
                )
            groups.append(Group(m.group(1), m.group(2), number))
            continue
        m = _OPTION.match(line)
        if not m:
            raise ProfileError(f'{path}:{number}: malformed line {line!r}: use key = "value"')
        if not groups:
            raise ProfileError(f"{path}:{number}: option '{m.group(1)}' outside any [group]")
        key = m.group(1)
        if key in groups[-1].options:
            raise ProfileError(f"{path}:{number}: key '{key}': set twice in one group")
        groups[-1].options[key] = m.group(2)
        groups[-1].option_lines[key] = number
    return groups
