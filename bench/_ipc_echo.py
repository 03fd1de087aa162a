"""The echo servers of ``hwl bench ipc`` (bench/ipc.py); the underscore keeps it out
of ``hwl bench``'s list.

Started by the kernel (``python bench/_ipc_echo.py``), it answers every message
with the same type and payload and takes notifications without a word, until the
kernel goes. Started with ``--raw FD``, it echoes every frame on the socket FD
as it came, until the other end closes: the floor a kernel round trip is held to.
"""

from __future__ import annotations

import socket
import sys

from hwl import ipc
from hwl.ipc import wire


def serve() -> None:
    """Receive, then answer each message and take the next in one kernel request."""
    conn = ipc.connect()
    conn.serve_channels()
    try:
        msg = conn.receive()
        while True:
            while msg.is_notify:
                msg = conn.receive()
            msg = conn.reply_receive(msg.source, msg.m_type, msg.payload)
    except ipc.KernelGone:
        return


def raw_echo(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    recv, send = sock.recv, sock.send
    size = wire.MAX_REQUEST
    while True:
        frame = recv(size)
        if not frame:
            break
        send(frame)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--raw":
        raw_echo(int(sys.argv[2]))
    else:
        serve()
