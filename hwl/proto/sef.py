"""The SEF protocol: what RS sends a service, through its SEF (``hwl.system.sef``).

- ``SEF_INIT`` (asynchronous send): initialise as ``type`` (fresh, lu, restart);
  the service answers ``RS_INIT`` with ``result`` by ``send``.
- ping: a notify from RS; SEF answers with a notify back.
- ``SEF_FI`` (asynchronous send, no answer): inject the fault ``type`` into
  yourself (``service fi``); a crash exits with ``FI_CRASH_STATUS``.
- ``SEF_LU_PREPARE``: reach live-update ``state`` (0 cancels a pending request);
  the service answers ``RS_LU_PREPARE`` by ``sendrec`` once the state is reached
  (with ``saved``, its state for the new version) or the request is refused, and
  stays blocked until RS answers (the update was aborted) or kills it.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

SEF_BASE = 0x780
SEF_INIT = SEF_BASE + 1  # type (InitType), flags (InitFlag), restarts, endpoint, saved
SEF_LU_PREPARE = SEF_BASE + 2  # state (0: cancel), flags
SEF_FI = SEF_BASE + 3  # type (FiType): inject a fault into yourself (service fi)

#: The exit status of a service that crashed on RS's request (``service fi``).
FI_CRASH_STATUS = 86


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


class FiType(IntEnum):
    """What ``service fi -type`` asks a service to do to itself. MINIX has crash
    only (RS_FI_CRASH); the others are hwl's."""

    CRASH = 0  # exit at once with FI_CRASH_STATUS
    HANG = 1  # stop answering anything: the heartbeat catches it
    EXCEPTION = 2  # raise inside the next request: a crash with a traceback
    DROP_REPLY = 3  # the next reply is not sent
    CORRUPT_REPLY = 4  # the next reply's payload is garbled

    @property
    def option(self) -> str:
        """The name ``-type`` takes: crash, hang, exception, drop-reply, corrupt-reply."""
        return self.name.lower().replace("_", "-")

    @property
    def kills(self) -> bool:
        """Whether the fault ends the process (RS then notes the reason)."""
        return self in (FiType.CRASH, FiType.HANG, FiType.EXCEPTION)
