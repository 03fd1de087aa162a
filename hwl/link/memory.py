"""Guest physical memory, seen through the shared RAM file the host maps.

A guest physical address below the PCI hole is an offset into the mapping, so
reads and writes here are plain memory copies, and DMA buffers are ranges of
guest RAM that both the device (by physical address) and the host (by slice)
can reach. The allocator hands out contiguous, aligned ranges from the RAM the
stub leaves free.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass

from hwl.errors import GuestMemoryError
from hwl.ranges import RangeAllocator

# Keep clear of the top of RAM: SeaBIOS and ACPI tables live there.
TOP_RESERVE = 1 << 20


@dataclass(frozen=True)
class DmaBuffer:
    """A contiguous range of guest RAM: ``phys`` for the device, ``view`` for the host."""

    phys: int
    size: int
    view: memoryview

    def read(self, offset: int = 0, size: int | None = None) -> bytes:
        end = self.size if size is None else offset + size
        if offset < 0 or end > self.size:
            raise GuestMemoryError(f"read [{offset}, {end}) outside a {self.size}-byte buffer")
        return bytes(self.view[offset:end])

    def write(self, data: bytes, offset: int = 0) -> None:
        if offset < 0 or offset + len(data) > self.size:
            raise GuestMemoryError(
                f"write of {len(data)} bytes at {offset} outside a {self.size}-byte buffer"
            )
        self.view[offset : offset + len(data)] = data


class GuestMemory:
    """The mapped guest RAM and an allocator for contiguous buffers in it."""

    def __init__(self, mapping: mmap.mmap, size: int, fd: int | None = None) -> None:
        self._map = mapping
        self.fd = fd  # the guest-RAM file, kept open to hand to drivers (dmamap); owned
        self.view = memoryview(mapping)
        self.size = size
        self._ranges = RangeAllocator()

    def set_pool(self, start: int, end: int) -> None:
        """Declare [start, end) as the range the allocator may hand out."""
        end = min(end, self.size - TOP_RESERVE)
        if not 0 < start < end:
            raise GuestMemoryError(f"empty allocation pool [{start:#x}, {end:#x})")
        self._ranges.reset(start, end)

    def _check(self, addr: int, size: int) -> None:
        if addr < 0 or size < 0 or addr + size > self.size:
            raise GuestMemoryError(
                f"guest range [{addr:#x}, {addr + size:#x}) is outside RAM (0..{self.size:#x})"
            )

    def read(self, addr: int, size: int) -> bytes:
        self._check(addr, size)
        return bytes(self.view[addr : addr + size])

    def write(self, addr: int, data: bytes) -> None:
        self._check(addr, len(data))
        self.view[addr : addr + len(data)] = data

    def alloc(self, size: int, align: int = 4096, boundary: int = 0) -> DmaBuffer:
        """Allocate ``size`` contiguous bytes aligned to ``align``; with ``boundary``
        (a power of two, e.g. 64 KiB for PRD entries) the range will not cross one."""
        if size <= 0 or align <= 0 or align & (align - 1):
            raise GuestMemoryError(f"bad allocation: size {size}, align {align}")
        if boundary and size > boundary:
            raise GuestMemoryError(f"{size} bytes cannot fit inside a {boundary}-byte boundary")
        addr = self._ranges.alloc(size, align, boundary)
        if addr is None:
            raise GuestMemoryError(f"no {size}-byte range (align {align}) left in guest RAM")
        return DmaBuffer(addr, size, self.view[addr : addr + size])

    def free(self, buf: DmaBuffer) -> None:
        """Return a buffer to the pool, merging it with its free neighbours."""
        if self._ranges.free(buf.phys) is None:
            raise GuestMemoryError(f"buffer at {buf.phys:#x} is not allocated")
        buf.view.release()

    def close(self) -> None:
        self.view.release()
        self._map.close()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
