"""A test service that shares an IRQ line with a driver: it hooks the line given
as its argument (re-enable policy, so it never holds the line masked) and logs
``interrupts`` for every HARDWARE notify, until SIGTERM."""

from __future__ import annotations

import logging
import sys

from hwl.ipc import wire
from hwl.kernel.irq import IRQ_REENABLE
from hwl.system import sef

log = logging.getLogger("irq_sharer")


def main() -> None:
    line = int(sys.argv[1])

    def init(info: sef.InitInfo) -> int:  # before RS's up returns
        sef.connection().irq_setpolicy(line, IRQ_REENABLE)
        log.warning("hooked IRQ %d", line)
        return 0

    sef.setcb_init_fresh(init)
    sef.startup()
    while True:
        m = sef.receive()
        if m.is_notify and m.source == wire.HARDWARE:
            log.warning("interrupts %s", m.get("interrupts"))


if __name__ == "__main__":
    main()
