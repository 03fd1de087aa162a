"""vfs: block device files for user processes, and recovery from driver crashes
(docs/vfs.md).

Run by RS (``service up hwl.servers.vfs``, entry ``service vfs`` in system.conf).
Protocol and client: :mod:`hwl.system.vfs`. The modules: ``devmap`` (device file
names), ``requests`` (checking and running a request), ``files`` (the fd table and
dead clients), ``transfer`` (the data path), ``devices`` (driver calls and
recovery), ``errors``, and this one: init and the loop.

What a client relies on: an fd belongs to (client endpoint, number); data needs
no alignment; a driver's death costs a delay, not an error (the request stays
pending and is re-issued once the driver is back, its minors re-opened); files of
a client that died without closing them are closed, flushing what it wrote.
"""

from __future__ import annotations

import argparse
import logging
import time
from functools import partial

from hwl.ipc.client import Connection, IpcError, Message
from hwl.proto import codec, wire
from hwl.proto import vfs as vp
from hwl.proto.errno import Errno
from hwl.system import sef
from hwl.system.ds import Ds, DsError
from hwl.system.recovery import RETRY_SECONDS, DriverTracker
from hwl.system.serve import Answering

from . import devmap
from .devices import Devices, Driver, Fields
from .files import Files
from .requests import Requests
from .transfer import CHUNK, Transfers

log = logging.getLogger(__name__)
#: A request's checks: a field that is missing or of the wrong type is EINVAL.
_GUARD = Answering(log, malformed=())
_CHECKING = Answering(log, malformed=(KeyError, TypeError, ValueError, codec.CodecError))


class VfsServer:
    def __init__(self) -> None:
        self.tracker: DriverTracker[Driver] | None = None
        self.ds: Ds | None = None
        self.alarm_at: float | None = None  # monotonic deadline of the armed alarm
        self.files = Files(self)
        self.devices = Devices(self)
        self.transfers = Transfers(self)
        self.requests = Requests(self)

    @property
    def conn(self) -> Connection:
        return sef.connection()

    @property
    def drivers(self) -> dict[str, Driver]:
        assert self.tracker is not None, "VFS is not initialised"
        return self.tracker.drivers

    # ------------------------------------------------------------------ init
    def init(self, info: sef.InitInfo) -> int:
        conn = self.conn
        self.transfers.bounce = conn.arena.alloc(CHUNK, align=4096)
        try:
            self.ds = Ds.find(conn, timeout=10)
            self.tracker = DriverTracker(conn, self.ds, "blk", Driver)
            self.tracker.subscribe()
        except DsError as exc:
            log.error("cannot subscribe to driver-up events: %s", exc)
            return int(exc.errno)
        log.info("vfs up (%s), devices %s", info.type.name, " ".join(devmap.names()))
        return 0

    # ------------------------------------------------------------------ loop
    def serve(self) -> None:
        while True:
            m = sef.receive()
            # A bug must not take the file system down; a request it hit is answered.
            failed = _GUARD.answer(partial(self.dispatch, m), f"message {m.m_type:#x}", m.source)
            if failed is not None and not m.is_notify and m.m_type > 0:
                self.reply(m, *failed)

    def dispatch(self, m: Message) -> None:
        if m.is_notify:
            if m.source == wire.CLOCK:
                self.alarm_at = None
                self.devices.retry_all()
                self.files.reap()
            elif self.ds is not None and m.source == self.ds.endpoint:
                self.devices.ds_changes()
            return
        if m.m_type <= 0:
            return  # a stray status, never answered
        if m.m_type not in vp.VFS_REQUEST_NAMES:
            self.reply(m, -int(Errno.ENOSYS), {"error": f"unknown request {m.m_type:#x}"})
            return
        name = vp.VFS_REQUEST_NAMES[m.m_type]
        op = _CHECKING.answer(lambda: self.requests.make_op(m), name, m.source)
        if isinstance(op, tuple):
            self.reply(m, *op)
            return
        if op is None:
            return
        driver = op.driver
        if driver.pending or not driver.up:
            driver.pending.append(op)  # keep the order behind the waiting ones
            self.arm()
            return
        if not self.requests.run(driver, op):
            driver.pending.append(op)
            self.devices.retry(driver)

    def reply(self, m: Message, status: int, fields: Fields | None = None) -> None:
        """Answer ``m`` with the next receive (``sef.reply``)."""
        sef.reply(m.source, status, fields or {})

    def arm(self, seconds: float = RETRY_SECONDS) -> None:
        """The alarm (one per process) at the earliest deadline anyone asked for."""
        at = time.monotonic() + seconds
        if self.alarm_at is not None and self.alarm_at <= at:
            return
        try:
            self.conn.setalarm(seconds=seconds)
            self.alarm_at = at
        except IpcError as exc:
            log.warning("setalarm: %s", exc)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="vfs")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--channel", action="append", default=[], metavar="C=LABEL",
                   help="the driver of channel C's device files (default at_wini[1])")  # fmt: skip
    args = p.parse_args(argv)
    for item in args.channel:
        channel, _, label = item.partition("=")
        try:
            devmap.set_label(int(channel), label)
        except ValueError as exc:
            p.error(f"--channel {item}: {exc}")
    if args.verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    server = VfsServer()
    sef.setcb_init_fresh(server.init)
    sef.startup()
    server.serve()
    return 0
