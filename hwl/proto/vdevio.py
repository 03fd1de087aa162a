"""vdevio with a DMA copy: a command and the move of its data in one kernel call.

A disk read by DMA is a command, its interrupt, its status, and then the copy of
the DMA buffer into the client's grant; a write copies from the grant first. The
plain vdevio (``wire.VDEVIO``: the payload is the packed ops, the request's peer
field the IRQ hook or ``NO_HOOK``) needs a second call (``dmacopy``) for the
copy. With :data:`COPY` set in the peer field the payload starts with a
:class:`Copy` descriptor (:data:`SIZE` bytes), then the ops, and the kernel does
both:

- ``FROM_GRANT``: the copy, then the batch (a write's data reaches the DMA
  buffer before the command starts).
- ``TO_GRANT``: the batch, then the copy, only if the batch ran to its end (an
  IRQ wait that timed out stops it) and every check holds: ``(result of op
  index) & mask == value``. A command that failed (ERR, a bus-master error)
  copies nothing, so a client never gets the bytes an earlier command left in
  the buffer.

The reply's payload is the ops with their results, as plain vdevio's, then a u32:
the bytes copied (0: not copied). The caller needs ``memory ... dma`` and
``vdevio``; the buffer must be its own, the grant must allow the access (or be
the caller's own arena, endpoint ``SELF``). A malformed descriptor is EINVAL.

A *posted* vdevio (:data:`POSTED` alone in the peer field: no hook, no copy)
is answered once the kernel has checked the batch and queued it for the stub,
as a PCI posted write is: the caller goes on while the device works (a NIC's
tail-register write, which transmits in the write). It may hold up to
:data:`MAX_POSTED_SLOTS` slots' worth of ops (a ne2k SEND of 63 frames). Its
results are not returned: the reply's payload is two u32, how many of the
caller's posted batches have finished so far (they run in the order posted, and
a later plain vdevio runs after all of them), so a driver knows which staging
memory the device has read, and how many slots of them the stub stopped (a wait
that timed out), each also a line in the kernel's log.

A *watched* vdevio (:data:`WATCH` alone in the peer field) arms a watched
doorbell (guest/abi.h, struct hwl_watch): the payload is a :data:`WATCH_HEAD`
(DMA buffer id, the watched word's offset in it, the sleep word's offset, flags)
and one packed op, an OUT or MMIO_WR that vdevio's checks allow the caller. The
stub then makes that write itself whenever the word changes, with the word's
value as the op's value under :data:`WATCH_VALUE` (a tail index). Without the op
the watch on that word is turned off. Up to the stub's NWATCH at once (EBUSY).

With :data:`WATCH_FRAMES` in its flags the watch is a *frame template* (guest/abi.h,
struct hwl_frames): a :data:`FRAMES_HEAD` (the offsets of the u16 length table,
of the first staging slot and of the two u32 counts the stub keeps, the number
of slots, their size, the longest frame; a patch code per op) follows the
WATCH_HEAD, then 1..FRAME_OPS ops, run for each frame the word's count adds,
patched with the frame's length and its slot's address.

See docs/kernel.md.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

COPY: Final = 1 << 30  # in the peer field: a Copy descriptor leads the payload
POSTED: Final = 1 << 29  # in the peer field, alone: answer once queued (above)
MAX_POSTED_SLOTS: Final = 3  # stub slots one posted batch may fill (wire.MAX_KCALL_PAYLOAD)
WATCH: Final = 1 << 28  # in the peer field, alone: arm (or end) a watched doorbell
WATCH_HEAD: Final = struct.Struct("<iIII")  # buffer id, word offset, sleep offset, flags
WATCH_VALUE: Final = 1  # WATCH_HEAD flags: the op's value is the word's new value
WATCH_FRAMES: Final = 2  # WATCH_HEAD flags: a frame template (FRAMES_HEAD and ops follow)
# length table, slots, stride, first slot, counts (offsets in the buffer), longest frame, patches
FRAMES_HEAD: Final = struct.Struct("<IIIIII16s")
HOOK_MASK: Final = 0xFFFF  # the hook id in the peer field's low bits with COPY
NO_HOOK: Final = 0xFFFF  # no hook, with COPY

TO_GRANT: Final = 1  # DMA buffer -> grant, after the batch
FROM_GRANT: Final = 2  # grant -> DMA buffer, before the batch
MAX_CHECKS: Final = 3

# direction, number of checks, spare, buffer id, buffer offset, length,
# granter endpoint, grant id, grant offset; then MAX_CHECKS checks
HEAD: Final = struct.Struct("<BBHiIIiII")
CHECK: Final = struct.Struct("<HHII")  # op number, spare, mask, value
SIZE: Final = HEAD.size + MAX_CHECKS * CHECK.size  # 64: four ops' worth
_WHOLE: Final = struct.Struct(HEAD.format + CHECK.format[1:] * MAX_CHECKS)  # one unpack
_HEAD_FIELDS: Final = 9
COPIED: Final = struct.Struct("<I")  # after the ops in the reply
POSTED_REPLY: Final = struct.Struct("<II")  # a posted vdevio's reply: finished, stopped


class Check(NamedTuple):
    """Copy only if ``(result of op number op) & mask == value``."""

    op: int
    mask: int
    value: int


class Copy(NamedTuple):
    """A copy between one of the caller's DMA buffers and a grant (NamedTuples:
    made and read on every DMA command, in the driver and in the kernel)."""

    direction: int
    buffer: int  # DMA buffer id
    offset: int  # in the buffer
    length: int
    endpoint: int  # the granter (SELF: the caller's own arena)
    grant: int
    grant_offset: int  # with SELF: the arena offset
    checks: tuple[Check, ...] = ()

    def pack(self) -> bytes:
        if len(self.checks) > MAX_CHECKS:
            raise ValueError(f"{len(self.checks)} checks (at most {MAX_CHECKS})")
        head = HEAD.pack(self.direction, len(self.checks), 0, self.buffer, self.offset,
                         self.length, self.endpoint, self.grant, self.grant_offset)  # fmt: skip
        checks = b"".join(CHECK.pack(c.op, 0, c.mask, c.value) for c in self.checks)
        return head + checks + bytes(SIZE - len(head) - len(checks))

    @classmethod
    def unpack(cls, data: bytes) -> Copy:
        """The descriptor at the start of ``data``; ValueError if it is malformed
        (the kernel checks buffers, grants and op indexes itself)."""
        if len(data) < SIZE:
            raise ValueError(f"{len(data)} bytes hold no {SIZE}-byte copy descriptor")
        v = _WHOLE.unpack_from(data)
        direction, nchecks, spare = v[0], v[1], v[2]
        if direction not in (TO_GRANT, FROM_GRANT):
            raise ValueError(f"copy direction {direction} (1 to_grant, 2 from_grant)")
        if nchecks > MAX_CHECKS or spare:
            raise ValueError(f"{nchecks} checks, spare {spare} (at most {MAX_CHECKS}, 0)")
        at = _HEAD_FIELDS  # then each check's op, spare, mask, value
        checks = tuple(Check(v[i], v[i + 2], v[i + 3]) for i in range(at, at + 4 * nchecks, 4))
        buffer, offset, length, endpoint, grant, grant_offset = v[3:at]
        return cls(direction, buffer, offset, length, endpoint, grant, grant_offset, checks)


def peer_field(hook: int | None) -> int:
    """The request's peer field for a vdevio with a copy and ``hook`` (or none)."""
    if hook is not None and not 0 <= hook < NO_HOOK:
        raise ValueError(f"hook {hook} does not fit the peer field")
    return COPY | (NO_HOOK if hook is None else hook)


def hook_of(peer: int) -> int | None:
    """The hook a COPY peer field names (None: no hook)."""
    hook = peer & HOOK_MASK
    return None if hook == NO_HOOK else hook
