"""RS's main loop (MINIX's rs/main.c): boot the services, then serve forever.

RS is the kernel's root process: it has every privilege and is the parent of
every service, so the kernel tells it (a SYSTEM notify) when one exits. The loop
takes one message at a time: the kernel's notifies (CLOCK: timers, SYSTEM:
exits), heartbeat answers (a notify from a service), init and live-update
answers from services, and requests from the ``service`` command.

See docs/services.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from hwl.config import SystemConfError, load
from hwl.ipc.client import Connection, IpcError, Message
from hwl.proto import codec, wire
from hwl.proto import rs as rsp
from hwl.proto.errno import Errno
from hwl.proto.rs import RS_LABEL
from hwl.proto.sef import InitType
from hwl.servers.rs.adopt import adopt
from hwl.servers.rs.keep import TableKeeper
from hwl.servers.rs.manager import Manager, RsError
from hwl.servers.rs.request import Requests, service_from_fields
from hwl.servers.rs.table import State
from hwl.servers.rs.update import Updater
from hwl.system.proctab import ProcTable
from hwl.system.serve import Answering

log = logging.getLogger("hwl.servers.rs")
_ANSWERING = Answering(log, level=lambda exc: logging.INFO)


class Rs:
    def __init__(self, conn: Connection, manager: Manager) -> None:
        self.conn = conn
        self.m = manager
        self.updater = Updater(manager)
        self.requests = Requests(manager, self.updater, self.is_operator)
        self.procs = ProcTable(conn, log)
        self.keeper = TableKeeper(conn, manager.table)

    def is_operator(self, endpoint: int) -> bool:
        """A user process (attached through kernel.sock, same uid as the kernel)."""
        proc = self.procs.get(endpoint, strict=True)  # a refusal raises, as the request's error
        return proc is not None and not proc.system

    # ------------------------------------------------------------------ boot
    def boot(self, entries: list[dict[str, Any]]) -> bool:
        """Start the boot services one by one, each up before the next (MINIX's
        synchronous boot init). False if one fails: the event names it. A service
        already in the table (adopted by a restarted RS) is not started again."""
        try:
            return self._boot(entries)
        finally:
            self.keeper.booted = True

    def _boot(self, entries: list[dict[str, Any]]) -> bool:
        for entry in entries:
            label = str(entry.get("label", ""))
            if self.m.table.get(label) is not None:
                continue
            try:
                svc = service_from_fields(self.m, label, entry)
                self.m.table.add(svc)
                self.m.start(svc, InitType.FRESH)
            except RsError as exc:
                self.m.events.write("boot-failed", label, reason=exc.why)
                return False
            while svc.state is State.STARTING:
                self.serve_one()
            if svc.state is not State.UP:
                self.m.events.write("boot-failed", label, reason="init failed or the service died")
                return False
        self.m.events.write("boot-done", services=[str(e.get("label")) for e in entries])
        return True

    # ------------------------------------------------------------------ loop
    def serve_forever(self) -> None:
        while True:
            self.serve_one()

    def start(self, entries: list[dict[str, Any]]) -> None:
        """Boot, or after a restart by the kernel (a kept table), take the services
        over and finish the boot list if the old RS had not."""
        try:
            kept = self.keeper.load()
        except ValueError as exc:
            log.error("the kept service table is unusable (%s): booting afresh", exc)
            self.m.events.write("rs-restart", RS_LABEL, reason=f"kept table unusable: {exc}")
            kept = None
        if kept is None:
            self._kill_orphans()
            self.boot(entries)
            return
        outcome = adopt(self.m, kept)
        log.info("RS restarted by the kernel: %s", outcome)
        self.m.events.write("rs-restart", RS_LABEL, pid=os.getpid(), **outcome)
        if kept.booted:
            self.keeper.booted = True
        else:
            self.boot(entries)

    def _kill_orphans(self) -> None:
        """Processes an RS before this one started and never kept (it died before
        its first save): nobody knows their service, so they go before the boot
        list starts them again. On a first boot there are none."""
        me = self.conn.endpoint
        try:
            procs = self.conn.proctab()
        except IpcError as exc:
            log.warning("process table: %s", exc)
            return
        for proc in procs:
            if proc.get("parent") == me:
                log.warning("killing %s (pid %s): started by an RS that kept nothing",
                            proc.get("label"), proc.get("pid"))  # fmt: skip
                self.m.kill(int(proc["endpoint"]))

    def serve_one(self) -> None:
        self.m.timers.arm()
        self.keeper.save()  # what changed since the last receive, before waiting
        m = self.conn.receive()
        try:
            self.dispatch(m)
        except IpcError as exc:
            log.error("handling %#x from %s: %s", m.m_type, wire.endpoint_name(m.source), exc)
        except Exception:
            log.exception("internal error handling %#x from %s", m.m_type, m.source)

    def dispatch(self, m: Message) -> None:
        if m.is_notify:
            if m.source == wire.CLOCK:
                self.m.timers.fired()
                self.m.timers.run_due()
            elif m.source == wire.SYSTEM:
                for info in self.conn.exits():
                    self.m.on_exit(info)
            else:
                self.m.pong(m.source)
            return
        if m.m_type == rsp.RS_INIT:
            self.m.init_done(m.source, _result(m))
        elif m.m_type == rsp.RS_LU_PREPARE:
            self.updater.prepared(m.source, _fields(m))
        elif m.m_type <= 0:  # a server's reply to one of RS's asynchronous sends
            log.debug("reply %d from %s dropped", m.m_type, wire.endpoint_name(m.source))
        else:
            self._request(m)

    def _request(self, m: Message) -> None:
        name = rsp.RS_REQUEST_NAMES.get(m.m_type, f"{m.m_type:#x}")
        reply = _ANSWERING.answer(
            lambda: self.requests.handle(m.source, m.m_type, _fields(m)), name, m.source
        )
        if isinstance(reply, tuple):  # refused
            self._reply(m.source, *reply)
        elif reply is not None:  # None: answered when the work is done
            self._reply(m.source, 0, reply)

    def _reply(self, dest: int, status: int, fields: dict[str, codec.Value]) -> None:
        try:
            self.conn.sendnb(dest, status, fields)
        except IpcError as exc:
            log.info("reply to %s not taken: %s", wire.endpoint_name(dest), exc)


def _fields(m: Message) -> dict[str, codec.Value]:
    try:
        return m.fields
    except codec.CodecError:
        return {}


def _result(m: Message) -> int:
    value = _fields(m).get("result", -Errno.EINVAL)
    return value if isinstance(value, int) else -int(Errno.EINVAL)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rs", description="the reincarnation server")
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--boot", default="[]", help="the boot list: JSON, a list of RS_UP fields")
    p.add_argument("--system-conf", default=None, help="system.conf (default: the stock one)")
    p.add_argument("--backoff-unit", type=float, default=1.0, help="seconds per backoff unit")
    p.add_argument("--init-timeout", type=float, default=10.0, help="seconds for a service's init")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        system_conf = load(args.system_conf)
        boot_list = json.loads(args.boot)
        if not isinstance(boot_list, list):
            raise ValueError("the boot list must be a JSON list")
    except (SystemConfError, ValueError) as exc:
        log.error("RS cannot start: %s", exc)
        return 1
    conn = Connection.from_env()
    manager = Manager(
        conn,
        args.run_dir,
        system_conf,
        backoff_unit=args.backoff_unit,
        init_timeout=args.init_timeout,
    )
    rs = Rs(conn, manager)
    log.info("RS up: %s, %d boot services", wire.endpoint_name(conn.endpoint), len(boot_list))
    rs.start(boot_list)
    rs.serve_forever()
    return 0
