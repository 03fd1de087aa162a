"""e1000 whose first incarnation SIGKILLs itself in the middle of its first receive
that finds frames: after taking them from the ring (each descriptor cleared, as the
honest driver does) and before its RDT write gives the buffers back. That is the
state a kill at that moment leaves, made certain instead of waited for; later
incarnations are e1000 as it is, and must adopt the ring past those descriptors.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from hwl.drivers.e1000 import main as e1000

run_dir = Path(os.environ["HWL_RUN_DIR"])
label = os.environ["HWL_SERVICE_LABEL"]
marker = run_dir / f"dies-mid-receive.{label}.started"
if not marker.exists():
    marker.touch()

    def recv(self: e1000.E1000, most: int) -> list[bytes]:
        rxv, rx, i, taken = self.rx_view(), self.rx, self.rx_next, 0
        assert rx is not None
        while taken < most and rxv[i * e1000.DESC + e1000.RX_STATUS] & e1000.DD:
            at = e1000.RING_BYTES + i * e1000.BUF
            e1000.RX_DESC.pack_into(rxv, i * e1000.DESC, rx.phys + at, 0, 0, 0, 0, 0)
            i, taken = (i + 1) % e1000.RING, taken + 1
        if taken:
            print(f"took {taken} descriptors from {self.rx_next}; dying before the RDT write",
                  flush=True)  # fmt: skip
            os.kill(os.getpid(), signal.SIGKILL)
        return []

    e1000.E1000.recv = recv  # type: ignore[method-assign]
sys.exit(e1000.main(sys.argv[1:]))
