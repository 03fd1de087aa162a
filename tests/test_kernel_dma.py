"""DMA buffers a driver maps, and DMA that survives a driver's death safely.

A real pc machine. ``dma_map`` gives a process its buffer's bytes in guest RAM
(the kernel passes the guest-RAM file; the process maps only the buffer's pages).
At a death the kernel stops bus mastering of the PCI functions the process held,
keeps its tagged buffers for the next process with its label and frees the rest.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agents import MakeProc
from rs_fixtures import wait_for

from hwl import Batch, Machine, ipc, sectors
from hwl.ipc import arena, codec
from hwl.kernel.errno import Errno
from hwl.kernel.launcher import KernelProcess
from hwl.pytest_plugin import MachineFactory
from hwl.system.boot import System
from hwl.system.rs import up_fields

pytestmark = pytest.mark.qemu

DMA = "system vdevio; memory dma;"
KEEP_SECONDS = 2.0  # the kernel's adoption timeout, shortened for the test


@pytest.fixture(scope="module")
def kernel(hwl_machines: MachineFactory) -> Iterator[KernelProcess]:
    machine: Machine = hwl_machines.boot("pc")
    try:
        k = KernelProcess.start(machine, dma_keep_seconds=KEEP_SECONDS)
        try:
            yield k
        finally:
            k.stop()
    finally:
        machine.close()


@pytest.fixture
def root(kernel: KernelProcess) -> ipc.Connection:
    assert kernel.root is not None
    return kernel.root


def wait_gone(root: ipc.Connection, endpoint: int, timeout: float = 5.0) -> None:
    """Until the kernel has released a closed process."""
    deadline = time.monotonic() + timeout
    while any(p["endpoint"] == endpoint for p in root.proctab()):
        assert time.monotonic() < deadline, "the process is still in the table"
        time.sleep(0.02)


def test_dma_map_is_the_buffers_bytes_both_ways(process: MakeProc) -> None:
    conn = process("mapper", DMA)
    buf = conn.dma_alloc(6000, align=64)  # not page aligned at the end: a partial page
    view = conn.dma_map(buf)
    assert len(view) == buf.size and not view.readonly
    view[:5] = b"hello"
    view[buf.size - 3 :] = b"end"
    assert conn.dma_read(buf, 0, 5) == b"hello"  # the kernel's own view of guest RAM
    assert conn.dma_read(buf, buf.size - 3, 3) == b"end"
    conn.dma_write(buf, 100, b"from the kernel")
    assert bytes(view[100:115]) == b"from the kernel"
    other = conn.dma_alloc(4096)
    assert bytes(conn.dma_map(other)[:4]) == bytes(conn.dma_read(other, 0, 4))
    view.release()


def test_dma_map_needs_the_buffer_and_the_privilege(process: MakeProc) -> None:
    owner = process("owner", DMA)
    buf = owner.dma_alloc(4096)
    thief = process("thief", DMA)
    with pytest.raises(ipc.IpcError) as info:
        thief.dma_map(buf)
    assert info.value.errno is Errno.EINVAL
    nodma = process("nodma", "system vdevio;")
    with pytest.raises(ipc.IpcError) as info:
        nodma.dma_map(buf)
    assert info.value.errno is Errno.EPERM
    assert thief.getinfo("whoami")["label"] == "thief"  # the connection stays in step


# --- at a driver's death: tagged buffers kept for adoption, the rest freed --------
BIG = 1 << 20  # alignment that makes first-fit hand a freed buffer out again


def test_a_new_buffer_holds_nothing_of_its_last_owner(
    process: MakeProc, root: ipc.Connection
) -> None:
    """dmaalloc hands out zeroed memory: a buffer freed by one process (or with
    its death) and handed to another shows none of the first one's bytes."""
    first = process("secretive", DMA)
    freed = first.dma_alloc(8192, align=BIG)
    first.dma_map(freed)[:] = b"\xa5" * freed.size
    first.dma_free(freed)
    dead = first.dma_alloc(8192, align=BIG)
    assert dead.phys == freed.phys  # the same memory again: zeroed
    assert bytes(first.dma_map(dead)) == bytes(dead.size)
    first.dma_map(dead)[:] = b"\x5a" * dead.size
    first.close()
    wait_gone(root, first.endpoint)
    second = process("curious", DMA)
    buf = second.dma_alloc(8192, align=BIG)
    assert buf.phys == dead.phys
    assert second.dma_read(buf, 0, 4096) == bytes(4096)
    assert bytes(second.dma_map(buf)) == bytes(buf.size)


