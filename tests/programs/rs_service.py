"""A SEF service for RS tests: answers like hwl.servers.echo, with its init and its
SIGTERM handling chosen on the command line.

- ``--init ok|fail|crash|timeout``: the init callback (SEF's predefined ones);
- ``--ignore-term``: SIGTERM does nothing (RS must SIGKILL it at ``service down``).

Requests: ECHO (1) answers {tag, pid, restarts}; EXIT (3) exits with ``status``.
"""

from __future__ import annotations

import argparse
import os
import sys

from hwl.system import sef

ECHO, EXIT = 1, 3

INITS = {
    "ok": sef.init_null,
    "fail": sef.init_fail,
    "crash": sef.init_crash,
    "timeout": sef.init_timeout,
}


def ignore_signal(signo: int) -> None:
    return None


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="rs_service")
    p.add_argument("--tag", default="svc")
    p.add_argument("--init", choices=sorted(INITS), default="ok")
    p.add_argument("--ignore-term", action="store_true")
    args = p.parse_args(argv)
    sef.setcb_init_fresh(INITS[args.init])
    if args.ignore_term:
        sef.setcb_signal_handler(ignore_signal)
    sef.startup()
    m = sef.receive()
    while True:
        if m.m_type == EXIT:
            return int(m.get("status", 0))  # type: ignore[arg-type]
        info = sef.init_info()
        fields = {"tag": args.tag, "pid": os.getpid(), "restarts": info.restarts if info else -1}
        m = sef.reply_receive(m.source, 0, dict(fields))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
