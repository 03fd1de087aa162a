"""DMA buffers kept across a driver's death, for its next incarnation to adopt.

A NIC's rings must not move when its driver restarts: e1000 holds reception for
a second after any RCTL write, so a restarted driver adopts the rings its
predecessor left instead of programming new ones. The kernel keeps a dead
process's tagged buffers here under its label (after stopping the bus mastering
of the PCI functions it held); the next process with that label adopts them. What
nobody adopts is freed after ``keep_seconds``, or when a process with the label
dies without adopting.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from hwl.link.memory import DmaBuffer

KEEP_SECONDS = 30.0


@dataclass
class Kept:
    tag: str
    buf: DmaBuffer
    deadline: float


class DmaKeeper:
    """Kept buffers by label, each with the time it is freed if not adopted."""

    def __init__(self, keep_seconds: float = KEEP_SECONDS) -> None:
        self.keep_seconds = keep_seconds
        self._kept: dict[str, list[Kept]] = {}

    def keep(self, label: str, tag: str, buf: DmaBuffer, now: float) -> None:
        self._kept.setdefault(label, []).append(Kept(tag, buf, now + self.keep_seconds))

    def take(self, label: str) -> list[Kept]:
        """Everything kept for ``label``, no longer kept (adopted or to be freed)."""
        return self._kept.pop(label, [])

    def expired(self, now: float) -> Iterator[Kept]:
        """Removes and yields what has waited past its deadline."""
        for label, items in list(self._kept.items()):
            left = [k for k in items if k.deadline > now]
            yield from (k for k in items if k.deadline <= now)
            if left:
                self._kept[label] = left
            else:
                del self._kept[label]

    def next_deadline(self) -> float | None:
        return min((k.deadline for ks in self._kept.values() for k in ks), default=None)

    def __bool__(self) -> bool:
        return bool(self._kept)

    def __len__(self) -> int:
        return sum(len(ks) for ks in self._kept.values())
