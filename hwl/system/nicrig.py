"""A NIC under test: its machine, its driver up under RS, an NDEV client, and Linux's
stack in the machine's network namespace as the peer."""

from __future__ import annotations

import contextlib
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Self

from hwl.hw import ether, nic_native
from hwl.ipc.client import Connection
from hwl.machine.machine import Machine
from hwl.machine.netpeer import FrameSocket, NetnsPeer
from hwl.system.boot import System
from hwl.system.ndev import NetDevice

GUEST_IP = "10.0.2.15"
LINUX_IP = "10.0.2.2"

#: profile -> the driver's label in it
NICS = {"ne2k": "dp8390", "rtl8139": "rtl8139", "e1000": "e1000"}
#: driver label -> the [hwl-net] id of its card, the same in its one-NIC profile and in
#: ``nics`` (all three): its own TAP in the namespace
NETDEVS = {"dp8390": "ne2k-net", "rtl8139": "rtl8139-net", "e1000": "e1000-net"}


class Closes(Protocol):
    def close(self) -> None: ...


@dataclass
class Nic:
    machine: Machine
    system: System
    conn: Connection
    dev: NetDevice
    label: str
    native_pps: float = 0.0  # the stub's own 64-byte transmit loop (nic_up(native=True))
    netdev: str = ""  # its [hwl-net] id (NETDEVS): its own TAP in the namespace

    @property
    def peer(self) -> NetnsPeer:
        return self.machine.peer

    @property
    def mac(self) -> bytes:
        assert self.dev.card is not None
        return self.dev.card.hwaddr

    def linux_mac(self) -> bytes:
        return bytes.fromhex(self.peer.link("br0")["address"].replace(":", ""))

    def arp(self, timeout: float = 5.0) -> ether.Arp:
        """Ask Linux for 10.0.2.2 until it answers (an e1000 holds reception for 1 s
        after its receiver is enabled); the answer's ARP."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.dev.send([ether.arp_request(self.mac, GUEST_IP, LINUX_IP)])
            for frame in self.dev.recv_until(1, 0.2):
                arp = ether.parse_arp(frame)
                if arp is not None and arp.op == 2 and arp.sender_ip == ether.ip_bytes(LINUX_IP):
                    return arp
        raise AssertionError(f"no ARP reply from Linux within {timeout} s; stats {self.dev.stats}")

    def service_pid_or_none(self) -> int | None:
        rows = [s for s in self.system.rs.status() if s.label == self.label]
        return rows[0].pid if rows and rows[0].pid > 0 and rows[0].state == "up" else None

    def service_pid(self) -> int:
        pid = self.service_pid_or_none()
        assert pid is not None, f"{self.label} is not up"
        return pid


#: profile -> the NIC's name for the stub's native loop
NATIVE_NAMES = {"ne2k": "ne2k_pci", "rtl8139": "rtl8139", "e1000": "e1000"}
NATIVE_FRAMES = 20_000
NATIVE_ROUNDS = 5  # the median of these: one round is a few tens of ms, noisy on these hosts


@contextlib.contextmanager
def nic_up(profile: str, accel: str = "auto", native: bool = False) -> Iterator[Nic]:
    """The machine, its system and an opened NDEV client. ``native``: first measure
    the stub's own 64-byte transmit loop on the link, before the kernel takes it
    (the median of NATIVE_ROUNDS runs)."""
    with Machine(profile, accel=accel) as machine:
        native_pps = 0.0
        if native:
            name = NATIVE_NAMES[profile]
            batch = nic_native.MAX_BATCH[name]
            native_pps = statistics.median(
                nic_native.native_tx_pps(machine.link, name, 64, NATIVE_FRAMES, batch)
                for _ in range(NATIVE_ROUNDS)
            )
        # no restart backoff: the benchmark kills a driver ten times in a row
        with System.start(machine, backoff_unit=0.0) as system:
            conn = Connection.attach(Path(machine.run_dir) / "kernel.sock")
            try:
                label = NICS[profile]
                dev = NetDevice(conn, label)
                dev.open()
                yield Nic(machine, system, conn, dev, label, native_pps, NETDEVS[label])
            finally:
                conn.close()


@contextlib.contextmanager
def nics_up(accel: str = "auto") -> Iterator[dict[str, Nic]]:
    """The three-NIC machine (profile ``nics``) with one opened NDEV client per
    driver, by label, each on a connection of its own so that each may be driven
    from a thread of its own."""
    with (
        Machine("nics", accel=accel) as machine,
        System.start(machine, backoff_unit=0.0) as system,
    ):
        nics: dict[str, Nic] = {}
        try:
            for label, netdev in NETDEVS.items():
                conn = Connection.attach(Path(machine.run_dir) / "kernel.sock")
                dev = NetDevice(conn, label)
                nics[label] = Nic(machine, system, conn, dev, label, netdev=netdev)
                dev.open()
            yield nics
        finally:
            for nic in nics.values():
                nic.conn.close()


class Responder:
    """Answers ARP and ICMP echo requests for 10.0.2.15 through the driver, frame by
    frame, while Linux pings: the guest side of ``ping`` with no INET."""

    def __init__(self, nic: Nic) -> None:
        self.nic = nic
        self.answered = 0

    def serve_until(self, proc: subprocess.Popen[str], limit: float) -> None:
        deadline = time.monotonic() + limit
        me = ether.ip_bytes(GUEST_IP)
        while proc.poll() is None and time.monotonic() < deadline:
            out = []
            for frame in self.nic.dev.recv(timeout=0.1):
                arp = ether.parse_arp(frame)
                if arp is not None and arp.op == 1 and arp.target_ip == me:
                    out.append(ether.arp_reply(self.nic.mac, GUEST_IP, arp.sender_mac,
                                               arp.sender_ip))  # fmt: skip
                echo = ether.parse_echo(frame)
                if echo is not None and echo.request and echo.dst_ip == me:
                    mac = self.nic.mac
                    out.append(ether.icmp_echo(mac, echo.src_mac, me, echo.src_ip, echo.ident,
                                               echo.seq, echo.payload, reply=True))  # fmt: skip
                    self.answered += 1
            if out:
                self.nic.dev.send(out)


class PeerThread:
    """Linux's side of a test in a thread for the ``with`` block: :meth:`_run` loops
    (bounded by its own count and time) until ``_stop`` is set; at the block's end
    the thread is joined (for at most 5 s) and ``sock`` closed."""

    sock: Closes

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


class Flood(PeerThread):
    """Linux floods the NIC with test frames from a thread, bounded in count and time.
    By default time is the bound that ends it (or leaving the ``with``): a count a
    fast sender reaches in about a second ended floods before a restarted driver
    was up, and before a benchmark's window closed.

    ``tap``: send on the NIC's own TAP (``nic.netdev``) instead of the bridge, so
    the frames reach that card only, whatever the bridge has learnt. ``rate``:
    frames per second, sent in bursts of ``burst`` (0: as fast as the socket takes
    them)."""

    def __init__(
        self,
        nic: Nic,
        size: int = 128,
        count: int = 10**8,
        seconds: float = 20.0,
        *,
        tap: bool = False,
        rate: float = 0.0,
        burst: int = 10,
    ):
        self.sock: FrameSocket = nic.peer.frames(nic.netdev) if tap else nic.peer.packet_socket()
        self.frame = ether.ethernet(nic.mac, nic.linux_mac(), ether.ETH_P_TEST, bytes(size - 14))
        self.count, self.seconds = count, seconds
        self.rate, self.burst = rate, burst
        self.sent = 0
        super().__init__()

    def _run(self) -> None:
        start = time.monotonic()
        deadline = start + self.seconds
        tried = 0
        while not self._stop.is_set() and self.sent < self.count and time.monotonic() < deadline:
            for _ in range(self.burst if self.rate else 1):
                tried += 1
                with contextlib.suppress(OSError):  # a full queue: the tap drops, as a wire would
                    self.sock.send_frame(self.frame)
                    self.sent += 1
            if self.rate:  # sleep until the next burst is due
                self._stop.wait(max(0.0, start + tried / self.rate - time.monotonic()))


class LinuxUdp(PeerThread):
    """Linux's UDP socket in the namespace at ``port`` (0: any), for at most ``count``
    datagrams and ``seconds``: it echoes each back (``echo``) or only counts it."""

    def __init__(
        self, machine: Machine, *, echo: bool, count: int, seconds: float, port: int = 0
    ) -> None:
        self.sock: socket.socket = machine.peer.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((LINUX_IP, port))
        self.sock.settimeout(0.2)
        self.echo, self.count, self.seconds = echo, count, seconds
        self.received = 0
        super().__init__()

    @property
    def address(self) -> tuple[str, int]:
        return LINUX_IP, int(self.sock.getsockname()[1])

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        while not self._stop.is_set() and self.received < self.count:
            if time.monotonic() > deadline:
                return
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.received += 1
            if self.echo:
                self.sock.sendto(data, peer)
