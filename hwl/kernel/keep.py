"""State a service keeps in the kernel across its own death (kernel call ``keep``).

MINIX's RS keeps no state outside itself: its death is a panic. hwl restarts RS
(and RS restarts DS), and the new incarnation must find what the old one knew:
RS its service table, DS its store. The kernel outlives both, so it holds one
blob per label: ``put`` replaces the caller's blob, ``get`` reads it back. A
process reaches only the blob of its own label (the kernel gave it that label
when it spawned it, so nobody can claim another's), and only system processes
keep anything. Blobs stay until the kernel stops; their size and number are
bounded so no process can exhaust the kernel's memory.

See docs/kernel.md.
"""

from __future__ import annotations

MAX_BLOB = 1 << 20
"""Bytes one label may keep (RS's table with hundreds of services fits)."""

MAX_LABELS = 1024
"""Labels that may keep a blob at once (the kernel has 1024 slots)."""


class KeepError(Exception):
    """A put the store refuses: too big, or too many labels."""


class KeptState:
    """Blobs by label; the kernel's ``keep`` call is its only user."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}

    def put(self, label: str, data: bytes) -> None:
        """Replace ``label``'s blob (empty data forgets it)."""
        if len(data) > MAX_BLOB:
            raise KeepError(f"{len(data)} bytes is over the {MAX_BLOB}-byte limit")
        if not data:
            self._blobs.pop(label, None)
            return
        if label not in self._blobs and len(self._blobs) >= MAX_LABELS:
            raise KeepError(f"{MAX_LABELS} labels already keep state")
        self._blobs[label] = bytes(data)

    def get(self, label: str) -> bytes | None:
        """``label``'s blob, or None if it keeps nothing."""
        return self._blobs.get(label)

    def __len__(self) -> int:
        return len(self._blobs)
