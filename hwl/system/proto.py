"""The system protocol: message types and fields between services, RS and DS.

Every message is an IPC message (``m_type`` plus a codec payload of named fields,
``hwl.ipc.codec``). Replies carry the result in ``m_type``: 0 (OK) or a negative
MINIX errno, with an ``error`` field that says why, as the kernel's own replies do.

Requests to RS (``RS_*``) come from the ``service`` command or the Python API
(``hwl.system.rs``), by ``sendrec``; RS answers with a non-blocking reply, later
for the calls that wait for a service's init (up, update, restart).

RS talks to a service through SEF (``hwl.system.sef``):

- ``SEF_INIT`` (asynchronous send): initialise as ``type`` (fresh, lu, restart);
  the service answers ``RS_INIT`` with ``result`` by ``send``.
- ping: a notify from RS; SEF answers with a notify back.
- ``SEF_LU_PREPARE``: reach live-update ``state`` (0 cancels a pending request);
  the service answers ``RS_LU_PREPARE`` by ``sendrec`` once the state is reached
  (with ``saved``, its state for the new version) or the request is refused, and
  stays blocked until RS answers (the update was aborted) or kills it.

Requests to DS (``DS_*``) are ``sendrec`` from any system process.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

# ------------------------------------------------------------------ RS requests
RS_BASE = 0x700
RS_UP = RS_BASE + 1  # argv, label, [period, script, conf, dev, restarts, policy, cold]
RS_DOWN = RS_BASE + 2  # label
RS_REFRESH = RS_BASE + 3  # label: stop it and let RS start it again
RS_RESTART = RS_BASE + 4  # label: only from the service's recovery script
RS_SHUTDOWN = RS_BASE + 5  # stop every service; RS restarts nothing from then on
RS_UPDATE = RS_BASE + 6  # label, argv or self, state, maxtime, flags (UpdateFlag)
RS_CLONE = RS_BASE + 7  # label: keep a warm replica for recovery
RS_EDIT = RS_BASE + 8  # label, and up fields to change for the next start
RS_LOOKUP = RS_BASE + 9  # label -> endpoint
RS_STATUS = RS_BASE + 10  # -> services: list of status rows (dicts)
RS_UNCLONE = RS_BASE + 11  # label: drop the replica

# Messages from services to RS.
RS_INIT = RS_BASE + 0x40  # result (0 or -errno): a service's init is done
RS_LU_PREPARE = RS_BASE + 0x41  # result, state, saved (bytes): ready, or refused

RS_REQUEST_NAMES = {
    RS_UP: "up",
    RS_DOWN: "down",
    RS_REFRESH: "refresh",
    RS_RESTART: "restart",
    RS_SHUTDOWN: "shutdown",
    RS_UPDATE: "update",
    RS_CLONE: "clone",
    RS_EDIT: "edit",
    RS_LOOKUP: "lookup",
    RS_STATUS: "status",
    RS_UNCLONE: "unclone",
}

# ---------------------------------------------------------------- SEF messages
SEF_BASE = 0x780
SEF_INIT = SEF_BASE + 1  # type (InitType), flags (InitFlag), restarts, endpoint, saved
SEF_LU_PREPARE = SEF_BASE + 2  # state (0: cancel), flags


class InitType(IntEnum):
    """Why a service is being initialised (MINIX's SEF_INIT_*)."""

    FRESH = 0
    LU = 1  # the new version of a live update
    RESTART = 2  # after a crash or refresh


class InitFlag(IntFlag):
    """Test flags RS passes to a service's init (MINIX's SEF_INIT_* debug flags)."""

    NONE = 0
    CRASH = 0x1  # the init callback crashes
    FAIL = 0x2  # the init callback fails (ENOSYS)
    TIMEOUT = 0x4  # the init callback never answers


class LuState(IntEnum):
    """Live-update states (MINIX's SEF_LU_STATE_*); custom states start at CUSTOM_BASE."""

    NULL = 0
    WORK_FREE = 1
    REQUEST_FREE = 2
    PROTOCOL_FREE = 3
    EVAL = 4  # not supported in hwl: refused as invalid
    UNREACHABLE = 5  # never ready (for testing)
    PREPARE_CRASH = 6  # crash at prepare time (for testing)


LU_STATE_CUSTOM_BASE = 7


class UpdateFlag(IntFlag):
    """Options of ``service update`` (MINIX's -o -x -y -z)."""

    NONE = 0
    PREPARE_ONLY = 0x1  # -o: reach the state, then resume without updating
    FORCE_INIT_CRASH = 0x2  # -x
    FORCE_INIT_FAIL = 0x4  # -y
    FORCE_INIT_TIMEOUT = 0x8  # -z

    @classmethod
    def checked(cls, bits: int) -> UpdateFlag:
        """The flags in ``bits``; ValueError for a bit no flag has (an IntFlag
        would keep it silently)."""
        known = sum(cls)
        if bits < 0 or bits & ~known:
            raise ValueError(f"unknown update flags {bits:#x} (known: {known:#x})")
        return cls(bits)


class Policy(IntEnum):
    """What a restart keeps (MINIX's relpol): RESET gives a new endpoint, RESTART
    keeps the old one so clients need not look the service up again."""

    RESET = 0
    RESTART = 1


# ------------------------------------------------------------------ DS requests
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

# ----------------------------------------------------------------- PCI requests
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
