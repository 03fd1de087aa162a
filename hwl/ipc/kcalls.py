"""Kernel-call wrappers, MINIX's ``sys_*`` functions as methods of a connection.

Each wrapper builds the call's fields, makes the call and returns what matters
from the reply; a refused call raises :class:`hwl.ipc.client.IpcError`.
"""

from __future__ import annotations

import mmap
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from hwl.ipc import codec, wire
from hwl.ipc.arena import Arena
from hwl.link import abi
from hwl.link.batch import Batch
from hwl.proto import vdevio as vdevio_proto

# Where the first op's result word sits in a vdevio answer (header, then the ops).
_RESULTS_AT = wire.RESPONSE.size + abi.OP_C_OFFSET


class Posted(NamedTuple):
    """What a posted vdevio's answer says of the caller's posted batches so far:
    how many have finished (they run in order) and how many slots the stub stopped."""

    finished: int
    stopped: int


@dataclass(frozen=True)
class FrameTemplate:
    """Where a frame template's staging lives in its DMA buffer (byte offsets)
    and how its ops are patched (hwl.link.abi.PATCH_*, one per op)."""

    table: int  # u16 length per slot
    slots: int
    stride: int  # bytes per slot
    base: int  # slot 0
    counts: int  # u32 frames done, u32 frames refused (the stub's)
    max_len: int
    patches: tuple[int, ...]

    def packed(self) -> bytes:
        return vdevio_proto.FRAMES_HEAD.pack(self.table, self.slots, self.stride, self.base,
                                             self.counts, self.max_len,
                                             bytes(self.patches))  # fmt: skip


@dataclass(frozen=True)
class DmaHandle:
    """A contiguous buffer in guest RAM owned by this process. A ``tag``ged one
    outlives the process: the next process with its label adopts it."""

    id: int
    phys: int
    size: int
    tag: str = ""


@dataclass(frozen=True)
class Moved:
    """What an sdevio did: ``bytes`` moved, and the ``ready`` port's last value
    (None without a ready check)."""

    bytes: int
    ready: int | None


@dataclass(frozen=True)
class ExitInfo:
    endpoint: int
    pid: int | None
    label: str
    status: int | None
    signal: int | None


