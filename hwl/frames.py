"""A SEND's frames copied into a NIC driver's transmit buffers in C (frames.c),
through ctypes: one call per SEND instead of a Python slice copy per frame. The
buffers are a ring of equal slots in the driver's mapped DMA memory; every
length is checked here, before C sees a pointer. Built on first use
(hwl/native.py), as hwl/sectors.py is.
"""

from __future__ import annotations

import ctypes
import functools
from array import array
from operator import add
from pathlib import Path

from hwl import native
from hwl.proto.ndev import Frames

_P = ctypes.c_void_p
_U32 = ctypes.c_uint32


@functools.cache
def _lib() -> ctypes.CDLL:
    lib = native.load(Path(__file__).with_name("frames.c"))
    lib.frames_scatter.argtypes = [_P, _U32, _U32, _U32, _U32, _P, _P, _P, _U32, _U32, _P]
    lib.frames_scatter.restype = None
    return lib


def ready() -> None:
    """Build and load the library now (a driver's start, not its first SEND)."""
    _lib()


def scatter(
    ring: memoryview, base: int, stride: int, slots: int, first: int, frames: Frames, min_len: int
) -> array[int]:
    """Copy ``frames`` into the slots from ``first`` (wrapping at ``slots``) of the
    ring at ``base`` in ``ring``, ``stride`` bytes apart, padding each to
    ``min_len``; the lengths written (u16)."""
    n = len(frames)
    lens, starts, data = frames.lens, frames.starts, frames.data
    if not 0 < n <= slots or not 0 <= first < slots:
        raise ValueError(f"{n} frames from slot {first} of {slots}")
    if max(max(lens), min_len) > stride:
        raise ValueError(f"a frame of {max(max(lens), min_len)} bytes in {stride}-byte slots")
    if base < 0 or base + slots * stride > ring.nbytes or ring.readonly:
        raise ValueError(f"{slots} slots of {stride} bytes at {base} in a {ring.nbytes}-byte ring")
    if len(starts) != n or max(map(add, starts, lens)) > len(data):
        raise ValueError("the frames' starts and lengths fall outside their data")
    out = array("H", bytes(2 * n))
    target = (ctypes.c_char * ring.nbytes).from_buffer(ring)
    _lib().frames_scatter(ctypes.addressof(target), base, stride, slots, first,
                          ctypes.cast(ctypes.c_char_p(data), _P), starts.buffer_info()[0],
                          lens.buffer_info()[0], n, min_len, out.buffer_info()[0])  # fmt: skip
    return out
