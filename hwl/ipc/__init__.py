"""The IPC client: messages, endpoints, grants and kernel calls.

A process started by the kernel gets its connection with :func:`connect`; a
program on the host attaches to a running kernel with ``Connection.attach``.
"""

from hwl.ipc.arena import Arena, Buffer
from hwl.ipc.client import Connection, IpcError, IpcTimeout, KernelGone, Message
from hwl.ipc.codec import CodecError
from hwl.ipc.kcalls import DmaHandle, ExitInfo, Moved
from hwl.ipc.wire import (
    ANY,
    ASYNCM,
    CLOCK,
    HARDWARE,
    HZ,
    KERNEL,
    NONE,
    NOTIFY_MESSAGE,
    SELF,
    SYSTEM,
    endpoint_name,
)


def connect() -> Connection:
    """This process's connection to the kernel that started it."""
    return Connection.from_env()


__all__ = [
    "ANY",
    "ASYNCM",
    "CLOCK",
    "HARDWARE",
    "HZ",
    "KERNEL",
    "NONE",
    "NOTIFY_MESSAGE",
    "SELF",
    "SYSTEM",
    "Arena",
    "Buffer",
    "CodecError",
    "Connection",
    "DmaHandle",
    "ExitInfo",
    "IpcError",
    "IpcTimeout",
    "KernelGone",
    "Message",
    "Moved",
    "connect",
    "endpoint_name",
]
