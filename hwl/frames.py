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
    lib.frames_ring.argtypes = [_P, _U32, _U32, _U32]
    lib.frames_ring.restype = _U32
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


class Bell:
    """A watched doorbell's two words in a driver's mapped DMA buffer (guest/abi.h,
    struct hwl_watch): :meth:`ring` stores the watched word and reads the sleep
    word in one C call, fenced between them."""

    def __init__(self, mem: memoryview, word: int, sleep: int) -> None:
        if mem.readonly or not (0 <= word <= mem.nbytes - 4 and 0 <= sleep <= mem.nbytes - 4):
            raise ValueError(f"bell words at {word} and {sleep} of a {mem.nbytes}-byte buffer")
        if word % 4 or sleep % 4 or word == sleep:
            raise ValueError(f"bell words at {word} and {sleep}: 4-byte aligned, apart")
        self._mem = mem  # kept: the address below is into it
        self._addr = ctypes.addressof((ctypes.c_char * mem.nbytes).from_buffer(mem))
        self.word, self.sleep = word, sleep
        self._ring = _lib().frames_ring

    @property
    def value(self) -> int:
        """The watched word as it is (a live update's new version goes on from it)."""
        return int.from_bytes(self._mem[self.word : self.word + 4], "little")

    def ring(self, value: int) -> int:
        """Store ``value``; the sleep word read after it: 0 (the stub will see it),
        abi.WATCH_ASLEEP (wake the stub) or abi.WATCH_ENDED (make the write through
        the kernel)."""
        return int(self._ring(self._addr, self.word, value & 0xFFFFFFFF, self.sleep))
