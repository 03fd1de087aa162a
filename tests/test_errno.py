"""The MINIX errno set: values as MINIX defines them, negative inside the system."""

from __future__ import annotations

import pytest

from hwl.errors import HwlError, Refusal
from hwl.kernel.errno import Errno, ErrnoError, from_minix, to_minix


@pytest.mark.parametrize(
    ("errno", "value"),
    [
        (Errno.EPERM, 1),
        (Errno.EIO, 5),
        (Errno.EAGAIN, 35),
        (Errno.ENOTCONN, 57),
        (Errno.ETIMEDOUT, 60),
        (Errno.ENOSYS, 78),
        (Errno.ERESTART, 200),
        (Errno.ENOTREADY, 201),
        (Errno.EDEADSRCDST, 202),
        (Errno.EDONTREPLY, 203),
        (Errno.ELOCKED, 208),
        (Errno.EBADCALL, 209),
        (Errno.ECALLDENIED, 210),
        (Errno.EBADREQUEST, 212),
        (Errno.EDEADEPT, 215),
        (Errno.EBADEPT, 216),
    ],
)
def test_values_match_minix(errno: Errno, value: int) -> None:
    assert errno == value


def test_to_minix_gives_negatives_and_from_minix_reads_both_signs() -> None:
    assert to_minix(Errno.EDEADSRCDST) == -202
    assert to_minix(Errno.EPERM) == -1
    assert Errno.ECALLDENIED.minix == -210
    assert all(to_minix(e) < 0 for e in Errno)
    assert from_minix(-202) is Errno.EDEADSRCDST
    assert from_minix(208) is Errno.ELOCKED
    with pytest.raises(ValueError):
        from_minix(0)


def test_every_member_has_a_one_line_description() -> None:
    for errno in Errno:
        assert errno.description, errno.name
        assert "\n" not in errno.description
    assert Errno.__members__["EWOULDBLOCK"] is Errno.EAGAIN


def test_values_are_unique_apart_from_the_ewouldblock_alias() -> None:
    assert len(Errno.__members__) == len(Errno) + 1


def test_errno_error_carries_the_errno_and_why() -> None:
    exc = ErrnoError(Errno.EBUSY, "minor 0 is open")
    assert (exc.errno, exc.why, str(exc)) == (Errno.EBUSY, "minor 0 is open", "minor 0 is open")
    assert exc.args == ("minor 0 is open",)
    assert repr(exc) == "ErrnoError('minor 0 is open')"
    bare = ErrnoError(Errno.ENXIO)  # no reason: the errno's description stands in
    assert bare.why == str(bare) == Errno.ENXIO.description


def test_the_server_side_errors_share_errno_error() -> None:
    from hwl.driver.blockdriver import RequestError as BlockRequestError
    from hwl.kernel.calls import CallError
    from hwl.servers.ds.store import StoreError
    from hwl.servers.inet.socktypes import Refused as InetRefused
    from hwl.servers.pci.requests import RequestError as PciRequestError
    from hwl.servers.rs.manager import RsError
    from hwl.servers.vfs.errors import Refused

    for cls in (RsError, PciRequestError, Refused, BlockRequestError, InetRefused, CallError):
        exc = cls(Errno.EINVAL, "bad field")
        assert isinstance(exc, ErrnoError) and isinstance(exc, HwlError)
        assert isinstance(exc, Refusal) or cls is CallError  # the kernel's, its own
        assert (exc.errno, exc.why, str(exc)) == (Errno.EINVAL, "bad field", "bad field")
    assert str(Refused(Errno.EIO)) == str(BlockRequestError(Errno.EIO)) == Errno.EIO.description
    store = StoreError(Errno.ENOENT, "no key 'k'")
    assert isinstance(store, ErrnoError)
    assert (store.why, store.message, str(store)) == (
        "no key 'k'",
        "no key 'k'",
        "ENOENT: no key 'k'",
    )
    assert store.args == ("ENOENT: no key 'k'",)
    assert CallError(Errno.EPERM, "not on its ipc line", warn=True).warn
    assert not CallError(Errno.EPERM, "x").warn
    with pytest.raises(ErrnoError) as info:
        raise RsError(Errno.ESRCH, "no service 'x'")
    assert info.value.errno is Errno.ESRCH
