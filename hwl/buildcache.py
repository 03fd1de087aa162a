"""Build products cached under a hash of their inputs: the guest stub
(hwl/machine/stub.py), the host's C helpers (hwl/native.py) and the profiles'
seeded random disk images (hwl/machine/profile.py).

A product lands in ``$XDG_CACHE_HOME/hwl/<kind>/<key>/``: built in a temporary
directory beside it and renamed into place, so a reader never sees half a build
and of two parallel builds the first to finish wins.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from hwl.errors import HwlError


def cache_home() -> Path:
    """``$XDG_CACHE_HOME``, else ``~/.cache``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def cache_root(kind: str) -> Path:
    return cache_home() / "hwl" / kind


def run_tool(cmd: list[str], what: str, error: type[HwlError]) -> None:
    """Run a compiler or linker for ``what``; ``error`` with the command line and
    its output if it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise error(f"{what} failed: {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")


def cached(out_dir: Path, name: str, make: Callable[[Path], None]) -> Path:
    """``out_dir / name``; unless it exists, ``make(tmp)`` builds ``tmp / name``
    first, and ``tmp`` becomes ``out_dir``."""
    product = out_dir / name
    if product.is_file():
        return product
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent))
    try:
        make(tmp)
        try:
            tmp.rename(out_dir)
        except OSError:
            if not product.is_file():  # lost a race with a parallel build only if it finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return product
