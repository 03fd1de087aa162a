"""Who holds which PCI device, or which channel of a compatibility-mode IDE
function: reserve (the kernel grants the holder the device's ranges), release,
the dead holders' devices freed, and after a restart the holders found again
from the kernel's grants. The rules are in :mod:`hwl.servers.pci.main`'s docstring.

See docs/pci.md.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from hwl.hw import ata
from hwl.ipc import codec
from hwl.ipc.client import IpcError
from hwl.kernel.errno import Errno
from hwl.servers.pci import bus
from hwl.servers.pci.bus import Device
from hwl.servers.pci.requests import Fields, RequestError, device, get_devind, not_in_acl

if TYPE_CHECKING:
    from hwl.servers.pci.main import PciServer

log = logging.getLogger("hwl.servers.pci")


class Reservations:
    """The holders of whole devices and of IDE channels, by endpoint."""

    def __init__(self, server: PciServer) -> None:
        self.server = server
        self.holders: dict[int, int] = {}  # devind -> endpoint
        # Per-channel reservations of a compatibility-mode IDE function (one
        # at_wini instance per channel): (devind, channel) -> endpoint.
        self.channels: dict[tuple[int, int], int] = {}

    def check_writer(self, d: Device, caller: int) -> None:
        """A configuration write needs the device, or one of its channels, reserved."""
        holder = self.holders.get(d.devind)
        if holder != caller and caller not in self._channel_holders(d.devind):
            why = "nobody" if holder is None else f"{self.server.holder_label(holder)} ({holder})"
            raise RequestError(
                Errno.EPERM, f"{d.bdf} is reserved by {why}: reserve it before writing"
            )

    def do_reserve(self, caller: int, f: Fields) -> Fields:
        d = device(self.server.devices, get_devind(f))
        acl = self.server.callers.acl(caller, fresh=True)
        if not acl.allows(d):
            raise RequestError(Errno.EPERM, not_in_acl(d, acl))
        channel = f.get("channel")
        if channel is not None:
            return self._reserve_channel(caller, d, channel)
        for other in self._channel_holders(d.devind) - {caller}:
            if self.server.callers.procs.alive(other):
                raise RequestError(
                    Errno.EBUSY,
                    f"{d.bdf}: a channel is reserved by {self.server.holder_label(other)}",
                )
        holder = self.holders.get(d.devind)
        if holder is not None and holder != caller:
            if self.server.callers.procs.alive(holder):
                raise RequestError(
                    Errno.EBUSY,
                    f"{d.bdf} ({d.ids}) is reserved by "
                    f"{self.server.holder_label(holder)} ({holder})",
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
            if holder is not None and holder != caller and self.server.callers.procs.alive(holder):
                raise RequestError(
                    Errno.EBUSY,
                    f"{d.bdf} channel {channel} is reserved by "
                    f"{self.server.holder_label(holder)} ({holder})",
                )
        if self.holders.get(d.devind) not in (None, caller):
            del self.holders[d.devind]  # its holder died
        io = [cmd, ctl]
        bm = d.bar_at(ata.PCI_BAR_BM)
        if bm is not None and bm.is_io and not bm.incomplete and bm.size >= 16:
            io.append((bm.base + 8 * channel, 8))
        self.channels[(d.devind, channel)] = caller
        try:
            for base, length in io:
                self.server.conn.privctl_add_io(caller, base, length)
            self.server.conn.privctl_add_irq(caller, irq)
            self.server.conn.privctl_add_pci(caller, d.bus, d.dev, d.func)  # quiesced at its death
        except IpcError as exc:
            del self.channels[(d.devind, channel)]
            raise RequestError(exc.errno, f"{d.bdf}: the kernel refused a grant: {exc}") from exc
        log.info("%s channel %d reserved by %d: io %s irq %d", d.bdf, channel, caller,
                 " ".join(f"{b:#x}:{n:#x}" for b, n in io), irq)  # fmt: skip
        return {"io": [[b, n] for b, n in io], "mem": [], "irq": [irq]}

    def _grant(self, d: Device, endpoint: int) -> Fields:
        io, mem, irqs = d.io_ranges(), d.mem_ranges(), d.irqs()
        for base, length in io:
            self.server.conn.privctl_add_io(endpoint, base, length)
        for base, length in mem:
            self.server.conn.privctl_add_mem(endpoint, base, length)
        for irq in irqs:
            self.server.conn.privctl_add_irq(endpoint, irq)
        # The kernel turns the function's bus mastering off when the holder dies,
        # before it frees (or keeps for adoption) the holder's DMA buffers.
        self.server.conn.privctl_add_pci(endpoint, d.bus, d.dev, d.func)
        return {
            "io": [[b, n] for b, n in io],
            "mem": [[b, n] for b, n in mem],
            "irq": list(irqs),
        }

    def do_release(self, caller: int, f: Fields) -> Fields:
        if f.get("devind") is None:
            mine = [devind for devind, ep in self.holders.items() if ep == caller]
        else:
            d = device(self.server.devices, get_devind(f))
            holds = self.holders.get(d.devind) == caller
            if not holds and caller not in self._channel_holders(d.devind):
                raise RequestError(Errno.EPERM, f"{d.bdf} is not reserved by the caller")
            mine = [d.devind] if holds else []
        for key in [k for k, ep in self.channels.items() if ep == caller]:
            if f.get("devind") is None or key[0] == f.get("devind"):
                del self.channels[key]
                log.info(
                    "%s channel %d released by %d", self.server.devices[key[0]].bdf, key[1], caller
                )
        for devind in mine:
            del self.holders[devind]
            log.info("%s released by %d", self.server.devices[devind].bdf, caller)
        return {"released": list[codec.Value](mine)}

    # ------------------------------------------------------ liveness checks
    def check_holders(self) -> None:
        """Release what dead endpoints held (the periodic check)."""
        live = self.server.callers.sweep()
        if live is None:
            return
        for key, endpoint in list(self.channels.items()):
            if endpoint not in live:
                del self.channels[key]
        for devind, endpoint in list(self.holders.items()):
            if endpoint not in live:
                del self.holders[devind]
                log.info(
                    "%s released: its holder %d is gone", self.server.devices[devind].bdf, endpoint
                )

    def adopt(self) -> None:
        """After a restart: give each device back to the one live process that the
        kernel shows holding all of its ranges."""
        procs = self.server.callers.procs.refresh() or {}
        grants: dict[int, dict[str, Any]] = {}
        for endpoint, proc in procs.items():
            if not proc.system or endpoint in (self.server.conn.endpoint, self.server.conn.parent):
                continue
            try:
                priv = self.server.conn.kcall("privctl", {"endpoint": endpoint, "op": "get"})[
                    "priv"
                ]
            except (IpcError, KeyError):
                continue
            if isinstance(priv, dict):
                grants[endpoint] = priv
        for d in self.server.devices:
            io, mem = d.io_ranges(), d.mem_ranges()
            if not io and not mem:
                continue
            owners = [ep for ep, priv in grants.items() if _covers(priv, io, mem)]
            if len(owners) == 1:
                self.holders[d.devind] = owners[0]
                log.info("restart: %s is %s's again", d.bdf, procs[owners[0]].label)
            elif owners:
                log.warning("restart: %s was granted to several processes; nobody holds it", d.bdf)


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
