"""The client's work in a trial and the host's model of the disk it works on.

The operations are drawn from the trial's seed: sequential reads or writes that
sweep the region in ``chunk``-sized steps, and random ones of ``rand_size``
bytes; positions and sizes are whole sectors, so a write never makes VFS read
first (a read error then stays a read's). The stream has no end: a trial runs it
until its bytes are moved *and* its fault has played out.

The model is the region of the drive's image on the host, read before the
client's first operation, with every write the client made applied to it: what
every read must return, and what the image must hold after the machine closed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hwl.campaign.spec import Workload

SECTOR = 512


@dataclass(frozen=True)
class Op:
    write: bool
    position: int  # bytes from the start of the device
    size: int
    sequential: bool

    @property
    def name(self) -> str:
        return f"{'seq' if self.sequential else 'rand'}-{'write' if self.write else 'read'}"

    def touches(self, sector: int) -> bool:
        return self.position <= sector * SECTOR < self.position + self.size


def operations(w: Workload, seed: int) -> Iterator[tuple[Op, bytes]]:
    """Each operation and, for a write, its data (empty for a read)."""
    rng = random.Random(f"hwl-workload:{seed}")
    kinds = list(w.mix)
    weights = [w.mix[k] for k in kinds]
    cursor = 0
    lo, hi = (max(1, n // SECTOR) for n in w.rand_size)
    region_sectors = w.region // SECTOR
    while True:
        kind = rng.choices(kinds, weights)[0]
        if kind.startswith("seq"):
            size = min(w.chunk, w.region - cursor)
            start, cursor = cursor, (cursor + size) % w.region
        else:
            sectors = rng.randint(lo, hi)
            size = sectors * SECTOR
            start = rng.randrange(region_sectors - sectors + 1) * SECTOR
        write = kind.endswith("write")
        op = Op(write, w.offset + start, size, kind.startswith("seq"))
        yield op, rng.randbytes(size) if write else b""


class Model:
    """The bytes of ``region`` from ``offset`` as the client should see them."""

    def __init__(self, image: Path, offset: int, region: int) -> None:
        self.offset = offset
        with image.open("rb") as f:
            f.seek(offset)
            self.data = bytearray(f.read(region))
        if len(self.data) != region:
            raise ValueError(f"{image} ends before {offset + region}")

    def expect(self, position: int, size: int) -> bytes:
        at = position - self.offset
        return bytes(self.data[at : at + size])

    def write(self, position: int, data: bytes) -> None:
        at = position - self.offset
        self.data[at : at + len(data)] = data

    def mismatches(self, image: Path, limit: int = 8) -> list[int]:
        """Offsets (in the device) of the first sectors where ``image`` differs."""
        with image.open("rb") as f:
            f.seek(self.offset)
            now = f.read(len(self.data))
        return first_differences(self.offset, self.data, now, limit)


def first_differences(base: int, want: bytes | bytearray, got: bytes, limit: int = 8) -> list[int]:
    """The device offsets of the first ``limit`` differing sectors (a short ``got``
    differs from its end on)."""
    if want == got:
        return []
    found: list[int] = []
    for at in range(0, len(want), SECTOR):
        if want[at : at + SECTOR] != got[at : at + SECTOR]:
            found.append(base + at)
            if len(found) >= limit:
                break
    return found
