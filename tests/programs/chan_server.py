"""Call-channel test server: serves channels and answers each call with its pid,
a count of the calls it served and the call's own ``n``; SLOW sleeps first;
PEER first calls ``peer`` with PEER naming the caller (two servers doing it to
each other deadlock: the watchdog's test)."""

import contextlib
import os
import time

from hwl import ipc

SLOW, PEER = 2, 3

conn = ipc.connect()
conn.serve_channels()  # False with HWL_CHANNELS=0: the kernel path only
count = 0
while True:
    try:
        msg = conn.receive()
    except ipc.KernelGone:
        break
    if msg.is_notify:
        continue
    count += 1
    if msg.m_type == SLOW:
        time.sleep(float(msg.get("seconds", 0.5)))  # type: ignore[arg-type]
    if msg.m_type == PEER:
        with contextlib.suppress(ipc.IpcError):
            conn.sendrec(int(msg["peer"]), PEER, {"peer": conn.endpoint})  # type: ignore[arg-type]
    answer = {"pid": os.getpid(), "count": count, "n": msg.get("n")}
    with contextlib.suppress(ipc.IpcError):
        conn.sendnb(msg.source, msg.m_type, answer)
