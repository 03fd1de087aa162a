"""A test service that takes every watched doorbell the kernel has (struct
hwl_watch, 8 at once): each watch writes port 0x80, the POST diagnostic port.
While it runs, a driver's frame template is refused (EBUSY). Logs "holding N
watches", then serves nothing until SIGTERM."""

from __future__ import annotations

import logging

from hwl.ipc.client import IpcError
from hwl.link import abi
from hwl.link.batch import Batch
from hwl.system import sef

log = logging.getLogger("watch_hog")


def main() -> None:
    def init(info: sef.InitInfo) -> int:  # before RS's up returns
        conn = sef.connection()
        buf = conn.dma_alloc(4096)
        held = 0
        for k in range(abi.NWATCH):
            post = Batch()
            post.outb(0x80, 0)
            try:
                conn.vdevio_watch(buf.id, 8 * k, 8 * k + 4, post)
            except IpcError as exc:
                log.warning("watch %d refused: %s", k, exc)
                break
            held += 1
        log.warning("holding %d watches", held)
        return 0

    sef.setcb_init_fresh(init)
    sef.startup()
    while True:
        sef.receive()


if __name__ == "__main__":
    main()
