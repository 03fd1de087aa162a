"""Port and string I/O: ``devio`` (one port), ``vdevio`` (a batch of port and MMIO
ops, optionally with an IRQ hook's re-enable, its interrupt waits and a DMA copy),
``sdevio`` (a string between a port and a grant), as MINIX's ``do_devio.c``,
``do_vdevio.c`` and ``do_sdevio.c``.

Every port must be on the caller's ``io`` lines and every MMIO address inside its
memory ranges (EPERM otherwise). A batch's shape, once checked, is remembered by
the caller's privileges, so a driver's next command with a new sector is not
checked again.
"""

from __future__ import annotations

import struct
from operator import add, mul

from hwl.ipc import arena, codec, wire
from hwl.kernel.calls.base import (
    I32_MAX,
    I32_MIN,
    MISSING,
    U32,
    CallError,
    Fields,
    Reply,
    deny,
    fail,
    get_int,
    get_str,
)
from hwl.kernel.calls.grants import Grants
from hwl.kernel.calls.irq import hook_field, hook_numbered
from hwl.kernel.calls.stub import Stub, op_code, op_result
from hwl.kernel.calls.watch import Watches
from hwl.kernel.errno import Errno
from hwl.kernel.hwfaults import HwFaults
from hwl.kernel.irq import Irqs
from hwl.kernel.proc import IrqHook, Proc
from hwl.link import abi
from hwl.link.batch import Batch, ops_struct
from hwl.link.link import Link
from hwl.link.memory import DmaBuffer
from hwl.proto import vdevio as vdevio_proto
from hwl.proto.vdevio import Copy

MAX_WAIT_US = 2_000_000  # longest "wait until" step a vdevio may ask the stub for
MAX_DELAY_US = 100_000
MAX_STRING = 1 << 20  # sdevio bytes per call
MAX_BLOCKS = 16  # sdevio blocks per call, each after an interrupt: bounds the stub's time in it
IRQ_WAIT_US = 10_000  # how long the stub waits for a block's interrupt before it hands back
STRING_CODES = frozenset({abi.OP_INS, abi.OP_OUTS})  # on the caller's own DMA buffers only
VDEVIO_CODES = frozenset(
    {abi.OP_NOP, abi.OP_IN, abi.OP_OUT, abi.OP_WAIT, abi.OP_DELAY} | abi.MMIO_CODES | STRING_CODES
)
PORT_CODES = frozenset({abi.OP_IN, abi.OP_OUT, abi.OP_WAIT, abi.OP_INS, abi.OP_OUTS})
CHECKED_MMIO_KEEP = 4096  # (address, width) pairs a Priv remembers as allowed


