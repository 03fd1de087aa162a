"""The filter's checksum layout and sums, without QEMU (drivers/filter/layout.py, sums.py,
and their loops in C, sectors.py and sectors.c, against a CRC32C written here).

The layout is MINIX's: groups of ``sum_sec`` data sectors, each followed by a
checksum sector; every sum covers the data and the logical sector number.
"""

from __future__ import annotations

import hashlib
import random
import struct

import pytest
from crc32c_ref import crc32c
from hypothesis import given, settings
from hypothesis import strategies as st

from hwl import sectors
from hwl.drivers.filter import options, sums
from hwl.drivers.filter.layout import SECTOR, Layout
from hwl.drivers.filter.main import slice_iov


def sector(seed: int) -> bytes:
    return random.Random(seed).randbytes(SECTOR)


def test_crc32c_matches_the_reference() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value
    assert sectors.crc32c(b"123456789") == 0xE3069283
    rng = random.Random(5)
    for size in (0, 1, 7, 8, 9, 511, 512, 513, 1536, 1537):
        data = rng.randbytes(size)
        assert sectors.crc32c(data) == crc32c(data), size
        assert sectors.crc32c(data[size // 2 :], sectors.crc32c(data[: size // 2])) == crc32c(data)


def test_sums_follow_minix() -> None:
    data = sector(1)
    n = 12345
    assert sums.calc("nil", n, data) == struct.pack("<I", n)
    assert sums.calc("crc", n, data) == struct.pack("<I", crc32c(data) ^ n)
    assert sums.calc("md5", n, data) == hashlib.md5(data + struct.pack("<I", n)).digest()
    words = [int.from_bytes(data[i : i + 16], "little") for i in range(0, SECTOR, 16)]
    x = 0
    for w in words:
        x ^= w
    assert sums.calc("xor", n, data) == (x ^ n).to_bytes(16, "little")
    for kind in sums.SIZES:
        assert len(sums.calc(kind, n, data)) == sums.SIZES[kind]
        assert sums.calc(kind, n, data) != sums.calc(kind, n + 1, data)  # the number counts
        flipped = bytes([data[0] ^ 1]) + data[1:]
        if kind != "nil":
            assert sums.calc(kind, n, flipped) != sums.calc(kind, n, data)
        run = sums.run(kind, n, memoryview(data * 3), 3)
        assert run == sums.calc(kind, n, data) + sums.calc(kind, n + 1, data) + sums.calc(
            kind, n + 2, data
        )


def test_sector_mapping() -> None:
    lay = Layout(8, "crc")
    assert [lay.phys(n) for n in (0, 7, 8, 15, 16)] == [0, 7, 9, 16, 18]
    assert [lay.sum_sector(n) for n in (0, 7, 8, 17)] == [8, 8, 17, 26]
    assert lay.filtered_sectors(65536) == 65536 // 9 * 8
    span = lay.span(3, 10)  # sectors 3..12: groups 0 and 1
    assert (span.phys, span.count, span.group, span.partial) == (0, 18, 0, True)
    span = lay.span(16, 16)
    assert (span.phys, span.count, span.group, span.partial) == (18, 18, 2, False)


@pytest.mark.parametrize("kind", sorted(sums.SIZES))
@pytest.mark.parametrize(("first", "count"), [(0, 8), (3, 10), (16, 2048), (5, 1)])
def test_expand_fill_check_collapse(kind: str, first: int, count: int) -> None:
    lay = Layout(8, kind)
    data = random.Random(first * 7 + count).randbytes(count * SECTOR)
    span = lay.span(first, count)
    ext = memoryview(bytearray(lay.ext_bytes(count)))
    lay.expand(ext, first, memoryview(data), count)
    lay.fill(ext, first, count)
    # every data sector where the layout puts it, its sum in its group's checksum sector
    for i in range(count):
        n = first + i
        raw = (lay.phys(n) - span.phys) * SECTOR
        assert bytes(ext[raw : raw + SECTOR]) == data[i * SECTOR : (i + 1) * SECTOR]
        at = (lay.sum_sector(n) - span.phys) * SECTOR + n % 8 * lay.size
        assert bytes(ext[at : at + lay.size]) == sums.calc(kind, n, data[i * SECTOR :][:SECTOR])
    assert lay.check(ext, first, count) is None
    out = memoryview(bytearray(count * SECTOR))
    lay.collapse(ext, first, out, count)
    assert bytes(out) == data
    both = memoryview(bytearray(count * SECTOR))
    assert lay.check(ext, first, count, out=both) is None
    assert both == out
    if kind == "nil":
        return  # no checksum of the data: a flip goes unseen, by definition
    bad = first + count // 2
    raw = (lay.phys(bad) - span.phys) * SECTOR + 100
    ext[raw] ^= 0x10
    assert lay.check(ext, first, count) == bad


def test_options() -> None:
    o = options.parse(["driver=at_wini,driver2=at_wini1,checksum=crc,mirror", "timeout=1.5"])
    assert (o.driver, o.driver2, o.checksum, o.mirror, o.timeout, o.layout) == (
        "at_wini", "at_wini1", "crc", True, 1.5, True,
    )  # fmt: skip
    assert not options.parse(["driver=x"]).layout
    bad_args = ["checksum=crc", "driver=a,mirror", "driver=a,checksum=sha", "driver=a,bogus",
                "driver=a,checksum=md5,sum_sec=33", "driver=a,retries=x"]  # fmt: skip
    for bad in ([arg] for arg in bad_args):
        with pytest.raises(options.OptionError):
            options.parse(bad)


def test_slice_iov() -> None:
    iov = [(1, 1000), (2, 3000)]
    assert slice_iov(iov, 0, 4000) == [(1, 1000, 0), (2, 3000, 0)]
    assert slice_iov(iov, 500, 1000) == [(1, 500, 500), (2, 500, 0)]
    assert slice_iov(iov, 2000, 2000) == [(2, 2000, 1000)]


@settings(max_examples=200, deadline=None)
@given(
    sum_sec=st.sampled_from([1, 2, 3, 7, 8, 64, 128]),
    first=st.integers(0, 5000),
    count=st.integers(1, 700),
    flip=st.floats(0, 1, exclude_max=True),
)
def test_native_crc_against_the_reference(
    sum_sec: int, first: int, count: int, flip: float
) -> None:
    """The C loops (any group size, any alignment) write the sums the reference
    computes, find the first wrong one, and leave the other sums of a partial
    group alone."""
    lay = Layout(sum_sec, "crc")
    rng = random.Random(first * 131 + count * 7 + sum_sec)
    data = rng.randbytes(count * SECTOR)
    span = lay.span(first, count)
    junk = rng.randbytes(span.count * SECTOR)  # what the disk held before
    ext = memoryview(bytearray(junk))
    lay.expand(ext, first, memoryview(data), count)
    lay.fill(ext, first, count)
    for n in range(span.group * sum_sec, (span.group + span.count // lay.stride) * sum_sec):
        at = (lay.sum_sector(n) - span.phys) * SECTOR + n % sum_sec * 4
        got = int.from_bytes(ext[at : at + 4], "little")
        if first <= n < first + count:
            raw = (lay.phys(n) - span.phys) * SECTOR
            assert got == crc32c(bytes(ext[raw : raw + SECTOR])) ^ n, n
        else:  # a sector of a partial group the request does not cover
            assert bytes(ext[at : at + 4]) == junk[at : at + 4], n
    out = memoryview(bytearray(count * SECTOR))
    assert lay.check(ext, first, count, out=out) is None  # checked and collapsed in one pass
    assert bytes(out) == data
    bad = first + int(flip * count)
    raw = (lay.phys(bad) - span.phys) * SECTOR + rng.randrange(SECTOR)
    ext[raw] ^= 1 << rng.randrange(8)
    assert lay.check(ext, first, count) == bad


def test_native_checks_lengths() -> None:
    """C never sees a buffer shorter than the request, nor writes a read-only one."""
    lay = Layout(8, "crc")
    short = memoryview(bytearray(lay.span(0, 16).count * SECTOR - 1))
    with pytest.raises(ValueError, match="needs"):
        lay.check(short, 0, 16)
    with pytest.raises(ValueError, match="read-only"):
        lay.fill(memoryview(bytes(18 * SECTOR)), 0, 16)
    with pytest.raises(ValueError, match="needs"):
        lay.collapse(memoryview(bytearray(18 * SECTOR)), 0, memoryview(bytearray(100)), 16)
    with pytest.raises(ValueError, match="sum_sec"):
        sectors.crc_check(bytearray(SECTOR * 200), 0, 1, 129)
