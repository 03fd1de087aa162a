"""The kernel calls' dispatcher: a call's number to its family's handler, the
caller's privilege for it checked once here, the answer made here.

A call the caller's ``system`` line does not list gets ECALLDENIED; a DMA call
needs ``memory ... dma`` instead (EPERM); the IPC calls every process may make. A
family refuses what its own fields and resources do not allow (a port, an IRQ line,
a memory range outside the caller's privileges: EPERM and a log line). A kernel
bug in a handler answers EGENERIC and is logged; it never takes the kernel down.

The families, one module each as MINIX's ``kernel/system/do_*.c``: devio (port and
string I/O), irq, proc (processes and privileges), clock, dma, grants, keep,
faults, channels. Each takes only the narrow interfaces it uses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from hwl.ipc import codec, wire
from hwl.kernel.calls import dma
from hwl.kernel.calls.base import Answer, CallError, Handler, WithFds
from hwl.kernel.calls.channels import ChannelCalls
from hwl.kernel.calls.clock import Alarms, ClockCalls
from hwl.kernel.calls.devio import PortIo
from hwl.kernel.calls.faults import FaultCalls
from hwl.kernel.calls.grants import Grants
from hwl.kernel.calls.irq import IrqCalls
from hwl.kernel.calls.keep import KeepCalls
from hwl.kernel.calls.proc import IpcRefs, ProcCalls, Processes
from hwl.kernel.calls.stub import Stub
from hwl.kernel.calls.watch import Watches
from hwl.kernel.channels import Channels
from hwl.kernel.errno import Errno
from hwl.kernel.hwfaults import HwFaults
from hwl.kernel.irq import Irqs
from hwl.kernel.proc import Proc, ProcTable
from hwl.kernel.stublink import HasLink

log = logging.getLogger("hwl.kernel.calls")


class Responder(Protocol):
    """How the kernel answers a call: a status frame, ``fds`` riding along."""

    def respond(
        self,
        proc: Proc,
        status: int,
        m_type: int = 0,
        payload: bytes = b"",
        fds: Sequence[int] = (),
    ) -> None: ...


class Calls:
    def __init__(
        self,
        out: Responder,
        machine: HasLink,
        table: ProcTable,
        procs: Processes,
        ipc: IpcRefs,
        irqs: Irqs,
        hw: HwFaults,
        channels: Channels,
        alarms: Alarms,
    ) -> None:
        self.out = out
        self.stub = Stub(machine, self)
        self.pending = self.stub.pending  # calls waiting for the stub (the loop polls them)
        self.poll_pending = self.stub.poll_pending
        self.posted = self.stub.posted  # posted batches (collected without a doorbell)
        grants = Grants(table)
        self.watches = Watches(machine, self.stub)  # watched doorbells (vdevio WATCH)
        self.devio = PortIo(self.stub, grants, irqs, hw, self.watches)
        self.dma = dma.DmaCalls(machine, self.stub, grants, table, self.watches)
        self.keeper = self.dma.keeper  # tagged DMA buffers of the dead, until adopted
        self.keep = KeepCalls()
        families: tuple[object, ...] = (
            self.devio,
            IrqCalls(machine, irqs),
            ProcCalls(table, procs, ipc, channels, machine, self.watches),
            ClockCalls(alarms),
            self.dma,
            grants,
            self.keep,
            FaultCalls(procs, irqs, hw),
            ChannelCalls(table, channels),
        )
        self.handlers: dict[str, Handler] = {}
        for family in families:
            for name in wire.KERNEL_CALL_NUMBERS:
                handler = getattr(family, f"do_{name}", None)
                if handler is not None:
                    assert name not in self.handlers, f"two families handle {name}"
                    self.handlers[name] = handler

    def release(self, proc: Proc) -> None:
        """A process ended: its watched doorbells end, its DMA buffers go (or are
        kept), its devices stop."""
        self.watches.drop(proc, "the process ended")
        self.dma.release(proc)

    def expire_kept(self, now: float) -> None:
        self.dma.expire_kept(now)

    # ------------------------------------------------------------- dispatch
    def dispatch(self, proc: Proc, number: int, payload: bytes, arg: int) -> None:
        """Kernel call ``number`` with its payload and the request's peer field."""
        self.answer(proc, number, lambda: self._run(proc, number, payload, arg))

    def _run(self, proc: Proc, number: int, payload: bytes, arg: int) -> Answer | None:
        """Check the caller may make call ``number``, decode its fields and run it."""
        name = wire.KERNEL_CALL_NAMES.get(number)
        if name is None or (name not in self.handlers and number != wire.VDEVIO):
            raise CallError(Errno.EBADCALL, f"no kernel call number {number}")
        if name in dma.CALLS:
            if not proc.priv.dma:
                raise CallError(Errno.EPERM, f"{name}: no 'memory ... dma' privilege", warn=True)
        elif name not in wire.IPC_KERNEL_CALLS and not proc.priv.allows_call(name):
            raise CallError(
                Errno.ECALLDENIED, f"kernel call '{name}' is not on its system line", warn=True
            )
        if number == wire.VDEVIO:
            return self.devio.vdevio(proc, arg, payload)
        try:
            fields = codec.decode(payload)
        except codec.CodecError as exc:
            raise CallError(Errno.EINVAL, f"{name}: malformed payload: {exc}") from exc
        return self.handlers[name](proc, fields)

    def answer(self, proc: Proc, number: int, run: Callable[[], Answer | None]) -> None:
        """Run a call (or the end of one that waited for the stub) and answer it:
        the reply, or the error with its reason; None means it answers later."""
        try:
            reply = run()
        except CallError as exc:
            level = logging.WARNING if exc.warn else logging.INFO
            log.log(level, "%s: %s (%s) %s", exc.errno.name, proc.label, proc.endpoint, exc.why)
            self.out.respond(proc, -exc.errno, number, codec.encode({"error": exc.why}))
            return
        except Exception as exc:  # a kernel bug must not take the kernel down
            name = wire.KERNEL_CALL_NAMES.get(number, number)
            log.exception("kernel call %s from %s failed", name, proc.label)
            self.out.respond(proc, -Errno.EGENERIC, number, codec.encode({"error": repr(exc)}))
            return
        if isinstance(reply, bytes):
            self.out.respond(proc, 0, number, reply)
        elif isinstance(reply, WithFds):
            self.out.respond(proc, 0, number, codec.encode(reply.reply), reply.fds)
        elif reply is not None:
            self.out.respond(proc, 0, number, codec.encode(reply) if reply else b"")