def test_tagged_buffer_is_adopted_by_the_next_process_with_the_label(
    process: MakeProc, root: ipc.Connection
) -> None:
    first = process("nicdrv", DMA)
    untagged = first.dma_alloc(65536, align=BIG)
    ring = first.dma_alloc(8192, tag="rx-ring")
    assert ring.tag == "rx-ring"
    first.dma_map(ring)[:11] = b"descriptors"
    first.close()
    wait_gone(root, first.endpoint)

    second = process("nicdrv", DMA)
    assert second.dma_alloc(65536, align=BIG).phys == untagged.phys  # freed at the death
    (adopted,) = second.dma_adopt()
    assert (adopted.phys, adopted.size, adopted.tag) == (ring.phys, ring.size, "rx-ring")
    assert second.dma_read(adopted, 0, 11) == b"descriptors"
    assert bytes(second.dma_map(adopted)[:11]) == b"descriptors"
    assert second.dma_adopt() == []  # adopted once
    other = process("otherdrv", DMA)
    assert other.dma_adopt() == []  # kept by label, for nobody else

    # Adopted, it is the new owner's tagged buffer: kept again at its death.
    second.close()
    wait_gone(root, second.endpoint)
    third = process("nicdrv", DMA)
    assert [b.phys for b in third.dma_adopt()] == [ring.phys]


def test_kept_buffers_nobody_adopts_are_freed_after_the_timeout(
    kernel: KernelProcess, process: MakeProc, root: ipc.Connection
) -> None:
    first = process("lonely", DMA)
    kept = first.dma_alloc(8192, align=BIG, tag="ring")
    first.close()
    wait_gone(root, first.endpoint)
    probe = process("probe", DMA)
    assert probe.dma_alloc(8192, align=BIG).phys != kept.phys  # still kept
    time.sleep(KEEP_SECONDS + 0.5)
    assert probe.dma_alloc(8192, align=BIG).phys == kept.phys  # freed by the timer
    assert "not adopted in time: freed" in (kernel.run_dir / "kernel.log").read_text()
    assert process("lonely", DMA).dma_adopt() == []


def test_kept_buffers_are_freed_when_the_label_exits_without_adopting(
    process: MakeProc, root: ipc.Connection
) -> None:
    first = process("shy", DMA)
    kept = first.dma_alloc(8192, align=BIG, tag="ring")
    first.close()
    wait_gone(root, first.endpoint)
    second = process("shy", DMA)  # restarts, never adopts, dies
    second.close()
    wait_gone(root, second.endpoint)
    probe = process("probe2", DMA)
    assert probe.dma_alloc(8192, align=BIG).phys == kept.phys  # well before the timeout
    assert process("shy", DMA).dma_adopt() == []


# --- quiesce: bus mastering off when a PCI holder dies --------------------------
DRIVER = str(Path(__file__).parent / "programs" / "pci_driver.py")
CMD, RESULT = 1, 2
E1000 = (0x8086, 0x100E)
PCI_COMMAND, BUS_MASTER = 0x04, 0x04


@pytest.fixture(scope="module")
def system(hwl_machines: MachineFactory) -> Iterator[System]:
    """DS and PCI through RS, as tests/test_pci_server.py boots them."""
    machine = hwl_machines.boot("pc")
    try:
        boot = [
            up_fields([sys.executable, "-m", "hwl.servers.ds"], label="ds"),
            up_fields([sys.executable, "-m", "hwl.servers.pci"], label="pci"),
        ]
        s = System.start(machine, boot)
        try:
            yield s
        finally:
            s.stop()
    finally:
        machine.close()


