"""Live-update test server: answers every message with its tag (argv[1]) and pid.

Message types (the answer goes back with ``sendnb`` unless said otherwise):
- HOLD: answer, then take the next message only from the same sender; the answer
  to that one is a blocking ``send`` (it may come from an ``senda``).
- READY: answer, then ``sendrec`` READY_MSG to the sender (as a service telling
  RS it is ready for an update) and keep the reply for the next answers.
- WHOAMI: answer with ``whoami()`` (the endpoint the kernel says is ours now).
- anything else: answer.
"""

from __future__ import annotations

import contextlib
import os
import sys

from hwl import ipc
from hwl.ipc import codec

HOLD, READY, WHOAMI, READY_MSG, HELD_ANSWER = 10, 11, 12, 13, 14


def main() -> None:
    tag = sys.argv[1]
    conn = ipc.connect()
    hello_endpoint = conn.endpoint
    last: dict[str, codec.Value] = {}

    def answer(msg: ipc.Message) -> dict[str, codec.Value]:
        fields: dict[str, codec.Value] = {
            "tag": tag,
            "pid": os.getpid(),
            "m_type": msg.m_type,
            "hello_endpoint": hello_endpoint,
            "root": conn.root_endpoint,
            "last": last,
        }
        if msg.m_type == WHOAMI:
            fields["whoami"] = conn.whoami()
            fields["endpoint"] = conn.endpoint
        return fields

    while True:
        try:
            msg = conn.receive()
            if msg.is_notify:
                continue
            with contextlib.suppress(ipc.IpcError):
                conn.sendnb(msg.source, msg.m_type, answer(msg))
            if msg.m_type == HOLD:
                held = conn.receive(msg.source)
                conn.send(held.source, HELD_ANSWER, answer(held))
            elif msg.m_type == READY:
                reply = conn.sendrec(msg.source, READY_MSG, {"tag": tag})
                last = {"m_type": reply.m_type, "source": reply.source, **reply.fields}
        except ipc.KernelGone:
            break
        except ipc.IpcError:
            continue


if __name__ == "__main__":
    main()
