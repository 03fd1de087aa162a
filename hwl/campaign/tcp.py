"""The TCP workload: one connection through INET to an echo server on Linux's own
stack in the machine's namespace, round after round (``chunk`` bytes sent, the
same bytes read back), while the plan's fault hits the NIC driver or its card.

The stream is drawn from the trial's seed. Linux's end hashes what it reads
(SHA-256) and echoes it; the client checks every byte it reads back against what it
sent, in order, and hashes it too. After the trial both digests are compared with
the digest of the stream's prefix of the same length, so a byte lost, added,
reordered or changed is found, and on which leg. The rounds go on past ``bytes``
until the fault has played out (as the disk workload's operations do), or stop at
the first round that came back wrong.

The connection must stay up: no error on the client, none on Linux's end, and no
reset or abort in Linux's counters (``nstat``), unless the fault makes one the
right answer: a link down for at least INET's R2 (RFC 1122: a connection that
made no progress that long is aborted, ETIMEDOUT). R2 is the profile's INET
``--tcp-r2`` (100 s by default).
"""

from __future__ import annotations

import contextlib
import errno as pyerrno
import hashlib
import ipaddress
import random
import re
import shlex
import socket
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import hwl.net
from hwl.campaign.inject import REQUEST_TIMEOUT, Injector, settled
from hwl.campaign.schedule import Plan
from hwl.campaign.spec import Spec, TcpWorkload
from hwl.errors import HwlError
from hwl.machine.netpeer import BRIDGE, NetnsPeer
from hwl.machine.profile import Profile
from hwl.proto.inet import MAX_RECV
from hwl.system.nicrig import LINUX_IP, PeerThread
from hwl.system.running import RunningSystem

if TYPE_CHECKING:
    from hwl.campaign.trial import Observed

#: Linux's counters of resets and aborts (``nstat``): any rise is a connection broken.
RESETS = ("TcpEstabResets", "TcpOutRsts", "TcpExtTCPAbortOnData", "TcpExtTCPAbortOnClose",
          "TcpExtTCPAbortOnTimeout")  # fmt: skip
#: How often Linux's end looks whether its ``with`` block has ended.
POLL = 0.2
#: How long Linux's end may take to see the client's FIN and close, after the rounds.
CLOSE_WAIT = 10.0


def stream(seed: int, chunk: int) -> Iterator[bytes]:
    """The client's rounds: ``chunk`` pseudo-random bytes each, fixed by ``seed``."""
    rng = random.Random(f"hwl-tcp:{seed}")
    while True:
        yield rng.randbytes(chunk)


def prefix_digest(seed: int, chunk: int, size: int) -> str:
    """SHA-256 of the stream's first ``size`` bytes."""
    h = hashlib.sha256()
    left = size
    for data in stream(seed, chunk):
        if left <= 0:
            break
        h.update(data[:left])
        left -= len(data)
    return h.hexdigest()


def r2_of(profile: Profile) -> float:
    """INET's R2 in ``profile``: its ``--tcp-r2`` argument, else INET's default."""
    for svc in profile.services:
        if svc.label != "inet":
            continue
        args = shlex.split(svc.options.get("args", ""))
        for i, arg in enumerate(args):
            if arg.startswith("--tcp-r2="):
                return float(arg.split("=", 1)[1])
            if arg == "--tcp-r2" and i + 1 < len(args):
                return float(args[i + 1])
    from hwl.servers.inet.tcp.connection import TcpConfig  # loaded only when asked

    return TcpConfig().r2


def linux_counters(peer: NetnsPeer) -> dict[str, int]:
    """Linux's absolute SNMP counters in the namespace (``nstat -az``)."""
    done = peer.run(["nstat", "-az"])
    counters = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)", done.stdout, re.M)}
    missing = [n for n in RESETS if n not in counters]
    if done.returncode != 0 or missing:  # else "no reset" would be said unseen
        raise HwlError(f"nstat in the namespace: {done.stderr.strip() or f'no {missing}'}")
    return counters


def linux_address(peer: NetnsPeer, inet: hwl.net.Inet, nic: str) -> str:
    """Linux's address on the subnet of INET's interface on ``nic`` (.2 of it), given
    to Linux's bridge if it is not 10.0.2.2 (profile inet-nics: a subnet per NIC, all
    on one bridge), so the stream goes through that NIC and no other."""
    rows = hwl.net.ifstatus(inet=inet)["interfaces"]
    assert isinstance(rows, list)
    row = next((r for r in rows if isinstance(r, dict) and r.get("name") == nic), None)
    if row is None:
        raise HwlError(f"INET has no interface on {nic!r}")
    net = ipaddress.ip_interface(str(row["address"])).network
    linux = str(net.network_address + 2)
    if linux != LINUX_IP:
        done = peer.run(["ip", "addr", "replace", f"{linux}/{net.prefixlen}", "dev", BRIDGE])
        if done.returncode != 0:
            raise HwlError(f"Linux's address {linux} on {BRIDGE}: {done.stderr.strip()}")
    return linux


