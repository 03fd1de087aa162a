"""The PCI protocol: a driver's requests to the PCI server (MINIX's BUSC_PCI_*) (docs/pci.md)."""

from __future__ import annotations

# ``sendrec`` from a driver to the PCI server (``servers/pci``, client calls in
# ``hwl.system.pci``); MINIX's BUSC_PCI_* calls. ``devind`` is the server's index
# of a device; ``port`` is an offset in the device's configuration space.
PCI_BASE = 0x900
PCI_FIRST_DEV = PCI_BASE + 1  # -> devind, vid, did (ENOENT: no visible device)
PCI_NEXT_DEV = PCI_BASE + 2  # devind -> devind, vid, did (ENOENT: no more)
PCI_FIND_DEV = PCI_BASE + 3  # bus, dev, func -> devind
PCI_IDS = PCI_BASE + 4  # devind -> vid, did
PCI_ATTR_R8 = PCI_BASE + 5  # devind, port -> value
PCI_ATTR_R16 = PCI_BASE + 6  # devind, port -> value
PCI_ATTR_R32 = PCI_BASE + 7  # devind, port -> value
PCI_ATTR_W8 = PCI_BASE + 8  # devind, port, value (the caller must hold the device)
PCI_ATTR_W16 = PCI_BASE + 9  # devind, port, value
PCI_ATTR_W32 = PCI_BASE + 10  # devind, port, value
PCI_GET_BAR = PCI_BASE + 11  # devind, port (0x10..0x24) -> base, size, is_io
PCI_DEV_NAME = PCI_BASE + 12  # vid, did -> name
PCI_SLOT_NAME = PCI_BASE + 13  # devind -> name ("domain.bus.dev.func")
PCI_RESERVE = PCI_BASE + 14  # devind -> io, mem ([[base, length]]), irq ([line])
PCI_RELEASE = PCI_BASE + 15  # devind
PCI_DEV_INFO = PCI_BASE + 16  # devind -> the whole record (hwl's addition)

PCI_REQUEST_NAMES = {
    PCI_FIRST_DEV: "first_dev",
    PCI_NEXT_DEV: "next_dev",
    PCI_FIND_DEV: "find_dev",
    PCI_IDS: "ids",
    PCI_ATTR_R8: "attr_r8",
    PCI_ATTR_R16: "attr_r16",
    PCI_ATTR_R32: "attr_r32",
    PCI_ATTR_W8: "attr_w8",
    PCI_ATTR_W16: "attr_w16",
    PCI_ATTR_W32: "attr_w32",
    PCI_GET_BAR: "get_bar",
    PCI_DEV_NAME: "dev_name",
    PCI_SLOT_NAME: "slot_name",
    PCI_RESERVE: "reserve",
    PCI_RELEASE: "release",
    PCI_DEV_INFO: "dev_info",
}
