"""The PCI server's requests: each handler takes the caller and the request's
fields and returns the reply's fields, or raises RequestError (the reply's errno
and ``error``). Reserve and release are :mod:`hwl.servers.pci.reservations`'.

See docs/pci.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from hwl.errors import Refusal
from hwl.ipc import codec
from hwl.kernel.errno import Errno
from hwl.servers.pci import bus
from hwl.servers.pci.acl import Acl
from hwl.servers.pci.bus import Device
from hwl.system import proto

if TYPE_CHECKING:
    from hwl.servers.pci.main import PciServer

Fields = dict[str, codec.Value]
Reply = tuple[int, Fields]
Handler = Callable[[int, Fields], Fields]

BAR_REGS = range(bus.PCI_BAR, bus.PCI_BAR + 24)

_READS = {proto.PCI_ATTR_R8: 1, proto.PCI_ATTR_R16: 2, proto.PCI_ATTR_R32: 4}
_WRITES = {proto.PCI_ATTR_W8: 1, proto.PCI_ATTR_W16: 2, proto.PCI_ATTR_W32: 4}


class RequestError(Refusal):
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


class Requests:
    """The handler of each request type, over the server's device table."""

    def __init__(self, server: PciServer) -> None:
        self.server = server
        reservations = server.reservations
        self.handlers: dict[int, Handler] = {
            proto.PCI_FIRST_DEV: self.do_first_dev,
            proto.PCI_NEXT_DEV: self.do_next_dev,
            proto.PCI_FIND_DEV: self.do_find_dev,
            proto.PCI_IDS: self.do_ids,
            proto.PCI_GET_BAR: self.do_get_bar,
            proto.PCI_DEV_NAME: self.do_dev_name,
            proto.PCI_SLOT_NAME: self.do_slot_name,
            proto.PCI_RESERVE: reservations.do_reserve,
            proto.PCI_RELEASE: reservations.do_release,
            proto.PCI_DEV_INFO: self.do_dev_info,
        }
        for m_type, width in _READS.items():
            self.handlers[m_type] = self._reader(width)
        for m_type, width in _WRITES.items():
            self.handlers[m_type] = self._writer(width)

    # -------------------------------------------------------------- helpers
    def visible(self, caller: int, f: Fields) -> Device:
        server = self.server
        d = device(server.devices, get_devind(f))
        acl = server.callers.acl(caller)
        if not acl.allows(d):
            raise RequestError(Errno.EPERM, not_in_acl(d, acl))
        return d

    def _visible_from(self, caller: int, start: int) -> Fields:
        acl = self.server.callers.acl(caller)
        for d in self.server.devices[max(start, 0) :]:
            if acl.allows(d):
                return {"devind": d.devind, "vid": d.vid, "did": d.did}
        what = "no more devices" if start > 0 else "no device"
        raise RequestError(
            Errno.ENOENT, f"{what} visible to {acl.label} ({acl.source}: {acl.describe()})"
        )

    # ------------------------------------------------------------- requests
    def do_first_dev(self, caller: int, f: Fields) -> Fields:
        return self._visible_from(caller, 0)

    def do_next_dev(self, caller: int, f: Fields) -> Fields:
        return self._visible_from(caller, max(get_devind(f), -1) + 1)

    def do_find_dev(self, caller: int, f: Fields) -> Fields:
        where = (get_int(f, "bus", 0, 255), get_int(f, "dev", 0, 31), get_int(f, "func", 0, 7))
        for d in self.server.devices:
            if (d.bus, d.dev, d.func) == where:
                acl = self.server.callers.acl(caller)
                if not acl.allows(d):
                    raise RequestError(Errno.EPERM, not_in_acl(d, acl))
                return {"devind": d.devind}
        raise RequestError(Errno.ENOENT, "no device at {:02x}:{:02x}.{}".format(*where))

    def do_ids(self, caller: int, f: Fields) -> Fields:
        d = self.visible(caller, f)
        return {"vid": d.vid, "did": d.did}

    def _reader(self, width: int) -> Handler:
        def read(caller: int, f: Fields) -> Fields:
            d = self.visible(caller, f)
            port = self._port(f, width)
            return {"value": self.server.cfg.read(d.bus, d.dev, d.func, port, width)}

        return read

    def _writer(self, width: int) -> Handler:
        def write(caller: int, f: Fields) -> Fields:
            d = self.visible(caller, f)
            port = self._port(f, width)
            value = get_int(f, "value", 0, (1 << (8 * width)) - 1)
            self.server.reservations.check_writer(d, caller)
            if port in BAR_REGS or port + width - 1 in BAR_REGS:
                raise RequestError(
                    Errno.EPERM,
                    f"{d.bdf}: port {port:#x} is a BAR register; the PCI server owns the BARs",
                )
            self.server.cfg.write(d.bus, d.dev, d.func, port, value, width)
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
        holder = self.server.reservations.holders.get(d.devind)
        info["holder"] = holder
        info["holder_label"] = None if holder is None else self.server.holder_label(holder)
        info["name"] = bus.device_name(d.vid, d.did)
        info["slot"] = d.slot_name
        return info


def device(devices: list[Device], devind: int) -> Device:
    if not 0 <= devind < len(devices):
        raise RequestError(Errno.EINVAL, f"no device {devind} (devind runs 0..{len(devices) - 1})")
    return devices[devind]


def not_in_acl(d: Device, acl: Acl) -> str:
    return (
        f"{d.bdf} ({d.ids}, class {d.base_class:x}/{d.sub_class:x}/{d.interface:x}) is not "
        f"in the ACL of {acl.label} ({acl.source}: {acl.describe()})"
    )
