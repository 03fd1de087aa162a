"""Floods a channel server (argv: its endpoint, seconds) with calls, then tells its
parent how many it made."""

import sys
import time

from hwl import ipc

conn = ipc.connect()
dest, seconds = int(sys.argv[1]), float(sys.argv[2])
count, deadline = 0, time.monotonic() + seconds
while time.monotonic() < deadline:
    conn.sendrec(dest, 1, {"n": 0}, timeout=5)
    count += 1
conn.send(conn.parent, 99, {"count": count, "channel": conn.channel_to(dest) is not None})