def reach(inet: hwl.net.Inet, address: str, timeout: float = 15.0) -> None:
    """Ping ``address`` through INET until it answers: an e1000 holds reception for
    1 s after its receiver is enabled (as :func:`hwl.net.demo.reach`, any address)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            hwl.net.ping(address, timeout=0.5, inet=inet)
            return
        except OSError:  # a timeout, or no ARP answer yet
            if time.monotonic() > deadline:
                raise HwlError(f"Linux ({address}) not reachable through INET") from None


def request_timeout(plan: Plan, r2: float) -> float:
    """The client socket's timeout: a request unanswered this long is the client
    stuck. Beyond R2 when the plan's link down lasts R2: INET's abort (ETIMEDOUT) must
    come first, and be told from the socket's own timeout."""
    if plan.kind == "link-down" and (plan.heal_after_ms or 0) / 1000 >= r2:
        return r2 + REQUEST_TIMEOUT
    return REQUEST_TIMEOUT


def errno_name(exc: OSError) -> str:
    """The error's errno by name. hwl.net raises any ETIMEDOUT of a timed request as
    ``socket.timeout`` without its errno, INET's abort at R2 too: a TimeoutError is
    ETIMEDOUT (whether it was the socket's own timeout the caller tells by the time)."""
    if isinstance(exc, TimeoutError):
        return "ETIMEDOUT"
    return pyerrno.errorcode.get(exc.errno or 0, type(exc).__name__)


class EchoEnd(PeerThread):
    """Linux's end, in a thread for the ``with`` block and at most ``seconds``: it
    accepts one connection and echoes what it reads, hashing it, until the client's
    FIN (``closed_clean``), an error (``error``), or the block's end."""

    def __init__(self, peer: NetnsPeer, address: str, seconds: float) -> None:
        self.seconds = seconds
        self.digest = hashlib.sha256()
        self.count = 0
        self.error: str | None = None
        self.closed_clean = False
        self.sock: socket.socket = peer.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((address, 0))
        self.sock.listen(1)
        self.sock.settimeout(POLL)
        self._conn: socket.socket | None = None
        super().__init__()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()
        return str(host), int(port)

    def _accept(self, deadline: float) -> socket.socket | None:
        while not self._stop.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                return self.sock.accept()[0]
        return None

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        try:
            conn = self._accept(deadline)
            if conn is None:
                return
            self._conn = conn
            with conn:
                while not self._stop.is_set():
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"still echoing after {self.seconds} s")
                    conn.settimeout(POLL)
                    try:
                        data = conn.recv(64 << 10)
                    except TimeoutError:
                        continue
                    if not data:
                        self.closed_clean = True
                        return
                    self.digest.update(data)
                    self.count += len(data)
                    conn.settimeout(max(POLL, deadline - time.monotonic()))
                    conn.sendall(data)
        except OSError as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def wait_closed(self, timeout: float) -> None:
        """Until the client's FIN has been seen (or an error, or ``timeout``)."""
        self._thread.join(timeout)

    def __exit__(self, *exc: object) -> None:
        conn = self._conn
        if self._thread.is_alive() and conn is not None:
            with contextlib.suppress(OSError):  # a sendall blocked on a dead connection
                conn.shutdown(socket.SHUT_RDWR)
        super().__exit__(*exc)


