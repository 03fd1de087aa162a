"""Making at_wini lie, for tests and fault campaigns (docs/filter.md, "Making at_wini
lie"): the disk driver that keeps running and returns wrong bytes (``flip``), drops
a reply (``drop``) or hangs on one request (``hang``), until ``clear``: the failures
a crash-only recovery does not see.

``AT_LIE`` is accepted only from an operator (a user process attached through
kernel.sock); no driver or server can make another lie. A ``sticky`` lie is kept in
the run directory and taken up by every next incarnation of the driver. An
operator sends it with :func:`tell`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from hwl.driver.blockdriver import Iov
from hwl.errors import HwlError
from hwl.ipc import codec
from hwl.ipc.client import Connection, IpcError, Message
from hwl.kernel.errno import Errno
from hwl.proto.sef import FiType
from hwl.system import sef
from hwl.system.proctab import ProcTable
from hwl.system.rs import Rs, RsError

log = logging.getLogger("at_wini")

AT_LIE: Final = 0xBF1  # {"action", "count", "position", "bit", "sticky"} -> 0
ACTIONS: Final = ("flip", "drop", "hang", "clear")

Fields = dict[str, codec.Value]
Transfer = Callable[[int, bool, int, int, Iov], int]


def tell(rs: Rs, label: str, fields: Fields, timeout: float = 10.0) -> None:
    """AT_LIE (``fields``: action, count, position, ...) to the incarnation of
    ``label`` that runs now. One that dies under the call (a refresh under way,
    such as a mirror side the filter mends after its answer) is not lied to: the
    call goes again to RS's next answer for ``label`` (EAGAIN while it starts),
    until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            reply = rs.conn.sendrec(rs.lookup(label), AT_LIE, fields, timeout=timeout)
        except (IpcError, RsError) as exc:
            gone = exc.errno in (Errno.EDEADSRCDST, Errno.ESRCH, Errno.EDEADEPT, Errno.EAGAIN)
            if not gone or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
            continue
        if reply.m_type != 0:
            raise HwlError(f"AT_LIE to {label} refused: {reply.fields}")
        return


@dataclass
class Lie:
    action: str = "clear"
    count: int = 0  # -1: no end
    position: int = -1  # a byte of the minor a transfer must cover; -1: any
    bit: int = 0
    minor: int = -1  # -1: any


#: The driver's own flip: (byte offset in the read, bit, endpoint, iov) -> done.
Reflip = Callable[[int, int, int, Iov], bool]


class Liar:
    """The lie at_wini tells now; wraps its transfer callback. A ``flip`` goes
    through ``reflip`` first (at_wini's DMA buffer, copied again: the kernel's
    check of a sums grant sees it), else flips the client's byte."""

    def __init__(self, conn: Callable[[], Connection | None], reflip: Reflip | None = None) -> None:
        self._conn = conn
        self._reflip = reflip
        self.lie = Lie()
        self.path: Path | None = None
        label = os.environ.get("HWL_SERVICE_LABEL")
        run_dir = os.environ.get("HWL_RUN_DIR")
        if label and run_dir:
            self.path = Path(run_dir) / f"lie.{label}.json"
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        try:
            self.lie = Lie(**json.loads(self.path.read_text()))
            log.warning("lie taken up from %s: %s", self.path, self.lie)
        except FileNotFoundError:
            pass
        except (ValueError, TypeError) as exc:
            log.error("lie file %s unusable: %s", self.path, exc)

    # ---------------------------------------------------------------- request
    def other(self, m: Message) -> tuple[int, Fields] | None:
        """AT_LIE, or None for a message that is not one."""
        if m.m_type != AT_LIE:
            return None
        conn = self._conn()
        if conn is None:
            return -int(Errno.EAGAIN), {"error": "not initialised"}
        try:
            caller = ProcTable(conn, log).get(m.source, strict=True)
        except IpcError as exc:
            return -int(exc.errno), {"error": str(exc)}
        if caller is None or caller.system:
            log.warning("AT_LIE from %d refused: not an operator", m.source)
            return -int(Errno.EPERM), {"error": "AT_LIE is for operators (user processes)"}
        try:
            lie = Lie(
                action=str(m["action"]),
                count=int(m.get("count", 1)),  # type: ignore[arg-type]
                position=int(m.get("position", -1)),  # type: ignore[arg-type]
                bit=int(m.get("bit", 0)) & 7,  # type: ignore[arg-type]
                minor=int(m.get("minor", -1)),  # type: ignore[arg-type]
            )
        except (KeyError, TypeError, ValueError, codec.CodecError) as exc:
            return -int(Errno.EINVAL), {"error": f"malformed AT_LIE: {exc}"}
        if lie.action not in ACTIONS:
            return -int(Errno.EINVAL), {"error": f"action {lie.action!r}: one of {ACTIONS}"}
        self.lie = lie
        if self.path is not None:
            if m.get("sticky") and lie.action != "clear":
                self.path.write_text(json.dumps(asdict(lie)))
            else:
                self.path.unlink(missing_ok=True)
        log.warning("told to lie by %d: %s", m.source, lie)
        return 0, {}

    # --------------------------------------------------------------- transfer
    def wrap(self, transfer: Transfer) -> Transfer:
        def lying(minor: int, write: bool, position: int, endpoint: int, iov: Iov) -> int:
            lie = self.lie
            size = sum(s for _, s in iov)
            if not self._matches(lie, minor, position, size):
                return transfer(minor, write, position, endpoint, iov)
            if lie.action == "hang":
                self._spend(lie)
                log.error("lie: hanging on the %s at %d, answering nothing",
                          "write" if write else "read", position)  # fmt: skip
                while True:
                    time.sleep(3600)
            done = transfer(minor, write, position, endpoint, iov)
            if lie.action == "drop":
                self._spend(lie)
                log.warning("lie: the reply to the transfer at %d is dropped", position)
                sef._sef.fi_armed = FiType.DROP_REPLY  # SEF's own drop of the next reply
            elif lie.action == "flip" and not write:
                self._spend(lie)
                at = position if lie.position < 0 else lie.position
                if self._reflip is None or not self._reflip(at - position, lie.bit, endpoint, iov):
                    self._flip(endpoint, iov, at - position, lie.bit)
            return done

        return lying

    @staticmethod
    def _matches(lie: Lie, minor: int, position: int, size: int) -> bool:
        if lie.action == "clear" or lie.count == 0:
            return False
        if lie.minor >= 0 and lie.minor != minor:
            return False
        return lie.position < 0 or position <= lie.position < position + size

    def _spend(self, lie: Lie) -> None:
        if lie.count > 0:
            lie.count -= 1

    def _flip(self, endpoint: int, iov: Iov, offset: int, bit: int) -> None:
        """Flip one bit of the data the transfer put in the client's grants."""
        conn = self._conn()
        assert conn is not None
        for grant, size in iov:
            if offset < size:
                buf = conn.arena.alloc(1)
                try:
                    conn.safecopyfrom(endpoint, grant, offset, buf.offset, 1)
                    old = buf.view[0]
                    buf.view[0] = old ^ (1 << bit)
                    conn.safecopyto(endpoint, grant, offset, buf.offset, 1)
                    log.warning("lie: flipped bit %d of byte %d of a read (%#04x -> %#04x)",
                                bit, offset, old, buf.view[0])  # fmt: skip
                except IpcError as exc:
                    log.error("lie: cannot flip (the grant must be readable): %s", exc)
                finally:
                    conn.arena.free(buf)
                return
            offset -= size
