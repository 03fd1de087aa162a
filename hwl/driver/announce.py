"""``drv.<kind>.<label>`` in DS: how every driver, block or network, says it is up.

After a restart it first fails whatever is still blocked on the previous
incarnation (``statectl clear_ipc_refs``), so no client waits on a dead process;
then it publishes the key its clients (VFS, INET) subscribe to.

See docs/drivers.md.
"""

from __future__ import annotations

import logging

from hwl.ipc.client import Connection, IpcError
from hwl.proto.ds import DS_DRIVER_UP
from hwl.system.ds import Ds

log = logging.getLogger(__name__)


def announce(conn: Connection, kind: str, restarted: bool) -> str:
    """Publish that this driver is up; returns the key."""
    if restarted:
        try:
            conn.statectl_clear_ipc_refs()
        except IpcError as exc:
            log.warning("statectl clear_ipc_refs failed: %s", exc)
    key = f"drv.{kind}.{conn.label}"
    Ds.find(conn).publish_u32(key, DS_DRIVER_UP, overwrite=True)
    return key
