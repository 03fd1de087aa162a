"""hwl: QEMU-backed hardware-in-the-loop driver framework, built the MINIX 3 way.

The public API is re-exported here; the modules behind it are implementation.
What a driver developer uses:

- the machine and its link: :class:`Machine`, :class:`Link`, :class:`Batch`, ...;
- a whole running system: :class:`RunningSystem` (machine, kernel, RS and the
  boot services, with clients) and :class:`System` (kernel and RS alone);
- writing a driver or server: ``hwl.sef`` (the event framework), ``hwl.blockdriver``
  and ``hwl.netdriver`` (the driver libraries);
- talking to the servers: :class:`Rs`, :class:`Ds`, :class:`Vfs`, :class:`Inet`;
- breaking things on purpose: ``hwl.faults``.

Everything past the machine is imported on first use, so a process that needs
only the link (the kernel, a driver) does not load the rest.
"""

import importlib
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from hwl import faults
    from hwl.driver import blockdriver, netdriver
    from hwl.net.client import Inet
    from hwl.system import sef
    from hwl.system.boot import System
    from hwl.system.ds import Ds
    from hwl.system.rs import Rs
    from hwl.system.running import RunningSystem
    from hwl.system.vfs import Vfs

#: Name -> (module, attribute or None for the module itself), loaded on first use.
_LAZY = {
    "faults": ("hwl.faults", None),
    "blockdriver": ("hwl.driver.blockdriver", None),
    "netdriver": ("hwl.driver.netdriver", None),
    "sef": ("hwl.system.sef", None),
    "Inet": ("hwl.net.client", "Inet"),
    "System": ("hwl.system.boot", "System"),
    "Ds": ("hwl.system.ds", "Ds"),
    "Rs": ("hwl.system.rs", "Rs"),
    "RunningSystem": ("hwl.system.running", "RunningSystem"),
    "Vfs": ("hwl.system.vfs", "Vfs"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'hwl' has no attribute {name!r}")
    module, attr = _LAZY[name]
    loaded = importlib.import_module(module)
    return loaded if attr is None else getattr(loaded, attr)


__all__ = [
    "Bar",
    "Batch",
    "BatchResult",
    "DmaBuffer",
    "Ds",
    "GuestMemoryError",
    "HwlError",
    "Inet",
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
    "Rs",
    "RunningSystem",
    "StubAbiError",
    "StubBuildError",
    "StubError",
    "StubTimeoutError",
    "System",
    "Vfs",
    "blockdriver",
    "faults",
    "netdriver",
    "sef",
]
