"""How a test helper program reports its own failure, apart from the system's answers.

A helper answers a command with ``status`` 0 or the errno the system returned
(an IpcError, DsError, PciError). An exception of any other kind is the helper's
own (a bad command, a bug in it): it answers :data:`HELPER_ERROR`, a status no
errno has, with the exception and its traceback, and writes the traceback to its
stderr (its ``<label>.log`` in the run directory). So a helper's bug fails a test
that expects EINVAL instead of passing it.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

#: The status of a helper's own exception: outside every errno (they are < 200).
HELPER_ERROR = 1000


def helper_failed(exc: BaseException) -> dict[str, Any]:
    """The result of a command the helper itself failed, its traceback logged."""
    text = "".join(traceback.format_exception(exc))
    print(f"helper error (status {HELPER_ERROR}):\n{text}", file=sys.stderr, flush=True)
    return {"status": HELPER_ERROR, "error": repr(exc), "traceback": text}
