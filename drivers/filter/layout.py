"""The checksum layout on the disk, as MINIX's filter lays it out (sum.c).

The raw disk is cut into groups of ``S + 1`` sectors (``S`` = ``sum_sec``, 8 by
default): ``S`` data sectors, then one checksum sector holding the sums of those
``S`` sectors, sum ``i`` at byte ``i * size`` (the rest of it zero). Logical
sector ``n`` of the filtered disk is raw sector ``n // S * (S + 1) + n % S``; its
sum is in raw sector ``n // S * (S + 1) + S``. A filtered disk has ``raw //
(S + 1) * S`` sectors: a tail shorter than a group is not used.

The filter moves whole groups: a request for logical sectors ``[first, first +
count)`` becomes one transfer of the groups that hold them (``span``), into a
buffer in the layout (the "extended" buffer); ``expand`` / ``collapse`` move the
data between it and the client's contiguous bytes, ``fill`` and ``check`` write
and verify the sums of the sectors the request covers (the other sectors of a
partial group keep the sums they have on the disk). The copies and the ``crc``
sums run in C, one call per request (sectors.py); the other kinds in Python.

See docs/filter.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from hwl import sectors

from . import sums

SECTOR = sums.SECTOR


@dataclass(frozen=True)
class Span:
    """The groups a request covers: raw sectors ``[phys, phys + count)``, the first
    group ``group``; ``partial``: the request leaves some data sector of its first
    or last group out (a write must read those groups first)."""

    phys: int
    count: int
    group: int
    partial: bool


@dataclass(frozen=True)
class Layout:
    sum_sec: int
    kind: str  # a sums.SIZES key

    @property
    def size(self) -> int:
        return sums.SIZES[self.kind]

    @property
    def stride(self) -> int:
        return self.sum_sec + 1

    def filtered_sectors(self, raw_sectors: int) -> int:
        return raw_sectors // self.stride * self.sum_sec

    def phys(self, sector: int) -> int:
        return sector // self.sum_sec * self.stride + sector % self.sum_sec

    def sum_sector(self, sector: int) -> int:
        return sector // self.sum_sec * self.stride + self.sum_sec

    def span(self, first: int, count: int) -> Span:
        g0, g1 = first // self.sum_sec, (first + count - 1) // self.sum_sec
        partial = first % self.sum_sec != 0 or (first + count) % self.sum_sec != 0
        return Span(g0 * self.stride, (g1 - g0 + 1) * self.stride, g0, partial)

    def ext_bytes(self, count: int) -> int:
        """The most bytes a span of ``count`` logical sectors can need."""
        return (count // self.sum_sec + 2) * self.stride * SECTOR

    def pieces(self, first: int, count: int) -> Iterator[tuple[int, int, int, int]]:
        """Per group: (group index in the span, first logical sector, sectors,
        byte offset of that sector in the extended buffer)."""
        s, g0 = self.sum_sec, first // self.sum_sec
        end = first + count
        lo = first
        while lo < end:
            g = lo // s
            hi = min(end, (g + 1) * s)
            yield g - g0, lo, hi - lo, ((g - g0) * self.stride + lo - g * s) * SECTOR
            lo = hi

    def expand(self, ext: memoryview, first: int, data: memoryview, count: int) -> None:
        """Contiguous ``data`` (``count`` sectors from ``first``) into ``ext``."""
        sectors.expand(ext, first, count, self.sum_sec, data)

    def collapse(self, ext: memoryview, first: int, out: memoryview, count: int) -> None:
        """The data of ``count`` sectors from ``first`` out of ``ext``, contiguous."""
        sectors.collapse(ext, first, count, self.sum_sec, out)

    def _sum_at(self, g: int, sector: int) -> int:
        """Byte offset in ``ext`` of the sum of logical ``sector`` (in span group g)."""
        return (g * self.stride + self.sum_sec) * SECTOR + sector % self.sum_sec * self.size

    def _bytes(self, ext: memoryview, first: int, count: int) -> bytes:
        """The groups of the span as bytes: slicing bytes is cheaper than slicing a
        memoryview, and a sum is computed for every sector (2048 per MiB)."""
        groups = (first + count - 1) // self.sum_sec - first // self.sum_sec + 1
        return bytes(ext[: groups * self.stride * SECTOR])

    def fill(self, ext: memoryview, first: int, count: int) -> None:
        """Write the sums of ``count`` sectors from ``first`` into their checksum sectors."""
        if self.kind == "crc":
            sectors.crc_fill(ext, first, count, self.sum_sec)
            return
        data = self._bytes(ext, first, count)
        for g, lo, n, off in self.pieces(first, count):
            if n == self.sum_sec:  # a whole group: its checksum sector is all ours
                base = (g * self.stride + self.sum_sec) * SECTOR
                ext[base : base + SECTOR] = bytes(SECTOR)
            at = self._sum_at(g, lo)
            ext[at : at + n * self.size] = sums.run(self.kind, lo, data, n, off)

    def check(
        self, ext: memoryview, first: int, count: int, out: memoryview | None = None
    ) -> int | None:
        """The first of the ``count`` sectors from ``first`` whose sum is wrong, or
        None; with ``out``, a request whose sums are right is also collapsed into it."""
        if self.kind == "crc":
            return sectors.crc_check(ext, first, count, self.sum_sec, out)
        bad = self._check(ext, first, count)
        if bad is None and out is not None:
            self.collapse(ext, first, out, count)
        return bad

    def _check(self, ext: memoryview, first: int, count: int) -> int | None:
        """:meth:`check` in Python, for the kinds without a C loop."""
        size, data = self.size, self._bytes(ext, first, count)
        pieces = list(self.pieces(first, count))
        want = b"".join(sums.run(self.kind, lo, data, n, off) for _g, lo, n, off in pieces)
        ats = [(self._sum_at(g, lo), n) for g, lo, n, _off in pieces]
        have = b"".join(data[at : at + n * size] for at, n in ats)
        if want == have:
            return None
        for i in range(count):
            if want[i * size : (i + 1) * size] != have[i * size : (i + 1) * size]:
                return first + i
        return None  # not reached: the two differ somewhere
