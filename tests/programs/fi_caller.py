"""A SEF service that forwards a request to RS on its own account: a system
service without ``control`` over anything, to show RS refusing it (EPERM).

Request FORWARD (1) with ``m_type`` and ``fields``: sendrec them to RS; the
answer is {status: RS's m_type, error: its reason or ""}.
"""

from __future__ import annotations

import sys

from hwl.proto import codec
from hwl.system import sef

FORWARD = 1


def main() -> int:
    conn = sef.startup()
    m = sef.receive()
    while True:
        fields = m.get("fields", {})
        asked = conn.sendrec(conn.parent, int(m.get("m_type", 0)), fields, timeout=10)  # type: ignore[arg-type]
        error = asked.get("error", "") if asked.payload else ""
        answer: dict[str, codec.Value] = {"status": asked.m_type, "error": error}
        m = sef.reply_receive(m.source, 0, answer)


if __name__ == "__main__":
    sys.exit(main())
