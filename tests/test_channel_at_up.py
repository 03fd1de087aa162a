"""A service's call channels are open before RS says it is up (hwl/system/sef.py).

A client that calls VFS the moment ``rs.up`` returns must get a call channel on
its first call. Before, SEF opened the channels after its init reply to RS, so a
client that came in between was refused one and took the kernel path until its
retry half a second later: about half the fresh boots of ``hwl bench disk`` read
that way at first. With HWL_CHANNELS=0 no call gets a channel.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from blockpath import Setup, block_path

from hwl.ipc import channels
from hwl.proto import vfs as vp
from hwl.pytest_plugin import MachineFactory
from hwl.system.vfs import Vfs

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def setup(hwl_machines: MachineFactory) -> Iterator[Setup]:
    with block_path(hwl_machines) as s:
        yield s


def test_the_first_call_after_up_gets_a_channel(setup: Setup) -> None:
    rs = setup.system.rs
    for i in range(10):
        rs.down("vfs")
        rs.up([sys.executable, "-m", "hwl.servers.vfs"], label="vfs")
        with Vfs.attach(setup.machine.run_dir, timeout=30) as vfs:
            fd = vfs.open_fd("/dev/c0d0", vp.O_RDONLY)
            assert (vfs.conn.channel_to(vfs.endpoint) is not None) == channels.enabled(), i
            assert vfs.pread(fd, 512, 0) == setup.image_bytes(0, 512)
