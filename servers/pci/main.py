"""The PCI server's loop: SEF startup, the bus scan, one request at a time.

Requests are ``sendrec`` with the ``proto.PCI_*`` types; the reply's m_type is 0 or
a negative MINIX errno with an ``error`` field that says why, and the request is
logged. Nothing a caller sends ends the server: malformed fields, unknown device
indexes, a port that is not a BAR, a write to a device the caller did not reserve,
a kernel call that fails, all become error replies. As in DS, a message whose
m_type is 0 or negative (a stray reply) and notifications from processes are not
answered.

Rules (MINIX's pci.c, with hwl's choices where it is silent):

- A caller sees the devices its ACL allows (``servers.pci.acl``); every request that
  names a device (first/next, find, ids, attribute reads, BARs, slot name, info,
  reserve) refuses an invisible one with EPERM, an unknown devind with EINVAL.
- ``reserve``: EBUSY, naming the holder, if another live endpoint holds the device.
  A holder that died (its endpoint is no longer in the kernel's process table)
  loses the device there and then. Otherwise the caller becomes the holder and
  the kernel grants it (``privctl add_io``/``add_mem``/``add_irq``) the device's
  I/O BARs, memory BARs and IRQ line, and for a compatibility-mode IDE function
  the legacy ports and IRQs 14 and 15 (``servers.pci.bus``). The reply lists what
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
from collections.abc import Callable
from typing import Any

from hwl.ipc import codec, wire
from hwl.ipc.client import Connection, IpcError, KernelGone, Message
from hwl.kernel.errno import Errno, ErrnoError
from hwl.system import proto, sef
from servers.pci import bus
from servers.pci.acl import Acl, Callers
from servers.pci.bus import ConfigSpace, Device

log = logging.getLogger("servers.pci")

Fields = dict[str, codec.Value]
Reply = tuple[int, Fields]

MAX_SAVED = wire.MAX_PAYLOAD - 256
PIIX_ELCR = (0x4D0, 0x4D1)
PIIX_PIRQRC = 0x60
BAR_REGS = range(bus.PCI_BAR, bus.PCI_BAR + 24)

_READS = {proto.PCI_ATTR_R8: 1, proto.PCI_ATTR_R16: 2, proto.PCI_ATTR_R32: 4}
_WRITES = {proto.PCI_ATTR_W8: 1, proto.PCI_ATTR_W16: 2, proto.PCI_ATTR_W32: 4}


# How loud a refusal is: the end of an iteration is routine, a busy device worth a
# line, anything else (bad input, an ACL violation) a warning.
_LEVELS = {Errno.ENOENT: logging.DEBUG, Errno.EBUSY: logging.INFO}


class RequestError(ErrnoError):
    """A request is refused: ``errno`` goes back as the status, ``why`` as ``error``."""


def get_devind(f: Fields) -> int:
    value = f.get("devind")
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(
            Errno.EINVAL, f"field 'devind' must be a device index (an integer), not {value!r}"
        )
    return value


def get_int(f: Fields, name: str, low: int, high: int) -> int:
    value = f.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(
            Errno.EINVAL, f"field {name!r} must be an integer in {low:#x}..{high:#x}, not {value!r}"
        )
    return value


class PciServer:
    """The device table, the reservations and the requests."""

    def __init__(self, check_period: float = 2.0) -> None:
        self.check_period = check_period
        self.devices: list[Device] = []
        self.holders: dict[int, int] = {}  # devind -> endpoint
        # Per-channel reservations of a compatibility-mode IDE function (one
        # at_wini instance per channel): (devind, channel) -> endpoint.
        self.channels: dict[tuple[int, int], int] = {}
        self._conn: Connection | None = None
        self._callers: Callers | None = None
        self._handlers: dict[int, Callable[[int, Fields], Fields]] = {
            proto.PCI_FIRST_DEV: self.do_first_dev,
            proto.PCI_NEXT_DEV: self.do_next_dev,
            proto.PCI_FIND_DEV: self.do_find_dev,
            proto.PCI_IDS: self.do_ids,
            proto.PCI_GET_BAR: self.do_get_bar,
            proto.PCI_DEV_NAME: self.do_dev_name,
            proto.PCI_SLOT_NAME: self.do_slot_name,
            proto.PCI_RESERVE: self.do_reserve,
            proto.PCI_RELEASE: self.do_release,
            proto.PCI_DEV_INFO: self.do_dev_info,
        }
        for m_type, width in _READS.items():
            self._handlers[m_type] = self._reader(width)
        for m_type, width in _WRITES.items():
            self._handlers[m_type] = self._writer(width)

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

    # ------------------------------------------------------------ SEF callbacks
    def init_fresh(self, info: sef.InitInfo) -> int:
        try:
            self.devices = bus.scan(self.conn)
        except (IpcError, ValueError) as exc:
            log.error("the bus scan failed: %s", exc)
            return int(exc.errno) if isinstance(exc, IpcError) else int(Errno.EIO)
        log.info("%d PCI functions found", len(self.devices))
        self.holders = {}
        self._check_piix()
        if info.type is not proto.InitType.FRESH:  # a restart, or a live update's fallback
            self._adopt_reservations()
        self._arm_alarm()
        return 0

    def init_lu(self, info: sef.InitInfo) -> int:
        try:
            self.devices, self.holders = restore(info.saved)
            self.channels = restore_channels(info.saved)
        except (codec.CodecError, KeyError, ValueError) as exc:
            log.warning("live update: no usable state from the old version (%s); scanning", exc)
            return self.init_fresh(info)
        log.info(
            "live update: %d devices and %d reservations carried over",
            len(self.devices),
            len(self.holders),
        )
        self._arm_alarm()
        return 0

    def state_save(self, state: int, flags: int) -> bytes:
        data = codec.encode(
            {
                "devices": [d.to_fields() for d in self.devices],
                "holders": [[devind, ep] for devind, ep in sorted(self.holders.items())],
                "channels": [[dv, ch, ep] for (dv, ch), ep in sorted(self.channels.items())],
            }
        )
        if len(data) > MAX_SAVED:
            raise ValueError(
                f"the device table is {len(data)} bytes; an update carries {MAX_SAVED}"
            )
        return data

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

    def _adopt_reservations(self) -> None:
        """After a restart: give each device back to the one live process that the
        kernel shows holding all of its ranges."""
        procs = self.callers.procs.refresh() or {}
        grants: dict[int, dict[str, Any]] = {}
        for endpoint, proc in procs.items():
            if not proc.system or endpoint in (self.conn.endpoint, self.conn.parent):
                continue
            try:
                priv = self.conn.kcall("privctl", {"endpoint": endpoint, "op": "get"})["priv"]
            except (IpcError, KeyError):
                continue
            if isinstance(priv, dict):
                grants[endpoint] = priv
        for d in self.devices:
            io, mem = d.io_ranges(), d.mem_ranges()
            if not io and not mem:
                continue
            owners = [ep for ep, priv in grants.items() if _covers(priv, io, mem)]
            if len(owners) == 1:
                self.holders[d.devind] = owners[0]
                log.info("restart: %s is %s's again", d.bdf, procs[owners[0]].label)
            elif owners:
                log.warning("restart: %s was granted to several processes; nobody holds it", d.bdf)

    # -------------------------------------------------------------- helpers
    def device(self, devind: int) -> Device:
        if not 0 <= devind < len(self.devices):
            raise RequestError(
                Errno.EINVAL, f"no device {devind} (devind runs 0..{len(self.devices) - 1})"
            )
        return self.devices[devind]

    def visible(self, caller: int, f: Fields) -> Device:
        d = self.device(get_devind(f))
        acl = self.callers.acl(caller)
        if not acl.allows(d):
            raise RequestError(Errno.EPERM, _not_in_acl(d, acl))
        return d

    def _visible_from(self, caller: int, start: int) -> Fields:
        acl = self.callers.acl(caller)
        for d in self.devices[max(start, 0) :]:
            if acl.allows(d):
                return {"devind": d.devind, "vid": d.vid, "did": d.did}
        what = "no more devices" if start > 0 else "no device"
        raise RequestError(
            Errno.ENOENT, f"{what} visible to {acl.label} ({acl.source}: {acl.describe()})"
        )

    def holder_label(self, endpoint: int) -> str:
        proc = self.callers.procs.get(endpoint)
        return proc.label if proc is not None else "a process that has ended"

    # ------------------------------------------------------------- requests
    def do_first_dev(self, caller: int, f: Fields) -> Fields:
        return self._visible_from(caller, 0)

    def do_next_dev(self, caller: int, f: Fields) -> Fields:
        return self._visible_from(caller, max(get_devind(f), -1) + 1)

    def do_find_dev(self, caller: int, f: Fields) -> Fields:
        where = (get_int(f, "bus", 0, 255), get_int(f, "dev", 0, 31), get_int(f, "func", 0, 7))
        for d in self.devices:
            if (d.bus, d.dev, d.func) == where:
                acl = self.callers.acl(caller)
                if not acl.allows(d):
                    raise RequestError(Errno.EPERM, _not_in_acl(d, acl))
                return {"devind": d.devind}
        raise RequestError(Errno.ENOENT, "no device at {:02x}:{:02x}.{}".format(*where))

    def do_ids(self, caller: int, f: Fields) -> Fields:
        d = self.visible(caller, f)
        return {"vid": d.vid, "did": d.did}

    def _reader(self, width: int) -> Callable[[int, Fields], Fields]:
        def read(caller: int, f: Fields) -> Fields:
            d = self.visible(caller, f)
            port = self._port(f, width)
            return {"value": self.cfg.read(d.bus, d.dev, d.func, port, width)}

        return read

    def _writer(self, width: int) -> Callable[[int, Fields], Fields]:
        def write(caller: int, f: Fields) -> Fields:
            d = self.visible(caller, f)
            port = self._port(f, width)
            value = get_int(f, "value", 0, (1 << (8 * width)) - 1)
            holder = self.holders.get(d.devind)
            if holder != caller and caller not in self._channel_holders(d.devind):
                why = "nobody" if holder is None else f"{self.holder_label(holder)} ({holder})"
                raise RequestError(
                    Errno.EPERM, f"{d.bdf} is reserved by {why}: reserve it before writing"
                )
            if port in BAR_REGS or port + width - 1 in BAR_REGS:
                raise RequestError(
                    Errno.EPERM,
                    f"{d.bdf}: port {port:#x} is a BAR register; the PCI server owns the BARs",
                )
            self.cfg.write(d.bus, d.dev, d.func, port, value, width)
            return {}

        return write

    @staticmethod
    def _port(f: Fields, width: int) -> int:
        port = get_int(f, "port", 0, bus.CONFIG_SIZE - width)
        if port % width:
            raise RequestError(Errno.EINVAL, f"port {port:#x} is not aligned to width {width}")
        return port

    def do_get_bar(self, caller: int, f: Fields) -> Fields:
        d = self.visible(caller, f)
        port = get_int(f, "port", 0, bus.CONFIG_SIZE - 1)
        bar = d.bar_at(port)
        if bar is None:
            have = ", ".join(f"{b.reg:#x} ({'io' if b.is_io else 'mem'})" for b in d.bars)
            raise RequestError(
                Errno.EINVAL, f"{d.bdf}: port {port:#x} is not a BAR (its BARs: {have or 'none'})"
            )
        if bar.incomplete:
            raise RequestError(Errno.EINVAL, f"{d.bdf}: BAR {port:#x} has no address assigned")
        return {"base": bar.base, "size": bar.size, "is_io": bar.is_io}

    def do_dev_name(self, caller: int, f: Fields) -> Fields:
        vid, did = get_int(f, "vid", 0, 0xFFFF), get_int(f, "did", 0, 0xFFFF)
        name = bus.device_name(vid, did)
        if name is None:
            raise RequestError(Errno.ENOENT, f"no name known for {vid:04x}:{did:04x}")
        return {"name": name}

    def do_slot_name(self, caller: int, f: Fields) -> Fields:
        return {"name": self.visible(caller, f).slot_name}

    def do_dev_info(self, caller: int, f: Fields) -> Fields:
        d = self.visible(caller, f)
        info = d.to_fields()
        holder = self.holders.get(d.devind)
        info["holder"] = holder
        info["holder_label"] = None if holder is None else self.holder_label(holder)
        info["name"] = bus.device_name(d.vid, d.did)
        info["slot"] = d.slot_name
        return info

    def do_reserve(self, caller: int, f: Fields) -> Fields:
        d = self.device(get_devind(f))
        acl = self.callers.acl(caller, fresh=True)
        if not acl.allows(d):
            raise RequestError(Errno.EPERM, _not_in_acl(d, acl))
        channel = f.get("channel")
        if channel is not None:
            return self._reserve_channel(caller, d, channel)
        for other in self._channel_holders(d.devind) - {caller}:
            if self.callers.procs.alive(other):
                raise RequestError(
                    Errno.EBUSY, f"{d.bdf}: a channel is reserved by {self.holder_label(other)}"
                )
        holder = self.holders.get(d.devind)
        if holder is not None and holder != caller:
            if self.callers.procs.alive(holder):
                raise RequestError(
                    Errno.EBUSY,
                    f"{d.bdf} ({d.ids}) is reserved by {self.holder_label(holder)} ({holder})",
                )
            log.info("%s: its holder %d died; released", d.bdf, holder)
            del self.holders[d.devind]
        self.holders[d.devind] = caller
        try:
            granted = self._grant(d, caller)
        except IpcError as exc:
            if holder != caller:
                del self.holders[d.devind]
            raise RequestError(exc.errno, f"{d.bdf}: the kernel refused a grant: {exc}") from exc
        log.info(
            "%s (%s) reserved by %s (%d): io %s mem %s irq %s",
            d.bdf,
            d.ids,
            acl.label,
            caller,
            " ".join(f"{b:#x}:{n:#x}" for b, n in d.io_ranges()) or "-",
            " ".join(f"{b:#x}:{n:#x}" for b, n in d.mem_ranges()) or "-",
            " ".join(map(str, d.irqs())) or "-",
        )
        return granted

    def _channel_holders(self, devind: int) -> set[int]:
        return {ep for (dv, _ch), ep in self.channels.items() if dv == devind}

    def _reserve_channel(self, caller: int, d: Device, channel: codec.Value) -> Fields:
        """Reserve one channel of a compatibility-mode IDE function: its legacy
        ports and IRQ and its half of the bus-master BAR 4. Another live holder
        of the channel or of the whole function: EBUSY."""
        if channel not in (0, 1) or isinstance(channel, bool):
            raise RequestError(Errno.EINVAL, f"channel {channel!r} is not 0 or 1")
        assert isinstance(channel, int)
        _bars, cmd, ctl, irq = bus.IDE_LEGACY[channel]
        if cmd not in d.legacy_io:
            raise RequestError(
                Errno.EINVAL,
                f"{d.bdf}: channel {channel} is not an IDE channel in compatibility mode",
            )
        for holder in (self.holders.get(d.devind), self.channels.get((d.devind, channel))):
            if holder is not None and holder != caller and self.callers.procs.alive(holder):
                raise RequestError(
                    Errno.EBUSY,
                    f"{d.bdf} channel {channel} is reserved by "
                    f"{self.holder_label(holder)} ({holder})",
                )
        if self.holders.get(d.devind) not in (None, caller):
            del self.holders[d.devind]  # its holder died
        io = [cmd, ctl]
        bm = d.bar_at(0x20)
        if bm is not None and bm.is_io and not bm.incomplete and bm.size >= 16:
            io.append((bm.base + 8 * channel, 8))
        self.channels[(d.devind, channel)] = caller
        try:
            for base, length in io:
                self.conn.privctl_add_io(caller, base, length)
            self.conn.privctl_add_irq(caller, irq)
            self.conn.privctl_add_pci(caller, d.bus, d.dev, d.func)  # quiesced at its death
        except IpcError as exc:
            del self.channels[(d.devind, channel)]
            raise RequestError(exc.errno, f"{d.bdf}: the kernel refused a grant: {exc}") from exc
        log.info("%s channel %d reserved by %d: io %s irq %d", d.bdf, channel, caller,
                 " ".join(f"{b:#x}:{n:#x}" for b, n in io), irq)  # fmt: skip
        return {"io": [[b, n] for b, n in io], "mem": [], "irq": [irq]}

    def _grant(self, d: Device, endpoint: int) -> Fields:
        io, mem, irqs = d.io_ranges(), d.mem_ranges(), d.irqs()
        for base, length in io:
            self.conn.privctl_add_io(endpoint, base, length)
        for base, length in mem:
            self.conn.privctl_add_mem(endpoint, base, length)
        for irq in irqs:
            self.conn.privctl_add_irq(endpoint, irq)
        # The kernel turns the function's bus mastering off when the holder dies,
        # before it frees (or keeps for adoption) the holder's DMA buffers.
        self.conn.privctl_add_pci(endpoint, d.bus, d.dev, d.func)
        return {
            "io": [[b, n] for b, n in io],
            "mem": [[b, n] for b, n in mem],
            "irq": list(irqs),
        }

    def do_release(self, caller: int, f: Fields) -> Fields:
        if f.get("devind") is None:
            mine = [devind for devind, ep in self.holders.items() if ep == caller]
        else:
            d = self.device(get_devind(f))
            holds = self.holders.get(d.devind) == caller
            if not holds and caller not in self._channel_holders(d.devind):
                raise RequestError(Errno.EPERM, f"{d.bdf} is not reserved by the caller")
            mine = [d.devind] if holds else []
        for key in [k for k, ep in self.channels.items() if ep == caller]:
            if f.get("devind") is None or key[0] == f.get("devind"):
                del self.channels[key]
                log.info("%s channel %d released by %d", self.devices[key[0]].bdf, key[1], caller)
        for devind in mine:
            del self.holders[devind]
            log.info("%s released by %d", self.devices[devind].bdf, caller)
        return {"released": list[codec.Value](mine)}

    # ------------------------------------------------------ liveness checks
    def check_holders(self) -> None:
        """Release what dead endpoints held (the periodic check)."""
        live = self.callers.sweep()
        if live is None:
            return
        for key, endpoint in list(self.channels.items()):
            if endpoint not in live:
                del self.channels[key]
        for devind, endpoint in list(self.holders.items()):
            if endpoint not in live:
                del self.holders[devind]
                log.info("%s released: its holder %d is gone", self.devices[devind].bdf, endpoint)

    # --------------------------------------------------------------- serving
    def serve(self, m: Message) -> Reply | None:
        """Handle one message; returns the reply, or None when none is due."""
        if m.is_notify:
            if m.source == wire.CLOCK:
                self.check_holders()
                self._arm_alarm()
            else:
                log.debug("ignored a notification from %d", m.source)
            return None
        if m.m_type <= 0:
            log.debug("ignored a reply (status %d) from %d", m.m_type, m.source)
            return None
        name = proto.PCI_REQUEST_NAMES.get(m.m_type, f"request {m.m_type:#x}")
        try:
            handler = self._handlers.get(m.m_type)
            if handler is None:
                raise RequestError(Errno.EBADREQUEST, f"{name} is not a PCI request")
            try:
                fields = m.fields
            except codec.CodecError as exc:
                raise RequestError(Errno.EINVAL, f"the request does not decode: {exc}") from exc
            return 0, handler(m.source, fields)
        except RequestError as exc:
            level = _LEVELS.get(exc.errno, logging.WARNING)
            log.log(level, "%s from %d refused: %s", name, m.source, exc.why)
            return -int(exc.errno), {"error": exc.why}
        except KernelGone:
            raise
        except IpcError as exc:
            log.warning("%s from %d failed in a kernel call: %s", name, m.source, exc)
            return -int(exc.errno), {"error": f"{name}: {exc}"}
        except Exception as exc:  # a bug here must not take the bus server down
            log.exception("%s from %d failed", name, m.source)
            return -int(Errno.EGENERIC), {"error": f"{name} failed in the PCI server: {exc!r}"}

    def run(self) -> None:
        sef.serve(self.serve)


def restore(saved: bytes) -> tuple[list[Device], dict[int, int]]:
    """The device table and reservations that ``state_save`` encoded."""
    state = codec.decode(saved)
    devices, holders = state["devices"], state["holders"]
    if not isinstance(devices, list) or not isinstance(holders, list):
        raise ValueError("devices and holders must be lists")
    table = [Device.from_fields(d) for d in devices if isinstance(d, dict)]
    if [d.devind for d in table] != list(range(len(devices))):
        raise ValueError("the device table is not in devind order")
    held: dict[int, int] = {}
    for pair in holders:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise ValueError(f"a reservation is {pair!r}, not [devind, endpoint]")
        devind, endpoint = pair
        if type(devind) is not int or type(endpoint) is not int:
            raise ValueError(f"a reservation is {pair!r}, not [devind, endpoint]")
        if not 0 <= devind < len(table):
            raise ValueError(f"a reservation names device {devind}")
        held[devind] = endpoint
    return table, held


def restore_channels(saved: bytes) -> dict[tuple[int, int], int]:
    """The per-channel reservations ``state_save`` encoded (none from an older version)."""
    rows = codec.decode(saved).get("channels", [])
    held: dict[tuple[int, int], int] = {}
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, list) and len(row) == 3 and all(type(x) is int for x in row):
            devind, channel, endpoint = (x for x in row if isinstance(x, int))
            held[(devind, channel)] = endpoint
    return held


def _not_in_acl(d: Device, acl: Acl) -> str:
    return (
        f"{d.bdf} ({d.ids}, class {d.base_class:x}/{d.sub_class:x}/{d.interface:x}) is not "
        f"in the ACL of {acl.label} ({acl.source}: {acl.describe()})"
    )


def _covers(priv: dict[str, Any], io: list[tuple[int, int]], mem: list[tuple[int, int]]) -> bool:
    """Whether a process's run-time grants include every one of these ranges."""

    def ranges(name: str) -> list[tuple[int, int]]:
        value = priv.get(name)
        if not isinstance(value, list):
            return []
        return [(r[0], r[1]) for r in value if isinstance(r, list) and len(r) == 2]

    def inside(wanted: tuple[int, int], have: list[tuple[int, int]]) -> bool:
        return any(b <= wanted[0] and wanted[0] + wanted[1] <= b + n for b, n in have)

    have_io, have_mem = ranges("io"), ranges("memory")
    return all(inside(r, have_io) for r in io) and all(inside(r, have_mem) for r in mem)


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
