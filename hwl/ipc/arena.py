"""A process's shared-memory arena and the memory grants in it.

Every process gets an arena from the kernel: a memfd that both map. Bulk data
moves through it: a process puts bytes in its arena and *grants* a range of it to
one endpoint; that endpoint asks the kernel to ``safecopyfrom`` / ``safecopyto``
the grant, and the kernel copies between the two arenas. As in MINIX, the grant
table lives in the granter's own memory (the arena's first bytes), so making or
revoking a grant costs no round trip; the kernel reads and checks the entry on
every copy and never trusts it further than the arena's bounds.

An entry is 24 bytes: flags (sequence << 16 | access bits), grantee, offset,
length, and for an *indirect* grant the endpoint and grant it refers to (a server
passing a client's grant on to a driver: the driver copies straight from the
client's arena, the range narrowed to ``offset``/``length`` of that grant).

A *sums* grant (an indirect, write-only grant with SUMS and a group size in its
flags) is the filter driver's for a disk driver's read of its checksummed layout:
the grantee may write through it only in a DMA copy of whole groups (``sum_sec``
data sectors and their sector of CRC32C sums each), offsets and lengths counted
in the groups' bytes; the kernel checks every data sector's sum as it copies the
data, collapsed, into the grant it refers to. So the data moves once, from the
driver's DMA buffer to the client, and still no byte reaches the client unchecked.
A sector's sum covers its logical number too (drivers/filter/sums.py), so in a
sums grant the offset field holds the logical number of its first data sector,
and the grant covers the one it refers to from that grant's start.

See docs/kernel.md.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Final

from hwl.ranges import RangeAllocator

MAGIC: Final = 0x47524E54  # "GRNT"
NR_GRANTS: Final = 1024
HEADER: Final = struct.Struct("<II")  # magic, number of entries
ENTRY: Final = struct.Struct("<IiIIiI")  # flags, grantee, offset, length, ind_ep, ind_grant
TABLE_END: Final = HEADER.size + NR_GRANTS * ENTRY.size
DATA_START: Final = 32 * 1024  # the first byte a grant or an allocation may cover
DEFAULT_SIZE: Final = 16 * 1024 * 1024 + DATA_START  # sparse: pages cost only when touched

VALID: Final = 1
READ: Final = 2  # the grantee may read (safecopyfrom)
WRITE: Final = 4  # the grantee may write (safecopyto)
INDIRECT: Final = 8
SUMS: Final = 16  # a sums grant (above); its sum_sec - 1 in bits 8..15
_SUM_SEC_SHIFT: Final = 8
MAX_SUM_SEC: Final = 128  # 4-byte sums in one 512-byte sector
ACCESS: Final = READ | WRITE
_SEQ_SHIFT: Final = 16
_INDEX_BITS: Final = 10
# The endpoint a process's call on a channel waits on (wire.NONE when none): the
# kernel cannot see such a wait, so the process writes it here, in the arena the
# kernel maps, for proctab and the channel-cycle watchdog (hwl.kernel.channels).
CHANNEL_WAIT: Final = struct.Struct("<i")
CHANNEL_WAIT_AT: Final = TABLE_END
assert NR_GRANTS == 1 << _INDEX_BITS and CHANNEL_WAIT_AT + CHANNEL_WAIT.size <= DATA_START

INVALID_GRANT: Final = -1


class GrantError(ValueError):
    """No grant can be made: the table is full."""


def grant_id(index: int, seq: int) -> int:
    return (seq << _INDEX_BITS) | index


def split_grant_id(gid: int) -> tuple[int, int]:
    """(index, sequence) of a grant id."""
    return gid & (NR_GRANTS - 1), gid >> _INDEX_BITS


@dataclass(frozen=True)
class Buffer:
    """A range of the caller's own arena: ``offset`` names it in kernel calls."""

    offset: int
    size: int
    view: memoryview

    def read(self, size: int | None = None, offset: int = 0) -> bytes:
        end = self.size if size is None else offset + size
        if offset < 0 or end > self.size:
            raise ValueError(f"read [{offset}, {end}) outside a {self.size}-byte buffer")
        return bytes(self.view[offset:end])

    def write(self, data: bytes | bytearray | memoryview, offset: int = 0) -> None:
        if offset < 0 or offset + len(data) > self.size:
            raise ValueError(
                f"write of {len(data)} bytes at {offset} outside a {self.size}-byte buffer"
            )
        self.view[offset : offset + len(data)] = data


