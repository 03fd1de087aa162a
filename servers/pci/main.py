"""The PCI server's loop: SEF startup, the bus scan, one request at a time (docs/pci.md).

The jobs are split: ``requests`` answers the requests, ``reservations`` keeps who
holds which device or IDE channel, ``state`` is what a live update carries,
``bus`` scans configuration space and ``acl`` says who may see what.

What a caller relies on: each ``sendrec`` with a ``proto.PCI_*`` type is answered
0 or a negative MINIX errno with an ``error`` field, and nothing it sends ends the
server; stray replies (m_type 0 or below) and notifications other than its alarm
are not answered. A CLOCK alarm every ``--check-period`` seconds releases what dead
holders held. Init: fresh and restart scan the bus (a restart recovers the
reservations from the kernel's grants); a live update carries the device table and
the reservations, so the new version does not probe the bus while drivers use it.
"""

from __future__ import annotations

import argparse
import logging

from hwl.ipc import codec, wire
from hwl.ipc.client import Connection, IpcError, KernelGone, Message
from hwl.kernel.errno import Errno
from hwl.servers.pci import bus, state
from hwl.servers.pci.acl import Callers
from hwl.servers.pci.bus import ConfigSpace, Device
from hwl.servers.pci.requests import Fields, Reply, RequestError, Requests
from hwl.servers.pci.reservations import Reservations
from hwl.system import proto, sef
from hwl.system.serve import Answering

log = logging.getLogger("hwl.servers.pci")

PIIX_ELCR = (0x4D0, 0x4D1)
PIIX_PIRQRC = 0x60

# How loud a refusal is: the end of an iteration is routine, a busy device worth a
# line, anything else (bad input, an ACL violation) a warning.
_LEVELS = {Errno.ENOENT: logging.DEBUG, Errno.EBUSY: logging.INFO}
_ANSWERING = Answering(
    log,
    malformed=(),  # a request that does not decode is a RequestError already
    failed_text=lambda name, exc: f"{name} failed in the PCI server: {exc!r}",
    level=lambda exc: _LEVELS.get(exc.errno, logging.WARNING),
    call_text=lambda name, exc: f"{name}: {exc}",  # a kernel call (devio) failed
)


class PciServer:
    """The device table, its reservations and the requests, over one connection."""

    def __init__(self, check_period: float = 2.0) -> None:
        self.check_period = check_period
        self.devices: list[Device] = []
        self.reservations = Reservations(self)
        self.requests = Requests(self)
        self._conn: Connection | None = None
        self._callers: Callers | None = None

    @property
    def conn(self) -> Connection:
        if self._conn is None:
            self._conn = sef.connection()
        return self._conn

    @property
    def callers(self) -> Callers:
        if self._callers is None:
            self._callers = Callers(self.conn)
        return self._callers

    @property
    def cfg(self) -> ConfigSpace:
        return ConfigSpace(self.conn)

    def holder_label(self, endpoint: int) -> str:
        proc = self.callers.procs.get(endpoint)
        return proc.label if proc is not None else "a process that has ended"

    # ------------------------------------------------------------ SEF callbacks
    def init_fresh(self, info: sef.InitInfo) -> int:
        try:
            self.devices = bus.scan(self.conn)
        except (IpcError, ValueError) as exc:
            log.error("the bus scan failed: %s", exc)
            return int(exc.errno) if isinstance(exc, IpcError) else int(Errno.EIO)
        log.info("%d PCI functions found", len(self.devices))
        self.reservations.holders = {}
        self._check_piix()
        if info.type is not proto.InitType.FRESH:  # a restart, or a live update's fallback
            self.reservations.adopt()
        self._arm_alarm()
        return 0

    def init_lu(self, info: sef.InitInfo) -> int:
        try:
            self.devices, self.reservations.holders = state.restore(info.saved)
            self.reservations.channels = state.restore_channels(info.saved)
        except (codec.CodecError, KeyError, ValueError) as exc:
            log.warning("live update: no usable state from the old version (%s); scanning", exc)
            return self.init_fresh(info)
        log.info(
            "live update: %d devices and %d reservations carried over",
            len(self.devices),
            len(self.reservations.holders),
        )
        self._arm_alarm()
        return 0

    def state_save(self, lu_state: int, flags: int) -> bytes:
        return state.save(self.devices, self.reservations.holders, self.reservations.channels)

    def _arm_alarm(self) -> None:
        if self.check_period > 0:
            try:
                self.conn.setalarm(seconds=self.check_period)
            except IpcError as exc:
                log.warning("setalarm failed (%s): dead holders are found at reserve only", exc)

    def _check_piix(self) -> None:
        """MINIX's do_piix: the PCI IRQs the PIIX routes should be level-triggered."""
        for d in self.devices:
            if (d.vid, d.did) != (0x8086, 0x7000):
                continue
            try:
                elcr = self.conn.devio_in(PIIX_ELCR[0]) | self.conn.devio_in(PIIX_ELCR[1]) << 8
                routes = self.cfg.read(d.bus, d.dev, d.func, PIIX_PIRQRC)
            except IpcError as exc:
                log.info("PIIX routing not checked: %s", exc)
                return
            for i in range(4):
                route = routes >> (8 * i) & 0xFF
                if route & 0x80:
                    continue
                irq = route & 0x0F
                level = "level" if elcr >> irq & 1 else "edge (warning: PCI IRQs share by level)"
                log.info("PIRQ%s -> IRQ %d, %s-triggered", "ABCD"[i], irq, level)

    # --------------------------------------------------------------- serving
    def serve(self, m: Message) -> Reply | None:
        """Handle one message; returns the reply, or None when none is due."""
        if m.is_notify:
            if m.source == wire.CLOCK:
                self.reservations.check_holders()
                self._arm_alarm()
            else:
                log.debug("ignored a notification from %d", m.source)
            return None
        if m.m_type <= 0:
            log.debug("ignored a reply (status %d) from %d", m.m_type, m.source)
            return None
        name = proto.PCI_REQUEST_NAMES.get(m.m_type, f"request {m.m_type:#x}")
        return _ANSWERING.answer(lambda: self._request(m, name), name, m.source)

    def _request(self, m: Message, name: str) -> Reply:
        handler = self.requests.handlers.get(m.m_type)
        if handler is None:
            raise RequestError(Errno.EBADREQUEST, f"{name} is not a PCI request")
        try:
            fields: Fields = m.fields
        except codec.CodecError as exc:
            raise RequestError(Errno.EINVAL, f"the request does not decode: {exc}") from exc
        return 0, handler(m.source, fields)

    def run(self) -> None:
        sef.serve(self.serve)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pci", description="the PCI bus server")
    p.add_argument(
        "--check-period",
        type=float,
        default=2.0,
        help="seconds between checks for dead holders (0: only at reserve)",
    )
    args = p.parse_args(argv)
    server = PciServer(args.check_period)
    sef.setcb_init_fresh(server.init_fresh)
    sef.setcb_init_restart(server.init_fresh)
    sef.setcb_init_lu(server.init_lu)
    sef.setcb_lu_state_save(server.state_save)
    sef.startup()
    log.info("PCI serving %d devices", len(server.devices))
    try:
        server.run()
    except KernelGone:
        log.info("the kernel is gone: PCI stops")
    return 0
