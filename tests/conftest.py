"""Shared fixtures: one pc machine per test module, and a leak check at the end."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from agents import MakeProc
from hypothesis import settings

from hwl import Machine, ipc
from hwl.kernel.launcher import KernelProcess
from hwl.pytest_plugin import MachineFactory

pytest_plugins = ["pytester"]

# No per-example deadline: on 2 shared cores with QEMU running, an example's time
# says more about the host's load than about the code (a 200 ms deadline failed
# test_ndev_proto once under load).
settings.register_profile("hwl", deadline=None)
settings.load_profile("hwl")


def children(parent: int) -> list[tuple[int, str, list[bytes]]]:
    """(pid, command name, argv) of every process whose parent is ``parent``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == parent:
            found.append((int(proc.name), stat[stat.index("(") + 1 : stat.rindex(")")], argv))
    return found


def qemu_children(parent: int) -> list[int]:
    """PIDs of QEMU processes whose parent is ``parent``."""
    return [pid for pid, comm, _ in children(parent) if comm.startswith("qemu-system")]


def kernel_children(parent: int) -> list[int]:
    """PIDs of kernel processes (python -m hwl.kernel) whose parent is ``parent``."""
    return [pid for pid, _, argv in children(parent) if b"hwl.kernel" in argv]


@pytest.fixture(scope="session", autouse=True)
def no_qemu_left_behind() -> Iterator[None]:
    """Torn down last: every QEMU and kernel the suite started must be gone by then."""
    yield
    left = qemu_children(os.getpid())
    assert not left, f"QEMU processes left running after the suite: {left}"
    kernels = kernel_children(os.getpid())
    assert not kernels, f"kernel processes left running after the suite: {kernels}"


@pytest.fixture(scope="module")
def pc(hwl_machines: MachineFactory) -> Iterator[Machine]:
    machine = hwl_machines.boot("pc")
    try:
        yield machine
    finally:
        machine.close()


@pytest.fixture(scope="module")
def kernel() -> Iterator[KernelProcess]:
    """A kernel without a machine (IPC, grants, processes); the test is its root."""
    k = KernelProcess.start()
    try:
        yield k
    finally:
        k.stop()


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
