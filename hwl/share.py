"""Where hwl's shared files are: the machine profiles, the stub's sources and the
stock system.conf.

In a checkout (an editable install) they are the folders beside the package:
``qemu-configs/``, ``guest/`` and ``system.conf``. A wheel carries the same files
as data files under ``<prefix>/share/hwl/`` (pyproject.toml's
``[tool.setuptools.data-files]``), for a library installed as users install one.
$HWL_PROFILE_DIR, $HWL_GUEST_DIR and $HWL_SYSTEM_CONF override each.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]


def _installed_roots() -> list[Path]:
    roots = [Path(sysconfig.get_path("data")) / "share" / "hwl"]
    user = f"{os.name}_user"
    if user in sysconfig.get_scheme_names():
        roots.append(Path(sysconfig.get_path("data", user)) / "share" / "hwl")
    return roots


def shared(name: str, env: str) -> Path:
    """The shared file or folder ``name``: ``$env`` if set, the checkout's, else
    the installed copy. When none exists, the checkout's path, for the caller's
    error to name."""
    given = os.environ.get(env)
    if given:
        return Path(given)
    here = CHECKOUT / name
    if here.exists():
        return here
    for root in _installed_roots():
        if (root / name).exists():
            return root / name
    return here
