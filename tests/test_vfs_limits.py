"""VFS's open-file limit on QEMU (docs/vfs.md: fds are per client endpoint, at most 64).

One block path for the module (tests/blockpath.py: a pc machine, RS, DS, PCI,
at_wini and VFS). A client opens ``/dev/c0d0`` until VFS refuses: 64 fds, each
numbered once and each reading the image's bytes; the 65th open is EMFILE with
the reason. The limit is the client's own (another client still opens), and a
closed fd is free again.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from blockpath import Setup, block_path

from hwl.kernel.errno import Errno
from hwl.pytest_plugin import MachineFactory
from hwl.system.vfs import Vfs, VfsError

pytestmark = pytest.mark.qemu

LIMIT = 64  # docs/vfs.md
DEVICE = "/dev/c0d0"


@pytest.fixture(scope="module")
def setup(hwl_machines: MachineFactory) -> Iterator[Setup]:
    with block_path(hwl_machines) as s:
        yield s


def test_a_client_opens_at_most_64_files(setup: Setup) -> None:
    vfs = setup.vfs
    fds: list[int] = []
    try:
        for _ in range(LIMIT):
            fds.append(vfs.open_fd(DEVICE))
        assert sorted(fds) == list(range(LIMIT))  # every number once
        for fd in (fds[0], fds[-1]):  # the first and the last are real files
            assert vfs.pread(fd, 16, 512 * fd) == setup.image_bytes(512 * fd, 16)
        with pytest.raises(VfsError) as refused:
            vfs.open_fd(DEVICE)
        assert refused.value.minix_errno is Errno.EMFILE
        assert f"{LIMIT} files open" in str(refused.value)

        # the limit is per client: a user process of its own still opens
        with Vfs.attach(setup.machine.run_dir, timeout=30) as other:
            theirs = other.open_fd(DEVICE)
            assert other.pread(theirs, 16, 0) == setup.image_bytes(0, 16)
            other.close_fd(theirs)

        # a closed fd is free again, and only that one
        freed = fds.pop(LIMIT // 2)
        vfs.close_fd(freed)
        again = vfs.open_fd(DEVICE)
        fds.append(again)
        assert again == freed
        with pytest.raises(VfsError) as still:
            vfs.open_fd(DEVICE)
        assert still.value.minix_errno is Errno.EMFILE
    finally:
        for fd in fds:
            vfs.close_fd(fd)
    # all closed: the client opens again from fd 0
    fd = vfs.open_fd(DEVICE)
    assert fd == 0
    vfs.close_fd(fd)
