"""DMA buffers a driver maps, and DMA that survives a driver's death safely.

A real pc machine. ``dma_map`` gives a process its buffer's bytes in guest RAM
(the kernel passes the guest-RAM file; the process maps only the buffer's pages).
At a death the kernel stops bus mastering of the PCI functions the process held,
keeps its tagged buffers for the next process with its label and frees the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from hwl import Machine, ipc
from hwl.kernel.errno import Errno
from hwl.kernel.launcher import KernelProcess
from hwl.pytest_plugin import MachineFactory

DMA = "system vdevio; memory dma;"
KEEP_SECONDS = 2.0  # the kernel's adoption timeout, shortened for the test
MakeProc = Callable[[str, str], ipc.Connection]


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


@pytest.fixture
def process(kernel: KernelProcess, root: ipc.Connection) -> Iterator[MakeProc]:
    """A factory of attached processes with a system.conf body's privileges."""
    made: list[ipc.Connection] = []

    def make(label: str, body: str) -> ipc.Connection:
        conn = kernel.attach()
        root.privctl_set(conn.endpoint, f"service {label} {{ {body} }};")
        made.append(conn)
        return conn

    yield make
    for conn in made:
        conn.close()


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
