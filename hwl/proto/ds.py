"""The DS protocol: the data store's requests, flags and driver-up keys.

Requests to DS (``DS_*``) are ``sendrec`` from any system process; the reply's
``m_type`` is 0 or a negative MINIX errno with an ``error`` field.
"""

from __future__ import annotations

from enum import IntFlag

DS_BASE = 0x800
DS_PUBLISH = DS_BASE + 1  # key, type, value, flags
DS_RETRIEVE = DS_BASE + 2  # key, type -> value, owner
DS_DELETE = DS_BASE + 3  # key, type
DS_SUBSCRIBE = DS_BASE + 4  # regex, flags
DS_CHECK = DS_BASE + 5  # -> key, type, owner (one changed key; ENOENT when none)
DS_RETRIEVE_LABEL = DS_BASE + 6  # label -> endpoint, or endpoint -> label

DS_REQUEST_NAMES = {
    DS_PUBLISH: "publish",
    DS_RETRIEVE: "retrieve",
    DS_DELETE: "delete",
    DS_SUBSCRIBE: "subscribe",
    DS_CHECK: "check",
    DS_RETRIEVE_LABEL: "retrieve_label",
}


class DsFlag(IntFlag):
    """DS flags (MINIX's DSF_*)."""

    NONE = 0
    PRIVATE = 0x1  # only the owner may retrieve
    OVERWRITE = 0x2  # publish: replace an existing value; subscribe: replace
    INITIAL = 0x4  # subscribe: report the keys that already match


DS_TYPES = ("u32", "str", "mem", "label")
DS_MAX_KEY = 256
DS_MAX_MEM = 4096

# Driver-up keys that DS subscribers (VFS, INET) watch.
DRIVER_UP_BLK = "drv.blk."
DRIVER_UP_NET = "drv.net."

#: The value of a driver-up key once the driver is up (MINIX's DS_DRIVER_UP).
DS_DRIVER_UP = 1
