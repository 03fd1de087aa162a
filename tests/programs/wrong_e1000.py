"""e1000 that changes the TCP data it receives after its first restart: the
deliberately wrong NIC driver of the tcp campaign test (a crash-only recovery
does not see it, and neither does TCP's checksum).

The first incarnation marks the run directory and runs e1000 as it is. Every later
one swaps the first two 16-bit words of each received TCP segment's payload. The
checksum is a ones'-complement sum of 16-bit words, the payload starts on a word
boundary of the segment, and a sum does not depend on its order: the segment still
passes INET's check, and the client reads wrong bytes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hwl.drivers.e1000 import main as e1000

ETH, IPV4, TCP = 14, 0x0800, 6


def swap_payload_words(frame: bytes) -> bytes:
    """The frame with its TCP payload's words 0 and 1 swapped (others as they are)."""
    if len(frame) < ETH + 20 or int.from_bytes(frame[12:14], "big") != IPV4:
        return frame
    ihl = (frame[ETH] & 0x0F) * 4
    if frame[ETH + 9] != TCP:
        return frame
    total = int.from_bytes(frame[ETH + 2 : ETH + 4], "big")
    tcp = ETH + ihl
    data = tcp + (frame[tcp + 12] >> 4) * 4
    if ETH + total - data < 4:
        return frame
    return frame[:data] + frame[data + 2 : data + 4] + frame[data : data + 2] + frame[data + 4 :]


run_dir = Path(os.environ["HWL_RUN_DIR"])
label = os.environ["HWL_SERVICE_LABEL"]
marker = run_dir / f"wrong.{label}.started"
if marker.exists():
    honest = e1000.E1000.recv

    def recv(self: e1000.E1000, most: int) -> list[bytes]:
        return [swap_payload_words(f) for f in honest(self, most)]

    e1000.E1000.recv = recv  # type: ignore[method-assign]
else:
    marker.touch()
sys.exit(e1000.main(sys.argv[1:]))
