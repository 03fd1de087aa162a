"""hwl: QEMU-backed hardware-in-the-loop driver framework, built the MINIX 3 way.

The public API is re-exported here; the modules behind it are implementation.
"""

from hwl.errors import (
    GuestMemoryError,
    HwlError,
    IrqTimeoutError,
    LinkError,
    LinkWaitTimeoutError,
    ProfileError,
    QemuExitedError,
    QemuNotFoundError,
    StubAbiError,
    StubBuildError,
    StubError,
    StubTimeoutError,
)
from hwl.link.batch import Batch, BatchResult
from hwl.link.link import Link, NativeResult
from hwl.link.memory import DmaBuffer
from hwl.link.pci import Bar, PciDevice
from hwl.machine.machine import Machine
from hwl.machine.profile import Profile

__all__ = [
    "Bar",
    "Batch",
    "BatchResult",
    "DmaBuffer",
    "GuestMemoryError",
    "HwlError",
    "IrqTimeoutError",
    "Link",
    "LinkError",
    "LinkWaitTimeoutError",
    "Machine",
    "NativeResult",
    "PciDevice",
    "Profile",
    "ProfileError",
    "QemuExitedError",
    "QemuNotFoundError",
    "StubAbiError",
    "StubBuildError",
    "StubError",
    "StubTimeoutError",
]
