"""Privileges: what one process may send to, call and touch.

A system process's privileges are its system.conf entry (RS hands the entry's text
to the kernel with ``privctl``), plus what was added at run time: the PCI server
gives a driver the ports, memory and IRQ line of the device it reserved. A user
process (one that attached through the kernel's socket) may send to system
processes and make no kernel calls. The root process may do everything.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

from hwl.config.system_conf import (
    ALL,
    ALL_SYS,
    MEMORY_SPACE,
    NR_IRQS,
    PORT_SPACE,
    USER_TARGET,
    IoRange,
    MemoryRange,
    ServiceConfig,
)

CHECKED_SHAPES_KEEP = 256  # vdevio batch shapes a Priv remembers as checked


@dataclass
class Priv:
    """One process's privileges; ``system`` is False for user processes."""

    conf: ServiceConfig
    system: bool = True
    extra_io: list[IoRange] = field(default_factory=list)
    extra_irq: set[int] = field(default_factory=set)
    extra_memory: list[MemoryRange] = field(default_factory=list)
    # PCI functions (bus, dev, fn) the PCI server reserved for it: the kernel stops
    # their bus mastering when it dies, before its DMA buffers are freed.
    extra_pci: set[tuple[int, int, int]] = field(default_factory=set)
    # vdevio op heads (code | width << 8 | port << 16) already found allowed, and
    # the shapes of vdevio batches already found allowed (a driver sends a few
    # shapes, their sectors patched: see calls._shape), each with whether it
    # waits for IRQs. Grants only grow while a Priv lives, so neither goes stale
    # but in a swap; privctl set makes a new Priv.
    checked_ops: set[int] = field(default_factory=set, repr=False)
    checked_shapes: dict[Hashable, bool] = field(default_factory=dict, repr=False)
    checked_mmio: set[tuple[int, int]] = field(default_factory=set, repr=False)  # (addr, width)

    def swap_grants(self, other: Priv) -> None:
        """Exchange the ``add_*`` grants (not the system.conf entry) with ``other``."""
        for name in ("extra_io", "extra_irq", "extra_memory", "extra_pci"):
            mine = getattr(self, name)
            setattr(self, name, getattr(other, name))
            setattr(other, name, mine)
        for priv in (self, other):
            priv.checked_ops.clear()
            priv.checked_shapes.clear()
            priv.checked_mmio.clear()

    def remember_shape(self, shape: Hashable, waits: bool) -> None:
        """A batch of this shape passed vdevio's checks (``waits``: it waits for
        IRQs, whose line is checked again on every call); bounded by starting over."""
        if len(self.checked_shapes) >= CHECKED_SHAPES_KEEP:
            self.checked_shapes.clear()
        self.checked_shapes[shape] = waits

    @classmethod
    def root(cls, label: str) -> Priv:
        conf = ServiceConfig(
            label=label,
            uid=0,
            ipc=ALL,
            calls=ALL,
            io=(PORT_SPACE,),
            irq=tuple(range(NR_IRQS)),
            memory=(MEMORY_SPACE,),
            dma=True,
        )
        return cls(conf)

    @classmethod
    def user(cls, label: str) -> Priv:
        return cls(ServiceConfig(label=label, ipc=ALL_SYS, calls=frozenset()), system=False)

    @property
    def full(self) -> bool:
        """Whether this is the root's "everything" (it may control any service)."""
        return self.conf.calls == ALL and self.conf.ipc == ALL

    def may_send_to(self, target: Priv) -> bool:
        return self.conf.allows_ipc(target.conf.label if target.system else USER_TARGET)

    def allows_call(self, name: str) -> bool:
        return self.conf.allows_call(name)

    def allows_port(self, port: int, width: int) -> bool:
        return self.conf.allows_port(port, width) or any(
            r.contains(port, width) for r in self.extra_io
        )

    def allows_irq(self, line: int) -> bool:
        return self.conf.allows_irq(line) or line in self.extra_irq

    def allows_memory(self, address: int, size: int) -> bool:
        return self.conf.allows_memory(address, size) or any(
            r.contains(address, size) for r in self.extra_memory
        )

    @property
    def dma(self) -> bool:
        return self.conf.dma

    def may_control(self, label: str) -> bool:
        return self.full or self.conf.may_control(label)

    def describe(self) -> dict[str, object]:
        """For ``getinfo priv``: the entry as system.conf text and the additions."""
        return {
            "label": self.conf.label,
            "system": self.system,
            "conf": self.conf.to_text(),
            "io": [[r.base, r.length] for r in self.extra_io],
            "irq": sorted(self.extra_irq),
            "memory": [[r.base, r.length] for r in self.extra_memory],
            "pci": [list(bdf) for bdf in sorted(self.extra_pci)],
        }
