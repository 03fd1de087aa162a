"""at_wini that returns wrong bytes after its first restart: the deliberately
wrong driver of the campaign tests (a crash-only recovery does not see it).

The first incarnation marks the run directory and runs at_wini as it is. Every
later one leaves at_wini's own lie file (drivers/at_wini/lie.py, taken up at
start) asking for a flip in every read, and runs at_wini with the flip replaced
by an overwrite: VFS's grants let a driver write, not read, so at_wini cannot
flip a bit of what it copied, but it can write 16 bytes of its own over it.
"""

from __future__ import annotations

import json
import os
import runpy
from pathlib import Path

from hwl.driver.blockdriver import Iov
from hwl.drivers.at_wini import lie as at_lie

MARK = b"HWL-WRONG-DRIVER"


def overwrite(self: at_lie.Liar, endpoint: int, iov: Iov, offset: int, bit: int) -> None:
    """Write MARK over the read's data at ``offset`` (``bit`` is not used)."""
    conn = self._conn()
    assert conn is not None
    for grant, size in iov:
        if offset < size:
            n = min(len(MARK), size - offset)
            buf = conn.arena.alloc(n)
            try:
                buf.view[:n] = MARK[:n]
                conn.safecopyto(endpoint, grant, offset, buf.offset, n)
            finally:
                conn.arena.free(buf)
            return
        offset -= size


run_dir = Path(os.environ["HWL_RUN_DIR"])
label = os.environ["HWL_SERVICE_LABEL"]
marker = run_dir / f"wrong.{label}.started"
if marker.exists():
    lie = {"action": "flip", "count": -1, "position": -1, "bit": 0, "minor": -1}
    (run_dir / f"lie.{label}.json").write_text(json.dumps(lie))
    at_lie.Liar._flip = overwrite  # type: ignore[method-assign]
else:
    marker.touch()
runpy.run_module("hwl.drivers.at_wini", run_name="__main__", alter_sys=True)
