"""DMA memory: ``dmaalloc``, ``dmafree``, ``dmaadopt``, ``dmamap``, ``dmacopy`` and
``umap``, as MINIX's ``do_umap.c`` and its contiguous-memory calls.

Buffers are contiguous guest RAM the stub hands out; each belongs to the process
that allocated it (``memory ... dma`` in system.conf) and is freed at its death,
unless it was tagged: then it is kept for the next process with that label
(hwl.kernel.dmakeep), which ``dmaadopt``s it. Before a dead process's buffers go,
the bus mastering of the PCI functions it held is switched off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from hwl.ipc import arena, codec, wire
from hwl.kernel.calls.base import (
    I32_MAX,
    I32_MIN,
    U32,
    Fields,
    Reply,
    WithFds,
    deny,
    fail,
    get_bytes,
    get_int,
    get_str,
)
from hwl.kernel.calls.grants import Grants
from hwl.kernel.calls.stub import Stub
from hwl.kernel.calls.watch import Watches
from hwl.kernel.dmakeep import DmaKeeper
from hwl.kernel.errno import Errno
from hwl.kernel.proc import Proc
from hwl.kernel.stublink import HasLink
from hwl.link.memory import DmaBuffer

log = logging.getLogger("hwl.kernel.calls")

CALLS = frozenset({"dmaalloc", "dmafree", "dmacopy", "dmamap", "dmaadopt"})
"""The calls ``memory ... dma`` allows (no ``system`` line names them)."""
MAX_INLINE = 4096  # dmacopy read/write bytes carried in the message itself
PAGE = 4096
PCI_COMMAND, PCI_COMMAND_BUS_MASTER = 0x04, 0x04
PCI_COMMAND_INTX_DISABLE, PCI_INTERRUPT_PIN = 0x400, 0x3D
MAX_TAG = 64


class DmaCalls:
    def __init__(
        self, machine: HasLink, stub: Stub, grants: Grants, procs: Iterable[Proc], watches: Watches
    ) -> None:
        self.machine = machine
        self.watches = watches  # a freed buffer's watched doorbells end first
        self.stub = stub
        self.grants = grants
        self.procs = procs  # who else holds a PCI function (quiesce)
        self._dma_ids = 0
        self.dma_tags: dict[int, str] = {}  # DMA buffer id -> its tag (tagged ones only)
        self.keeper = DmaKeeper()

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
        if self.machine.link is not None:
            self.machine.link.free_dma(buf)

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
        link = self.machine.link
        if not proc.priv.extra_pci or link is None or not self.machine.link_ok:
            return
        for bdf in sorted(proc.priv.extra_pci):
            name = f"{bdf[0]:02x}:{bdf[1]:02x}.{bdf[2]}"
            others = [p.label for p in self.procs if p is not proc and bdf in p.priv.extra_pci]
            if others:
                log.info("%s is dead; %s stays bus master: %s holds it too",
                         proc.label, name, ", ".join(others))  # fmt: skip
                continue
            try:
                self.stub.make_room(0)  # the one-op calls below need the spare slot
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

    def _dma_buffer(self, proc: Proc, f: Fields) -> tuple[int, DmaBuffer]:
        ident = get_int(f, "id", 0, I32_MAX)
        buf = proc.dma.get(ident)
        if buf is None:
            fail(Errno.EINVAL, f"DMA buffer {ident} is not one of this process's")
        return ident, buf

    def do_dmaalloc(self, proc: Proc, f: Fields) -> Reply:
        size = get_int(f, "size", 1, 1 << 30)
        align = get_int(f, "align", 1, 1 << 20, 4096)
        boundary = get_int(f, "boundary", 0, 1 << 30, 0)
        if align & (align - 1) or boundary & (boundary - 1):
            fail(Errno.EINVAL, "dmaalloc: align and boundary must be powers of two")
        tag = get_str(f, "tag", "")
        if len(tag) > MAX_TAG:
            fail(Errno.EINVAL, f"dmaalloc: a tag of {len(tag)} characters (at most {MAX_TAG})")
        if boundary == 0 or boundary >= PAGE:  # whole pages: see dmamap
            size, align = -(-size // PAGE) * PAGE, max(align, PAGE)
        link = self.stub.link()
        try:
            buf = link.alloc_dma(size, align, boundary)
        except Exception as exc:
            fail(Errno.ENOMEM, f"dmaalloc: {exc}")
        buf.view[:] = bytes(buf.size)  # nothing of the memory's last owner
        self._dma_ids += 1
        proc.dma[self._dma_ids] = buf
        if tag:
            self.dma_tags[self._dma_ids] = tag
        return {"id": self._dma_ids, "phys": buf.phys, "size": buf.size}

    def do_dmaadopt(self, proc: Proc, f: Fields) -> Reply:
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

    def do_dmafree(self, proc: Proc, f: Fields) -> Reply:
        ident, buf = self._dma_buffer(proc, f)
        self.watches.drop(proc, f"DMA buffer {ident} freed", buffer=ident)
        self.dma_tags.pop(ident, None)
        del proc.dma[ident]
        self.stub.link().free_dma(buf)
        return {}

    def do_dmamap(self, proc: Proc, f: Fields) -> WithFds:
        """The guest-RAM file (over SCM_RIGHTS) and the page range of one of the
        caller's DMA buffers, for the caller to mmap: its rings and packet buffers
        without a kernel call each. The trust boundary is ``memory dma`` itself (a
        bus-master driver can make its device write anywhere: no IOMMU on pc), so
        the file grants a holder of it nothing new; the client maps only the
        buffer's pages and closes the fd. dmaalloc hands out whole pages (unless a
        boundary under a page forbids it), so those pages hold no other buffer: a
        stray write past a buffer's end reaches no other driver's."""
        _ident, buf = self._dma_buffer(proc, f)
        fd = self.stub.link().memory.fd
        if fd is None:
            fail(Errno.ENODEV, "dmamap: the kernel has no guest-RAM file to share")
        start = buf.phys & ~(PAGE - 1)
        end = (buf.phys + buf.size + PAGE - 1) & ~(PAGE - 1)
        reply: Reply = {"offset": start, "length": end - start, "phys": buf.phys, "size": buf.size}
        return WithFds(reply, [fd])

    def do_dmacopy(self, proc: Proc, f: Fields) -> Reply:
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
        if granter == wire.SELF:  # an arena offset of the caller's own
            view, start = self.grants.own(proc, goff, length)
        elif op == "to_grant":  # through a sums grant too
            gid = get_int(f, "grant", 0, I32_MAX)
            self.grants.copy_to(proc, granter, gid, goff, buf.view[offset : offset + length])
            return {}
        else:
            gid = get_int(f, "grant", 0, I32_MAX)
            view, start = self.grants.resolve(proc, granter, gid, arena.READ, goff, length)
        if op == "to_grant":
            view[start : start + length] = buf.view[offset : offset + length]
        else:
            buf.view[offset : offset + length] = view[start : start + length]
        return {}

    def do_umap(self, proc: Proc, f: Fields) -> Reply:
        if "id" in f:
            _ident, buf = self._dma_buffer(proc, f)
            offset = get_int(f, "offset", 0, buf.size - 1, 0)
            return {"phys": buf.phys + offset}
        base = get_int(f, "phys", 0, U32)
        length = get_int(f, "length", 1, 1 << 32)
        if not proc.priv.allows_memory(base, length):
            deny(f"umap: memory {base:#x}+{length:#x} is outside its memory ranges")
        return {"phys": base}
