"""The MINIX errno set: values as MINIX defines them, negative inside the system."""

from __future__ import annotations

import pytest

from hwl.kernel.errno import Errno, from_minix, to_minix


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
