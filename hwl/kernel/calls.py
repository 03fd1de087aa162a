"""Kernel calls: each checked against the caller's privileges, then run.

A call's payload is a codec dict and so is its reply, except vdevio's, which are
raw ops (``wire.VDEVIO``). A call the caller's ``system`` line does not list gets
ECALLDENIED; a port, IRQ line or memory range outside its privileges gets EPERM
and a log line; a malformed payload gets EINVAL with the reason in ``error``.
Calls that wait for the stub (``vdevio``, ``sdevio``) spin briefly and then finish
from the main loop, so the kernel keeps serving everyone else while a device works.
"""

from __future__ import annotations

import logging
import os
import signal
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from hwl.config.system_conf import IoRange, MemoryRange, ServiceConfig, SystemConfError
from hwl.config.system_conf import parse as parse_conf
from hwl.ipc import arena, codec, wire
from hwl.kernel.channels import new_event_fd
from hwl.kernel.dmakeep import DmaKeeper
from hwl.kernel.errno import Errno, ErrnoError
from hwl.kernel.hwfaults import HwFault, HwFaults
from hwl.kernel.keep import KeepError, KeptState
from hwl.kernel.priv import Priv
from hwl.kernel.proc import IrqHook, Proc, State
from hwl.kernel.trigger import Trigger
from hwl.link import abi
from hwl.link.batch import Batch, ops_struct
from hwl.link.link import Link, Ticket
from hwl.link.memory import DmaBuffer
from hwl.proto import vdevio as vdevio_proto
from hwl.proto.vdevio import Copy

if TYPE_CHECKING:
    from hwl.kernel.kernel import Kernel

log = logging.getLogger(__name__)

SPIN = 100e-6  # how long a call waits for the stub before the loop takes over
MAX_WAIT_US = 2_000_000  # longest "wait until" step a vdevio may ask the stub for
MAX_DELAY_US = 100_000
MAX_STRING = 1 << 20  # sdevio bytes per call
MAX_BLOCKS = 16  # sdevio blocks per call, each after an interrupt: bounds the stub's time in it
IRQ_WAIT_US = 10_000  # how long the stub waits for a block's interrupt before it hands back
MAX_INLINE = 4096  # dmacopy read/write bytes carried in the message itself
MAX_VECTOR = 64  # vsafecopy entries
STRING_CODES = frozenset({abi.OP_INS, abi.OP_OUTS})  # on the caller's own DMA buffers only
VDEVIO_CODES = frozenset(
    {abi.OP_NOP, abi.OP_IN, abi.OP_OUT, abi.OP_WAIT, abi.OP_DELAY} | abi.MMIO_CODES | STRING_CODES
)
PORT_CODES = frozenset({abi.OP_IN, abi.OP_OUT, abi.OP_WAIT, abi.OP_INS, abi.OP_OUTS})
DMA_CALLS = frozenset({"dmaalloc", "dmafree", "dmacopy", "dmamap", "dmaadopt"})
PAGE = 4096
PCI_COMMAND, PCI_COMMAND_BUS_MASTER = 0x04, 0x04
PCI_COMMAND_INTX_DISABLE, PCI_INTERRUPT_PIN = 0x400, 0x3D
MAX_TAG = 64
MAX_GRANTS = 200  # channels handed over with chanserve's reply (SCM_RIGHTS takes 253 fds)
CHECKED_MMIO_KEEP = 4096  # (address, width) pairs a Priv remembers as allowed

Reply = dict[str, codec.Value]
Answer = Reply | bytes  # bytes: a binary call's reply payload (vdevio)
AnswerT = TypeVar("AnswerT", bound=Answer)
Handler = Callable[[Proc, dict[str, codec.Value]], "Reply | None"]


class CallError(ErrnoError):
    """A refused call: the errno that travels back and why."""

    def __init__(self, errno: Errno, why: str, *, warn: bool = False) -> None:
        super().__init__(errno, why)
        self.warn = warn  # a privilege violation: logged as a warning


def fail(errno: Errno, why: str) -> NoReturn:
    raise CallError(errno, why)


def deny(why: str) -> NoReturn:
    raise CallError(Errno.EPERM, why, warn=True)


# --- reading fields ---------------------------------------------------------------
_MISSING: Any = object()