class Arena:
    """The process side: an allocator over the data area, and the grant table."""

    def __init__(self, fd: int) -> None:
        self.size = os.fstat(fd).st_size
        if self.size <= DATA_START:
            raise ValueError(f"an arena of {self.size} bytes has no room for data")
        self._map = mmap.mmap(fd, self.size, mmap.MAP_SHARED)
        os.close(fd)
        self.view = memoryview(self._map)
        HEADER.pack_into(self.view, 0, MAGIC, NR_GRANTS)
        self._ranges = RangeAllocator(DATA_START, self.size)
        self._next_index = 0
        self._seq = [0] * NR_GRANTS

    # ------------------------------------------------------------- allocation
    def alloc(self, size: int, align: int = 64) -> Buffer:
        """``size`` bytes of arena memory (first fit, ``align``-aligned)."""
        if size <= 0:
            raise ValueError(f"cannot allocate {size} bytes")
        base = self._ranges.alloc(size, align)
        if base is None:
            raise MemoryError(f"the arena has no {size} contiguous bytes free (size {self.size})")
        return Buffer(base, size, self.view[base : base + size])

    def free(self, buf: Buffer) -> None:
        if self._ranges.free(buf.offset) is None:
            raise ValueError(f"offset {buf.offset} is not an allocated buffer")

    # ----------------------------------------------------------------- grants
    def _take_index(self) -> int:
        for _ in range(NR_GRANTS):
            index = self._next_index
            self._next_index = (index + 1) % NR_GRANTS
            flags = ENTRY.unpack_from(self.view, HEADER.size + index * ENTRY.size)[0]
            if not flags & VALID:
                return index
        raise GrantError(f"all {NR_GRANTS} grants are in use")

    def _write(self, flags: int, grantee: int, a: int, b: int, c: int, d: int) -> int:
        index = self._take_index()
        seq = self._seq[index] = (self._seq[index] + 1) & 0x7FFF
        entry = HEADER.size + index * ENTRY.size
        # Write the entry first and the VALID flags last, so the kernel never
        # sees a half-written grant as valid.
        ENTRY.pack_into(self.view, entry, 0, grantee, a, b, c, d)
        struct.pack_into("<I", self.view, entry, (seq << _SEQ_SHIFT) | flags | VALID)
        return grant_id(index, seq)

    def grant(
        self, grantee: int, offset: int, length: int, *, read: bool = True, write: bool = False
    ) -> int:
        """Let ``grantee`` (an endpoint, or ANY) copy ``length`` bytes at arena ``offset``."""
        if not (read or write):
            raise ValueError("a grant must allow reading, writing or both")
        if offset < DATA_START or length < 0 or offset + length > self.size:
            raise ValueError(
                f"range [{offset}, {offset + length}) is outside the arena's data area "
                f"[{DATA_START}, {self.size})"
            )
        access = (READ if read else 0) | (WRITE if write else 0)
        return self._write(access, grantee, offset, length, 0, 0)

    def grant_buffer(
        self, grantee: int, buf: Buffer, *, read: bool = True, write: bool = False
    ) -> int:
        return self.grant(grantee, buf.offset, buf.size, read=read, write=write)

    def grant_indirect(
        self,
        grantee: int,
        owner: int,
        owner_grant: int,
        offset: int,
        length: int,
        *,
        read: bool = True,
        write: bool = False,
    ) -> int:
        """Pass on ``owner``'s grant ``owner_grant`` (made to this process) to
        ``grantee``, narrowed to ``length`` bytes at ``offset`` within it."""
        access = (READ if read else 0) | (WRITE if write else 0)
        if not access or offset < 0 or length < 0:
            raise ValueError("an indirect grant needs an access and a non-negative range")
        return self._write(access | INDIRECT, grantee, offset, length, owner, owner_grant)

    def grant_sums(
        self, grantee: int, owner: int, owner_grant: int, length: int, sum_sec: int, first: int
    ) -> int:
        """A sums grant (above): ``grantee`` writes the first ``length`` bytes of
        ``owner``'s grant ``owner_grant`` only as checked groups of ``sum_sec`` data
        sectors, the first of them logical sector ``first``."""
        if not 0 < sum_sec <= MAX_SUM_SEC or length < 0 or not 0 <= first < 1 << 32:
            raise ValueError(f"a sums grant of {sum_sec} sectors a group, {length} bytes "
                             f"from sector {first}")  # fmt: skip
        flags = WRITE | INDIRECT | SUMS | (sum_sec - 1) << _SUM_SEC_SHIFT
        return self._write(flags, grantee, first, length, owner, owner_grant)

    def own_range(self, gid: int) -> tuple[int, int]:
        """(arena offset, length) of one of this process's live direct grants: a
        driver that fills its own grant without the kernel (at_wini's ring)."""
        index, seq = split_grant_id(gid)
        flags, _grantee, offset, length, _ep, _g = ENTRY.unpack_from(
            self.view, HEADER.size + index * ENTRY.size
        )
        if not flags & VALID or flags >> _SEQ_SHIFT != seq or flags & INDIRECT:
            raise ValueError(f"grant {gid} is not a live direct grant of this process")
        return offset, length

    def revoke(self, gid: int) -> None:
        """Withdraw a grant; a copy the kernel starts afterwards fails with EINVAL."""
        index, seq = split_grant_id(gid)
        entry = HEADER.size + index * ENTRY.size
        flags = ENTRY.unpack_from(self.view, entry)[0]
        if flags & VALID and flags >> _SEQ_SHIFT == seq:
            struct.pack_into("<I", self.view, entry, 0)
        else:
            raise ValueError(f"grant {gid} is not a live grant of this process")

    def close(self) -> None:
        try:
            self.view.release()
            self._map.close()
        except BufferError:
            pass  # a Buffer still holds a view; the mapping goes with the last one


# --- the kernel side -------------------------------------------------------------


def sum_sec_of(flags: int) -> int:
    """The data sectors per group of a sums grant's flags; 0 for any other grant."""
    return (flags >> _SUM_SEC_SHIFT & 0xFF) + 1 if flags & SUMS else 0


def read_entry(view: memoryview, gid: int) -> tuple[int, int, int, int, int, int] | None:
    """The live entry of grant ``gid`` in an arena, or None if there is none."""
    if not 0 <= gid < 1 << 31:
        return None
    index, seq = split_grant_id(gid)
    entry = ENTRY.unpack_from(view, HEADER.size + index * ENTRY.size)
    flags = entry[0]
    if not flags & VALID or flags >> _SEQ_SHIFT != seq:
        return None
    return entry
