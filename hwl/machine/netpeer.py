"""The network peer of a machine's NICs: Linux's own stack, or a frame socket
(docs/network.md, "The peer").

``netns`` (the default for an ``[hwl-net]``): one network namespace per machine
holding a bridge ``br0`` with Linux at 10.0.2.2/24 and one TAP per ``[hwl-net]``
enslaved to it, so all of a machine's NICs share one L2 segment with Linux, which
answers ARP and ICMP as any host would and is otherwise silent. Each TAP is made
from a thread that joined the namespace (``setns`` through ctypes: ``os.setns`` is
3.12+) and its fd handed to QEMU, which stays in the root namespace; nothing is
persistent: everything goes with ``ip netns del``, after QEMU (Machine.close()).

``socket``: where no namespace can be made (no CAP_NET_ADMIN): ``-netdev dgram``
between two UDP ports on 127.0.0.1, the test holding the other end. Frames go only
where the test sends them.

Both peers hand out :class:`FrameSocket`, so a test written against
``send_frame`` / ``recv_frame`` runs on either.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import secrets
import select
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hwl.errors import HwlError
from hwl.machine.profile import NetSpec
from hwl.procs import pid_alive

log = logging.getLogger(__name__)

T = TypeVar("T")

NETNS_DIR = Path("/run/netns")
PREFIX = "hwl-"
ADDRESS = "10.0.2.2"
PREFIX_LEN = 24
GUEST_ADDRESS = "10.0.2.15"
BRIDGE = "br0"
# br0's own MAC, fixed: a bridge otherwise takes the lowest MAC among its ports,
# which for random tap MACs changes from run to run (02: locally administered,
# then 10.0.2.2 in hex).
MAC = "02:00:0a:00:02:02"
IP_TIMEOUT = 10.0

_CLONE_NEWNET = 0x40000000
_TUNSETIFF = 0x400454CA
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_ETH_P_ALL = 0x0003
_SOL_PACKET = 263
_PACKET_ADD_MEMBERSHIP = 1
_PACKET_MR_PROMISC = 1
_libc = ctypes.CDLL(None, use_errno=True)

# Per-namespace settings, written before any interface exists so that br0 and
# the taps are born with them ("default") and the namespace-wide ones ("all").
_SYSCTLS = {
    "net/ipv6/conf/all/disable_ipv6": "1",
    "net/ipv6/conf/default/disable_ipv6": "1",
    "net/ipv4/conf/all/rp_filter": "0",
    "net/ipv4/conf/default/rp_filter": "0",
}


class FrameSocket(socket.socket):
    """A socket that carries whole Ethernet frames: AF_PACKET on an interface in the
    namespace, or the UDP end of a ``-netdev dgram``. ``recv_frame`` skips the
    frames a packet socket sees going out, so a peer reads only what came in."""

    def send_frame(self, frame: bytes) -> None:
        sent = self.send(frame)
        if sent != len(frame):
            raise HwlError(f"sent {sent} of a {len(frame)}-byte frame")

    def recv_frame(self, timeout: float | None = 1.0) -> bytes | None:
        """The next incoming frame, or None when none came within ``timeout`` seconds."""
        while True:
            ready, _, _ = select.select([self], [], [], timeout)
            if not ready:
                return None
            data, addr = self.recvfrom(65536)
            if self.family == socket.AF_PACKET and addr[2] == socket.PACKET_OUTGOING:
                continue
            return data


def in_namespace(path: Path, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a fresh thread that has joined the network namespace at ``path``.
    setns changes only the calling thread, and the thread ends with ``fn``, so the
    rest of the process stays where it was; sockets and taps keep the namespace
    they were made in."""
    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({path}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=body, name=f"setns-{path.name}", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def _open_tap(name: str) -> int:
    """Open /dev/net/tun and attach a new TAP ``name`` (IFF_TAP|IFF_NO_PI) to the fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH22x", name.encode(), _IFF_TAP | _IFF_NO_PI))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _ip(argv: Sequence[str], *, stdin: str | None = None) -> str:
    try:
        done = subprocess.run(
            ["ip", *argv], input=stdin, capture_output=True, text=True, timeout=IP_TIMEOUT
        )
    except FileNotFoundError:
        raise HwlError("'ip' not found: install iproute2 (scripts/setup does)") from None
    if done.returncode != 0:
        raise HwlError(f"ip {' '.join(argv)} failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def sweep_stale_namespaces() -> list[str]:
    """Delete ``hwl-<pid>-*`` namespaces whose creating process is gone (a parent
    killed by SIGKILL runs no atexit); returns the names deleted."""
    if not NETNS_DIR.is_dir():
        return []
    gone = []
    for entry in NETNS_DIR.iterdir():
        parts = entry.name.split("-")
        mine = len(parts) == 3 and parts[0] + "-" == PREFIX and parts[1].isdigit()
        if mine and not pid_alive(int(parts[1])):
            with contextlib.suppress(HwlError):
                _ip(["netns", "del", entry.name])
                gone.append(entry.name)
    if gone:
        log.info("deleted stale namespaces %s", ", ".join(gone))
    return gone


class NetnsPeer:
    """Linux in a network namespace of its own, on a bridge with one TAP per NIC."""

    address = ADDRESS
    mac = MAC
    prefix_len = PREFIX_LEN
    guest_address = GUEST_ADDRESS
    bridge = BRIDGE

    def __init__(self, nets: Sequence[NetSpec]) -> None:
        self.namespace = f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.taps = {net.id: f"tap{i}" for i, net in enumerate(nets)}
        self.guest_addresses = {net.id: f"10.0.2.{15 + i}" for i, net in enumerate(nets)}
        self.tap_fds: dict[str, int] = {}
        self.closed = False
        sweep_stale_namespaces()
        try:
            _ip(["netns", "add", self.namespace])
        except HwlError as exc:
            raise HwlError(
                f"{exc}; a network namespace needs CAP_NET_ADMIN (root): where there is "
                'none, give the [hwl-net] peer = "socket"'
            ) from None
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        log.info("namespace %s: %s on %s, taps %s", self.namespace, ADDRESS, BRIDGE, self.taps)

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.namespace

    def _build(self) -> None:
        def inside() -> dict[str, int]:
            for key, value in _SYSCTLS.items():
                Path("/proc/sys", key).write_text(value)
            fds: dict[str, int] = {}
            try:
                for netdev, tap in self.taps.items():
                    fds[netdev] = _open_tap(tap)
            except BaseException:
                for fd in fds.values():
                    os.close(fd)
                raise
            return fds

        self.tap_fds = in_namespace(self.path, inside)
        batch = [
            "link set lo up",
            f"link add {BRIDGE} address {MAC} type bridge"
            " stp_state 0 forward_delay 0 mcast_snooping 0",
            f"addr add {ADDRESS}/{PREFIX_LEN} dev {BRIDGE}",
            f"link set {BRIDGE} up",
        ]
        for tap in self.taps.values():
            batch += [f"link set {tap} master {BRIDGE}", f"link set {tap} up"]
        _ip(["-n", self.namespace, "-batch", "-"], stdin="\n".join(batch) + "\n")

    def netdev_args(self) -> list[str]:
        """QEMU's ``-netdev`` options, one tap fd each (pass ``tap_fds`` to the child)."""
        out = []
        for netdev, fd in self.tap_fds.items():
            out += ["-netdev", f"tap,id={netdev},fd={fd},vhost=off"]
        return out

    def release_fds(self) -> None:
        """Close hwl's copies of the tap fds once QEMU holds its own."""
        for fd in self.tap_fds.values():
            os.close(fd)
        self.tap_fds = {}

    def tap(self, netdev_id: str) -> str:
        """The TAP interface (inside the namespace) behind the netdev ``netdev_id``."""
        try:
            return self.taps[netdev_id]
        except KeyError:
            known = ", ".join(self.taps)
            raise HwlError(f'no netns [hwl-net "{netdev_id}"] (known: {known})') from None

    def run(
        self, argv: Sequence[str], *, timeout: float = 30.0, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the namespace (``ip netns exec``), output captured as text."""
        kwargs.setdefault("capture_output", True)
        return subprocess.run(
            ["ip", "netns", "exec", self.namespace, *argv], timeout=timeout, text=True, **kwargs
        )

    def socket(
        self,
        family: int = socket.AF_INET,
        type: int = socket.SOCK_STREAM,  # socket.socket's own name
        proto: int = 0,
    ) -> socket.socket:
        """A socket made inside the namespace; it stays there wherever it is used."""
        return in_namespace(self.path, lambda: socket.socket(family, type, proto))

    def packet_socket(self, ifname: str | None = None, *, promisc: bool = True) -> FrameSocket:
        """An AF_PACKET raw socket on ``ifname`` (default the bridge) for whole frames.
        ``promisc`` lets one on br0 see frames sent to any MAC, not only to Linux's."""
        name = ifname or BRIDGE

        def make() -> FrameSocket:
            sock = FrameSocket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
            try:
                sock.bind((name, 0))
                if promisc:
                    index = socket.if_nametoindex(name)
                    mreq = struct.pack("iHH8s", index, _PACKET_MR_PROMISC, 0, b"")
                    sock.setsockopt(_SOL_PACKET, _PACKET_ADD_MEMBERSHIP, mreq)
            except BaseException:
                sock.close()
                raise
            return sock

        return in_namespace(self.path, make)

    def frames(self, netdev_id: str | None = None) -> FrameSocket:
        """A frame socket on the bridge, or on one NIC's tap: the interface both peers share."""
        return self.packet_socket(self.tap(netdev_id) if netdev_id else None)

    def link(self, ifname: str) -> dict[str, Any]:
        """``ip -s link show`` of one interface in the namespace, as iproute2's JSON."""
        out = _ip(["-n", self.namespace, "-j", "-s", "link", "show", "dev", ifname])
        links: list[dict[str, Any]] = json.loads(out)
        return links[0]

    def close(self) -> None:
        """Delete the namespace with the bridge and taps in it (QEMU must be gone first)."""
        if self.closed:
            return
        self.closed = True
        self.release_fds()
        try:
            _ip(["netns", "del", self.namespace])
        except HwlError as exc:
            log.warning("deleting namespace %s: %s", self.namespace, exc)


class SocketPeer:
    """Frames over UDP on 127.0.0.1 (QEMU's ``-netdev dgram``), one FrameSocket per
    netdev. No Linux stack answers here: no ARP, no ping; the test is the peer."""

    host = "127.0.0.1"

    def __init__(self, nets: Sequence[NetSpec]) -> None:
        self.sockets: dict[str, FrameSocket] = {}
        self.qemu_ports: dict[str, int] = {}
        self.closed = False
        try:
            for net in nets:
                sock = FrameSocket(socket.AF_INET, socket.SOCK_DGRAM)
                self.sockets[net.id] = sock
                sock.bind((self.host, 0))
                self.qemu_ports[net.id] = self._free_port()
                sock.connect((self.host, self.qemu_ports[net.id]))
        except BaseException:
            self.close()
            raise

    def _free_port(self) -> int:
        # QEMU binds it a moment later; another process taking it meanwhile makes
        # QEMU fail at start with a clear "Address already in use".
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((self.host, 0))
            port: int = probe.getsockname()[1]
            return port

    def netdev_args(self) -> list[str]:
        out = []
        for netdev, sock in self.sockets.items():
            out += [
                "-netdev",
                f"dgram,id={netdev},local.type=inet,local.host={self.host},"
                f"local.port={self.qemu_ports[netdev]},remote.type=inet,"
                f"remote.host={self.host},remote.port={sock.getsockname()[1]}",
            ]
        return out

    def frames(self, netdev_id: str | None = None) -> FrameSocket:
        """The frame socket of ``netdev_id`` (may be omitted when there is only one)."""
        if netdev_id is None:
            if len(self.sockets) != 1:
                raise HwlError(f"name one of the socket netdevs: {', '.join(self.sockets)}")
            return next(iter(self.sockets.values()))
        try:
            return self.sockets[netdev_id]
        except KeyError:
            raise HwlError(
                f'no socket [hwl-net "{netdev_id}"] (known: {", ".join(self.sockets)})'
            ) from None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for sock in self.sockets.values():
            sock.close()