def run(w: TcpWorkload, spec: Spec, system: RunningSystem, obs: Observed, inj: Injector) -> None:
    """The rounds, until ``w.bytes`` went each way and the fault has played out;
    what was seen goes to ``obs`` (``tcp``, ``errors``, ``corrupt_reads``, the timeline)."""
    peer = system.machine.peer
    inet = system.inet
    address = linux_address(peer, inet, w.nic)
    reach(inet, address)
    before = linux_counters(peer)
    r2 = r2_of(system.machine.profile)
    wait = request_timeout(obs.plan, r2)
    deadline = time.monotonic() + spec.trial_timeout
    sent = received = 0
    got = hashlib.sha256()
    clean_close = False
    with EchoEnd(peer, address, spec.trial_timeout) as linux:
        s = hwl.net.socket(hwl.net.AF_INET, hwl.net.SOCK_STREAM, inet=inet)
        try:
            s.settimeout(wait)
            s.connect(linux.address)
            obs.start_mono = time.monotonic()
            inj.start(obs.start_mono)
            inj.busy.set()  # the stream is under way from here to its end
            good_after = 0  # rounds done right since the fault was done
            for data in stream(obs.plan.seed, w.chunk):
                if time.monotonic() > deadline:
                    obs.timed_out = f"the workload did not end within {spec.trial_timeout} s"
                    break
                ok, back, stop = _round(s, data, sent, obs, inj, got, wait)
                sent += len(data)
                received += back
                if stop:
                    break
                obs.ops += 1
                obs.moved += len(data)
                if inj.done and ok:
                    good_after += 1
                if obs.moved >= w.bytes and settled(inj, system, obs, good_after):
                    break
            if not obs.errors and not obs.timed_out:
                clean_close = _close(s, obs)
        finally:
            inj.busy.clear()
            obs.workload_ms = (time.monotonic() - obs.start_mono) * 1000 if obs.start_mono else 0
            with contextlib.suppress(OSError, HwlError):
                s.close()
        if clean_close:
            linux.wait_closed(CLOSE_WAIT)
    after = linux_counters(peer)
    obs.tcp = {
        "sent": sent,  # handed to sendall (a failed round's too)
        "received": received,
        "linux_read": linux.count,
        "to_linux_equal": linux.digest.hexdigest()
        == prefix_digest(obs.plan.seed, w.chunk, linux.count),
        "from_linux_equal": got.hexdigest() == prefix_digest(obs.plan.seed, w.chunk, received),
        "complete": clean_close and linux.closed_clean and linux.count == received == sent,
        "linux_error": linux.error,
        "linux_resets": {n: after[n] - before[n] for n in RESETS},
        "r2_s": r2,
    }


def _round(
    s: hwl.net.socket,
    data: bytes,
    position: int,
    obs: Observed,
    inj: Injector,
    got: hashlib._Hash,
    wait: float,
) -> tuple[bool, int, bool]:
    """One round: ``data`` out, then read back and checked. Returns whether it was
    right, the bytes read back, and whether the stream must stop (an error, or the
    client stuck: a request unanswered for ``wait``, the socket's timeout)."""
    begun = call = time.monotonic()
    back = 0
    ok = True
    op = "send"
    try:
        s.sendall(data)
        op = "recv"
        while back < len(data):
            call = time.monotonic()
            piece = s.recv(min(MAX_RECV, len(data) - back))
            now = time.monotonic()
            if not piece:
                raise ConnectionError(0, "the stream ended (EOF) mid-round")
            if piece != data[back : back + len(piece)]:
                ok = False
                obs.corrupt_reads.append({
                    "position": position + back, "size": len(piece),
                    "first": next(i for i, (a, b) in enumerate(
                        zip(piece, data[back:], strict=False)) if a != b) + position + back,
                    "t_ms": obs.ms(now),
                })  # fmt: skip
            got.update(piece)
            back += len(piece)
            obs.timeline.append([obs.ms(now) or 0.0, len(piece), 1 if ok else 0])
            inj.after_op(len(piece))
    except OSError as exc:
        now = time.monotonic()
        name = "EOF" if isinstance(exc, ConnectionError) and not exc.errno else errno_name(exc)
        if isinstance(exc, TimeoutError) and now - call >= wait - 0.5:  # not INET's abort
            obs.timed_out = f"{op} at byte {position + back}: no answer in {wait:.0f} s"
        else:
            obs.errors.append({"op": op, "position": position + back, "size": len(data),
                               "errno": name, "start_ms": obs.ms(begun),
                               "t_ms": obs.ms(now)})  # fmt: skip
        return False, back, True
    return ok, back, not ok  # a byte came back wrong: the verdict is in, the stream stops


def _close(s: hwl.net.socket, obs: Observed) -> bool:
    """Our FIN, then Linux's: True when the stream ended cleanly with nothing more."""
    begun = time.monotonic()
    try:
        s.shutdown(hwl.net.SHUT_WR)
        rest = s.recv(MAX_RECV)
    except OSError as exc:
        obs.errors.append({"op": "close", "position": obs.moved, "size": 0,
                           "errno": errno_name(exc), "start_ms": obs.ms(begun),
                           "t_ms": obs.ms(time.monotonic())})  # fmt: skip
        return False
    if rest:
        obs.corrupt_reads.append({"position": obs.moved, "size": len(rest), "first": obs.moved,
                                  "t_ms": obs.ms(time.monotonic()), "extra": True})  # fmt: skip
        return False
    return True
