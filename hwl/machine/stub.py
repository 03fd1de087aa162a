"""Build the guest stub from guest/ and check its ELF before QEMU boots it.

The stub is rebuilt whenever its sources change: the build lands in a cache
directory named by a hash of the sources and flags, so a changed source means a
new build and an unchanged tree costs one hash. Only gcc and ld are needed
(no make), which is what a fresh Debian machine with gcc has.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile

from hwl.buildcache import cache_root, cached, run_tool
from hwl.errors import StubAbiError, StubBuildError
from hwl.link import abi
from hwl.share import shared

CFLAGS = [
    "-m32",
    "-march=i686",
    "-ffreestanding",
    "-fno-pic",
    "-fno-pie",
    "-fno-stack-protector",
    "-fno-builtin",
    "-nostdinc",
    "-nostdlib",
    "-O2",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-fno-asynchronous-unwind-tables",
]
LDFLAGS = ["-m", "elf_i386", "-nostdlib"]
MULTIBOOT_MAGIC = 0x1BADB002
ELF_NAME = "hwl-stub.elf"


def guest_dir() -> Path:
    """The stub's source folder: $HWL_GUEST_DIR, guest/ of the checkout, or the
    installed copy (hwl/share.py)."""
    return shared("guest", "HWL_GUEST_DIR")


def _sources(src: Path) -> list[Path]:
    return sorted(p for p in src.iterdir() if p.suffix in {".c", ".S", ".h", ".ld"})


def build_stub(src: Path | None = None, cache: Path | None = None) -> Path:
    """Return the path of an up-to-date stub ELF, compiling it if its sources changed."""
    src = src or guest_dir()
    if not (src / "link.ld").is_file():
        raise StubBuildError(f"no guest stub sources in {src} (expected link.ld there)")
    files = _sources(src)
    digest = hashlib.sha256(" ".join(CFLAGS + LDFLAGS).encode())
    for f in files:
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    out_dir = (cache or cache_root("stub")) / digest.hexdigest()[:16]

    def make(tmp: Path) -> None:
        for tool in ("gcc", "ld"):
            if shutil.which(tool) is None:
                raise StubBuildError(f"'{tool}' not found: install it with 'apt-get install gcc'")
        objs = []
        for f in files:
            if f.suffix in {".c", ".S"}:
                obj = tmp / f"{f.name}.o"
                cmd = ["gcc", *CFLAGS, f"-I{src}", "-c", str(f), "-o", str(obj)]
                run_tool(cmd, "stub build", StubBuildError)
                objs.append(str(obj))
        ld = ["ld", *LDFLAGS, "-T", str(src / "link.ld"), "-o", str(tmp / ELF_NAME), *objs]
        run_tool(ld, "stub build", StubBuildError)

    return cached(out_dir, ELF_NAME, make)


@dataclass(frozen=True)
class StubImage:
    """What hwl needs to know about a stub ELF: where its shared structures live."""

    path: Path
    ctl_addr: int
    slots_addr: int
    end_addr: int
    abi_version: int


def inspect_stub(path: Path) -> StubImage:
    """Check the ELF is a multiboot i386 stub of this ABI and return its symbol addresses."""
    try:
        with path.open("rb") as fh:
            elf = ELFFile(fh)
            if elf.elfclass != 32 or elf["e_machine"] != "EM_386":
                raise StubAbiError(f"{path}: not an i386 ELF (class {elf.elfclass})")
            _check_multiboot(path, fh.name)
            symtab = elf.get_section_by_name(".symtab")
            if symtab is None:
                raise StubAbiError(f"{path}: no symbol table (was the stub stripped?)")
            syms = {}
            for name in ("hwl_abi_info", "hwl_ctl", "hwl_slots", "_end"):
                found = symtab.get_symbol_by_name(name)  # type: ignore[attr-defined]
                if not found:
                    raise StubAbiError(f"{path}: symbol '{name}' missing")
                syms[name] = int(found[0]["st_value"])
            info = abi.ABI_INFO.unpack(_read_vaddr(elf, syms["hwl_abi_info"], abi.ABI_INFO.size))
    except OSError as exc:
        raise StubAbiError(f"cannot read stub {path}: {exc}") from exc
    problems = abi.mismatches(info)
    if problems:
        raise StubAbiError(
            f"{path}: stub ABI does not match this hwl (ABI {abi.ABI_VERSION}): "
            + "; ".join(problems)
            + ". Rebuild the stub from this checkout's guest/."
        )
    for name in ("hwl_ctl", "hwl_slots"):
        if syms[name] % 4096:
            raise StubAbiError(f"{path}: {name} at {syms[name]:#x} is not page aligned")
    return StubImage(path, syms["hwl_ctl"], syms["hwl_slots"], syms["_end"], info[0])


def _check_multiboot(path: Path, name: str) -> None:
    head = Path(name).read_bytes()[:8192]
    for off in range(0, len(head) - 12, 4):
        magic, flags, checksum = (
            int.from_bytes(head[off + i : off + i + 4], "little") for i in (0, 4, 8)
        )
        if magic == MULTIBOOT_MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            return
    raise StubAbiError(f"{path}: no multiboot v1 header in the first 8 KiB")


def _read_vaddr(elf: ELFFile, vaddr: int, size: int) -> bytes:
    for seg in elf.iter_segments():
        start = seg["p_vaddr"]
        if (
            seg["p_type"] == "PT_LOAD"
            and start <= vaddr
            and vaddr + size <= start + seg["p_filesz"]
        ):
            data: bytes = seg.data()
            return data[vaddr - start : vaddr - start + size]
    raise StubAbiError(f"address {vaddr:#x} is not in a loaded segment of the stub")
