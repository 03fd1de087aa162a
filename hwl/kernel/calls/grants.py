"""Memory grants (MINIX's ``safecopy``): copies between the caller's arena and a
granter's, checked against the grant's grantee, access and range.

A grant is an entry in the granter's arena (hwl.ipc.arena); an indirect one names
another grant, followed at most 4 deep. :meth:`Grants.resolve` is also how the DMA
and port I/O calls reach a grant; a DMA copy to a grant goes through
:meth:`Grants.copy_to`, the only way to write through a sums grant.
"""

from __future__ import annotations

from typing import Protocol

from hwl import sectors
from hwl.errors import NativeBuildError
from hwl.ipc import arena, wire
from hwl.kernel.calls.base import (
    I32_MAX,
    I32_MIN,
    CallError,
    Fields,
    Reply,
    deny,
    fail,
    get_bool,
    get_int,
)
from hwl.kernel.errno import Errno
from hwl.kernel.proc import Proc

MAX_VECTOR = 64  # vsafecopy entries
MAX_SUM_SECTORS = 1 << 16  # sumcopyto: 32 MiB of data, far above any request


class Procs(Protocol):
    """The process table, for the granters' arenas."""

    def lookup(self, endpoint: int) -> Proc | None: ...


class Grants:
    def __init__(self, table: Procs) -> None:
        self.table = table

    @staticmethod
    def own(proc: Proc, offset: int, length: int) -> tuple[memoryview, int]:
        """Where ``length`` bytes at ``offset`` of the caller's own arena are."""
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
            granter = self.table.lookup(granter_ep)
            if granter is None:
                fail(Errno.EDEADSRCDST, f"granter {wire.endpoint_name(granter_ep)} is not alive")
            entry = arena.read_entry(granter.arena_view, gid)
            if entry is None:
                fail(Errno.EINVAL, f"{granter.label} has no grant {gid} (revoked or never made)")
            flags, grantee, g_off, g_len, ind_ep, ind_gid = entry
            if grantee not in (wire.ANY, requester):
                deny(f"grant {gid} of {granter.label} is for {wire.endpoint_name(grantee)}, "
                     f"not {wire.endpoint_name(requester)}")  # fmt: skip
            if flags & arena.SUMS:
                deny(f"grant {gid} of {granter.label} is a sums grant: only a DMA copy of "
                     "checksummed groups writes through it")  # fmt: skip
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

    def target(
        self, caller: Proc, granter_ep: int, gid: int, offset: int, length: int
    ) -> tuple[memoryview, int, int, int, int]:
        """Where a DMA copy of ``length`` bytes to grant ``gid`` at ``offset`` goes:
        (view, start, data length, sum_sec, first sector). For a plain grant the
        data is the copy (sum_sec 0); a sums grant (hwl.ipc.arena) takes whole
        groups, and the data is their data sectors, up to the grant's end, the
        first of them logical sector ``first``."""
        granter = self.table.lookup(granter_ep)
        entry = None if granter is None else arena.read_entry(granter.arena_view, gid)
        if granter is None or entry is None or not entry[0] & arena.SUMS:
            view, start = self.resolve(caller, granter_ep, gid, arena.WRITE, offset, length)
            return view, start, length, 0, 0
        flags, grantee, first, g_len, ind_ep, ind_gid = entry
        if grantee not in (wire.ANY, caller.endpoint):
            deny(f"grant {gid} of {granter.label} is for {wire.endpoint_name(grantee)}, "
                 f"not {wire.endpoint_name(caller.endpoint)}")  # fmt: skip
        if flags & (arena.INDIRECT | arena.WRITE) != arena.INDIRECT | arena.WRITE:
            deny(f"grant {gid} of {granter.label}: a sums grant is indirect and writable")
        sum_sec = arena.sum_sec_of(flags)
        stride = (sum_sec + 1) * sectors.SECTOR
        if offset < 0 or length <= 0 or offset % stride or length % stride:
            deny(f"sums grant {gid} of {granter.label}: [{offset}, +{length}) is not whole "
                 f"groups of {stride} bytes")  # fmt: skip
        data_at = offset // stride * sum_sec * sectors.SECTOR
        data = min(length // stride * sum_sec * sectors.SECTOR, g_len - data_at)
        if data <= 0 or data % sectors.SECTOR or first % sum_sec:
            deny(f"sums grant {gid} of {granter.label}: groups at {offset} hold none of its "
                 f"{g_len} bytes of whole sectors from sector {first}")  # fmt: skip
        view, start = self.resolve(granter, ind_ep, ind_gid, arena.WRITE, data_at, data)
        return view, start, data, sum_sec, first + data_at // sectors.SECTOR

    def copy_to(self, caller: Proc, granter_ep: int, gid: int, offset: int,
                source: memoryview) -> None:  # fmt: skip
        """A DMA copy of ``source`` to grant ``gid`` at ``offset``; through a sums
        grant, the data sectors collapsed out of the groups, each checked against
        its CRC32C sum in the same pass: EBADMSG names the first that fails (the
        grant then holds the sectors before it)."""
        view, start, data, sum_sec, first = self.target(caller, granter_ep, gid, offset,
                                                        len(source))  # fmt: skip
        if not sum_sec:
            view[start : start + data] = source
            return
        try:
            bad = sectors.crc_check(source, first, data // sectors.SECTOR, sum_sec,
                                    view[start : start + data])  # fmt: skip
        except NativeBuildError as exc:
            fail(Errno.ENOSYS, f"the sector loops are not built: {exc}")
        if bad is not None:
            fail(Errno.EBADMSG, f"bad checksum at sector {bad} (sums grant {gid} of "
                                f"{wire.endpoint_name(granter_ep)})")  # fmt: skip

    def _copy(self, proc: Proc, f: Fields, to_grant: bool) -> None:
        granter = get_int(f, "endpoint", I32_MIN, I32_MAX)
        gid = get_int(f, "grant", 0, I32_MAX)
        offset = get_int(f, "offset", 0, I32_MAX, 0)
        length = get_int(f, "length", 0, I32_MAX)
        local = get_int(f, "local", 0, I32_MAX)
        view, start = self.resolve(
            proc, granter, gid, arena.WRITE if to_grant else arena.READ, offset, length
        )
        own, at = self.own(proc, local, length)
        if to_grant:
            view[start : start + length] = own[at : at + length]
        else:
            own[at : at + length] = view[start : start + length]

    def do_safecopyfrom(self, proc: Proc, f: Fields) -> Reply:
        self._copy(proc, f, to_grant=False)
        return {}

    def do_safecopyto(self, proc: Proc, f: Fields) -> Reply:
        self._copy(proc, f, to_grant=True)
        return {}

    def do_vsafecopy(self, proc: Proc, f: Fields) -> Reply:
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

    def do_sumcopyto(self, proc: Proc, f: Fields) -> Reply:
        """The data sectors of a checksummed layout in the caller's arena (``local``:
        the groups holding ``count`` sectors from logical sector ``first``, ``sum_sec``
        data sectors and one sector of their CRC32C sums per group; the filter's
        layout, hwl/sectors.py) into a grant, contiguous, each sector's sum checked
        in the same pass. ``bad``: the first sector whose sum is wrong (the grant's
        bytes are then not all the request's), or -1. One pass over the data, where
        a check, a collapse and a safecopyto took three."""
        granter = get_int(f, "endpoint", I32_MIN, I32_MAX)
        gid = get_int(f, "grant", 0, I32_MAX)
        offset = get_int(f, "offset", 0, I32_MAX, 0)
        local = get_int(f, "local", 0, I32_MAX)
        first = get_int(f, "first", 0, I32_MAX)
        count = get_int(f, "count", 1, MAX_SUM_SECTORS)
        sum_sec = get_int(f, "sum_sec", 1, sectors.MAX_SUM_SEC)
        try:
            span = sectors.span_bytes(first, count, sum_sec)
        except ValueError as exc:
            fail(Errno.EINVAL, f"sumcopyto: {exc}")
        size = count * sectors.SECTOR
        view, start = self.resolve(proc, granter, gid, arena.WRITE, offset, size)
        own, at = self.own(proc, local, span)
        try:
            bad = sectors.crc_check(own[at : at + span], first, count, sum_sec,
                                    view[start : start + size])  # fmt: skip
        except NativeBuildError as exc:
            fail(Errno.ENOSYS, f"sumcopyto: the sector loops are not built: {exc}")
        return {"bad": -1 if bad is None else bad}

    def do_safememset(self, proc: Proc, f: Fields) -> Reply:
        granter = get_int(f, "endpoint", I32_MIN, I32_MAX)
        gid = get_int(f, "grant", 0, I32_MAX)
        offset = get_int(f, "offset", 0, I32_MAX, 0)
        length = get_int(f, "length", 0, I32_MAX)
        byte = get_int(f, "byte", 0, 255, 0)
        view, start = self.resolve(proc, granter, gid, arena.WRITE, offset, length)
        view[start : start + length] = bytes([byte]) * length
        return {}
