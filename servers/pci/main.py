"""The PCI server's loop: SEF startup, the bus scan, one request at a time.

The jobs are split: ``requests`` answers the requests, ``reservations`` keeps who
holds which device or IDE channel, ``state`` is what a live update carries,
``bus`` scans configuration space and ``acl`` says who may see what.

Requests are ``sendrec`` with the ``proto.PCI_*`` types; the reply's m_type is 0 or
a negative MINIX errno with an ``error`` field that says why, and the request is
logged. Nothing a caller sends ends the server: malformed fields, unknown device
indexes, a port that is not a BAR, a write to a device the caller did not reserve,
a kernel call that fails, all become error replies. As in DS, a message whose
m_type is 0 or negative (a stray reply) and notifications from processes are not
answered.

Rules (MINIX's pci.c, with hwl's choices where it is silent):

- A caller sees the devices its ACL allows (``hwl.servers.pci.acl``); every request that
  names a device (first/next, find, ids, attribute reads, BARs, slot name, info,
  reserve) refuses an invisible one with EPERM, an unknown devind with EINVAL.
- ``reserve``: EBUSY, naming the holder, if another live endpoint holds the device.
  A holder that died (its endpoint is no longer in the kernel's process table)
  loses the device there and then. Otherwise the caller becomes the holder and
  the kernel grants it (``privctl add_io``/``add_mem``/``add_irq``) the device's
  I/O BARs, memory BARs and IRQ line, and for a compatibility-mode IDE function
  the legacy ports and IRQs 14 and 15 (``hwl.servers.pci.bus``). The reply lists what
  was granted. Reserving a device one already holds grants it again (a driver
  restarted at the same endpoint needs its ports back). If the kernel refuses a
  grant, the reservation is undone and the kernel's errno is the reply. The
  kernel is also told the function (``privctl add_pci``, channel reserves too):
  when the holder dies it turns the function's bus mastering off before it frees
  the holder's DMA buffers, unless another live process holds the function.
- ``reserve`` with ``channel`` (0 or 1) takes one channel of a compatibility-mode
  IDE function (one at_wini instance per channel): that channel's legacy ports
  and IRQ and its 8-byte half of the bus-master BAR 4. EBUSY if another live
  process holds that channel or the whole function; a whole-function reserve is
  EBUSY while another live process holds a channel. Channel holders may write
  the function's configuration (bus mastering). Channel reservations travel in a
  live update; after a PCI restart they are not recovered (docs/drivers.md).
- ``release``: gives the device (or, without ``devind``, every device the caller
  holds) back. The kernel has no call to take port ranges away, so what was
  granted stays granted until the process ends, as in MINIX.
- A dead holder's devices are released lazily (at the next ``reserve`` of the
  device) and eagerly: every ``--check-period`` seconds (default 2) a CLOCK alarm
  has the server read the process table and release what dead endpoints held.
- Attribute writes need the reservation (EPERM otherwise) and may not touch the
  BAR registers (0x10..0x27): the grants follow the BARs found at the scan.
- ``find_dev``/``ids``/``dev_name``/``slot_name`` answer as MINIX's do;
  ``dev_info`` (hwl's addition) returns the whole record, with the holder.

Init: fresh and restart scan the bus. A restart also recovers reservations: a
device whose ranges all lie in exactly one live process's run-time grants (the
kernel's ``privctl get``) is taken to be that process's. A live update carries
the device table and the reservations to the new version (``state_save``), so the
new version does not probe the bus while drivers use it.
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