def pci_cmd(system: System, endpoint: int, op: str, **args: codec.Value) -> dict[str, Any]:
    reply = system.rs.conn.sendrec(endpoint, CMD, {"op": op, **args}, timeout=15)
    assert reply.m_type == RESULT, reply
    fields = dict(reply.fields)
    assert fields["status"] == 0, fields
    return fields


def pci_call(system: System, endpoint: int, method: str, *args: codec.Value) -> Any:
    return pci_cmd(system, endpoint, "pci", method=method, args=list(args))["result"]


def test_a_killed_holders_function_stops_bus_mastering(system: System) -> None:
    label = "e1000quiesce"
    conf = f"service {label} {{ system DEVIO IRQCTL; ipc ALL_SYS; pci device 8086:100e; }};"
    endpoint = system.rs.up([sys.executable, DRIVER], label=label, conf=conf)
    try:
        devs = pci_cmd(system, endpoint, "devices")["devices"]
        devind = next(d[0] for d in devs if (d[1], d[2]) == E1000)
        pci_call(system, endpoint, "reserve", devind)
        command = pci_call(system, endpoint, "attr_r16", devind, PCI_COMMAND)
        pci_call(system, endpoint, "attr_w16", devind, PCI_COMMAND, command | BUS_MASTER)
        assert pci_call(system, endpoint, "attr_r16", devind, PCI_COMMAND) & BUS_MASTER
        old_pid = int(pci_cmd(system, endpoint, "whoami")["pid"])
        os.kill(old_pid, signal.SIGKILL)
        row = wait_for(
            "the driver's restart",
            lambda: next(
                (r for r in system.rs.status() if r.label == label and r.state == "up"
                 and r.pid not in (-1, old_pid)),
                None,
            ),
        )  # fmt: skip
        after = pci_call(system, row.endpoint, "attr_r16", devind, PCI_COMMAND)
        assert not after & BUS_MASTER, f"command {after:#x}: bus master still on"
        assert after & 0x2, "memory space was turned off too"
        log = (system.run_dir / "kernel.log").read_text()
        assert f"{label} is dead: bus mastering of 00:04.0 off" in log
    finally:
        system.rs.down(label)


def test_string_ops_stay_inside_the_callers_dma_buffers_on_every_call(
    process: MakeProc,
) -> None:
    """A vdevio's string ops are checked against the caller's DMA buffers on each
    call, also once the batch's shape passed: the same shape at an address past
    the buffer, posted or not, or after the buffer was freed, is EPERM."""
    conn = process("strdrv", "system vdevio; memory dma; io 80:1;")
    buf = conn.dma_alloc(4096)

    def outs(at: int) -> Batch:
        b = Batch()
        b.outs_phys(0x80, 16, 1, at)  # 16 bytes to the POST port
        return b

    conn.vdevio(outs(buf.phys))
    conn.vdevio_posted(outs(buf.phys + 4096 - 16))  # the buffer's last bytes: fine
    for call in (conn.vdevio, conn.vdevio_posted):
        with pytest.raises(ipc.IpcError) as info:
            call(outs(buf.phys + 4096 - 8))  # 8 bytes past its end
        assert info.value.errno is Errno.EPERM
    conn.dma_free(buf)
    with pytest.raises(ipc.IpcError) as info:
        conn.vdevio(outs(buf.phys))
    assert info.value.errno is Errno.EPERM


def test_buffers_are_whole_pages_so_a_mapping_holds_no_other_buffer(process: MakeProc) -> None:
    """dma_map maps pages: a small buffer that shared its page with the next
    allocation would hand its holder another driver's bytes."""
    mine, theirs = process("small", DMA), process("neighbour", DMA)
    a = mine.dma_alloc(100, align=4)
    b = theirs.dma_alloc(100, align=4)
    for buf in (a, b):
        assert buf.phys % 4096 == 0 and buf.size == 4096, buf
    assert abs(a.phys - b.phys) >= 4096
    theirs.dma_write(b, 0, b"theirs")
    view = mine.dma_map(a)
    view[:] = b"\xff" * len(view)  # all of what the mapping reaches
    assert theirs.dma_read(b, 0, 6) == b"theirs"
    view.release()


