"""First-fit allocation of aligned ranges: guest RAM for DMA, a process's arena.

It hands out offsets only; the owner of the memory turns them into buffers and
its own errors.
"""

from __future__ import annotations


class RangeAllocator:
    """Free ranges of [start, end), kept sorted and merged."""

    def __init__(self, start: int = 0, end: int = 0) -> None:
        self._free: list[tuple[int, int]] = [(start, end)] if end > start else []
        self._used: dict[int, int] = {}  # start -> size

    def reset(self, start: int, end: int) -> None:
        """Forget every allocation: [start, end) is all free."""
        self._free = [(start, end)]
        self._used.clear()

    def alloc(self, size: int, align: int = 1, boundary: int = 0) -> int | None:
        """The start of ``size`` free units aligned to ``align`` and, with
        ``boundary`` (a power of two), not crossing one; None if none is left."""
        for i, (start, end) in enumerate(self._free):
            addr = (start + align - 1) // align * align
            if boundary and addr // boundary != (addr + size - 1) // boundary:
                addr = (addr + boundary - 1) & ~(boundary - 1)
            if addr + size <= end:
                pieces = [(start, addr), (addr + size, end)]
                self._free[i : i + 1] = [(s, e) for s, e in pieces if e > s]
                self._used[addr] = size
                return addr
        return None

    def free(self, addr: int) -> int | None:
        """Give back the range allocated at ``addr``, merging it with its free
        neighbours; returns its size, or None if nothing was allocated there."""
        size = self._used.pop(addr, None)
        if size is None:
            return None
        self._free.append((addr, addr + size))
        self._free.sort()
        merged: list[tuple[int, int]] = []
        for start, end in self._free:
            if merged and merged[-1][1] == start:
                merged[-1] = (merged[-1][0], end)
            else:
                merged.append((start, end))
        self._free = merged
        return size
