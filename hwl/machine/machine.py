"""A QEMU machine booted from a profile, with the guest stub answering on the link.

Start-up order matters and is fixed here: QEMU starts paused (-S); hwl connects
QMP, the two serial lines and the shared RAM file; only then does the guest run,
so not one byte the stub prints is lost. The stub's handshake line on COM1 and
its control block in shared RAM must agree before the machine counts as up.

QEMU dies with the process that started it (PR_SET_PDEATHSIG), so a killed test
run leaves no orphan. That signal follows the starting *thread*: start machines
from a thread that lives as long as they do.

Placement (hwl/machine/placement.py): QEMU starts on its own core(s), and the
starting process moves to hwl's cores until the machine closes.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import mmap
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import serial

from hwl.errors import HwlError, QemuExitedError, QemuNotFoundError, StubAbiError, StubTimeoutError
from hwl.link import abi
from hwl.link.link import Link
from hwl.link.memory import GuestMemory
from hwl.machine import placement as placing
from hwl.machine.console import Console
from hwl.machine.netpeer import NetnsPeer, SocketPeer
from hwl.machine.profile import Profile
from hwl.machine.qmp import Qmp
from hwl.machine.stub import StubImage, build_stub, inspect_stub

log = logging.getLogger(__name__)

QEMU_BINARY = "qemu-system-x86_64"
ACCELS = ("tcg", "kvm", "auto")
HANDSHAKE = re.compile(
    rb"hwl-stub ready abi=(\d+) tsc_khz=(\d+) ram=(\d+) "
    rb"ctl=0x([0-9a-fA-F]+) slots=0x([0-9a-fA-F]+)\r?\n"
)
_live: weakref.WeakSet[Machine] = weakref.WeakSet()
#: A file each machine start appends a line to, in this process and its children
#: (the pytest plugin's check that tests booting QEMU are marked so).
BOOT_TALLY_ENV = "HWL_BOOT_TALLY"


def _tally_boot() -> None:
    path = os.environ.get(BOOT_TALLY_ENV)
    if path:
        with open(path, "a", encoding="ascii") as tally:
            tally.write(f"{os.getpid()}\n")


def resolve_accel(accel: str) -> str:
    """``auto`` means TCG: on these nested-virtualisation hosts every port-I/O exit
    under KVM costs 12-15 µs, while TCG emulates an ``in`` in about 0.3 µs."""
    if accel not in ACCELS:
        raise HwlError(f"unknown accelerator '{accel}': use one of {', '.join(ACCELS)}")
    if accel == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        raise HwlError("accelerator 'kvm' asked for, but /dev/kvm is missing or not accessible")
    return "tcg" if accel == "auto" else accel


def find_qemu() -> str:
    path = os.environ.get("HWL_QEMU") or shutil.which(QEMU_BINARY)
    if not path or not os.access(path, os.X_OK):
        raise QemuNotFoundError(
            f"{QEMU_BINARY} not found (HWL_QEMU={os.environ.get('HWL_QEMU', '')!r}); "
            "install it with: apt-get install qemu-system-x86"
        )
    return path


_libc = ctypes.CDLL(None, use_errno=True)  # loaded here, not in a forked child
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """In a child before exec: die when ``parent`` does (or already did)."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _start_child(parent: int, cpus: frozenset[int]) -> None:
    """QEMU's preexec: die with the starter, run on ``cpus`` (all its threads inherit)."""
    die_with_parent(parent)
    placing.pin_child(cpus)


