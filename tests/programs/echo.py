"""Echo server: answers every message with the same type and payload (+ its endpoint)."""

import contextlib

from hwl import ipc

conn = ipc.connect()
while True:
    try:
        msg = conn.receive()
    except ipc.KernelGone:
        break
    if msg.is_notify:
        continue
    with contextlib.suppress(ipc.IpcError):
        conn.sendnb(msg.source, msg.m_type, msg.payload)
