"""IRQ hooks: an interrupt becomes a HARDWARE notify to each process hooked to it.

MINIX semantics: the stub masks a line when it fires; the line stays masked until
every hook that saw it has called ``irqenable`` (or, for a hook with the
re-enable policy, at once). ``irqdisable`` masks the line; the last
``irqrmpolicy`` on a line masks it for good.
"""

from __future__ import annotations

import logging
from typing import Protocol

from hwl.ipc import wire
from hwl.kernel.hwfaults import HwFaults
from hwl.kernel.proc import IrqHook, Proc
from hwl.kernel.stublink import HasLink
from hwl.link.link import Link

log = logging.getLogger(__name__)

NR_HOOKS = 64
IRQ_REENABLE = 1  # policy bit, as MINIX's


class Owners(Protocol):
    """The process table, for a hook's owner."""

    def lookup(self, endpoint: int) -> Proc | None: ...


class Notifier(Protocol):
    """IPC's notify (hwl.kernel.ipc.Ipc.post_notify)."""

    def post_notify(self, target: Proc, source: int, bits: int) -> None: ...


class Irqs:
    def __init__(self, machine: HasLink, owners: Owners, notifier: Notifier, hw: HwFaults) -> None:
        self.machine = machine
        self.owners = owners
        self.notifier = notifier
        self.hw = hw  # faultctl's lost interrupts
        self.hooks: dict[int, IrqHook] = {}
        self._next = 0

    def _on_line(self, line: int) -> list[IrqHook]:
        return [h for h in self.hooks.values() if h.line == line]

    def _link(self) -> Link:
        link = self.machine.link
        if link is None or not self.machine.link_ok:
            raise OSError("no machine: the kernel runs without a link to a stub")
        return link

    def set_policy(self, proc: Proc, line: int, policy: int, notify_id: int) -> IrqHook:
        """Hook ``proc`` to ``line`` and unmask it; raises OSError without a link."""
        link = self._link()
        if len(self.hooks) >= NR_HOOKS:
            raise LookupError(f"all {NR_HOOKS} IRQ hooks are in use")
        while self._next in self.hooks:
            self._next = (self._next + 1) % NR_HOOKS
        hook = IrqHook(self._next, line, proc.endpoint, notify_id, bool(policy & IRQ_REENABLE))
        self.hooks[hook.hook] = hook
        proc.irq_hooks.append(hook)
        link.irq_unmask(line)
        return hook

    def fire(self, line: int) -> None:
        hooks = self._on_line(line)
        if not hooks:
            log.debug("IRQ %d fired with no hook; it stays masked", line)
            return
        hw = self.hw
        if hw.faults and hw.irq_lost(line):
            log.warning("IRQ %d lost (a hardware fault); the line stays masked", line)
            for hook in hooks:
                hook.active = True  # as if seen: the owner's irqenable unmasks it
            return
        for hook in hooks:
            owner = self.owners.lookup(hook.owner)
            if owner is None:
                continue
            hook.active = not hook.reenable
            hook.fired += 1
            self.notifier.post_notify(owner, wire.HARDWARE, 1 << hook.notify_id)
        if not any(h.active for h in hooks):
            self._link().irq_unmask(line)

    def spurious(self, line: int) -> int:
        """A spurious interrupt on ``line`` (faultctl): masked and notified as if
        the stub had forwarded one; returns how many hooks were notified."""
        hooks = self._on_line(line)
        if hooks:
            self._link().irq_mask(line)
            self.fire(line)
        return len(hooks)

    def alone(self, hook: IrqHook) -> bool:
        """Whether no other hook shares ``hook``'s line (so a batch may consume its
        interrupts: sdevio's blocks)."""
        return all(h is hook for h in self._on_line(hook.line))

    def unmask_in_batch(self, hook: IrqHook, *, waited: bool = False) -> int | None:
        """Whether a driver's batch that re-enables ``hook`` may unmask the line as
        its last op, saving ``enable``'s round trip: the hook has fired, or the batch
        waited for the line's interrupts itself (``waited``, on a line it has
        ``alone``), so the line is masked and nothing can fire on it before that op;
        and no other hook on the line still waits for its irqenable. Returns None if
        not; else a token for ``enable(hook, unmasked=token)`` once the batch ran."""
        if not (hook.active or waited):
            return None
        if any(h.active for h in self._on_line(hook.line) if h is not hook):
            return None
        return hook.fired

    def enable(self, hook: IrqHook, *, unmasked: int | None = None) -> None:
        """irqenable. ``unmasked``: the token from ``unmask_in_batch`` when the
        caller's batch unmasked the line already, so only the bookkeeping is left,
        and none of it if the line fired again since (masked, its notify posted)."""
        if self.hooks.get(hook.hook) is not hook:
            return  # released meanwhile (its owner died while the batch ran)
        if unmasked is not None:
            if hook.fired == unmasked:
                hook.active = False
            return
        hook.active = False
        if not any(h.active for h in self._on_line(hook.line)):
            self._link().irq_unmask(hook.line)

    def disable(self, hook: IrqHook) -> None:
        self._link().irq_mask(hook.line)

    def remove(self, proc: Proc, hook: IrqHook) -> None:
        del self.hooks[hook.hook]
        proc.irq_hooks.remove(hook)
        link = self.machine.link
        if self.machine.link_ok and link is not None:
            rest = self._on_line(hook.line)
            if not rest:
                link.irq_mask(hook.line)
            elif not any(h.active for h in rest):
                link.irq_unmask(hook.line)

    def release(self, proc: Proc) -> None:
        """A process ended: its hooks go, and lines nobody else holds are masked."""
        for hook in list(proc.irq_hooks):
            try:
                self.remove(proc, hook)
            except Exception as exc:  # the stub may be gone with QEMU
                log.warning("releasing IRQ hook %d of %s: %s", hook.hook, proc.label, exc)
                self.hooks.pop(hook.hook, None)