class PortIo:
    def __init__(
        self, stub: Stub, grants: Grants, irqs: Irqs, hw: HwFaults, watches: Watches
    ) -> None:
        self.stub = stub
        self.watches = watches
        self.grants = grants
        self.irqs = irqs
        self.hw = hw  # faultctl's port-flip faults

    def _check_port(self, proc: Proc, call: str, port: int, width: int) -> None:
        if width not in (1, 2, 4):
            fail(Errno.EINVAL, f"{call}: width {width} is not 1, 2 or 4")
        if not proc.priv.allows_port(port, width):
            deny(f"{call}: port {port:#x} (width {width}) is outside its io ranges")

    def do_devio(self, proc: Proc, f: Fields) -> Reply:
        port = get_int(f, "port", 0, 0xFFFF)
        width = get_int(f, "width", 1, 4, 1)
        self._check_port(proc, "devio", port, width)
        link = self.stub.link()
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
        if peer == vdevio_proto.POSTED:
            return self._posted(proc, payload)
        if peer == vdevio_proto.WATCH:
            return self._watch(proc, payload)
        if peer >= 0 and peer & vdevio_proto.COPY:
            if peer & ~(vdevio_proto.COPY | vdevio_proto.HOOK_MASK):
                fail(Errno.EINVAL, f"vdevio: peer field {peer:#x} has unknown bits")
            copy, payload = self._copy_of(proc, payload), payload[vdevio_proto.SIZE :]
            hook_id = vdevio_proto.hook_of(peer)
        ops = payload
        n, rest = divmod(len(ops), abi.OP_SIZE)
        if rest or not 0 < n <= abi.MAX_OPS:
            fail(Errno.EINVAL, f"vdevio: {len(ops)} bytes are not 1..{abi.MAX_OPS} ops")
        hook = None if hook_id is None else hook_numbered(proc, hook_id)
        waits = self._checked(proc, ops, n, hook)
        moved = self._copy_before(proc, copy, n) if copy is not None else None
        irqs, run, nrun, unmasked = self.irqs, ops, n, None
        if hook is not None and n < abi.MAX_OPS:
            unmasked = irqs.unmask_in_batch(hook, waited=waits)
            if unmasked is not None:
                run, nrun = ops + _unmask_op(hook.line), n + 1

        def finish(status: int, failed: int, done: bytes) -> bytes:
            waited_out = status == abi.ST_TIMEOUT and op_code(done, failed) == abi.OP_IRQ_WAIT
            if status != abi.ST_OK and not (waits and waited_out):
                self.stub.failure(status, failed, done)
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

        return self.stub.submit(
            proc, wire.VDEVIO, lambda link: link.submit_packed(run, nrun), nrun, finish
        )

    def _posted(self, proc: Proc, ops: bytes) -> bytes:
        """A posted vdevio (hwl.proto.vdevio.POSTED): checked as any, queued in as
        many slots as it fills, answered."""
        n, rest = divmod(len(ops), abi.OP_SIZE)
        most = vdevio_proto.MAX_POSTED_SLOTS * abi.MAX_OPS
        if rest or not 0 < n <= most:
            fail(Errno.EINVAL, f"vdevio: {len(ops)} bytes are not 1..{most} ops")
        self._checked(proc, ops, n, None)
        step = abi.MAX_OPS * abi.OP_SIZE
        chunks = [ops[at : at + step] for at in range(0, len(ops), step)]
        self.stub.post(proc, chunks)
        count = proc.posted
        return vdevio_proto.POSTED_REPLY.pack(count.finished & U32, count.stopped & U32)

    def _watch(self, proc: Proc, payload: bytes) -> bytes:
        """A watched vdevio (hwl.proto.vdevio.WATCH): arm a watched doorbell on a
        word of one of the caller's DMA buffers with one checked OUT or MMIO_WR
        op, or end it (no op)."""
        head = vdevio_proto.WATCH_HEAD
        frames_most = head.size + vdevio_proto.FRAMES_HEAD.size + abi.FRAME_OPS * abi.OP_SIZE
        if len(payload) not in (head.size, head.size + abi.OP_SIZE) and not (
            head.size + vdevio_proto.FRAMES_HEAD.size < len(payload) <= frames_most
        ):
            fail(Errno.EINVAL, f"vdevio watch: {len(payload)} bytes are not a "
                               f"{head.size}-byte head and at most one op, or a frame "
                               "template")  # fmt: skip
        if not proc.priv.dma:
            deny("vdevio watch: it needs the 'memory ... dma' privilege")
        buffer, word, sleep, flags = head.unpack_from(payload)
        buf = proc.dma.get(buffer)
        if buf is None:
            fail(Errno.EINVAL, f"vdevio watch: DMA buffer {buffer} is not one of this process's")
        for name, at in (("word", word), ("sleep word", sleep)):
            if at % 4 or at + 4 > buf.size:
                fail(Errno.EINVAL, f"vdevio watch: {name} at {at} of a {buf.size}-byte "
                                   "buffer (4-byte aligned, inside it)")  # fmt: skip
        if word == sleep:
            fail(Errno.EINVAL, "vdevio watch: the word and the sleep word are one")
        if flags not in (0, vdevio_proto.WATCH_VALUE, vdevio_proto.WATCH_FRAMES):
            fail(Errno.EINVAL, f"vdevio watch: unknown flags {flags:#x}")
        op = payload[head.size :]
        if not op:
            self.watches.disarm(proc, buf, word)
            return b""
        if flags == vdevio_proto.WATCH_FRAMES:
            frames = self._frames(proc, buf, op)
            self.watches.arm(proc, buffer, buf, word, sleep, flags, bytes(abi.OP_SIZE), frames)
            return b""
        if len(op) != abi.OP_SIZE:
            fail(Errno.EINVAL, f"vdevio watch: {len(op)} bytes are not one op")
        if op_code(op, 0) not in (abi.OP_OUT, abi.OP_MMIO_WR):
            fail(Errno.EINVAL, f"vdevio watch: op {op_code(op, 0)} is not an OUT or MMIO_WR")
        self._checked(proc, op, 1, None)
        self.watches.arm(proc, buffer, buf, word, sleep, flags, op)
        return b""

    def _frames(self, proc: Proc, buf: DmaBuffer, rest: bytes) -> bytes:
        """A frame template's head and ops checked (hwl.proto.vdevio.WATCH_FRAMES),
        as the stub's struct hwl_frames. Each op is checked as a vdevio op with its
        patches at their worst (a whole slot's length, slot 0's address; every
        slot lies inside the buffer, so every frame's is as safe); patches go only
        into the values of OUTs and the count and address of OUTS, and every OUTS
        takes its frame's slot."""
        fh = vdevio_proto.FRAMES_HEAD
        if len(rest) < fh.size + abi.OP_SIZE:
            fail(Errno.EINVAL, f"vdevio frames: {len(rest)} bytes are not a {fh.size}-byte "
                               "template head and its ops")  # fmt: skip
        table, slots, stride, base, counts, max_len, patches = fh.unpack_from(rest)
        ops = bytearray(rest[fh.size :])
        n, extra = divmod(len(ops), abi.OP_SIZE)
        if extra or not 1 <= n <= abi.FRAME_OPS:
            fail(Errno.EINVAL, f"vdevio frames: {len(ops)} bytes are not 1..{abi.FRAME_OPS} ops")
        if not 1 <= slots <= MAX_FRAME_SLOTS or stride % 4 or not 0 < max_len <= stride:
            fail(Errno.EINVAL, f"vdevio frames: {slots} slots of {stride} bytes, frames "
                               f"of up to {max_len} (1..{MAX_FRAME_SLOTS} slots, a multiple "
                               "of 4 bytes each, no frame longer than a slot)")  # fmt: skip
        for name, at, size, align in (("slots", base, slots * stride, 4),
                                      ("length table", table, 2 * slots, 2),
                                      ("counts", counts, 8, 4)):  # fmt: skip
            if at % align or at + size > buf.size:
                fail(Errno.EINVAL, f"vdevio frames: the {name} at {at} ({size} bytes) "
                                   f"not inside the {buf.size}-byte buffer, "
                                   f"{align}-aligned")  # fmt: skip
        for i in range(n):
            code, width, port, _a, _b, timeout = abi.OP.unpack_from(ops, i * abi.OP_SIZE)
            patch = patches[i]
            if (code == abi.OP_WAIT and timeout > FRAME_WAIT_US) or (
                code == abi.OP_MMIO_WAIT and port * abi.MMIO_WAIT_UNIT_US > FRAME_WAIT_US
            ):
                fail(Errno.EINVAL, f"vdevio frames: op {i} waits longer than {FRAME_WAIT_US} us "
                                   "(every frame may wait)")  # fmt: skip
            if code not in FRAME_CODES:
                fail(Errno.EINVAL, f"vdevio frames: op {i} (code {code}) may not be in a "
                                   "frame template")  # fmt: skip
            # an OUTS moves a frame from its slot, never from memory the watch
            # does not hold (another buffer may be freed while it runs)
            wanted = abi.OP_OUTS if patch == abi.PATCH_SLOT else abi.OP_OUT
            if (code == abi.OP_OUTS) != (patch == abi.PATCH_SLOT) or (
                patch != abi.PATCH_NONE
                and (patch >= abi.PATCH_BYTE0 + abi.PATCH_BYTES or code != wanted)
            ):
                fail(Errno.EINVAL, f"vdevio frames: patch {patch} on op {i} (code {code}); "
                                   "an OUTS takes SLOT")  # fmt: skip
            if patch == abi.PATCH_SLOT:  # its worst: a whole slot, slot 0
                struct.pack_into(
                    "<II", ops, i * abi.OP_SIZE + 4, stride // (width or 1), buf.phys + base
                )
        if any(patches[n:]):
            fail(Errno.EINVAL, "vdevio frames: patches past the template's ops")
        self._checked(proc, bytes(ops), n, None)
        head = abi.FRAMES_HEAD.pack(buf.phys + table, slots, stride, buf.phys + base,
                                    buf.phys + counts, n, max_len, 0, patches)  # fmt: skip
        return head + bytes(rest[fh.size :]) + bytes((abi.FRAME_OPS - n) * abi.OP_SIZE)

    def _checked(self, proc: Proc, ops: bytes, n: int, hook: IrqHook | None) -> bool:
        """Check a batch, or find its shape checked already (the ports, widths and
        op kinds, and every operand a check reads, but not the values OUTs write:
        a driver's command with a new sector has the shape it had); whether it
        waits for IRQs. Each Priv has its own memory of shapes, so new privileges
        (privctl set, an update's swap) check everything again."""
        priv = proc.priv
        heads = op_heads(ops)
        key = shape(ops, -1 if hook is None else hook.line, heads)
        waits = priv.checked_shapes.get(key)
        if waits is None:
            waits = self._check_vdevio_ops(proc, ops, heads, n, hook)
            priv.remember_shape(key, waits)
            return waits
        if waits:
            assert hook is not None  # in the key: a wait without a hook never passed
            self._check_alone(hook)  # another hook may have come to the line since
        # String ops move memory at addresses the shape leaves out, checked against
        # DMA buffers that may be gone by now: every call.
        if not STRING_CODES.isdisjoint(heads[::4]):
            self._check_string_ops(proc, ops, heads, n)
        return waits

    def _check_alone(self, hook: IrqHook) -> None:
        if not self.irqs.alone(hook):
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

    def _copy_before(self, proc: Proc, copy: Copy, n: int) -> int | None:
        """Before the batch runs: a write's data into the DMA buffer (returns its
        length); for a read (None), its grant checked so that a bad one runs no
        command. Checks must name ops of the batch."""
        for check in copy.checks:
            if check.op >= n:
                fail(Errno.EINVAL, f"vdevio: a copy check names op {check.op} of {n}")
        own = copy.endpoint == wire.SELF  # an arena offset of the caller's own
        if own:
            view, start = self.grants.own(proc, copy.grant_offset, copy.length)
        elif copy.direction == vdevio_proto.TO_GRANT:  # a sums grant too (Grants.target)
            self.grants.target(proc, copy.endpoint, copy.grant, copy.grant_offset, copy.length)
            return None
        else:
            view, start = self.grants.resolve(proc, copy.endpoint, copy.grant, arena.READ,
                                              copy.grant_offset, copy.length)  # fmt: skip
        if copy.direction != vdevio_proto.FROM_GRANT:
            return None
        buf = proc.dma[copy.buffer]
        buf.view[copy.offset : copy.offset + copy.length] = view[start : start + copy.length]
        return copy.length

    def _copy_after(self, proc: Proc, copy: Copy, done: bytes) -> int:
        """A read's data into the grant once the batch ran through, if every check
        holds (the command succeeded); the bytes copied. The buffer may have gone
        with a dmafree meanwhile, the grant with a revoke or its owner: checked again."""
        if not proc.alive or any(op_result(done, c.op) & c.mask != c.value
                                 for c in copy.checks):  # fmt: skip
            return 0  # a dead caller's arena is gone; nobody reads the answer
        buf = proc.dma.get(copy.buffer)
        if buf is None or copy.offset + copy.length > buf.size:
            fail(Errno.EINVAL, f"vdevio: DMA buffer {copy.buffer} was freed meanwhile")
        source = buf.view[copy.offset : copy.offset + copy.length]
        if copy.endpoint == wire.SELF:
            view, start = self.grants.own(proc, copy.grant_offset, copy.length)
            view[start : start + copy.length] = source
        else:  # through a sums grant too
            self.grants.copy_to(proc, copy.endpoint, copy.grant, copy.grant_offset, source)
        return copy.length

    def _check_vdevio_ops(
        self, proc: Proc, ops: bytes, heads: bytes, n: int, hook: IrqHook | None
    ) -> bool:
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
            self._check_string_ops(proc, ops, heads, n)
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
    def _check_string_ops(proc: Proc, ops: bytes, heads: bytes, n: int) -> None:
        """A string op (rep ins/outs) moves ``a`` units of ``width`` between its port
        and guest memory at ``b``: that range must lie inside one of the caller's
        DMA buffers (its own staging memory), never anywhere else in guest RAM."""
        buffers = [(buf.phys, buf.phys + buf.size) for buf in proc.dma.values()]
        # The usual case at C speed: every range between the lowest start and the
        # highest end, and those two inside one buffer (a ne2k SEND's 63 frames).
        picker, widths = _string_picker(heads)
        counts_starts = picker.unpack_from(ops)
        starts = counts_starts[1::2]
        ends = list(map(add, starts, map(mul, counts_starts[0::2], widths)))
        low, high = min(starts), max(ends)
        if any(lo <= low and high <= hi for lo, hi in buffers):
            return
        for i, code in enumerate(ops[: n * abi.OP_SIZE : abi.OP_SIZE]):
            if code not in STRING_CODES:
                continue
            _code, width, _port, a, b, _c = abi.OP.unpack_from(ops, i * abi.OP_SIZE)
            end = b + a * width
            if not any(lo <= b and end <= hi for lo, hi in buffers):
                deny(f"vdevio: op {i} moves [{b:#x}, {end:#x}) of guest memory, "
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

    def do_sdevio(self, proc: Proc, f: Fields) -> Reply | None:
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
        hook = hook_field(proc, f) if "hook" in f else None
        block = min(get_int(f, "block", 1, MAX_STRING, count), count)
        irqs = self.irqs
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
        view, start = self.grants.resolve(proc, granter, gid, access, offset, size)
        link = self.stub.link()
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
                    self.stub.failure(status, failed, done)
                read = [op_result(done, i) for i in checks if i <= ran]
                moved = sum(n for i, n in moves if i < ran)
                if hook is not None and rearm:
                    if status == abi.ST_OK or waited:
                        irqs.enable(hook, unmasked=unmasked)  # the stub left it unmasked
                    else:
                        irqs.enable(hook)  # the batch stopped after a status read
                if direction == "in" and moved:
                    # The granter may have revoked or died meanwhile: check again.
                    dst, at = self.grants.resolve(proc, granter, gid, access, offset, moved)
                    dst[at : at + moved] = buf.view[:moved]
                return {"bytes": moved, "ready": read[-1] if read else None}
            finally:
                link.free_dma(buf)

        return self.stub.submit(
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


MAX_FRAME_SLOTS = 1024
FRAME_WAIT_US = 10_000  # a wait in a frame template: every frame of a ring may run it
# What a frame template may hold: device accesses and waits for them, no DELAY,
# IRQ or native loop (a frame's ops run in the stub's loop, before any slot).
FRAME_CODES = frozenset({abi.OP_IN, abi.OP_OUT, abi.OP_OUTS, abi.OP_WAIT, abi.OP_MMIO_RD,
                         abi.OP_MMIO_WR, abi.OP_MMIO_WAIT})  # fmt: skip

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
    picker = _PICKERS.get(heads, MISSING)
    if picker is MISSING:
        codes = heads[::4]  # the low byte of each 4-byte head
        formats = [_CHECKED_OPERANDS.get(code, "16x") for code in codes]
        picker = None if all(f == "16x" for f in formats) else struct.Struct("<" + "".join(formats))
        if len(_PICKERS) >= PICKERS_KEEP:
            _PICKERS.clear()
        _PICKERS[heads] = picker
    return picker  # type: ignore[no-any-return]


_STRING_PICKERS: dict[bytes, tuple[struct.Struct, tuple[int, ...]]] = {}


def _string_picker(heads: bytes) -> tuple[struct.Struct, tuple[int, ...]]:
    """For a batch with these heads (at least one string op): the struct that reads
    each string op's count and address, and their unit widths."""
    found = _STRING_PICKERS.get(heads)
    if found is None:
        codes, widths = heads[::4], heads[1::4]
        fmt = "".join("4xII4x" if code in STRING_CODES else "16x" for code in codes)
        units = tuple(w for code, w in zip(codes, widths, strict=True) if code in STRING_CODES)
        if len(_STRING_PICKERS) >= PICKERS_KEEP:
            _STRING_PICKERS.clear()
        found = _STRING_PICKERS[heads] = (struct.Struct("<" + fmt), units)
    return found


def op_heads(ops: bytes) -> bytes:
    """Each op's first word (code, width, port), the part of a batch its checks key on."""
    return memoryview(ops).cast("I")[:: abi.OP_SIZE // 4].tobytes()


def shape(ops: bytes, line: int, heads: bytes | None = None) -> tuple[object, ...]:
    """A batch's shape, what its check depends on: each op's head (code, width,
    port; :func:`op_heads`, if the caller has them already), the operands a check
    reads, and the line of the hook it names (-1)."""
    heads = op_heads(ops) if heads is None else heads
    picker = _picker(heads)
    return (heads, line) if picker is None else (heads, line, picker.unpack_from(ops))


def _unmask_op(line: int) -> bytes:
    return abi.OP.pack(abi.OP_IRQ_UNMASK, 0, 0, line, 0, 0)
