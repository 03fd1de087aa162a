"""The checksummed sector layout's loops in C (sectors.c), through ctypes.

The layout is the filter driver's (drivers/filter/layout.py, MINIX's): groups of
data sectors, each followed by a sector of their CRC32C sums. One call per
request instead of one Python call per sector: a request's sums are checked or
written, and its data collapsed out of the layout or expanded into it. The
filter uses these, and so does the kernel's ``sumcopyto`` call (the check and
the copy into a client's grant in one pass). Every length is checked here,
before C sees a pointer. The library is built on first use (hwl/native.py);
:func:`ready` builds it early, so the caller pays the compiler at its start,
not on its first request.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from typing import Any, Final

from hwl import native

SECTOR: Final = 512
MAX_SUM_SEC: Final = SECTOR // 4  # CRC sums in one sector
_P = ctypes.c_void_p
_U32 = ctypes.c_uint32


@functools.cache
def _lib() -> ctypes.CDLL:
    lib = native.load(Path(__file__).with_name("sectors.c"))
    lib.filter_init.restype = ctypes.c_int
    lib.filter_crc32c.argtypes = [_U32, _P, ctypes.c_size_t]
    lib.filter_crc32c.restype = _U32
    lib.filter_crc_check.argtypes = [_P, _U32, _U32, _U32, _P]
    lib.filter_crc_check.restype = ctypes.c_long
    lib.filter_crc_fill.argtypes = [_P, _U32, _U32, _U32]
    lib.filter_crc_fill.restype = None
    for name in ("filter_collapse", "filter_expand"):
        getattr(lib, name).argtypes = [_P, _U32, _U32, _U32, _P]
        getattr(lib, name).restype = None
    lib.filter_init()
    return lib


def ready() -> bool:
    """Build and load the library now; True if the CPU computes CRC32C itself."""
    return bool(_lib().filter_init())


Buf = memoryview | bytes | bytearray


def _pointer(buf: Buf, need: int, what: str, write: bool = False) -> Any:
    """A ctypes array over at least ``need`` bytes of ``buf``, passed to C as its
    pointer (a read-only buffer C only reads is copied)."""
    view = memoryview(buf).cast("B")
    if view.nbytes < need:
        raise ValueError(f"{what}: {view.nbytes} bytes, the request needs {need}")
    if view.readonly and write:
        raise ValueError(f"{what} is read-only")
    if view.readonly:
        return ctypes.create_string_buffer(view.tobytes(), view.nbytes)
    return (ctypes.c_char * view.nbytes).from_buffer(view)


def span_bytes(first: int, count: int, sum_sec: int) -> int:
    """The bytes of the groups that hold ``count`` sectors from ``first``."""
    if count <= 0 or first < 0 or first + count > 1 << 32:
        raise ValueError(f"sectors [{first}, {first + count}) out of range")
    if not 0 < sum_sec <= MAX_SUM_SEC:
        raise ValueError(f"sum_sec {sum_sec}: 1 to {MAX_SUM_SEC} with 4-byte sums")
    groups = (first + count - 1) // sum_sec - first // sum_sec + 1
    return groups * (sum_sec + 1) * SECTOR


def crc32c(data: Buf, crc: int = 0) -> int:
    """CRC32C of ``data`` (continuing from ``crc``)."""
    size = memoryview(data).nbytes
    at = _pointer(data, size, "data")
    return int(_lib().filter_crc32c(crc, at, size))


def crc_check(ext: Buf, first: int, count: int, sum_sec: int, out: Buf | None = None) -> int | None:
    """The first of ``count`` sectors from logical ``first`` whose sum in ``ext``
    (the request's groups) is wrong, or None; with ``out``, the data is collapsed
    into it in the same pass (whole only when None is returned)."""
    at = _pointer(ext, span_bytes(first, count, sum_sec), "the extended buffer")
    to = None if out is None else _pointer(out, count * SECTOR, "the output", True)
    bad = int(_lib().filter_crc_check(at, first, count, sum_sec, to))
    return None if bad < 0 else first + bad


def crc_fill(ext: Buf, first: int, count: int, sum_sec: int) -> None:
    """Write the sums of ``count`` sectors from ``first`` into ``ext``."""
    at = _pointer(ext, span_bytes(first, count, sum_sec), "the extended buffer", True)
    _lib().filter_crc_fill(at, first, count, sum_sec)


def collapse(ext: Buf, first: int, count: int, sum_sec: int, out: Buf) -> None:
    """The data of ``count`` sectors from ``first`` out of ``ext``, contiguous in ``out``."""
    at = _pointer(ext, span_bytes(first, count, sum_sec), "the extended buffer")
    to = _pointer(out, count * SECTOR, "the output", True)
    _lib().filter_collapse(at, first, count, sum_sec, to)


def expand(ext: Buf, first: int, count: int, sum_sec: int, data: Buf) -> None:
    """Contiguous ``data`` of ``count`` sectors from ``first`` into ``ext``."""
    at = _pointer(ext, span_bytes(first, count, sum_sec), "the extended buffer", True)
    src = _pointer(data, count * SECTOR, "the data")
    _lib().filter_expand(at, first, count, sum_sec, src)
