"""The schedule: a campaign's seed fixes, for each trial, the fault, its target,
its settings and its timing, and the seed of the trial's workload.

Each trial's plan is drawn from its own generator, seeded with the campaign's
seed and the trial's index (``random.Random`` of a string hashes it with
SHA-512, not Python's per-process hash), so trial 7 of a campaign is the same
whether 10 or 1000 trials run, on whichever worker, in whichever order.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

from hwl.campaign.spec import PROCESS_KINDS, FaultSpec, Spec, Workload

SECTOR = 512


@dataclass(frozen=True)
class Plan:
    """One trial: what is injected where and when (``timing`` with the one value it
    needs: ``after_bytes``, ``at_ms``, or ``hold_ms`` for in-command), how long it
    stays if it can be healed, and the workload's seed."""

    index: int
    seed: int  # the trial's workload and anything else it draws
    kind: str
    target: str
    timing: str
    settings: dict[str, Any] = field(default_factory=dict)
    after_bytes: int | None = None
    at_ms: int | None = None
    hold_ms: int | None = None
    heal_after_ms: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        return cls(**d)

    def describe(self) -> str:
        when = {
            "after-bytes": f"after {self.after_bytes} bytes",
            "at-random": f"at {self.at_ms} ms",
            "in-command": f"at {self.at_ms} ms in a command held {self.hold_ms} ms",
        }[self.timing]
        extra = ",".join(f"{k}={v}" for k, v in sorted(self.settings.items()))
        return f"{self.kind}({extra}) on {self.target} {when}"


def _pick(rng: random.Random, faults: tuple[FaultSpec, ...]) -> FaultSpec:
    return rng.choices(faults, weights=[f.weight for f in faults])[0]


def plan(spec: Spec, seed: int, index: int) -> Plan:
    """Trial ``index``'s plan under the campaign ``seed``."""
    rng = random.Random(f"hwl-campaign:{seed}:{index}")
    fault = _pick(rng, spec.faults)
    target = rng.choice(fault.targets)
    timing = rng.choice(fault.timing)
    settings = dict(fault.settings)
    w = spec.workload
    if fault.kind == "disk-error" and isinstance(w, Workload):  # the spec says it is
        first = w.offset // SECTOR
        settings["sector"] = rng.randrange(first, first + w.region // SECTOR)
    after_bytes = at_ms = hold_ms = heal_after_ms = None
    if timing == "after-bytes":
        low, high = spec.timing.after_bytes
        after_bytes = rng.randint(low, min(high, w.bytes))
    elif timing == "at-random":
        at_ms = rng.randint(*spec.timing.at_ms)
    else:  # the stall starts at a random moment, the fault comes hold_ms later
        at_ms = rng.randint(*spec.timing.at_ms)
        hold_ms = spec.timing.hold_ms
    if fault.kind not in PROCESS_KINDS or fault.kind == "stop":
        heal_after_ms = rng.randint(*fault.heal_after_ms)
    return Plan(
        index=index,
        seed=rng.getrandbits(63),
        kind=fault.kind,
        target=target,
        timing=timing,
        settings=settings,
        after_bytes=after_bytes,
        at_ms=at_ms,
        hold_ms=hold_ms,
        heal_after_ms=heal_after_ms,
    )


def schedule(spec: Spec, seed: int, trials: int) -> list[Plan]:
    return [plan(spec, seed, i) for i in range(trials)]
