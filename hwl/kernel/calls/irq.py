"""Interrupts: ``irqsetpolicy``, ``irqenable``, ``irqdisable``, ``irqrmpolicy``, as
MINIX's ``do_irqctl.c``; the hooks themselves are :mod:`hwl.kernel.irq`'s.

A line must be on the caller's ``irq`` line; a hook is named by the number
``irqsetpolicy`` returned, and only its owner may use it.
"""

from __future__ import annotations

from hwl.kernel.calls.base import I32_MAX, Fields, Reply, deny, fail, get_int, require_link
from hwl.kernel.errno import Errno
from hwl.kernel.irq import Irqs
from hwl.kernel.proc import IrqHook, Proc
from hwl.kernel.stublink import HasLink


def hook_field(proc: Proc, f: Fields) -> IrqHook:
    """The caller's hook the ``hook`` field names."""
    return hook_numbered(proc, get_int(f, "hook", 0, I32_MAX))


def hook_numbered(proc: Proc, number: int) -> IrqHook:
    for hook in proc.irq_hooks:
        if hook.hook == number:
            return hook
    fail(Errno.EINVAL, f"IRQ hook {number} is not one of this process's")


class IrqCalls:
    def __init__(self, machine: HasLink, irqs: Irqs) -> None:
        self.machine = machine
        self.irqs = irqs

    def do_irqsetpolicy(self, proc: Proc, f: Fields) -> Reply:
        line = get_int(f, "irq", 0, 15)
        policy = get_int(f, "policy", 0, 1, 0)
        notify_id = get_int(f, "id", 0, 31, 0)
        if not proc.priv.allows_irq(line):
            deny(f"irqsetpolicy: IRQ {line} is not on its irq line")
        require_link(self.machine)
        try:
            hook = self.irqs.set_policy(proc, line, policy, notify_id)
        except LookupError as exc:
            fail(Errno.ENOSPC, str(exc))
        return {"hook": hook.hook}

    def do_irqenable(self, proc: Proc, f: Fields) -> Reply:
        require_link(self.machine)
        self.irqs.enable(hook_field(proc, f))
        return {}

    def do_irqdisable(self, proc: Proc, f: Fields) -> Reply:
        require_link(self.machine)
        self.irqs.disable(hook_field(proc, f))
        return {}

    def do_irqrmpolicy(self, proc: Proc, f: Fields) -> Reply:
        self.irqs.remove(proc, hook_field(proc, f))
        return {}