# --- sums grants: the filter's checked path from a driver's DMA buffer -------------
SECTOR = sectors.SECTOR


def test_a_sums_grant_takes_only_checked_groups(process: MakeProc) -> None:
    """A driver's DMA copy through a sums grant (hwl.ipc.arena) puts the groups'
    data sectors, collapsed, in the client's memory, each checked against its sum;
    a bad one is EBADMSG naming its sector; groups cut short or off their
    boundary, a read, and any other write through the grant are refused (EPERM);
    the kernel serves on."""
    driver = process("sums_driver", DMA)
    other = process("sums_other", DMA)
    flt = process("sums_filter", "")
    client = process("sums_client", "")
    first, count, sum_sec = 16, 20, 8  # from a group's start into the third group
    span = sectors.span_bytes(first, count, sum_sec)
    data = os.urandom(count * SECTOR)
    layout = bytearray(span)
    sectors.expand(layout, first, count, sum_sec, data)
    sectors.crc_fill(layout, first, count, sum_sec)
    buf = driver.dma_alloc(span)
    for at in range(0, span, 4096):
        driver.dma_write(buf, at, bytes(layout[at : at + 4096]))
    out = client.arena.alloc(count * SECTOR)
    to_filter = client.arena.grant(flt.endpoint, out.offset, out.size, read=False, write=True)
    sums = flt.arena.grant_sums(driver.endpoint, client.endpoint, to_filter, out.size,
                                sum_sec, first)  # fmt: skip
    driver.dma_to_grant(buf, 0, span, flt.endpoint, sums, 0)
    assert out.read() == data
    bad_at = (sum_sec + 1 + 2) * SECTOR + 7  # the third data sector of the second group
    driver.dma_write(buf, bad_at, bytes([layout[bad_at] ^ 0x20]))
    with pytest.raises(ipc.IpcError) as info:
        driver.dma_to_grant(buf, 0, span, flt.endpoint, sums, 0)
    assert info.value.errno is Errno.EBADMSG
    assert f"bad checksum at sector {first + sum_sec + 2}" in str(info.value)
    driver.dma_write(buf, bad_at, bytes([layout[bad_at]]))
    stride = (sum_sec + 1) * SECTOR
    local = driver.arena.alloc(SECTOR)
    # a hostile granter's entry: SUMS on a direct grant of its own arena
    forged = flt.arena._write(arena.WRITE | arena.SUMS | (sum_sec - 1) << 8, driver.endpoint,
                              first, out.size, 0, 0)  # fmt: skip
    refused: list[Callable[[], None]] = [
        lambda: driver.dma_to_grant(buf, 0, span, flt.endpoint, forged, 0),
        lambda: driver.dma_to_grant(buf, 0, span - SECTOR, flt.endpoint, sums, 0),
        lambda: driver.dma_to_grant(buf, 0, stride, flt.endpoint, sums, SECTOR),
        lambda: driver.dma_from_grant(buf, 0, SECTOR, flt.endpoint, sums, 0),
        lambda: driver.safecopyto(flt.endpoint, sums, 0, local.offset, SECTOR),
        lambda: other.dma_to_grant(other.dma_alloc(span), 0, span, flt.endpoint, sums, 0),
    ]
    for i, call in enumerate(refused):
        with pytest.raises(ipc.IpcError) as info:
            call()
        assert info.value.errno is Errno.EPERM, (i, info.value)
    out.write(bytes(out.size))
    driver.dma_to_grant(buf, stride, 2 * stride, flt.endpoint, sums, stride)  # groups 2 and 3
    assert out.read()[sum_sec * SECTOR :] == data[sum_sec * SECTOR :]
