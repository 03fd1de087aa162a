"""echo: answers every request with its tag, pid and request count.

Run by RS (``service up hwl.servers.echo -args "--tag A"``). It shows what every
service does: SEF callbacks set before ``sef.startup()``, a receive loop with
``sef.reply_receive``, and live update with state transfer (the request count
survives an update through ``state_save`` and the new version's init).

Requests (m_type): ECHO answers {tag, pid, count, restarts}; HANG stops serving
(a hung service, for heartbeat tests); EXIT exits with the given status.
"""

from __future__ import annotations

import argparse
import os
import time

from hwl.ipc.client import Message
from hwl.proto import codec
from hwl.system import sef

ECHO = 1
HANG = 2
EXIT = 3

_PREPARE = {
    "default": sef.lu_prepare_null,
    "always": sef.lu_prepare_always_ready,
    "never": sef.lu_prepare_never_ready,
}


class Echo:
    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.count = 0
        self.restarts = 0

    def init(self, info: sef.InitInfo) -> int:
        self.restarts = info.restarts
        if info.saved:
            self.count = int(codec.decode(info.saved)["count"])  # type: ignore[arg-type]
        return 0

    def save(self, state: int, flags: int) -> bytes:
        return codec.encode({"count": self.count})

    def answer(self, m: Message) -> tuple[int, dict[str, codec.Value]]:
        self.count += 1
        return 0, {"tag": self.tag, "pid": os.getpid(), "count": self.count,
                   "restarts": self.restarts}  # fmt: skip


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="echo")
    p.add_argument("--tag", default="echo")
    p.add_argument("--prepare", choices=sorted(_PREPARE), default="default")
    args = p.parse_args(argv)
    echo = Echo(args.tag)
    sef.setcb_init_fresh(echo.init)
    sef.setcb_lu_state_save(echo.save)
    sef.setcb_lu_prepare(_PREPARE[args.prepare])
    sef.startup()
    m = sef.receive()
    while True:
        if m.m_type == HANG:
            while True:
                time.sleep(3600)
        if m.m_type == EXIT:
            return int(m.get("status", 0))  # type: ignore[arg-type]
        status, fields = echo.answer(m)
        m = sef.reply_receive(m.source, status, fields)