def get_int(
    f: dict[str, codec.Value], name: str, low: int, high: int, default: int = _MISSING
) -> int:
    value = f.get(name, default)
    if value is _MISSING:
        fail(Errno.EINVAL, f"field '{name}' is missing")
    if not isinstance(value, int) or isinstance(value, bool):
        fail(Errno.EINVAL, f"field '{name}' must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        fail(Errno.EINVAL, f"field '{name}'={value} is outside {low}..{high}")
    return value


def get_str(f: dict[str, codec.Value], name: str, default: str = _MISSING) -> str:
    value = f.get(name, default)
    if value is _MISSING:
        fail(Errno.EINVAL, f"field '{name}' is missing")
    if not isinstance(value, str):
        fail(Errno.EINVAL, f"field '{name}' must be a string, not {type(value).__name__}")
    return value


def get_bytes(f: dict[str, codec.Value], name: str) -> bytes:
    value = f.get(name, _MISSING)
    if not isinstance(value, bytes):
        fail(Errno.EINVAL, f"field '{name}' must be bytes")
    return value


def get_bool(f: dict[str, codec.Value], name: str, default: bool = False) -> bool:
    value = f.get(name, default)
    if not isinstance(value, bool):
        fail(Errno.EINVAL, f"field '{name}' must be a boolean")
    return value


def _one_entry(call: str, text: str, origin: str) -> ServiceConfig:
    """The one system.conf service entry ``text`` must hold."""
    try:
        conf = parse_conf(text, origin)
    except SystemConfError as exc:
        fail(Errno.EINVAL, f"{call}: {exc}")
    if len(conf) != 1:
        fail(Errno.EINVAL, f"{call}: the conf holds {len(conf)} service entries, not 1")
    (entry,) = conf
    return entry


U32 = 0xFFFFFFFF
I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1


@dataclass
class Pending:
    """A call waiting for the stub."""

    proc: Proc
    ticket: Ticket
    nops: int
    finish: Callable[[int, int, bytes], None]  # answers the caller (if it is alive)


class Calls:
    def __init__(self, kernel: Kernel) -> None:
        self.k = kernel
        self.pending: list[Pending] = []
        self.reply_fds: list[int] = []  # sent with the reply being made (not owned)
        self._dma_ids = 0
        self.dma_tags: dict[int, str] = {}  # DMA buffer id -> its tag (tagged ones only)
        self.keeper = DmaKeeper()
        self.hw = HwFaults()  # faultctl's hardware faults (hwl/kernel/hwfaults.py)
        self.kept = KeptState()  # keep's blobs (hwl/kernel/keep.py)
        self.handlers: dict[str, Handler] = {
            name: getattr(self, f"do_{name}")
            for name in wire.KERNEL_CALL_NUMBERS
            if hasattr(self, f"do_{name}")
        }

    # ------------------------------------------------------------- dispatch
    def dispatch(self, proc: Proc, number: int, payload: bytes, arg: int) -> None:
        """Kernel call ``number`` with its payload and the request's peer field."""
        self._answer(proc, number, lambda: self._run(proc, number, payload, arg))

    def _run(self, proc: Proc, number: int, payload: bytes, arg: int) -> Answer | None:
        """Check the caller may make call ``number``, decode its fields and run it."""
        name = wire.KERNEL_CALL_NAMES.get(number)
        if name is None or (name not in self.handlers and number != wire.VDEVIO):
            raise CallError(Errno.EBADCALL, f"no kernel call number {number}")
        if name in DMA_CALLS:
            if not proc.priv.dma:
                raise CallError(Errno.EPERM, f"{name}: no 'memory ... dma' privilege", warn=True)
        elif name not in wire.IPC_KERNEL_CALLS and not proc.priv.allows_call(name):
            raise CallError(
                Errno.ECALLDENIED, f"kernel call '{name}' is not on its system line", warn=True
            )
        if number == wire.VDEVIO:
            return self.vdevio(proc, arg, payload)
        try:
            fields = codec.decode(payload)
        except codec.CodecError as exc:
            raise CallError(Errno.EINVAL, f"{name}: malformed payload: {exc}") from exc
        return self.handlers[name](proc, fields)

    def _answer(self, proc: Proc, number: int, run: Callable[[], Answer | None]) -> None:
        """Run a call (or the end of one that waited for the stub) and answer it:
        the reply, or the error with its reason; None means it answers later."""
        self.reply_fds = []
        try:
            reply = run()
        except CallError as exc:
            level = logging.WARNING if exc.warn else logging.INFO
            log.log(level, "%s: %s (%s) %s", exc.errno.name, proc.label, proc.endpoint, exc.why)
            self.k.respond(proc, -exc.errno, number, codec.encode({"error": exc.why}))
            return
        except Exception as exc:  # a kernel bug must not take the kernel down
            name = wire.KERNEL_CALL_NAMES.get(number, number)
            log.exception("kernel call %s from %s failed", name, proc.label)
            self.k.respond(proc, -Errno.EGENERIC, number, codec.encode({"error": repr(exc)}))
            return
        if isinstance(reply, bytes):
            self.k.respond(proc, 0, number, reply)
        elif reply is not None:
            fds, self.reply_fds = self.reply_fds, []
            self.k.respond(proc, 0, number, codec.encode(reply) if reply else b"", fds)

    def release(self, proc: Proc) -> None:
        """A process ended (its pending calls finish unanswered): stop the bus
        mastering of the PCI functions it held, so its devices write no more into
        its buffers; then keep its tagged DMA buffers for the next process with its
        label and free the rest, and what was kept for its label and not adopted."""
        self.quiesce(proc)
        now = time.monotonic()
        for kept in self.keeper.take(proc.label):
            log.info("%s exited without adopting DMA buffer %r at %#x: freed",
                     proc.label, kept.tag, kept.buf.phys)  # fmt: skip
            self._free(kept.buf)
        for ident, buf in proc.dma.items():
            tag = self.dma_tags.pop(ident, "")
            if tag:
                self.keeper.keep(proc.label, tag, buf, now)
                log.info("DMA buffer %r of %s at %#x (%d bytes) kept %.0f s for adoption",
                         tag, proc.label, buf.phys, buf.size,
                         self.keeper.keep_seconds)  # fmt: skip
            else:
                self._free(buf)
        proc.dma.clear()

    def _free(self, buf: DmaBuffer) -> None:
        if self.k.link is not None:
            self.k.link.free_dma(buf)

    def expire_kept(self, now: float) -> None:
        """Free the kept buffers nobody adopted in time."""
        for kept in self.keeper.expired(now):
            log.info("kept DMA buffer %r at %#x not adopted in time: freed",
                     kept.tag, kept.buf.phys)  # fmt: skip
            self._free(kept.buf)

    def quiesce(self, proc: Proc) -> None:
        """Clear bus master (PCI command bit 2) of each function the dead process
        held, through the stub's cf8/cfc, and set its interrupt disable (bit 10)
        if it signals on an INTx pin: a dead NIC still raises its level-triggered
        line for every frame, and on a shared line that storm starves the live
        driver beside it until the restarted driver resets its card (the next
        reserve clears the bit). A function another live process still holds
        (the other channel of the IDE function) is left as it is."""
        link = self.k.link
        if not proc.priv.extra_pci or link is None or not self.k.link_ok:
            return
        for bdf in sorted(proc.priv.extra_pci):
            name = f"{bdf[0]:02x}:{bdf[1]:02x}.{bdf[2]}"
            others = [p.label for p in self.k.table if p is not proc and bdf in p.priv.extra_pci]
            if others:
                log.info("%s is dead; %s stays bus master: %s holds it too",
                         proc.label, name, ", ".join(others))  # fmt: skip
                continue
            while len(self.pending) >= abi.NSLOTS:  # the sync path needs a free slot
                self.poll_pending()
            try:
                command = link.pci_read(*bdf, PCI_COMMAND, 2)
                quiet = command & ~PCI_COMMAND_BUS_MASTER
                if link.pci_read(*bdf, PCI_INTERRUPT_PIN, 1):
                    quiet |= PCI_COMMAND_INTX_DISABLE
                if quiet != command:
                    link.pci_write(*bdf, PCI_COMMAND, quiet, 2)
            except Exception:
                log.exception("%s is dead; stopping %s's bus mastering failed", proc.label, name)
                continue
            log.info("%s is dead: bus mastering of %s off, its INTx masked (command %#x -> %#x)",
                     proc.label, name, command, quiet)  # fmt: skip

    # ----------------------------------------------------------- the stub
    def _link(self) -> Link:
        link = self.k.link
        if link is None:
            fail(Errno.ENODEV, "this kernel has no machine")
        if not self.k.link_ok:
            fail(Errno.EIO, "the machine is gone (QEMU exited)")
        return link

    def _submit(
        self,
        proc: Proc,
        number: int,
        ticket_of: Callable[[Link], Ticket],
        nops: int,
        finish: Callable[[int, int, bytes], AnswerT],
    ) -> AnswerT | None:
        link = self._link()
        while len(self.pending) >= abi.NSLOTS:
            self.poll_pending()
        ticket = ticket_of(link)
        end = time.perf_counter() + SPIN
        while not link.done(ticket):
            if time.perf_counter() > end:
                proc.state = State.KCALL
                self.pending.append(Pending(proc, ticket, nops, self._wrap(proc, number, finish)))
                return None
        return finish(*link.collect_raw(ticket, nops))

    def _wrap(
        self, proc: Proc, number: int, finish: Callable[[int, int, bytes], Answer]
    ) -> Callable[[int, int, bytes], None]:
        def finish_later(status: int, failed: int, ops: bytes) -> None:
            proc.state = State.RUNNING
            self._answer(proc, number, lambda: finish(status, failed, ops))

        return finish_later

    def poll_pending(self) -> None:
        link = self.k.link
        if link is None:
            return
        for p in list(self.pending):
            if link.done(p.ticket):
                self.pending.remove(p)
                p.finish(*link.collect_raw(p.ticket, p.nops))

    @staticmethod
    def _stub_failure(status: int, failed: int, ops: bytes) -> NoReturn:
        last = _op_result(ops, failed)
        if status == abi.ST_TIMEOUT:
            raise CallError(Errno.ETIMEDOUT, f"op {failed}: wait timed out, last value {last:#x}")
        name = abi.STATUS_NAMES.get(status, f"status {status}")
        raise CallError(Errno.EIO, f"op {failed}: the stub refused it ({name})")

    def _check_port(self, proc: Proc, call: str, port: int, width: int) -> None:
        if width not in (1, 2, 4):
            fail(Errno.EINVAL, f"{call}: width {width} is not 1, 2 or 4")
        if not proc.priv.allows_port(port, width):
            deny(f"{call}: port {port:#x} (width {width}) is outside its io ranges")

    def do_devio(self, proc: Proc, f: dict[str, codec.Value]) -> Reply:
        port = get_int(f, "port", 0, 0xFFFF)
        width = get_int(f, "width", 1, 4, 1)
        self._check_port(proc, "devio", port, width)
        link = self._link()
        if "value" in f:
            value = get_int(f, "value", 0, U32)
            {1: link.outb, 2: link.outw, 4: link.outl}[width](port, value)
            return {}
        value = {1: link.inb, 2: link.inw, 4: link.inl}[width](port)
        return {"value": self.hw.port_read(port, width, value) if self.hw.faults else value}

    def vdevio(self, proc: Proc, peer: int, payload: bytes) -> bytes | None:
        """``payload`` the ops packed as the stub takes them (no codec: see
        ``wire.VDEVIO``); ``peer``: an IRQ hook to re-enable once the batch ran (a
        driver's status read that acknowledges the interrupt, and its irqenable,
        in one call). With a hook the batch may wait for the hook's interrupt
        itself (IRQ_WAIT ops on its line, at most IRQ_WAIT_US each, on a line no
        other hook shares): a command, its interrupt and its status in one call. A
        wait that times out is no error: its result is 0 and the ops after it did
        not run; the line is armed, so the interrupt comes as a notify. With
        ``vdevio.COPY`` in ``peer`` a copy descriptor leads the payload and the
        call also moves the data between a DMA buffer and a grant
        (hwl.proto.vdevio): a whole DMA read or write in one call."""
        copy: Copy | None = None
        hook_id: int | None = None if peer == wire.NO_HOOK else peer
        if peer >= 0 and peer & vdevio_proto.COPY:
            if peer & ~(vdevio_proto.COPY | vdevio_proto.HOOK_MASK):
                fail(Errno.EINVAL, f"vdevio: peer field {peer:#x} has unknown bits")
            copy, payload = self._copy_of(proc, payload), payload[vdevio_proto.SIZE :]
            hook_id = vdevio_proto.hook_of(peer)
        ops = payload
        n, rest = divmod(len(ops), abi.OP_SIZE)
        if rest or not 0 < n <= abi.MAX_OPS:
            fail(Errno.EINVAL, f"vdevio: {len(ops)} bytes are not 1..{abi.MAX_OPS} ops")
        hook = None if hook_id is None else self._hook_numbered(proc, hook_id)
        waits = self._checked(proc, ops, n, hook)
        moved = self._copy_before(proc, copy, n) if copy is not None else None
        irqs, run, nrun, unmasked = self.k.irqs, ops, n, None
        if hook is not None and n < abi.MAX_OPS:
            unmasked = irqs.unmask_in_batch(hook, waited=waits)
            if unmasked is not None:
                run, nrun = ops + _unmask_op(hook.line), n + 1

        def finish(status: int, failed: int, done: bytes) -> bytes:
            waited_out = status == abi.ST_TIMEOUT and _op_code(done, failed) == abi.OP_IRQ_WAIT
            if status != abi.ST_OK and not (waits and waited_out):
                self._stub_failure(status, failed, done)
            if hook is not None:
                irqs.enable(hook, unmasked=unmasked)  # a timed-out wait left it unmasked
            # results are each op's last word: no repacking, only an unmask cut off
            if self.hw.faults:
                done = self.hw.batch_results(done, n)
            if copy is None:
                return done[: n * abi.OP_SIZE]
            if moved is None:  # to the grant, if the batch ran through and its checks hold
                copied = self._copy_after(proc, copy, done) if status == abi.ST_OK else 0
            else:
                copied = moved
            return done[: n * abi.OP_SIZE] + vdevio_proto.COPIED.pack(copied)

        return self._submit(
            proc, wire.VDEVIO, lambda link: link.submit_packed(run, nrun), nrun, finish
        )

    def _checked(self, proc: Proc, ops: bytes, n: int, hook: IrqHook | None) -> bool:
        """Check a batch, or find its shape checked already (the ports, widths and
        op kinds, and every operand a check reads, but not the values OUTs write:
        a driver's command with a new sector has the shape it had); whether it
        waits for IRQs. Each Priv has its own memory of shapes, so new privileges
        (privctl set, an update's swap) check everything again."""
        priv = proc.priv
        key = _shape(ops, -1 if hook is None else hook.line)
        waits = priv.checked_shapes.get(key)
        if waits is None:
            waits = self._check_vdevio_ops(proc, ops, n, hook)
            # String ops are checked against DMA buffers that may be gone by the next call.
            if STRING_CODES.isdisjoint(ops[:: abi.OP_SIZE]):
                priv.remember_shape(key, waits)
        elif waits:
            assert hook is not None  # in the key: a wait without a hook never passed
            self._check_alone(hook)  # another hook may have come to the line since
        return waits

    def _check_alone(self, hook: IrqHook) -> None:
        if not self.k.irqs.alone(hook):
            fail(Errno.EBUSY, f"vdevio: IRQ {hook.line} is shared; its interrupts are not "
                              "this caller's to wait for")  # fmt: skip

    # ------------------------------------------------------- vdevio's DMA copy
    def _copy_of(self, proc: Proc, payload: bytes) -> Copy:
        """The copy descriptor leading ``payload``, its buffer and range checked."""
        if not proc.priv.dma:
            deny("vdevio: a DMA copy needs the 'memory ... dma' privilege")
        try:
            copy = Copy.unpack(payload)
        except ValueError as exc:
            fail(Errno.EINVAL, f"vdevio: {exc}")
        buf = proc.dma.get(copy.buffer)
        if buf is None:
            fail(Errno.EINVAL, f"vdevio: DMA buffer {copy.buffer} is not one of this process's")
        if not 0 < copy.length <= buf.size - copy.offset:
            fail(Errno.EINVAL, f"vdevio: copy of {copy.length} bytes at {copy.offset} "
                               f"of a {buf.size}-byte buffer")  # fmt: skip
        return copy

    def _copy_grant(self, proc: Proc, copy: Copy) -> tuple[memoryview, int]:
        """Where the copy's grant puts its bytes, checked for its direction."""
        if copy.endpoint in (wire.SELF, proc.endpoint):
            return self._own(proc, copy.grant_offset, copy.length)
        access = arena.WRITE if copy.direction == vdevio_proto.TO_GRANT else arena.READ
        return self.resolve(proc, copy.endpoint, copy.grant, access, copy.grant_offset,
                            copy.length)  # fmt: skip

    def _copy_before(self, proc: Proc, copy: Copy, n: int) -> int | None:
        """Before the batch runs: a write's data into the DMA buffer (returns its
        length); for a read (None), its grant checked so that a bad one runs no
        command. Checks must name ops of the batch."""
        for check in copy.checks:
            if check.op >= n:
                fail(Errno.EINVAL, f"vdevio: a copy check names op {check.op} of {n}")
        view, start = self._copy_grant(proc, copy)
        if copy.direction != vdevio_proto.FROM_GRANT:
            return None
        buf = proc.dma[copy.buffer]
        buf.view[copy.offset : copy.offset + copy.length] = view[start : start + copy.length]
        return copy.length

    def _copy_after(self, proc: Proc, copy: Copy, done: bytes) -> int:
        """A read's data into the grant once the batch ran through, if every check
        holds (the command succeeded); the bytes copied. The buffer may have gone
        with a dmafree meanwhile, the grant with a revoke or its owner: checked again."""
        if not proc.alive or any(_op_result(done, c.op) & c.mask != c.value
                                 for c in copy.checks):  # fmt: skip
            return 0  # a dead caller's arena is gone; nobody reads the answer
        buf = proc.dma.get(copy.buffer)
        if buf is None or copy.offset + copy.length > buf.size:
            fail(Errno.EINVAL, f"vdevio: DMA buffer {copy.buffer} was freed meanwhile")
        view, start = self._copy_grant(proc, copy)
        view[start : start + copy.length] = buf.view[copy.offset : copy.offset + copy.length]
        return copy.length

    def _check_vdevio_ops(self, proc: Proc, ops: bytes, n: int, hook: IrqHook | None) -> bool:
        """Every op a port op on the caller's ports or an MMIO op inside its memory
        ranges, waits and delays within bounds, IRQ waits only on ``hook``'s line;
        returns whether there are any IRQ waits."""
        # The first word of each op is code | width << 8 | port << 16: the distinct
        # words, taken at C speed, are all a privilege check needs.
        words = set(memoryview(ops).cast("I")[:: abi.OP_SIZE // 4])  # (host order: x86)
        codes = {w & 0xFF for w in words}
        allowed = VDEVIO_CODES if hook is None else VDEVIO_CODES | {abi.OP_IRQ_WAIT}
        if not codes <= allowed:
            bad = sorted(codes - allowed)
            if hook is None and abi.OP_IRQ_WAIT in codes:
                fail(Errno.EINVAL, "vdevio: an IRQ wait needs a hook (its interrupt)")
            fail(Errno.EINVAL, f"vdevio: op codes {bad} are not port ops (nor MMIO)")
        if not words <= proc.priv.checked_ops:
            for w in words - proc.priv.checked_ops:
                if w & 0xFF in PORT_CODES:
                    self._check_port(proc, "vdevio", w >> 16, w >> 8 & 0xFF)
            proc.priv.checked_ops |= words
        if not codes.isdisjoint(abi.MMIO_CODES):
            # The op's first word holds no address: check each op's own (a, width).
            self._check_mmio_ops(proc, ops, n)
        if not codes.isdisjoint(STRING_CODES):
            self._check_string_ops(proc, ops, n)
        waits = abi.OP_IRQ_WAIT in codes
        if waits and hook is not None:
            self._check_alone(hook)
        if waits or abi.OP_WAIT in codes or abi.OP_DELAY in codes:
            full = ops_struct(n).unpack(ops)
            for i in range(0, len(full), 6):
                code, a, c = full[i], full[i + 3], full[i + 5]
                if code == abi.OP_WAIT and c > MAX_WAIT_US:
                    fail(Errno.EINVAL, f"vdevio: op {i // 6} waits {c} µs (at most {MAX_WAIT_US})")
                if code == abi.OP_DELAY and a > MAX_DELAY_US:
                    fail(
                        Errno.EINVAL, f"vdevio: op {i // 6} delays {a} µs (at most {MAX_DELAY_US})"
                    )
                if code == abi.OP_IRQ_WAIT:
                    assert hook is not None
                    if a != hook.line:
                        fail(Errno.EPERM, f"vdevio: op {i // 6} waits for IRQ {a}, not the "
                                          f"hook's {hook.line}")  # fmt: skip
                    if c > IRQ_WAIT_US:
                        fail(Errno.EINVAL, f"vdevio: op {i // 6} waits {c} µs for IRQ {a} "
                                           f"(at most {IRQ_WAIT_US})")  # fmt: skip
        return waits

    @staticmethod
    def _check_string_ops(proc: Proc, ops: bytes, n: int) -> None:
        """A string op (rep ins/outs) moves ``a`` units of ``width`` between its port
        and guest memory at ``b``: that range must lie inside one of the caller's
        DMA buffers (its own staging memory), never anywhere else in guest RAM."""
        full = ops_struct(n).unpack(ops)
        buffers = [(buf.phys, buf.phys + buf.size) for buf in proc.dma.values()]
        for i in range(0, len(full), 6):
            code, width, a, b = full[i], full[i + 1], full[i + 3], full[i + 4]
            if code not in STRING_CODES:
                continue
            end = b + a * width
            if not any(lo <= b and end <= hi for lo, hi in buffers):
                deny(f"vdevio: op {i // 6} moves [{b:#x}, {end:#x}) of guest memory, "
                     "outside its DMA buffers")  # fmt: skip

    @staticmethod
    def _check_mmio_ops(proc: Proc, ops: bytes, n: int) -> None:
        """Each MMIO op's [a, a + width) inside the caller's memory ranges (a
        reserved device's memory BARs), cached per (address, width). The stub
        refuses RAM on its own; MMIO_WAIT's timeout (port * 10 µs) is bounded by
        its 16 bits to 655 ms, under MAX_WAIT_US."""
        full = ops_struct(n).unpack(ops)
        priv = proc.priv
        for i in range(0, len(full), 6):
            code, width, a = full[i], full[i + 1], full[i + 3]
            if code not in abi.MMIO_CODES or (a, width) in priv.checked_mmio:
                continue
            if width not in (1, 2, 4) or a % width:
                fail(Errno.EINVAL, f"vdevio: op {i // 6}: MMIO at {a:#x} width {width} "
                                   "(1, 2 or 4 bytes, aligned)")  # fmt: skip
            if not priv.allows_memory(a, width):
                deny(f"vdevio: op {i // 6}: MMIO at {a:#x} (width {width}) is outside "
                     "its memory ranges")  # fmt: skip
            if len(priv.checked_mmio) >= CHECKED_MMIO_KEEP:  # a BAR has few registers
                priv.checked_mmio.clear()
            priv.checked_mmio.add((a, width))

    def do_sdevio(self, proc: Proc, f: dict[str, codec.Value]) -> Reply | None:
        """String I/O between a port and a grant, through a kernel-owned guest buffer.
        Optional, for a driver's interrupt handler in one call (a PIO block): ``ready``
        [port, mask, value] reads that port first (an ATA status read acknowledges the
        interrupt) and moves the string only if ``(v & mask) == value``; ``hook`` is
        an IRQ hook re-enabled once the port was read, if it had fired.
        With ``block`` (units per interrupt) one call moves up to MAX_BLOCKS blocks:
        the first at once, each next one after the hook's interrupt, waited for by
        the stub inside the batch (only on a line no other hook shares; else one
        block per call). The reply's ``ready`` is the last value read, ``bytes``
        what moved: less than asked when a block was not ready, or its interrupt
        did not come within IRQ_WAIT_US."""
        port = get_int(f, "port", 0, 0xFFFF)
        width = get_int(f, "width", 1, 4, 2)
        count = get_int(f, "count", 1, MAX_STRING)
        direction = get_str(f, "dir")
        if direction not in ("in", "out"):
            fail(Errno.EINVAL, f"sdevio: dir must be 'in' or 'out', not {direction!r}")
        self._check_port(proc, "sdevio", port, width)
        if count * width > MAX_STRING:
            fail(Errno.EINVAL, f"sdevio: {count * width} bytes is more than {MAX_STRING}")
        ready = self._ready_check(proc, f.get("ready"))
        hook = self._hook(proc, f) if "hook" in f else None
        block = min(get_int(f, "block", 1, MAX_STRING, count), count)
        irqs = self.k.irqs
        nblocks = -(-count // block)
        if nblocks > 1 and (hook is None or not irqs.alone(hook)):
            if hook is None:
                fail(Errno.EINVAL, "sdevio: blocks are paced by interrupts: 'block' needs 'hook'")
            nblocks = 1  # a shared line's interrupts are not this caller's to consume
        nblocks = min(nblocks, MAX_BLOCKS)
        size = min(count, nblocks * block) * width
        granter = get_int(f, "endpoint", I32_MIN, I32_MAX)
        gid = get_int(f, "grant", 0, I32_MAX)
        offset = get_int(f, "offset", 0, I32_MAX, 0)
        access = arena.WRITE if direction == "in" else arena.READ
        view, start = self.resolve(proc, granter, gid, access, offset, size)
        link = self._link()
        buf = self._guest_buffer(link, size)
        batch, checks, moves = Batch(), [], []  # moves: (op index, bytes it moved)
        for at in range(0, size, block * width):
            n = min(block * width, size - at)
            if at:
                assert hook is not None
                batch.irq_wait(hook.line, IRQ_WAIT_US)
            if ready is not None:
                checks.append(batch.wait(*ready, timeout_us=0))  # one read: not ready stops
            if direction == "in":
                moves.append((batch.ins(port, n // width, width, into=buf, offset=at), n))
            else:
                batch.outs_from(port, buf, n // width, width, offset=at)
                moves.append((len(batch) - 1, n))
        if direction == "out":
            buf.view[:size] = view[start : start + size]
        # Re-enable the hook if its interrupt was taken (by the caller, or by the
        # batch's waits); one that has not fired is armed already (a PIO write's
        # first block goes on DRQ, before any interrupt).
        rearm = hook is not None and (hook.active or nblocks > 1)
        unmasked = None
        if hook is not None and rearm:
            unmasked = irqs.unmask_in_batch(hook, waited=nblocks > 1)
            if unmasked is not None:
                batch.irq_unmask(hook.line)

        def finish(status: int, failed: int, done: bytes) -> Reply:
            try:
                ran = len(batch) if status == abi.ST_OK else failed
                waited = status == abi.ST_TIMEOUT and batch.ops[failed][0] == abi.OP_IRQ_WAIT
                if status != abi.ST_OK and not waited and failed not in checks:
                    self._stub_failure(status, failed, done)
                read = [_op_result(done, i) for i in checks if i <= ran]
                moved = sum(n for i, n in moves if i < ran)
                if hook is not None and rearm:
                    if status == abi.ST_OK or waited:
                        irqs.enable(hook, unmasked=unmasked)  # the stub left it unmasked
                    else:
                        irqs.enable(hook)  # the batch stopped after a status read
                if direction == "in" and moved:
                    # The granter may have revoked or died meanwhile: check again.
                    dst, at = self.resolve(proc, granter, gid, access, offset, moved)
                    dst[at : at + moved] = buf.view[:moved]
                return {"bytes": moved, "ready": read[-1] if read else None}
            finally:
                link.free_dma(buf)

        return self._submit(
            proc,
            wire.KERNEL_CALL_NUMBERS["sdevio"],
            lambda lk: lk.submit(batch),
            len(batch),
            finish,
        )

    def _ready_check(self, proc: Proc, value: codec.Value) -> tuple[int, int, int] | None:
        """sdevio's ``ready`` field: [port, mask, value], a byte port of the caller's."""
        if value is None:
            return None
        if (
            not isinstance(value, list)
            or len(value) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            fail(Errno.EINVAL, f"sdevio: ready must be [port, mask, value], not {value!r}")
        port, mask, want = (int(v) for v in value)  # type: ignore[arg-type]
        if not (0 <= port <= 0xFFFF and 0 <= mask <= 0xFF and 0 <= want <= 0xFF):
            fail(Errno.EINVAL, f"sdevio: ready {value!r} is out of range (a byte port)")
        self._check_port(proc, "sdevio ready", port, 1)
        return port, mask, want

    @staticmethod
    def _guest_buffer(link: Link, size: int) -> DmaBuffer:
        try:
            return link.alloc_dma(size, align=4)
        except Exception as exc:
            raise CallError(Errno.ENOMEM, f"no {size}-byte guest buffer: {exc}") from exc

    # ------------------------------------------------------------------ IRQs
    def _hook(self, proc: Proc, f: dict[str, codec.Value]) -> IrqHook:
        return self._hook_numbered(proc, get_int(f, "hook", 0, I32_MAX))

    @staticmethod
    def _hook_numbered(proc: Proc, number: int) -> IrqHook:
        for hook in proc.irq_hooks:
            if hook.hook == number:
                return hook
        fail(Errno.EINVAL, f"IRQ hook {number} is not one of this process's")

    def do_irqsetpolicy(self, proc: Proc, f: dict[str, codec.Value]) -> Reply:
        line = get_int(f, "irq", 0, 15)
        policy = get_int(f, "policy", 0, 1, 0)
        notify_id = get_int(f, "id", 0, 31, 0)
        if not proc.priv.allows_irq(line):
            deny(f"irqsetpolicy: IRQ {line} is not on its irq line")
        self._link()
        try:
            hook = self.k.irqs.set_policy(proc, line, policy, notify_id)
        except LookupError as exc:
            fail(Errno.ENOSPC, str(exc))
        return {"hook": hook.hook}

    def do_irqenable(self, proc: Proc, f: dict[str, codec.Value]) -> Reply:
        self._link()
        self.k.irqs.enable(self._hook(proc, f))
        return {}

    def do_irqdisable(self, proc: Proc, f: dict[str, codec.Value]) -> Reply:
        self._link()
        self.k.irqs.disable(self._hook(proc, f))
        return {}

    def do_irqrmpolicy(self, proc: Proc, f: dict[str, codec.Value]) -> Reply:
        self.k.irqs.remove(proc, self._hook(proc, f))
        return {}

    # ------------------------------------------------------------ processes
    def _target(self, f: dict[str, codec.Value], name: str = "endpoint") -> Proc:
        endpoint = get_int(f, name, I32_MIN, I32_MAX)
        proc = self.k.table.lookup(endpoint)
        if proc is None:
            fail(Errno.EDEADSRCDST, f"{wire.endpoint_name(endpoint)} is not a live process")
        return proc

    def _controls(self, proc: Proc, target: Proc, call: str) -> None:
        if target.parent != proc.endpoint and not proc.priv.may_control(target.label):
            deny(f"{call}: may not control {target.label} (not its parent nor on its control line)")

    def do_privctl(self, proc: Proc, f: dict[str, codec.Value]) -> Reply:
        target = self._target(f)
        op = get_str(f, "op")
        if op == "get":
            return {"priv": target.priv.describe()}  # type: ignore[dict-item]
        if op in ("add_io", "add_irq", "add_mem", "add_pci"):
            # MINIX: adding a resource needs only the PRIVCTL call (the PCI server
            # grants a reserved device to a driver it did not start).
            if not target.priv.system:
                deny(f"privctl {op}: {target.label} is a user process")
        else:
            self._controls(proc, target, "privctl")
        priv = target.priv
        if op == "set":
            entry = _one_entry("privctl", get_str(f, "conf"), "<privctl>")
            target.priv = Priv(entry)
            target.label = entry.label  # a process is known by its service's label
            self.k.channels.recheck(target)
        elif op == "add_io":
            base = get_int(f, "base", 0, 0xFFFF)
            length = get_int(f, "length", 1, 0x10000 - base, 1)
            priv.extra_io.append(IoRange(base, length))
        elif op == "add_irq":
            priv.extra_irq.add(get_int(f, "irq", 0, 15))
        elif op == "add_mem":
            base = get_int(f, "base", 0, U32)
            priv.extra_memory.append(MemoryRange(base, get_int(f, "length", 1, (1 << 32) - base)))
        elif op == "add_pci":  # a reserved function: bus mastering off at its death
            bdf = (get_int(f, "bus", 0, 255), get_int(f, "dev", 0, 31), get_int(f, "fn", 0, 7))
            priv.extra_pci.add(bdf)
        else:
            fail(Errno.EINVAL, f"privctl: unknown op {op!r} "
                 "(set, add_io, add_irq, add_mem, add_pci, get)")  # fmt: skip
        log.info("privctl %s by %s on %s", op, proc.label, target.label)
        return {}

    def do_statectl(self, proc: Proc, f: dict[str, codec.Value]) -> Reply:
        op = get_str(f, "op")
        if op != "clear_ipc_refs":
            fail(Errno.EINVAL, f"statectl: unknown op {op!r} (clear_ipc_refs)")
        self.k.ipc.clear_refs(proc)
        return {}

    def do_spawn(self, proc: Proc, f: dict[str, codec.Value]) -> Reply:
        argv = f.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            fail(Errno.EINVAL, "spawn: argv must be a non-empty list of strings")
        label = get_str(f, "label")
        if not label or "/" in label or len(label) > 64:
            fail(Errno.EINVAL, f"spawn: bad label {label!r}")
        env = f.get("env", {})
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            fail(Errno.EINVAL, "spawn: env must map names to strings")
        size = get_int(f, "arena", arena.DATA_START + 4096, 1 << 30, arena.DEFAULT_SIZE)
        if "conf" in f:
            priv = Priv(_one_entry("spawn", get_str(f, "conf"), f"<spawn {label}>"))
        else:
            priv = Priv.user(label)
        reuse = get_int(f, "endpoint", 0, I32_MAX) if "endpoint" in f else None
        try:
            child = self.k.spawn(
                proc,
                [str(a) for a in argv],
                label,
                priv,
                env={str(k): str(v) for k, v in env.items()},
                arena_size=size,
                endpoint=reuse,
                cold=get_bool(f, "cold"),
            )
        except LookupError as exc:
            fail(Errno.EAGAIN, f"spawn: {exc}")
        except OSError as exc:
            fail(Errno.ENOENT if isinstance(exc, FileNotFoundError) else Errno.ENOEXEC,
                 f"spawn: cannot run {argv[0]!r}: {exc.strerror or exc}")  # fmt: skip
        assert child.pid is not None
        return {"endpoint": child.endpoint, "pid": child.pid}

    def do_kill(self, proc: Proc, f: dict[str, codec.Value]) -> Reply:
        target = self._target(f)
        signo = get_int(f, "signal", 1, 64, int(signal.SIGKILL))
        self._controls(proc, target, "kill")
        if target.pid is None:
            self.k.doom(target, f"cut off by {proc.label}")
        else:
            os.kill(target.pid, signo)
        return {}

    def do_update(self, proc: Proc, f: dict[str, codec.Value]) -> Reply:
        """Swap the processes behind endpoints ``src`` and ``dst`` (live update):
        afterwards the program that ran at ``dst`` answers at ``src`` and the other
        way round; calling it again swaps back."""
        src, dst = self._target(f, "src"), self._target(f, "dst")
        if src is dst:
            fail(Errno.EINVAL, "update: src and dst are the same process")
        if proc in (src, dst):
            fail(Errno.EINVAL, "update: a process cannot update itself")
        for target in (src, dst):
            self._controls(proc, target, "update")
            if any(p is target for p, _ in self.k.doomed):
                fail(Errno.EDEADSRCDST, f"update: {target.label} is dying")
            if target.state in (State.SENDING, State.KCALL):
                fail(Errno.EBUSY, f"update: {target.label} ({wire.endpoint_name(target.endpoint)})"
                     f" is {target.state.value}: only a receiving or running process "
                     "can be swapped")  # fmt: skip
        self.k.update(src, dst)
        log.info(
            "update by %s: %s now runs %s (pid %s), %s runs %s (pid %s)",
            proc.label,
            wire.endpoint_name(src.endpoint), src.label, src.pid,
            wire.endpoint_name(dst.endpoint), dst.label, dst.pid,
        )  # fmt: skip
        return {}

    def do_exit(self, proc: Proc, f: dict[str, codec.Value]) -> Reply:
        self.k.doom(proc, f"exit({get_int(f, 'status', 0, 255, 0)})")
        return {}

    def do_diagctl(self, proc: Proc, f: dict[str, codec.Value]) -> Reply:
        log.info("diag %s: %s", proc.label, get_str(f, "text")[:1000])
        return {}

    def do_faultctl(self, proc: Proc, f: dict[str, codec.Value]) -> Reply:
        """Hardware faults at the kernel's layer, the root's only (hwl/kernel/hwfaults.py):
        ``op`` add (``kind`` port-flip with ``port`` and ``bit``, or irq-lost with
        ``line``; the trigger's ``probability``, ``interval``, ``times``, ``space``,
        ``seed``) -> ``id``; remove (``id``) -> the fault as it ended; spurious
        (``line``) -> ``hooks`` notified; list -> ``faults``."""
        if proc.endpoint != self.k.root_endpoint:
            fail(Errno.EPERM, "faultctl: only the root sets hardware faults")
        op = get_str(f, "op")
        if op == "list":
            return {"faults": self.hw.describe()}  # type: ignore[dict-item]
        if op == "remove":
            fault_id = get_int(f, "id", 0, I32_MAX)
            if fault_id not in self.hw.faults:
                fail(Errno.ESRCH, f"faultctl: no hardware fault {fault_id}")
            return {"fault": self.hw.remove(fault_id).describe()}
        if op == "spurious":
            line = get_int(f, "line", 0, 15)
            return {"hooks": self.k.irqs.spurious(line)}
        if op != "add":
            fail(Errno.EINVAL, f"faultctl: unknown op {op!r} (add, remove, spurious, list)")
        kind = get_str(f, "kind")
        try:
            trigger = Trigger(
                probability=get_int(f, "probability", 0, 100, 100),
                interval=get_int(f, "interval", 1, I32_MAX, 1),
                times=get_int(f, "times", -1, I32_MAX, -1),
                space=get_int(f, "space", 0, I32_MAX, 0),
                seed=get_int(f, "seed", 0, U32, 0),
            )
        except ValueError as exc:
            fail(Errno.EINVAL, f"faultctl: {exc}")
        fault = HwFault(self.hw.new_id(), kind, trigger)
        if kind == "port-flip":
            fault.port = get_int(f, "port", 0, 0xFFFF)
            fault.bit = get_int(f, "bit", 0, 31)
        elif kind == "irq-lost":
            fault.line = get_int(f, "line", 0, 15)
        else:
            fail(Errno.EINVAL, f"faultctl: unknown kind {kind!r} (port-flip, irq-lost)")
        try:
            self.hw.add(fault)
        except LookupError as exc:
            fail(Errno.ENOSPC, f"faultctl: {exc}")
        log.warning("hardware fault %d set by %s: %s", fault.id, proc.label, fault.describe())
        return {"id": fault.id}

    def do_keep(self, proc: Proc, f: dict[str, codec.Value]) -> Reply:
        """State kept across the caller's death under its label (hwl/kernel/keep.py):
        ``op`` put copies ``length`` bytes at ``offset`` of its arena into the blob;
        get says the blob's ``length`` and, when ``offset`` is given and ``length``
        (the room there) holds it, copies it there (``copied``)."""
        if not proc.priv.system:
            deny("keep: only system processes keep state")
        op = get_str(f, "op")
        if op == "put":
            length = get_int(f, "length", 0, I32_MAX)
            data = b""
            if length:
                view, start = self._own(proc, get_int(f, "offset", 0, I32_MAX), length)
                data = bytes(view[start : start + length])
            try:
                self.kept.put(proc.label, data)
            except KeepError as exc:
                fail(Errno.E2BIG, f"keep: {exc}")
            return {}
        if op != "get":
            fail(Errno.EINVAL, f"keep: unknown op {op!r} (put, get)")
        blob = self.kept.get(proc.label)
        size = len(blob) if blob is not None else 0
        room = get_int(f, "length", 0, I32_MAX, 0)
        copied = blob is not None and "offset" in f and size <= room
        if copied and blob:
            view, start = self._own(proc, get_int(f, "offset", 0, I32_MAX), size)
            view[start : start + size] = blob
        return {"length": size, "kept": blob is not None, "copied": copied}

    def do_getinfo(self, proc: Proc, f: dict[str, codec.Value]) -> Reply:
        what = get_str(f, "what")
        if what == "whoami":
            return {"endpoint": proc.endpoint, "label": proc.label, "parent": proc.parent,
                    "root": self.k.root_endpoint}  # fmt: skip
        if what == "uptime":
            seconds = self.k.uptime()
            return {"ticks": int(seconds * wire.HZ), "seconds": seconds, "hz": wire.HZ}
        if what == "proctab":
            return {"procs": [p.describe() for p in self.k.table]}  # type: ignore[misc]
        if what == "exits":
            records = [
                {"endpoint": r.endpoint, "pid": r.pid, "label": r.label, "status": r.status,
                 "signal": r.signal}
                for r in proc.exits
            ]  # fmt: skip
            proc.exits.clear()
            return {"exits": records}  # type: ignore[dict-item]
        if what == "priv":
            return {"priv": proc.priv.describe()}  # type: ignore[dict-item]
        if what == "machine":
            link = self._link()
            return {"tsc_khz": link.tsc_khz, "ram": link.memory.size}
        fail(
            Errno.EINVAL,
            f"getinfo: unknown item {what!r} (whoami, uptime, proctab, exits, priv, machine)",
        )

    def do_setalarm(self, proc: Proc, f: dict[str, codec.Value]) -> Reply:
        now = time.monotonic()
        if "seconds" in f:
            seconds = f["seconds"]
            if (
                not isinstance(seconds, (int, float))
                or isinstance(seconds, bool)
                or not 0 <= seconds < 1e7
            ):
                fail(Errno.EINVAL, "setalarm: seconds must be a number in 0..1e7")
            deadline: float | None = now + seconds if seconds else None
        else:
            ticks = get_int(f, "ticks", 0, 1 << 40)
            if get_bool(f, "absolute"):
                deadline = self.k.ipc.boot + ticks / wire.HZ if ticks else None
            else:
                deadline = now + ticks / wire.HZ if ticks else None
        old = self.k.set_alarm(proc, deadline)
        left = max(0.0, old - now) if old is not None else 0.0
        return {"previous_ticks": int(left * wire.HZ), "previous_seconds": left}

    # ------------------------------------------------------ memory: DMA, umap
    def _dma_buffer(self, proc: Proc, f: dict[str, codec.Value]) -> tuple[int, DmaBuffer]:
        ident = get_int(f, "id", 0, I32_MAX)
        buf = proc.dma.get(ident)
        if buf is None:
            fail(Errno.EINVAL, f"DMA buffer {ident} is not one of this process's")
        return ident, buf

    def do_dmaalloc(self, proc: Proc, f: dict[str, codec.Value]) -> Reply:
        size = get_int(f, "size", 1, 1 << 30)
        align = get_int(f, "align", 1, 1 << 20, 4096)
        boundary = get_int(f, "boundary", 0, 1 << 30, 0)
        if align & (align - 1) or boundary & (boundary - 1):
            fail(Errno.EINVAL, "dmaalloc: align and boundary must be powers of two")
        tag = get_str(f, "tag", "")
        if len(tag) > MAX_TAG:
            fail(Errno.EINVAL, f"dmaalloc: a tag of {len(tag)} characters (at most {MAX_TAG})")
        link = self._link()
        try:
            buf = link.alloc_dma(size, align, boundary)
        except Exception as exc:
            fail(Errno.ENOMEM, f"dmaalloc: {exc}")
        self._dma_ids += 1
        proc.dma[self._dma_ids] = buf
        if tag:
            self.dma_tags[self._dma_ids] = tag
        return {"id": self._dma_ids, "phys": buf.phys, "size": buf.size}

    def do_dmaadopt(self, proc: Proc, f: dict[str, codec.Value]) -> Reply:
        """The tagged buffers a dead process with the caller's label left; the
        caller's from now on, under new ids (its tagged buffers again)."""
        adopted: list[codec.Value] = []
        for kept in self.keeper.take(proc.label):
            self._dma_ids += 1
            proc.dma[self._dma_ids] = kept.buf
            self.dma_tags[self._dma_ids] = kept.tag
            adopted.append({"id": self._dma_ids, "phys": kept.buf.phys, "size": kept.buf.size,
                            "tag": kept.tag})  # fmt: skip
            log.info("%s adopted DMA buffer %r at %#x", proc.label, kept.tag, kept.buf.phys)
        return {"buffers": adopted}

    def do_dmafree(self, proc: Proc, f: dict[str, codec.Value]) -> Reply:
        ident, buf = self._dma_buffer(proc, f)
        self.dma_tags.pop(ident, None)
        del proc.dma[ident]
        self._link().free_dma(buf)
        return {}

    def do_dmamap(self, proc: Proc, f: dict[str, codec.Value]) -> Reply:
        """The guest-RAM file (over SCM_RIGHTS) and the page range of one of the
        caller's DMA buffers, for the caller to mmap: its rings and packet buffers
        without a kernel call each. The trust boundary is ``memory dma`` itself (a
        bus-master driver can make its device write anywhere: no IOMMU on pc), so
        the file grants a holder of it nothing new; the client maps only the
        buffer's pages and closes the fd."""
        _ident, buf = self._dma_buffer(proc, f)
        fd = self._link().memory.fd
        if fd is None:
            fail(Errno.ENODEV, "dmamap: the kernel has no guest-RAM file to share")
        start = buf.phys & ~(PAGE - 1)
        end = (buf.phys + buf.size + PAGE - 1) & ~(PAGE - 1)
        self.reply_fds = [fd]
        return {"offset": start, "length": end - start, "phys": buf.phys, "size": buf.size}

    # --------------------------------------------------------- call channels
    def do_chanserve(self, proc: Proc, f: dict[str, codec.Value]) -> Reply:
        """The caller serves call channels from now on: the reply carries its event
        fd, which the kernel bumps when a kernel-path message waits while the
        caller is not in a kernel receive (see hwl.kernel.channels)."""
        _channels_on()
        if proc.event_fd < 0:
            proc.event_fd = new_event_fd()
        proc.armed = False  # it receives (non-blocking) before it first polls
        # The channels already granted to the endpoint come along (a live update's
        # new version may answer their calls before its first receive).
        granted, proc.grants = proc.grants[:MAX_GRANTS], proc.grants[MAX_GRANTS:]
        self.reply_fds = [proc.event_fd] + [c.server_end.fileno() for c in granted]
        return {"clients": [c.client for c in granted]}

    def do_chanopen(self, proc: Proc, f: dict[str, codec.Value]) -> Reply:
        """A call channel from the caller to ``dest``: checked as a send is (the
        target lives, the ipc line allows it), refused (ENOTSUP) if ``dest`` does
        not serve channels; the reply carries the caller's end."""
        _channels_on()
        dest = get_int(f, "dest", I32_MIN, I32_MAX)
        target = self.k.table.lookup(dest)
        if target is None:
            fail(Errno.EDEADSRCDST, f"chanopen: {wire.endpoint_name(dest)} is not a live process")
        if target is proc:
            fail(Errno.ELOCKED, "chanopen: a channel to itself")
        if not proc.priv.may_send_to(target.priv):  # no reply exception: a channel is for calls
            raise CallError(Errno.ECALLDENIED, f"chanopen: {target.label} is not on its ipc line",
                            warn=True)  # fmt: skip
        if target.event_fd < 0:
            fail(Errno.ENOTSUP, f"chanopen: {target.label} does not serve call channels")
        try:
            channel = self.k.channels.open(proc, target)
        except LookupError as exc:
            fail(Errno.EAGAIN, f"chanopen: {exc}")
        except OSError as exc:  # out of descriptors: the caller stays on the kernel path
            fail(Errno.EAGAIN, f"chanopen: no channel now ({exc.strerror or exc})")
        self.reply_fds = [channel.client_end.fileno()]
        return {"server": target.endpoint}

    def do_dmacopy(self, proc: Proc, f: dict[str, codec.Value]) -> Reply:
        """Move bytes between a DMA buffer and the message (read, write), a grant
        (to_grant, from_grant) or the caller's own arena (endpoint SELF)."""
        _ident, buf = self._dma_buffer(proc, f)
        op = get_str(f, "op")
        offset = get_int(f, "offset", 0, buf.size, 0)
        if op == "write":
            data = get_bytes(f, "data")
            if offset + len(data) > buf.size:
                fail(Errno.EINVAL, f"dmacopy: {len(data)} bytes at {offset} overflow the buffer")
            buf.view[offset : offset + len(data)] = data
            return {}
        length = get_int(f, "length", 0, buf.size - offset)
        if op == "read":
            if length > MAX_INLINE:
                fail(Errno.EINVAL, f"dmacopy: read {length} bytes inline (at most {MAX_INLINE})")
            return {"data": bytes(buf.view[offset : offset + length])}
        if op not in ("to_grant", "from_grant"):
            fail(Errno.EINVAL, f"dmacopy: unknown op {op!r} (read, write, to_grant, from_grant)")
        granter = get_int(f, "endpoint", I32_MIN, I32_MAX)
        goff = get_int(f, "grant_offset", 0, I32_MAX, 0)
        access = arena.WRITE if op == "to_grant" else arena.READ
        if granter in (wire.SELF, proc.endpoint):
            view, start = self._own(proc, goff, length)
        else:
            gid = get_int(f, "grant", 0, I32_MAX)
            view, start = self.resolve(proc, granter, gid, access, goff, length)
        if op == "to_grant":
            view[start : start + length] = buf.view[offset : offset + length]
        else:
            buf.view[offset : offset + length] = view[start : start + length]
        return {}

    def do_umap(self, proc: Proc, f: dict[str, codec.Value]) -> Reply:
        if "id" in f:
            _ident, buf = self._dma_buffer(proc, f)
            offset = get_int(f, "offset", 0, buf.size - 1, 0)
            return {"phys": buf.phys + offset}
        base = get_int(f, "phys", 0, U32)
        length = get_int(f, "length", 1, 1 << 32)
        if not proc.priv.allows_memory(base, length):
            deny(f"umap: memory {base:#x}+{length:#x} is outside its memory ranges")
        return {"phys": base}

    # ---------------------------------------------------------------- grants
    def _own(self, proc: Proc, offset: int, length: int) -> tuple[memoryview, int]:
        size = len(proc.arena_view)
        if offset < arena.DATA_START or offset + length > size:
            fail(Errno.EFAULT, f"arena range [{offset}, {offset + length}) is outside "
                 f"its data area [{arena.DATA_START}, {size})")  # fmt: skip
        return proc.arena_view, offset

    def resolve(
        self, caller: Proc, granter_ep: int, gid: int, access: int, offset: int, length: int
    ) -> tuple[memoryview, int]:
        """Where grant ``gid`` of ``granter_ep`` puts ``length`` bytes at ``offset``,
        after checking that ``caller`` may use it for ``access``."""
        requester = caller.endpoint
        for _depth in range(4):
            granter = self.k.table.lookup(granter_ep)
            if granter is None:
                fail(Errno.EDEADSRCDST, f"granter {wire.endpoint_name(granter_ep)} is not alive")
            entry = arena.read_entry(granter.arena_view, gid)
            if entry is None:
                fail(Errno.EINVAL, f"{granter.label} has no grant {gid} (revoked or never made)")
            flags, grantee, g_off, g_len, ind_ep, ind_gid = entry
            if grantee not in (wire.ANY, requester):
                deny(f"grant {gid} of {granter.label} is for {wire.endpoint_name(grantee)}, "
                     f"not {wire.endpoint_name(requester)}")  # fmt: skip
            if flags & access != access:
                deny(f"grant {gid} of {granter.label} does not allow "
                     f"{'writing' if access & arena.WRITE else 'reading'}")  # fmt: skip
            if offset < 0 or length < 0 or offset + length > g_len:
                deny(f"[{offset}, {offset + length}) is outside grant {gid} of "
                     f"{granter.label} ({g_len} bytes)")  # fmt: skip
            if flags & arena.INDIRECT:
                requester, granter_ep, gid, offset = (
                    granter.endpoint,
                    ind_ep,
                    ind_gid,
                    g_off + offset,
                )
                continue
            start = g_off + offset
            if g_off < arena.DATA_START or start + length > len(granter.arena_view):
                fail(Errno.EFAULT, f"grant {gid} of {granter.label} lies outside its arena")
            return granter.arena_view, start
        fail(Errno.EINVAL, f"grant {gid}: indirect grants nested more than 4 deep")

    def _copy(self, proc: Proc, f: dict[str, codec.Value], to_grant: bool) -> None:
        granter = get_int(f, "endpoint", I32_MIN, I32_MAX)
        gid = get_int(f, "grant", 0, I32_MAX)
        offset = get_int(f, "offset", 0, I32_MAX, 0)
        length = get_int(f, "length", 0, I32_MAX)
        local = get_int(f, "local", 0, I32_MAX)
        view, start = self.resolve(
            proc, granter, gid, arena.WRITE if to_grant else arena.READ, offset, length
        )
        own, at = self._own(proc, local, length)
        if to_grant:
            view[start : start + length] = own[at : at + length]
        else:
            own[at : at + length] = view[start : start + length]

    def do_safecopyfrom(self, proc: Proc, f: dict[str, codec.Value]) -> Reply:
        self._copy(proc, f, to_grant=False)
        return {}

    def do_safecopyto(self, proc: Proc, f: dict[str, codec.Value]) -> Reply:
        self._copy(proc, f, to_grant=True)
        return {}

    def do_vsafecopy(self, proc: Proc, f: dict[str, codec.Value]) -> Reply:
        copies = f.get("copies")
        if not isinstance(copies, list) or len(copies) > MAX_VECTOR:
            fail(Errno.EINVAL, f"vsafecopy: copies must be a list of at most {MAX_VECTOR}")
        for i, copy in enumerate(copies):
            if not isinstance(copy, dict):
                fail(Errno.EINVAL, f"vsafecopy: entry {i} is not a dict")
            try:
                self._copy(proc, copy, to_grant=get_bool(copy, "to_grant"))
            except CallError as exc:
                raise CallError(
                    exc.errno, f"vsafecopy entry {i}: {exc.why}", warn=exc.warn
                ) from exc
        return {"done": len(copies)}

    def do_safememset(self, proc: Proc, f: dict[str, codec.Value]) -> Reply:
        granter = get_int(f, "endpoint", I32_MIN, I32_MAX)
        gid = get_int(f, "grant", 0, I32_MAX)
        offset = get_int(f, "offset", 0, I32_MAX, 0)
        length = get_int(f, "length", 0, I32_MAX)
        byte = get_int(f, "byte", 0, 255, 0)
        view, start = self.resolve(proc, granter, gid, arena.WRITE, offset, length)
        view[start : start + length] = bytes([byte]) * length
        return {}


# The operands of each op kind that _check_vdevio_ops reads, as struct formats over
# the op's 16 bytes: with the op heads (code, width, port) they are a batch's shape.
# An OUT's value, an IN's, a NOP's echo are left out: patching them keeps the shape.
# (String ops are never remembered.)
_CHECKED_OPERANDS = {
    abi.OP_WAIT: "12xI",  # c: its timeout
    abi.OP_DELAY: "4xI8x",  # a: microseconds
    abi.OP_IRQ_WAIT: "4xI4xI",  # a: the line, c: the timeout
    abi.OP_MMIO_RD: "4xI8x",  # a: the address
    abi.OP_MMIO_WR: "4xI8x",
    abi.OP_MMIO_WAIT: "4xI8x",
}
_PICKERS: dict[bytes, struct.Struct | None] = {}  # op heads -> what to pick of the operands
PICKERS_KEEP = 1024


def _picker(heads: bytes) -> struct.Struct | None:
    """The struct that reads the checked operands of a batch with these heads."""
    picker = _PICKERS.get(heads, _MISSING)
    if picker is _MISSING:
        codes = heads[::4]  # the low byte of each 4-byte head
        formats = [_CHECKED_OPERANDS.get(code, "16x") for code in codes]
        picker = None if all(f == "16x" for f in formats) else struct.Struct("<" + "".join(formats))
        if len(_PICKERS) >= PICKERS_KEEP:
            _PICKERS.clear()
        _PICKERS[heads] = picker
    return picker  # type: ignore[no-any-return]


def _shape(ops: bytes, line: int) -> tuple[object, ...]:
    """A batch's shape, what its check depends on: each op's head (code, width,
    port), the operands a check reads, and the line of the hook it names (-1)."""
    heads = memoryview(ops).cast("I")[:: abi.OP_SIZE // 4].tobytes()
    picker = _picker(heads)
    return (heads, line) if picker is None else (heads, line, picker.unpack_from(ops))


def _unmask_op(line: int) -> bytes:
    return abi.OP.pack(abi.OP_IRQ_UNMASK, 0, 0, line, 0, 0)


def _op_code(ops: bytes, index: int) -> int:
    """The code of op ``index`` in a finished batch (0 if there is no such op)."""
    at = index * abi.OP_SIZE
    return ops[at] if 0 <= at < len(ops) else 0


def _op_result(ops: bytes, index: int) -> int:
    """The result word of op ``index`` in a finished batch (0 if there is no such op)."""
    at = index * abi.OP_SIZE + abi.OP_C_OFFSET
    return int(struct.unpack_from("<I", ops, at)[0]) if 0 <= at <= len(ops) - 4 else 0


def _channels_on() -> None:
    """``HWL_CHANNELS=0`` in the kernel's environment: every message on the kernel path."""
    if os.environ.get(wire.ENV_CHANNELS, "1") == "0":
        fail(Errno.ENOSYS, f"call channels are off (${wire.ENV_CHANNELS}=0)")
