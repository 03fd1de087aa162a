"""The kernel's ``sumcopyto`` call (hwl/kernel/calls/grants.py): the data sectors
of a checksummed layout in the caller's arena go to a grant, contiguous, each
sector's CRC32C sum checked on the way; the first bad sector is the answer. Bad
input is refused with its errno and the kernel serves on.

A kernel without a machine (conftest.py's ``kernel``); the test is its root, which
may make every call; an agent with only the basic calls may not make this one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from agents import spawn_agent

from hwl import ipc, sectors
from hwl.ipc.client import IpcError
from hwl.kernel.errno import Errno
from hwl.kernel.launcher import KernelProcess

SECTOR = sectors.SECTOR
SUM_SEC = 8
FIRST, COUNT = 13, 21  # starts inside its first group, ends inside its last


@pytest.fixture
def layout(root: ipc.Connection) -> Iterator[tuple[ipc.Buffer, bytes, ipc.Buffer, int]]:
    """The root's extended buffer holding COUNT sectors from FIRST with their sums,
    the data in them, and a buffer granted to the root itself for the copy."""
    span = sectors.span_bytes(FIRST, COUNT, SUM_SEC)
    ext = root.arena.alloc(span)
    data = os.urandom(COUNT * SECTOR)
    layout = bytearray(span)
    sectors.expand(layout, FIRST, COUNT, SUM_SEC, data)
    sectors.crc_fill(layout, FIRST, COUNT, SUM_SEC)
    ext.write(bytes(layout))
    out = root.arena.alloc(COUNT * SECTOR + SECTOR)
    out.write(bytes(out.size))
    gid = root.arena.grant(root.endpoint, out.offset, out.size, read=True, write=True)
    try:
        yield ext, data, out, gid
    finally:
        root.arena.revoke(gid)
        root.arena.free(out)
        root.arena.free(ext)


def test_good_sums_copy_the_data_contiguous(
    root: ipc.Connection, layout: tuple[ipc.Buffer, bytes, ipc.Buffer, int]
) -> None:
    ext, data, out, gid = layout
    bad = root.sumcopyto(root.endpoint, gid, SECTOR, ext.offset, FIRST, COUNT, SUM_SEC)
    assert bad is None
    got = out.read()
    assert got[SECTOR:] == data  # at the grant's offset, the sum sectors left out
    assert got[:SECTOR] == bytes(SECTOR)  # nothing before it


def test_a_flipped_bit_names_its_sector(
    root: ipc.Connection, layout: tuple[ipc.Buffer, bytes, ipc.Buffer, int]
) -> None:
    ext, _data, _out, gid = layout
    # the buffer starts with FIRST's group (sectors 8..15, then their sums); logical
    # sector FIRST + 5 = 18 is the 3rd data sector of the next group (16..23)
    at = ext.offset + (SUM_SEC + 1 + 2) * SECTOR + 100
    root.arena.view[at] ^= 0x10
    bad = root.sumcopyto(root.endpoint, gid, 0, ext.offset, FIRST, COUNT, SUM_SEC)
    assert bad == FIRST + 5


def test_bad_requests_are_refused_and_the_kernel_serves_on(
    root: ipc.Connection, layout: tuple[ipc.Buffer, bytes, ipc.Buffer, int]
) -> None:
    ext, data, out, gid = layout
    past_end = len(root.arena.view) - SECTOR
    read_only = root.arena.grant(root.endpoint, out.offset, out.size, read=True)
    try:
        cases = [
            # a grant that does not allow writing
            ((root.endpoint, read_only, 0, ext.offset, FIRST, COUNT, SUM_SEC), Errno.EPERM),
            # more data than the grant holds
            ((root.endpoint, gid, 2 * SECTOR, ext.offset, FIRST, COUNT, SUM_SEC), Errno.EPERM),
            # the layout runs past the end of the caller's arena
            ((root.endpoint, gid, 0, past_end, FIRST, COUNT, SUM_SEC), Errno.EFAULT),
            # more sums than a sector holds, and no sectors at all
            ((root.endpoint, gid, 0, ext.offset, FIRST, COUNT, 129), Errno.EINVAL),
            ((root.endpoint, gid, 0, ext.offset, FIRST, 0, SUM_SEC), Errno.EINVAL),
            # a grant that was never made
            ((root.endpoint, 0x7FFF_0000, 0, ext.offset, FIRST, COUNT, SUM_SEC), Errno.EINVAL),
        ]
        for args, errno in cases:
            with pytest.raises(IpcError) as err:
                root.sumcopyto(*args)
            assert err.value.errno is errno, (args, err.value)
    finally:
        root.arena.revoke(read_only)
    assert root.sumcopyto(root.endpoint, gid, 0, ext.offset, FIRST, COUNT, SUM_SEC) is None
    assert out.read()[: COUNT * SECTOR] == data


def test_a_process_without_the_call_on_its_system_line_may_not(
    kernel: KernelProcess, root: ipc.Connection
) -> None:
    agent = spawn_agent(root, "nosum", "ipc ALL;")
    fields = {"endpoint": root.endpoint, "grant": 1, "local": 0, "first": 0, "count": 1,
              "sum_sec": SUM_SEC}  # fmt: skip
    got = agent.cmd("kcall", name="sumcopyto", fields=fields)
    assert Errno(got["status"]) is Errno.ECALLDENIED, got
    assert "sumcopyto" in got["error"]
    root.kill(agent.ep)