class Machine:
    """One QEMU machine and its link. Use as a context manager, or call close()."""

    def __init__(
        self,
        profile: Profile | str | Path,
        *,
        accel: str = "auto",
        run_dir: Path | None = None,
        keep_run_dir: bool = False,
        boot_timeout: float = 30.0,
        stub: Path | None = None,
        placement: str | placing.Placement | None = None,
    ) -> None:
        """``placement``: ``auto``, ``off``, ``qemu:CORES;hwl:CORES`` or a resolved
        :class:`~hwl.machine.placement.Placement`; None reads ``$HWL_PLACEMENT``."""
        self.profile = profile if isinstance(profile, Profile) else Profile.load(profile)
        self.accel = resolve_accel(accel)
        vcpus = placing.vcpus_of([(g.name, g.options) for g in self.profile.groups])
        self.placement = placing.resolve(placement, vcpus=vcpus)
        self._client_held = False
        self.keep_run_dir = keep_run_dir or run_dir is not None
        self.boot_timeout = boot_timeout
        self._stub_path = stub
        self._given_run_dir = run_dir
        self.run_dir = Path()
        self.proc: subprocess.Popen[bytes] | None = None
        self.qmp: Qmp | None = None
        self.console: Console | None = None
        self._bell: serial.SerialBase | None = None
        self._memory: GuestMemory | None = None
        self._link: Link | None = None
        self._ram_path: Path | None = None
        self._ram_fd: int | None = None
        self._link_owner: str | None = None  # set when the link is handed to a kernel
        self._before_close: list[Callable[[], None]] = []
        self.stub: StubImage | None = None
        self.disks: dict[str, Path] = {}
        self.handshake: dict[str, int] = {}
        self._netns_peer: NetnsPeer | None = None
        self._socket_peer: SocketPeer | None = None
        self.closed = False

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> Machine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Machine:
        qemu = find_qemu()
        self.stub = inspect_stub(self._stub_path or build_stub())
        if self._given_run_dir:
            self.run_dir = self._given_run_dir
            self.run_dir.mkdir(parents=True, exist_ok=True)
        else:
            root = os.environ.get("HWL_RUN_ROOT")
            self.run_dir = Path(tempfile.mkdtemp(prefix=f"hwl-{self.profile.name}-", dir=root))
        self.run_dir.chmod(0o700)
        _tally_boot()
        _live.add(self)
        try:
            self._launch(qemu)
            self._client_held = placing.hold_client(self.placement)
            self._connect()
            self._handshake()
        except BaseException:
            self.close()
            raise
        log.info(
            "machine %s up: pid %s, run dir %s, placement %s",
            self.profile.name,
            self.pid,
            self.run_dir,
            self.placement.describe(),
        )
        return self

    def _launch(self, qemu: str) -> None:
        assert self.stub is not None
        self.disks = self.profile.create_disks(self.run_dir)
        cfg = self.run_dir / "machine.cfg"
        cfg.write_text(self.profile.render(self.run_dir))
        shm = Path("/dev/shm")
        ram_dir = shm if shm.is_dir() and os.access(shm, os.W_OK) else self.run_dir
        self._ram_path = ram_dir / f"hwl-{os.getpid()}-{id(self):x}.ram"
        mem = self.profile.memory
        # No -cpu host: it aborts under nested KVM (MSR 0x10a); the default works.
        args = [
            qemu, "-S", "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
            "-machine", f"{self.profile.machine_type},accel={self.accel},memory-backend=hwl-ram",
            "-m", f"{mem >> 20}M",
            "-object",
            f"memory-backend-file,id=hwl-ram,size={mem},mem-path={self._ram_path},share=on",
            "-kernel", str(self.stub.path),
            "-readconfig", str(cfg),
            # nodelay: a doorbell is one byte; with Nagle, QEMU held some back for
            # milliseconds (until the host's delayed ACK), stalling the kernel.
            "-chardev", "socket,id=hwl-com1,host=127.0.0.1,port=0,server=on,wait=off,nodelay=on",
            "-serial", "chardev:hwl-com1",
            "-chardev", "socket,id=hwl-com2,host=127.0.0.1,port=0,server=on,wait=off,nodelay=on",
            "-serial", "chardev:hwl-com2",
            "-qmp", f"unix:{self.run_dir / 'qmp.sock'},server=on,wait=off",
        ]  # fmt: skip
        args += self._make_peers()
        (self.run_dir / "qemu.cmdline").write_text(shlex.join(args) + "\n")
        parent = os.getpid()
        tap_fds = self._netns_peer.tap_fds.values() if self._netns_peer else ()
        qemu_cpus = placing.target(self.placement.qemu)
        with (self.run_dir / "qemu.stderr").open("wb") as err:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                pass_fds=tuple(tap_fds),
                preexec_fn=lambda: _start_child(parent, qemu_cpus),
            )
        if not placing.check(self.proc.pid, qemu_cpus, "QEMU"):
            self.placement = placing.UNPINNED
        if self._netns_peer is not None:
            self._netns_peer.release_fds()  # QEMU holds the taps now

    def _make_peers(self) -> list[str]:
        """Make the peers of the profile's [hwl-net] groups; return their -netdev args."""
        args: list[str] = []
        netns = [n for n in self.profile.nets if n.peer == "netns"]
        sockets = [n for n in self.profile.nets if n.peer == "socket"]
        if netns:
            self._netns_peer = NetnsPeer(netns)
            args += self._netns_peer.netdev_args()
        if sockets:
            self._socket_peer = SocketPeer(sockets)
            args += self._socket_peer.netdev_args()
        return args

    def _exited_error(self, what: str) -> QemuExitedError:
        assert self.proc is not None
        code = self.proc.poll()
        stderr = self.stderr_text()
        return QemuExitedError(
            f"QEMU exited {what} (exit code {code}); its stderr:\n{stderr.strip() or '(empty)'}",
            returncode=code,
            stderr=stderr,
        )

    def _connect(self) -> None:
        assert self.proc is not None and self._ram_path is not None
        sock = self.run_dir / "qmp.sock"
        self.qmp = Qmp(f"hwl-{self.profile.name}", self.run_dir / "qmp-events.jsonl")
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise self._exited_error("at start")
            if sock.exists():
                try:
                    self.qmp.connect(str(sock), timeout=5)
                    break
                except Exception as exc:
                    if time.monotonic() > deadline:
                        raise HwlError(
                            f"cannot connect to QEMU's QMP socket {sock}: {exc}"
                        ) from exc
            elif time.monotonic() > deadline:
                raise HwlError(f"QEMU did not create its QMP socket {sock} within 15 s")
            time.sleep(0.01)
        ports = self._serial_ports()
        self.console = Console(self._open_serial(ports["hwl-com1"]), self.run_dir / "serial.log")
        self._bell = self._open_serial(ports["hwl-com2"])
        # The fd stays open: the kernel process maps guest RAM through it.
        self._ram_fd = os.open(self._ram_path, os.O_RDWR | os.O_CLOEXEC)
        mapping = mmap.mmap(self._ram_fd, self.profile.memory, mmap.MAP_SHARED)
        self._ram_path.unlink()  # QEMU and we keep our mappings; nothing is left behind
        self._memory = GuestMemory(mapping, self.profile.memory)
        self.qmp.execute("cont")

    def _serial_ports(self) -> dict[str, int]:
        assert self.qmp is not None
        ports = {}
        for chardev in self.qmp.execute("query-chardev"):
            m = re.search(r"tcp:127\.0\.0\.1:(\d+)", chardev["filename"])
            if m:
                ports[chardev["label"]] = int(m.group(1))
        return ports

    @staticmethod
    def _open_serial(port: int) -> serial.SerialBase:
        line = serial.serial_for_url(f"socket://127.0.0.1:{port}", timeout=0.2)
        with socket.fromfd(line.fileno(), socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return line

    def _handshake(self) -> None:
        assert self.console is not None and self.proc is not None and self.stub is not None
        deadline = time.monotonic() + self.boot_timeout
        match = None
        while match is None:
            match = self.console.expect(HANDSHAKE, timeout=0.1)
            if match is None and self.proc.poll() is not None:
                raise self._exited_error("during boot")
            if match is None and time.monotonic() > deadline:
                raise StubTimeoutError(
                    f"the stub did not report ready within {self.boot_timeout} s "
                    f"({self.accel}); its serial log:\n{self.console.text()[-2000:] or '(empty)'}"
                    f"\nQEMU stderr:\n{self.stderr_text()[-2000:] or '(empty)'}"
                )
        version, khz, ram, ctl, slots = (
            int(g, 16 if i > 2 else 10) for i, g in enumerate(match.groups())
        )
        self.handshake = {"abi": version, "tsc_khz": khz, "ram": ram, "ctl": ctl, "slots": slots}
        if version != abi.ABI_VERSION or (ctl, slots) != (self.stub.ctl_addr, self.stub.slots_addr):
            raise StubAbiError(
                f"the running stub says abi={version} ctl={ctl:#x} slots={slots:#x}; its ELF says "
                f"abi={self.stub.abi_version} ctl={self.stub.ctl_addr:#x} "
                f"slots={self.stub.slots_addr:#x}"
            )
        assert self._memory is not None and self._bell is not None
        self._link = Link(self._memory, ctl, slots, self._bell, alive=self.alive)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr_text(self) -> str:
        try:
            return (self.run_dir / "qemu.stderr").read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        """Quit QEMU (QMP quit, then kill), release everything, remove the run dir."""
        if self.closed:
            return
        self.closed = True
        for hook in reversed(self._before_close):
            try:
                hook()
            except Exception as exc:
                log.warning("before closing the machine: %s", exc)
        if self.proc is not None and self.proc.poll() is None and self.qmp is not None:
            # QEMU may be wedged; it is killed below if quit does not end it.
            with contextlib.suppress(Exception):
                self.qmp.execute("quit", timeout=2)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for part in (self.qmp, self.console, self._bell, self._link):
            if part is not None:
                try:
                    part.close()
                except Exception as exc:
                    log.debug("closing %r: %s", part, exc)
        if self._memory is not None:
            # A caller may still hold a DmaBuffer view; the mapping then goes with it.
            with contextlib.suppress(BufferError):
                self._memory.close()
        if self._ram_fd is not None:
            os.close(self._ram_fd)
            self._ram_fd = None
        if self._ram_path is not None:
            self._ram_path.unlink(missing_ok=True)
        for peer in (self._netns_peer, self._socket_peer):
            if peer is not None:
                peer.close()  # after QEMU: a namespace goes only when its taps are free
        if not self.keep_run_dir and self.run_dir != Path():
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if self._client_held:
            self._client_held = False
            placing.release_client()
        _live.discard(self)

    # ------------------------------------------------------------- accessors
    @property
    def link(self) -> Link:
        if self._link_owner is not None:
            raise HwlError(f"the link belongs to {self._link_owner}; talk to it instead")
        if self._link is None:
            raise HwlError("the machine is not running")
        return self._link

    def before_close(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` first thing in close() (the kernel stops before QEMU does)."""
        self._before_close.append(hook)

    def hand_over_link(self, owner: str) -> LinkHandover:
        """Give up the link: the caller (the kernel launcher) passes these fds to the
        one process that drives the stub from now on. ``machine.link`` refuses after."""
        if self._link is None or self._ram_fd is None or self._bell is None:
            raise HwlError("the machine is not running")
        if self._link_owner is not None:
            raise HwlError(f"the link was handed to {self._link_owner} already")
        self._link_owner = owner
        self._link.close()
        return LinkHandover(
            ram_fd=self._ram_fd,
            ram_size=self.profile.memory,
            doorbell_fd=self._bell.fileno(),
            ctl=self.handshake["ctl"],
            slots=self.handshake["slots"],
            qemu_pid=self.pid or 0,
        )

    @property
    def peer(self) -> NetnsPeer:
        """Linux's stack in the machine's namespace, behind its netns [hwl-net] NICs."""
        if self._netns_peer is None:
            raise HwlError(f'profile {self.profile.name} has no [hwl-net] with peer = "netns"')
        return self._netns_peer

    @property
    def socket_peer(self) -> SocketPeer:
        """The frame sockets behind the machine's socket [hwl-net] NICs (no Linux stack)."""
        if self._socket_peer is None:
            raise HwlError(f'profile {self.profile.name} has no [hwl-net] with peer = "socket"')
        return self._socket_peer

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def qmp_execute(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        if self.qmp is None:
            raise HwlError("the machine is not running")
        return self.qmp.execute(cmd, args)


@dataclass(frozen=True)
class LinkHandover:
    """What a process needs to drive the stub: guest RAM, the doorbell line, and
    where the stub's control block and request slots are."""

    ram_fd: int
    ram_size: int
    doorbell_fd: int
    ctl: int
    slots: int
    qemu_pid: int


@atexit.register
def _close_all() -> None:
    for machine in list(_live):
        machine.close()
