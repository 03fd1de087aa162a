"""Client calls of the PCI server (MINIX's ``pci_*`` functions in libsys).

>>> pci = Pci.find(conn)                     # ask RS where PCI is
>>> for devind, vid, did in pci.devices():   # the devices this driver's ACL allows
...     if (vid, did) == (0x10EC, 0x8139):
...         break
>>> granted = pci.reserve(devind)            # ports, memory and IRQ are ours now
>>> base, size, is_io = pci.get_bar(devind, 0x10)
>>> conn.devio_in(base + 0x37)               # allowed since the reserve

``devind`` is the server's index of a device; ``port`` is an offset in its
configuration space (a BAR is named by its register, 0x10..0x24, as in MINIX).
A caller only sees the devices its system.conf ``pci device`` / ``pci class``
lines allow. Every failure is a :class:`PciError` with the MINIX errno: EPERM
(not in the caller's ACL, or a write to a device it did not reserve), EBUSY
(another live process holds the device), EINVAL (a bad devind, port or value),
ENOENT (no such device), or the IPC error when PCI cannot be reached.

See docs/pci.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from hwl.errors import CallError
from hwl.ipc import codec
from hwl.ipc.client import Message
from hwl.proto.errno import Errno
from hwl.system import proto
from hwl.system.call import request
from hwl.system.rs import ServerClient

__all__ = ["Granted", "Pci", "PciError"]


class PciError(CallError):
    """A PCI call failed: ``errno`` says how, ``detail`` is the server's (or kernel's) reason."""

    prefix = "pci "


@dataclass(frozen=True)
class Granted:
    """What a reserve gave the caller: port ranges and memory ranges as (base,
    length), and IRQ lines."""

    io: tuple[tuple[int, int], ...]
    mem: tuple[tuple[int, int], ...]
    irq: tuple[int, ...]


class Pci(ServerClient):
    """The PCI server at ``endpoint``, called over ``conn``; ``timeout`` bounds each call.
    ``Pci.find(conn)`` asks RS where PCI is."""

    label = "pci"
    error = PciError

    # ------------------------------------------------------------------ call
    def call(self, m_type: int, fields: dict[str, codec.Value] | None = None) -> Message:
        """One request; the reply if its status is 0, else :class:`PciError`."""
        return request(
            self.conn, self.endpoint, m_type, fields or {},
            call=proto.PCI_REQUEST_NAMES.get(m_type, f"request {m_type:#x}"),
            server="PCI", error=PciError, timeout=self.timeout,
        )  # fmt: skip

    def _int(self, reply: Message, name: str, call: str) -> int:
        value = reply.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise PciError(Errno.EGENERIC, call, f"the reply has no integer {name!r}: {value!r}")
        return value

    def _dev(self, reply: Message, call: str) -> tuple[int, int, int]:
        return (
            self._int(reply, "devind", call),
            self._int(reply, "vid", call),
            self._int(reply, "did", call),
        )

    # ------------------------------------------------------------ iteration
    def first_dev(self) -> tuple[int, int, int] | None:
        """(devind, vid, did) of the first device visible to the caller; None if none."""
        try:
            return self._dev(self.call(proto.PCI_FIRST_DEV), "first_dev")
        except PciError as exc:
            if exc.errno is Errno.ENOENT:
                return None
            raise

    def next_dev(self, devind: int) -> tuple[int, int, int] | None:
        """The visible device after ``devind``; None at the end."""
        try:
            return self._dev(self.call(proto.PCI_NEXT_DEV, {"devind": devind}), "next_dev")
        except PciError as exc:
            if exc.errno is Errno.ENOENT:
                return None
            raise

    def devices(self) -> Iterator[tuple[int, int, int]]:
        """Every visible device, by first_dev and next_dev."""
        found = self.first_dev()
        while found is not None:
            yield found
            found = self.next_dev(found[0])

    def find_dev(self, bus: int, dev: int, func: int) -> int:
        """The devind of the function at bus/dev/func (ENOENT: none there)."""
        reply = self.call(proto.PCI_FIND_DEV, {"bus": bus, "dev": dev, "func": func})
        return self._int(reply, "devind", "find_dev")

    # -------------------------------------------------------------- reading
    def ids(self, devind: int) -> tuple[int, int]:
        reply = self.call(proto.PCI_IDS, {"devind": devind})
        return self._int(reply, "vid", "ids"), self._int(reply, "did", "ids")

    def _read(self, m_type: int, devind: int, port: int) -> int:
        reply = self.call(m_type, {"devind": devind, "port": port})
        return self._int(reply, "value", proto.PCI_REQUEST_NAMES[m_type])

    def attr_r8(self, devind: int, port: int) -> int:
        return self._read(proto.PCI_ATTR_R8, devind, port)

    def attr_r16(self, devind: int, port: int) -> int:
        return self._read(proto.PCI_ATTR_R16, devind, port)

    def attr_r32(self, devind: int, port: int) -> int:
        return self._read(proto.PCI_ATTR_R32, devind, port)

    def attr_w8(self, devind: int, port: int, value: int) -> None:
        self.call(proto.PCI_ATTR_W8, {"devind": devind, "port": port, "value": value})

    def attr_w16(self, devind: int, port: int, value: int) -> None:
        self.call(proto.PCI_ATTR_W16, {"devind": devind, "port": port, "value": value})

    def attr_w32(self, devind: int, port: int, value: int) -> None:
        self.call(proto.PCI_ATTR_W32, {"devind": devind, "port": port, "value": value})

    def get_bar(self, devind: int, port: int) -> tuple[int, int, bool]:
        """(base, size, is_io) of the BAR at register ``port`` (0x10..0x24)."""
        reply = self.call(proto.PCI_GET_BAR, {"devind": devind, "port": port})
        base, size = self._int(reply, "base", "get_bar"), self._int(reply, "size", "get_bar")
        return base, size, bool(reply.get("is_io"))

    def dev_name(self, vid: int, did: int) -> str:
        reply = self.call(proto.PCI_DEV_NAME, {"vid": vid, "did": did})
        return str(reply.get("name", ""))

    def slot_name(self, devind: int) -> str:
        """MINIX's slot name: domain.bus.device.function in decimal, e.g. "0.0.3.0"."""
        return str(self.call(proto.PCI_SLOT_NAME, {"devind": devind}).get("name", ""))

    def dev_info(self, devind: int) -> dict[str, codec.Value]:
        """The server's whole record of a device: ids, class, BARs, IRQ, holder."""
        return dict(self.call(proto.PCI_DEV_INFO, {"devind": devind}).fields)

    # ---------------------------------------------------------- reservation
    def reserve(self, devind: int, channel: int | None = None) -> Granted:
        """Take the device: its ports, memory and IRQ are granted to the caller.
        EBUSY if another live process holds it. With ``channel`` (0 or 1, an IDE
        controller in compatibility mode): only that channel's ports, IRQ and half
        of the bus-master BAR, so two drivers can share the controller."""
        fields: dict[str, codec.Value] = {"devind": devind}
        if channel is not None:
            fields["channel"] = channel
        reply = self.call(proto.PCI_RESERVE, fields)
        return Granted(
            io=_pairs(reply.get("io")), mem=_pairs(reply.get("mem")), irq=_ints(reply.get("irq"))
        )

    def release(self, devind: int | None = None) -> list[int]:
        """Give the device back (None: every device the caller holds); returns the
        devinds released. The grants stay until the process ends."""
        fields: dict[str, codec.Value] = {} if devind is None else {"devind": devind}
        return list(_ints(self.call(proto.PCI_RELEASE, fields).get("released")))


def _pairs(value: codec.Value) -> tuple[tuple[int, int], ...]:
    if not isinstance(value, list):
        return ()
    return tuple(
        (int(v[0]), int(v[1]))  # type: ignore[arg-type]
        for v in value
        if isinstance(v, list) and len(v) == 2
    )


def _ints(value: codec.Value) -> tuple[int, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, int) and not isinstance(v, bool))
