"""When a fault fires: Linux's fault-injection attributes, seeded.

The words and the order of the checks are those of Linux's fault-injection
framework (Documentation/fault-injection/fault-injection.rst, lib/fault-inject.c
``should_fail``), so a campaign written for one reads the same in the other:

- ``probability``: percent of the opportunities that fail (0 never, 100 always);
- ``interval``: only every ``interval``-th opportunity that passed the other
  checks may fail (1: each);
- ``times``: at most this many failures, then none (-1: no limit);
- ``space``: a budget spent by each opportunity's ``size``; nothing fails while
  it lasts (Linux: "an initial resource budget ... failure injection is
  suppressed until space reaches zero"), e.g. "after K bytes".

Linux draws the probability from the kernel's random pool; here it comes from a
``random.Random`` seeded with ``seed``, so the same seed and the same sequence of
opportunities give the same failures, and :meth:`Trigger.reset` replays them.

See docs/faults.md.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")


class Trigger:
    """Decides, for each opportunity, whether the fault fires (:meth:`should_fail`).

    The default fires at every opportunity. ``Trigger(times=1)`` fires once;
    ``Trigger(probability=5, seed=7)`` fires at about one opportunity in twenty,
    the same ones for the same seed; ``Trigger(space=1 << 20)`` waits for an
    opportunity whose ``size`` finds less than that budget left.
    """

    def __init__(
        self,
        probability: float = 100.0,
        interval: int = 1,
        times: int = -1,
        space: int = 0,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= probability <= 100.0:
            raise ValueError(f"probability {probability!r} is not a percentage (0 to 100)")
        if interval < 1:
            raise ValueError(f"interval {interval!r} must be at least 1")
        if times < -1:
            raise ValueError(f"times {times!r} must be -1 (no limit) or at least 0")
        if space < 0:
            raise ValueError(f"space {space!r} must be at least 0")
        self.probability = float(probability)
        self.interval = interval
        self.times = times
        self.space = space
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        """Back to the start: the budget, the counters and the random sequence."""
        self._rng = random.Random(self.seed)
        self._times_left = self.times
        self._space_left = self.space
        self._count = 0
        self.opportunities = 0
        self.fired = 0

    def should_fail(self, size: int = 1) -> bool:
        """One opportunity of ``size`` units (bytes, sectors, calls): whether it fails.
        The checks run in Linux's order; only the probability draws a number."""
        if size < 0:
            raise ValueError(f"size {size!r} must be at least 0")
        self.opportunities += 1
        if self.probability == 0 or self._times_left == 0:
            return False
        if self._space_left > size:
            self._space_left -= size
            return False
        if self.interval > 1:
            self._count += 1
            if self._count % self.interval:
                return False
        if self.probability < 100.0 and self._rng.random() * 100.0 >= self.probability:
            return False
        if self._times_left != -1:
            self._times_left -= 1
        self.fired += 1
        return True

    def pick(self, items: Iterable[T], size: int = 1) -> list[T]:
        """The items whose opportunity fails, each offered once in order (a fault
        that chooses among sectors, say, when it is injected)."""
        return [item for item in items if self.should_fail(size)]

    @property
    def exhausted(self) -> bool:
        """Whether it can fire no more (``times`` used up, or probability 0)."""
        return self._times_left == 0 or self.probability == 0

    def describe(self) -> dict[str, Any]:
        return {
            "probability": self.probability,
            "interval": self.interval,
            "times": self.times,
            "space": self.space,
            "seed": self.seed,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items())
        return f"Trigger({args})"
