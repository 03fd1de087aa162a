"""Host-side C helpers: a C file compiled with gcc on first use, loaded with ctypes.

For the few loops where CPython's per-call cost is the whole cost (the filter's
2048 sector sums per MiB, hwl/sectors.py). As with the guest stub
(hwl/machine/stub.py), the library lands in a cache directory named by a hash of
the source and flags (hwl/buildcache.py), so an edited source means a new build
and an unchanged one costs one hash; gcc is already one of hwl's install steps
(scripts/setup).
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
from pathlib import Path

from hwl.buildcache import cache_root, cached, run_tool
from hwl.errors import NativeBuildError

CFLAGS = ["-O2", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror"]


def build(source: Path, cache: Path | None = None) -> Path:
    """The path of an up-to-date shared library built from ``source``."""
    text = source.read_bytes()
    digest = hashlib.sha256(" ".join(CFLAGS).encode() + b"\0" + text).hexdigest()[:16]
    out_dir = (cache or cache_root("native")) / f"{source.stem}-{digest}"

    def make(tmp: Path) -> None:
        gcc = shutil.which("gcc")
        if gcc is None:
            raise NativeBuildError(f"'gcc' not found to build {source.name}: apt-get install gcc")
        cmd = [gcc, *CFLAGS, "-o", str(tmp / f"{source.stem}.so"), str(source)]
        run_tool(cmd, f"building {source.name}", NativeBuildError)

    return cached(out_dir, f"{source.stem}.so", make)


def load(source: Path) -> ctypes.CDLL:
    """``source`` built (if it changed) and loaded."""
    return ctypes.CDLL(str(build(source)))