class KernelCalls:
    """Mixed into the connection, which supplies ``kcall`` and ``arena``."""

    arena: Arena

    def kcall(
        self, name: str, fields: Mapping[str, codec.Value] | None = None
    ) -> dict[str, codec.Value]:
        raise NotImplementedError

    def kcall_binary(self, number: int, arg: int, payload: bytes, name: str) -> bytes:
        raise NotImplementedError

    def kcall_fds(
        self, name: str, fields: Mapping[str, codec.Value] | None = None
    ) -> tuple[dict[str, codec.Value], list[int]]:
        raise NotImplementedError

    # ---------------------------------------------------------- port I/O
    def devio_in(self, port: int, width: int = 1) -> int:
        return _int(self.kcall("devio", {"port": port, "width": width})["value"])

    def devio_out(self, port: int, value: int, width: int = 1) -> None:
        self.kcall("devio", {"port": port, "width": width, "value": value})

    def vdevio(self, batch: Batch, irq_enable: int | None = None) -> list[int]:
        """Run a batch of port operations (no string I/O) in one round trip to the
        stub; returns one value per op, as ``Link.execute`` does. ``irq_enable``:
        a hook to re-enable after the batch ran (saves an ``irq_enable`` call)."""
        if batch.strings:
            raise ValueError("vdevio takes no string operations; use sdevio")
        if len(batch) > abi.MAX_OPS:
            raise ValueError(f"vdevio takes at most {abi.MAX_OPS} ops, not {len(batch)}")
        (packed,) = batch.packed()
        return self.vdevio_packed(packed, irq_enable)

    def vdevio_packed(self, packed: bytes | bytearray, irq_enable: int | None = None) -> list[int]:
        """:meth:`vdevio` of ops already in the stub's wire format (abi.OP each): a
        driver that patches a template per frame instead of building a Batch."""
        hook = wire.NO_HOOK if irq_enable is None else irq_enable
        answer = self.kcall_binary(wire.VDEVIO, hook, bytes(packed), "vdevio")
        if len(answer) != wire.RESPONSE.size + len(packed):
            raise ValueError(f"vdevio: a {len(answer)}-byte answer to {len(packed)} bytes of ops")
        return memoryview(answer).cast("I")[_RESULTS_AT // 4 :: abi.OP_SIZE // 4].tolist()

    def vdevio_posted(self, batch: Batch) -> Posted:
        """Queue a batch of port or MMIO operations and go on without waiting for
        the device (hwl.proto.vdevio.POSTED: a NIC's tail-register write). Errors
        of the checks come back as vdevio's; a batch the stub stops later is the
        kernel's log line and counted in :attr:`Posted.stopped`."""
        if batch.strings:
            raise ValueError("vdevio takes no string operations; use sdevio")
        return self.vdevio_posted_packed(b"".join(batch.packed()))

    def vdevio_posted_packed(self, packed: bytes | bytearray) -> Posted:
        """:meth:`vdevio_posted` of ops already in the stub's wire format, up to
        MAX_POSTED_SLOTS slots' worth."""
        most = vdevio_proto.MAX_POSTED_SLOTS * abi.MAX_OPS
        if not 0 < len(packed) <= most * abi.OP_SIZE:
            raise ValueError(f"a posted vdevio takes 1..{most} ops, not {len(packed) // 16}")
        answer = self.kcall_binary(wire.VDEVIO, vdevio_proto.POSTED, bytes(packed), "vdevio")
        if len(answer) != wire.RESPONSE.size + vdevio_proto.POSTED_REPLY.size:
            raise ValueError(f"vdevio: a {len(answer)}-byte answer to a posted batch")
        return Posted(*vdevio_proto.POSTED_REPLY.unpack_from(answer, wire.RESPONSE.size))

    def vdevio_watch(
        self, buffer: int, word: int, sleep: int, batch: Batch | None, value_from_word: bool = False
    ) -> None:
        """Arm a watched doorbell (hwl.proto.vdevio.WATCH): from now on the stub
        makes ``batch``'s one write (an OUT or MMIO write this process may make)
        whenever the u32 at offset ``word`` of DMA buffer ``buffer`` changes, with
        the word's value as the write's value if ``value_from_word``. The stub
        sets the u32 at ``sleep`` to 1 while it may be halted (and the kernel does,
        once the watch has ended): then ring through a call. ``batch`` None: end it."""
        flags = vdevio_proto.WATCH_VALUE if value_from_word else 0
        payload = vdevio_proto.WATCH_HEAD.pack(buffer, word, sleep, flags)
        if batch is not None:
            if batch.strings or len(batch) != 1:
                raise ValueError("a watched doorbell is one OUT or MMIO write")
            payload += b"".join(batch.packed())
        self.kcall_binary(wire.VDEVIO, vdevio_proto.WATCH, payload, "vdevio")

    def vdevio_frames(self, buffer: int, word: int, template: FrameTemplate, batch: Batch) -> None:
        """Arm a frame template (hwl.proto.vdevio.WATCH_FRAMES) on the u32 at
        ``word`` of DMA buffer ``buffer`` (its sleep word follows it): for each
        frame that count adds, the stub runs ``batch`` (up to FRAME_OPS ops,
        patched as ``template.patches`` says) on the frame's slot and length."""
        if len(batch) != len(template.patches) or batch.strings:
            raise ValueError("a frame template patches each of its ops (no ins into scratch)")
        head = vdevio_proto.WATCH_HEAD.pack(buffer, word, word + 4, vdevio_proto.WATCH_FRAMES)
        payload = head + template.packed() + b"".join(batch.packed())
        self.kcall_binary(wire.VDEVIO, vdevio_proto.WATCH, payload, "vdevio")

    def sdevio(
        self,
        direction: Literal["in", "out"],
        port: int,
        count: int,
        width: int,
        endpoint: int,
        grant: int,
        offset: int = 0,
        *,
        ready: tuple[int, int, int] | None = None,
        irq_enable: int | None = None,
        block: int | None = None,
    ) -> Moved:
        """``count`` units of ``width`` bytes between ``port`` and grant ``grant`` of
        ``endpoint`` at ``offset``: ``"in"`` into the grant, ``"out"`` from it (MINIX's
        ``sys_sdevio`` with DIO_INPUT or DIO_OUTPUT).

        A driver's interrupt handler in one call: with ``ready`` (port, mask, value)
        the kernel first reads that byte port (an ATA status read acknowledges the
        interrupt) and moves the data only if ``(v & mask) == value``; with
        ``irq_enable`` it then re-enables that IRQ hook. With ``block`` as well (units
        per interrupt: a PIO transfer's DRQ blocks) the kernel moves block after
        block, each after the hook's next interrupt and its ``ready`` check, up to
        its per-call limit. :class:`Moved` says how far it got and what it read."""
        fields: dict[str, codec.Value] = {"port": port, "width": width, "count": count,
                                          "dir": direction, "endpoint": endpoint,
                                          "grant": grant, "offset": offset}  # fmt: skip
        if ready is not None:
            fields["ready"] = list(ready)
        if irq_enable is not None:
            fields["hook"] = irq_enable
        if block is not None:
            fields["block"] = block
        reply = self.kcall("sdevio", fields)
        value = reply.get("ready")
        return Moved(_int(reply["bytes"]), value if isinstance(value, int) else None)

    # -------------------------------------------------------------- IRQs
    def irq_setpolicy(self, irq: int, policy: int = 0, notify_id: int = 0) -> int:
        """Hook an IRQ line; it arrives as a HARDWARE notify with bit ``notify_id``
        set in ``interrupts``. Returns the hook for the calls below."""
        return _int(
            self.kcall("irqsetpolicy", {"irq": irq, "policy": policy, "id": notify_id})["hook"]
        )

    def irq_enable(self, hook: int) -> None:
        self.kcall("irqenable", {"hook": hook})

    def irq_disable(self, hook: int) -> None:
        self.kcall("irqdisable", {"hook": hook})

    def irq_rmpolicy(self, hook: int) -> None:
        self.kcall("irqrmpolicy", {"hook": hook})

    # --------------------------------------------------------- processes
    def spawn(
        self,
        argv: Sequence[str],
        label: str,
        *,
        conf: str | None = None,
        env: Mapping[str, str] | None = None,
        arena: int | None = None,
        endpoint: int | None = None,
        cold: bool = False,
    ) -> tuple[int, int]:
        """Start a program; ``conf`` (a system.conf entry) makes it a system process.
        ``endpoint`` reuses a dead process's endpoint. Python programs are forked
        from the kernel's warm fork server unless ``cold``. Returns (endpoint, pid)."""
        fields: dict[str, codec.Value] = {"argv": list(argv), "label": label}
        if conf is not None:
            fields["conf"] = conf
        if env:
            fields["env"] = dict(env)
        if arena is not None:
            fields["arena"] = arena
        if endpoint is not None:
            fields["endpoint"] = endpoint
        if cold:
            fields["cold"] = True
        reply = self.kcall("spawn", fields)
        return _int(reply["endpoint"]), _int(reply["pid"])

    def kill(self, endpoint: int, signo: int = signal.SIGKILL) -> None:
        self.kcall("kill", {"endpoint": endpoint, "signal": int(signo)})

    def update(self, src: int, dst: int) -> None:
        """Live update: swap the processes behind ``src`` and ``dst``, so the program
        that ran at ``dst`` now answers at ``src`` (and the old one waits at
        ``dst``). The same call again swaps back. The caller must be the parent of
        both (or control them); neither may be sending or in a kernel call (EBUSY)."""
        self.kcall("update", {"src": src, "dst": dst})

    def privctl_set(self, endpoint: int, conf: str) -> None:
        self.kcall("privctl", {"endpoint": endpoint, "op": "set", "conf": conf})

    def privctl_add_io(self, endpoint: int, base: int, length: int = 1) -> None:
        self.kcall(
            "privctl", {"endpoint": endpoint, "op": "add_io", "base": base, "length": length}
        )

    def privctl_add_irq(self, endpoint: int, irq: int) -> None:
        self.kcall("privctl", {"endpoint": endpoint, "op": "add_irq", "irq": irq})

    def privctl_add_mem(self, endpoint: int, base: int, length: int) -> None:
        self.kcall(
            "privctl", {"endpoint": endpoint, "op": "add_mem", "base": base, "length": length}
        )

    def privctl_add_pci(self, endpoint: int, bus: int, dev: int, fn: int) -> None:
        """A PCI function reserved for ``endpoint``: its bus mastering is turned
        off when that process dies, before its DMA buffers are freed."""
        self.kcall(
            "privctl", {"endpoint": endpoint, "op": "add_pci", "bus": bus, "dev": dev, "fn": fn}
        )

    def statectl_clear_ipc_refs(self) -> None:
        """Fail every call still blocked on this endpoint (a restarted driver)."""
        self.kcall("statectl", {"op": "clear_ipc_refs"})

    def setalarm(self, *, seconds: float | None = None, ticks: int | None = None) -> float:
        """Arm the alarm (0 cancels); a CLOCK notify arrives when it expires.
        Returns the seconds the previous alarm had left."""
        fields: dict[str, codec.Value] = (
            {"seconds": seconds} if seconds is not None else {"ticks": ticks or 0}
        )
        value = self.kcall("setalarm", fields)["previous_seconds"]
        assert isinstance(value, float)
        return value

    def getinfo(self, what: str) -> dict[str, codec.Value]:
        return self.kcall("getinfo", {"what": what})

    def uptime(self) -> float:
        value = self.getinfo("uptime")["seconds"]
        assert isinstance(value, float)
        return value

    def proctab(self) -> list[dict[str, Any]]:
        procs = self.getinfo("proctab")["procs"]
        assert isinstance(procs, list)
        return [dict(p) for p in procs if isinstance(p, dict)]

    def exits(self) -> list[ExitInfo]:
        """Processes this one started that have exited since the last call."""
        records = self.getinfo("exits")["exits"]
        assert isinstance(records, list)
        return [ExitInfo(**r) for r in records if isinstance(r, dict)]  # type: ignore[arg-type]

    def keep_put(self, data: bytes) -> None:
        """Keep ``data`` in the kernel under this process's label, for its next
        incarnation (kernel call ``keep``); empty data forgets it."""
        if not data:
            self.kcall("keep", {"op": "put", "length": 0})
            return
        buf = self.arena.alloc(len(data))
        try:
            buf.write(data)
            self.kcall("keep", {"op": "put", "offset": buf.offset, "length": len(data)})
        finally:
            self.arena.free(buf)

    def keep_get(self) -> bytes | None:
        """What a process with this label kept (None: nothing)."""
        reply = self.kcall("keep", {"op": "get"})
        for _ in range(3):  # another holder of the label may put meanwhile: look again
            if not reply.get("kept"):
                return None
            size = _int(reply["length"])
            if size == 0:
                return b""
            buf = self.arena.alloc(size)
            try:
                reply = self.kcall("keep", {"op": "get", "offset": buf.offset, "length": size})
                if reply.get("copied"):
                    return buf.read(_int(reply["length"]))
            finally:
                self.arena.free(buf)
        raise ValueError("keep: the kept state changed size at every look")

    def diag(self, text: str) -> None:
        self.kcall("diagctl", {"text": text})

    # ------------------------------------------------------------ memory
    def dma_alloc(
        self, size: int, align: int = 4096, boundary: int = 0, tag: str = ""
    ) -> DmaHandle:
        """A contiguous buffer. With a ``tag`` the kernel keeps it when this process
        dies (after stopping its PCI functions' bus mastering) for the next
        process with the same label to ``dma_adopt``; untagged ones are freed."""
        fields: dict[str, codec.Value] = {"size": size, "align": align, "boundary": boundary}
        if tag:
            fields["tag"] = tag
        r = self.kcall("dmaalloc", fields)
        return DmaHandle(_int(r["id"]), _int(r["phys"]), _int(r["size"]), tag)

    def dma_adopt(self) -> list[DmaHandle]:
        """The tagged buffers a dead process with this label left (ids are new);
        they are this process's from now on. Empty when there are none."""
        bufs = self.kcall("dmaadopt")["buffers"]
        assert isinstance(bufs, list)
        return [
            DmaHandle(_int(b["id"]), _int(b["phys"]), _int(b["size"]), str(b["tag"]))
            for b in bufs
            if isinstance(b, dict)
        ]

    def dma_map(self, buf: DmaHandle) -> memoryview:
        """A writable view of exactly the buffer's bytes in guest RAM: the kernel
        passes the guest-RAM file and this process maps only the buffer's pages.
        The view stays valid after ``dma_free``; do not use it then."""
        reply, fds = self.kcall_fds("dmamap", {"id": buf.id})
        try:
            if len(fds) != 1:
                raise ValueError(f"dmamap: {len(fds)} file descriptors in the reply, not 1")
            offset, length = _int(reply["offset"]), _int(reply["length"])
            mapping = mmap.mmap(fds[0], length, mmap.MAP_SHARED, offset=offset)
        finally:
            for fd in fds:
                os.close(fd)
        start = _int(reply["phys"]) - offset
        return memoryview(mapping)[start : start + _int(reply["size"])]

    def dma_free(self, buf: DmaHandle) -> None:
        self.kcall("dmafree", {"id": buf.id})

    def dma_read(self, buf: DmaHandle, offset: int, length: int) -> bytes:
        data = self.kcall(
            "dmacopy", {"id": buf.id, "op": "read", "offset": offset, "length": length}
        )["data"]
        assert isinstance(data, bytes)
        return data

    def dma_write(self, buf: DmaHandle, offset: int, data: bytes) -> None:
        self.kcall("dmacopy", {"id": buf.id, "op": "write", "offset": offset, "data": data})

    def dma_to_grant(
        self, buf: DmaHandle, offset: int, length: int, endpoint: int, grant: int, at: int = 0
    ) -> None:
        """Copy from the DMA buffer into grant ``grant`` of ``endpoint`` at ``at``
        (``endpoint`` SELF: into this process's own arena at offset ``at``)."""
        self._dma_grant("to_grant", buf, offset, length, endpoint, grant, at)

    def dma_from_grant(
        self, buf: DmaHandle, offset: int, length: int, endpoint: int, grant: int, at: int = 0
    ) -> None:
        """Copy from a grant (or, with SELF, this arena at ``at``) into the DMA buffer."""
        self._dma_grant("from_grant", buf, offset, length, endpoint, grant, at)

    def _dma_grant(
        self, op: str, buf: DmaHandle, offset: int, length: int, endpoint: int, grant: int, at: int
    ) -> None:
        fields: dict[str, codec.Value] = {"id": buf.id, "op": op, "offset": offset}
        fields.update(length=length, endpoint=endpoint, grant=grant, grant_offset=at)
        self.kcall("dmacopy", fields)

    def umap(self, buf: DmaHandle, offset: int = 0) -> int:
        return _int(self.kcall("umap", {"id": buf.id, "offset": offset})["phys"])

    # ------------------------------------------------------------ grants
    def safecopyfrom(self, endpoint: int, grant: int, offset: int, local: int, length: int) -> None:
        """Copy ``length`` bytes at ``offset`` in the grant into this arena at ``local``."""
        self.kcall("safecopyfrom", {"endpoint": endpoint, "grant": grant, "offset": offset,
                                    "local": local, "length": length})  # fmt: skip

    def safecopyto(self, endpoint: int, grant: int, offset: int, local: int, length: int) -> None:
        """Copy ``length`` bytes of this arena at ``local`` into the grant at ``offset``."""
        self.kcall("safecopyto", {"endpoint": endpoint, "grant": grant, "offset": offset,
                                  "local": local, "length": length})  # fmt: skip

    def sumcopyto(
        self, endpoint: int, grant: int, offset: int, local: int, first: int, count: int,
        sum_sec: int,
    ) -> int | None:  # fmt: skip
        """The data of ``count`` sectors from logical ``first`` out of the checksummed
        groups at arena ``local`` into the grant at ``offset``, their CRC32C sums
        checked on the way (hwl/sectors.py's layout); the first bad sector, or None."""
        reply = self.kcall("sumcopyto", {"endpoint": endpoint, "grant": grant, "offset": offset,
                                         "local": local, "first": first, "count": count,
                                         "sum_sec": sum_sec})  # fmt: skip
        bad = reply.get("bad")
        return bad if isinstance(bad, int) and bad >= 0 else None

    def safememset(
        self, endpoint: int, grant: int, offset: int, length: int, byte: int = 0
    ) -> None:
        self.kcall("safememset", {"endpoint": endpoint, "grant": grant, "offset": offset,
                                  "length": length, "byte": byte})  # fmt: skip


def _int(value: codec.Value) -> int:
    if not isinstance(value, int):
        raise TypeError(f"the kernel answered {value!r} where an integer belongs")
    return value
