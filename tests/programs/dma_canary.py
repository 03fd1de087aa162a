"""DMA canaries: a SEF service with ``memory dma`` that fills freed guest RAM with a
known pattern and later reports any byte that changed.

RS starts it with a system.conf entry of the test's (``memory dma`` and
``system GETINFO``). The test sends ``CMD`` by sendrec; the service answers
``RESULT`` with ``status`` (0 or the errno; its own exception: helper_error.py's
HELPER_ERROR with the traceback) and ``error``, plus:

- "pid": ``pid`` of the process with label ``label`` in the kernel's table (-1: none)
- "present": whether endpoint ``endpoint`` is still in the kernel's table (once
  gone, the kernel has released the process: its DMA buffers are freed or kept)
- "fill": allocate ``unit``-byte buffers (aligned to ``unit``) from the kernel's
  first-fit allocator until every byte of ``targets`` ([start, end) pairs of guest
  physical addresses) lies in one of them, or an allocation lands at or beyond
  the end of the last target (everything below is then taken), or ``limit`` bytes
  were taken; then the same with ``fine``-byte buffers for what a page could not
  reach. Each is filled with its pattern -> ``canaries`` [[phys, size], ...] and
  ``uncovered`` (bytes of ``targets`` in no canary)
- "check": every canary against its pattern -> ``changed`` [[phys, offset, count,
  first bytes], ...] for the canaries with changed bytes
- "free": give every canary back

The pattern of a canary depends on its address, so a frame copied there, or a
canary's bytes moved elsewhere, cannot match it (see ``pattern``).
"""

from __future__ import annotations

import struct
from typing import Any

from helper_error import helper_failed

from hwl.ipc.client import Connection, IpcError
from hwl.ipc.kcalls import DmaHandle
from hwl.system import sef

CMD, RESULT = 1, 2


def pattern(phys: int, size: int) -> bytes:
    """One 32-bit word, repeated, that depends on the canary's address. Its top
    bit is set: a card that reads it as an rtl8139 C+ receive descriptor sees OWN
    and writes the descriptor's status back into the canary."""
    word = struct.pack("<I", 0x80000000 | ((phys * 2654435761 ^ 0xC4A1E5) & 0x7FFFFFFF))
    return (word * (size // 4 + 1))[:size]


def uncovered(targets: list[tuple[int, int]], canaries: list[DmaHandle]) -> int:
    """Bytes of ``targets`` outside every canary."""
    spans = sorted((c.phys, c.phys + c.size) for c in canaries)
    left = 0
    for start, end in targets:
        at = start
        for lo, hi in spans:
            if hi <= at or lo >= end:
                continue
            if lo > at:
                left += lo - at
            at = max(at, hi)
            if at >= end:
                break
        left += max(0, end - at)
    return left


class Canaries:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.bufs: list[DmaHandle] = []
        self.views: list[memoryview] = []

    def _take(self, size: int) -> DmaHandle:
        buf = self.conn.dma_alloc(size, align=size)
        view = self.conn.dma_map(buf)
        view[:] = pattern(buf.phys, buf.size)
        self.bufs.append(buf)
        self.views.append(view)
        return buf

    def fill(self, targets: list[tuple[int, int]], unit: int, fine: int, limit: int) -> int:
        top = max(end for _start, end in targets)
        taken = 0
        for size in (unit, fine):
            while uncovered(targets, self.bufs) and taken < limit:
                try:
                    buf = self._take(size)
                except IpcError:  # ENOMEM: nothing of this size left
                    break
                taken += size
                if buf.phys + size >= top:
                    break
        return uncovered(targets, self.bufs)

    def check(self) -> list[list[int | bytes]]:
        changed: list[list[int | bytes]] = []
        for buf, view in zip(self.bufs, self.views, strict=True):
            now, want = bytes(view), pattern(buf.phys, buf.size)
            if now != want:
                bad = [i for i in range(buf.size) if now[i] != want[i]]
                changed.append([buf.phys, bad[0], len(bad), now[bad[0] : bad[0] + 32]])
        return changed

    def free(self) -> None:
        for view in self.views:
            view.release()
        for buf in self.bufs:
            self.conn.dma_free(buf)
        self.bufs, self.views = [], []


def run(canaries: Canaries, f: dict[str, Any]) -> dict[str, Any]:
    conn = canaries.conn
    op = f.get("op")
    if op == "pid":
        rows = [p for p in conn.proctab() if p["label"] == f["label"]]
        return {"pid": int(rows[0]["pid"]) if rows else -1}
    if op == "present":
        return {"present": any(p["endpoint"] == f["endpoint"] for p in conn.proctab())}
    if op == "fill":
        targets = [(int(a), int(b)) for a, b in f["targets"]]
        left = canaries.fill(targets, int(f["unit"]), int(f["fine"]), int(f["limit"]))
        spans = [[b.phys, b.size] for b in canaries.bufs]
        return {"canaries": spans, "uncovered": left}
    if op == "check":
        return {"changed": canaries.check()}
    if op == "free":
        canaries.free()
        return {}
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    sef.startup()
    canaries = Canaries(sef.connection())
    m = sef.receive()
    while True:
        if m.m_type != CMD:
            m = sef.receive()
            continue
        try:
            result = run(canaries, dict(m.fields))
            result["status"] = 0
        except IpcError as exc:
            result = {"status": int(exc.errno), "error": str(exc)}
        except Exception as exc:  # the helper's own error; it must not end the service
            result = helper_failed(exc)
        try:
            m = sef.reply_receive(m.source, RESULT, result)
        except IpcError:
            m = sef.receive()


if __name__ == "__main__":
    main()
