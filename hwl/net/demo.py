"""A TCP transfer between ``hwl.net`` and Linux's own stack in the machine's
namespace while the NIC driver is SIGKILLed: what ``hwl up --tcp-transfer``
shows, what tests/test_inet_big.py checks at 64 MiB and what bench/net.py times.

Linux's end is a plain socket made inside the namespace (:meth:`NetnsPeer.socket`)
and driven from a thread with a bounded lifetime; it listens and this process's
``hwl.net`` socket connects. Every byte is hashed at both ends (SHA-256).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import hwl.net
from hwl.errors import HwlError
from hwl.machine.machine import Machine
from hwl.net.status import format_interfaces
from hwl.proto.inet import MAX_RECV
from hwl.system.nicrig import LINUX_IP
from hwl.system.rs import Rs

MIB = 1 << 20
CHUNK = 64 << 10  # Linux's recv/send size
UP_TIMEOUT = 30.0  # a killed driver is up again well within this


def payload(size: int, seed: int) -> bytes:
    """``size`` pseudo-random bytes, the same for the same seed."""
    return random.Random(seed).randbytes(size)


class LinuxEnd:
    """Linux's end of one TCP connection, in a thread, for at most ``seconds``: it
    accepts one connection, reads to the peer's FIN, hashing and counting (with the
    time of each read when ``timeline``), then sends ``out`` and closes."""

    def __init__(self, machine: Machine, out: bytes = b"", *, seconds: float = 600.0,
                 timeline: bool = False) -> None:  # fmt: skip
        self.out, self.seconds, self.timeline = out, seconds, timeline
        self.digest = hashlib.sha256()
        self.count = 0
        self.reads: list[tuple[float, int]] = []  # (time.monotonic(), count after) per read
        self.error: BaseException | None = None
        self.listener = machine.peer.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind((LINUX_IP, 0))
        self.listener.listen(1)
        self.listener.settimeout(seconds)
        self.done_reading = 0.0  # time.monotonic() of the peer's FIN
        self._conn: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return LINUX_IP, int(self.listener.getsockname()[1])

    def _run(self) -> None:
        try:
            conn, _ = self.listener.accept()
            self._conn = conn
            with conn:
                conn.settimeout(self.seconds)
                self._read(conn)
                self.done_reading = time.monotonic()
                conn.sendall(self.out)
        except BaseException as exc:  # reported by the caller
            self.error = exc

    def _read(self, conn: socket.socket) -> None:
        deadline = time.monotonic() + self.seconds
        while chunk := conn.recv(CHUNK):
            self.digest.update(chunk)
            self.count += len(chunk)
            if self.timeline:
                self.reads.append((time.monotonic(), self.count))
            if time.monotonic() > deadline:
                raise TimeoutError(f"Linux still reading after {self.seconds} s")

    def abort(self) -> None:
        """End the thread now (hwl.net's side failed): a read or accept waiting for
        a peer that will not come back returns at once instead of at ``seconds``."""
        for sock in (self._conn, self.listener):
            if sock is not None:
                with contextlib.suppress(OSError):  # not connected, or closed already
                    sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> LinuxEnd:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(self.seconds)
        self.listener.close()


@dataclass
class Killer:
    """SIGKILLs the NIC driver ``label`` each time ``progress()`` passes the next of
    ``marks`` (bytes), each time waiting until RS shows it up with a new pid;
    its own connection to RS, a thread of its own."""

    run_dir: Path
    label: str
    progress: Callable[[], int]
    marks: list[int]
    seconds: float = 600.0
    kills: list[float] = field(default_factory=list)  # time.monotonic() of each
    killed: list[tuple[int, int, int]] = field(default_factory=list)  # (pid, new pid, at byte)
    kill_to_up: list[float] = field(default_factory=list)
    error: BaseException | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        try:
            deadline = time.monotonic() + self.seconds
            with Rs.attach(self.run_dir, timeout=10) as rs:
                pid = driver_pid(rs, self.label)
                for mark in self.marks:
                    while self.progress() < mark:
                        if self.stop.wait(0.002) or time.monotonic() > deadline:
                            return
                    os.kill(pid, signal.SIGKILL)
                    killed, at = time.monotonic(), self.progress()
                    self.kills.append(killed)
                    new = driver_pid(rs, self.label, not_pid=pid)
                    self.kill_to_up.append(time.monotonic() - killed)
                    self.killed.append((pid, new, at))
                    pid = new
        except BaseException as exc:  # reported by the caller
            self.error = exc


def driver_pid(rs: Rs, label: str, not_pid: int = -1) -> int:
    """``label``'s pid once RS shows it up with a pid other than ``not_pid``."""
    deadline = time.monotonic() + UP_TIMEOUT
    while True:
        row = next((r for r in rs.status() if r.label == label), None)
        if row is not None and row.state == "up" and row.pid > 0 and row.pid != not_pid:
            return row.pid
        if time.monotonic() > deadline:
            raise HwlError(f"{label} not up again within {UP_TIMEOUT} s: {row}")
        time.sleep(0.01)


@dataclass
class Result:
    """One transfer: what each side got, compared with what the other sent."""

    sent: int  # bytes hwl.net sent
    received: int  # bytes hwl.net received
    to_linux_equal: bool  # SHA-256 of what Linux read == of what hwl.net sent
    from_linux_equal: bool  # and the other way
    out_seconds: float  # connect to Linux's last byte read
    back_seconds: float  # from there to hwl.net's end of stream
    kills: int
    kill_to_up_ms: list[float]
    killed: list[tuple[int, int, int]]  # (pid, its successor's, at byte) per kill
    sent_seen: int = 0  # bytes Linux read
    error: str = ""  # an exception on either side (a reset, a timeout): "" if none

    @property
    def intact(self) -> bool:
        return not self.error and self.to_linux_equal and self.from_linux_equal

    @property
    def out_mb_s(self) -> float:
        return self.sent / self.out_seconds / 1e6 if self.out_seconds > 0 else 0.0

    @property
    def back_mb_s(self) -> float:
        return self.received / self.back_seconds / 1e6 if self.back_seconds > 0 else 0.0


def transfer(
    machine: Machine,
    inet: hwl.net.Inet,
    out: bytes,
    back: bytes = b"",
    *,
    label: str = "",
    kills: int = 0,
    seconds: float = 600.0,
) -> Result:
    """``out`` from hwl.net to Linux, then (after hwl.net's FIN) ``back`` from Linux,
    on one connection; with ``label`` and ``kills``, the driver SIGKILLed each time
    another 1/(kills+1) of all the bytes has arrived. Errors are returned, not raised."""
    total = len(out) + len(back)
    marks = [total * k // (kills + 1) for k in range(1, kills + 1)] if label else []
    got = hashlib.sha256()
    received = 0
    error = ""
    with LinuxEnd(machine, back, seconds=seconds) as linux:
        killer = Killer(machine.run_dir, label, lambda: linux.count + received, marks, seconds)
        thread = threading.Thread(target=killer.run, daemon=True)
        start = end = time.monotonic()
        try:
            with hwl.net.socket(hwl.net.AF_INET, hwl.net.SOCK_STREAM, inet=inet) as s:
                s.settimeout(min(60.0, seconds))
                s.connect(linux.address)
                start = time.monotonic()
                if marks:
                    thread.start()
                s.sendall(out)
                s.shutdown(hwl.net.SHUT_WR)
                while chunk := s.recv(MAX_RECV):
                    got.update(chunk)
                    received += len(chunk)
                end = time.monotonic()
        except OSError as exc:
            error = f"hwl.net: {exc!r}"
            linux.abort()
        killer.stop.set()
        if thread.ident is not None:
            thread.join(UP_TIMEOUT + 5)
    if linux.error is not None:
        error = error or f"Linux: {linux.error!r}"
    if killer.error is not None:
        error = error or f"killer: {killer.error!r}"
    fin = linux.done_reading or end
    return Result(
        sent=len(out),
        received=received,
        to_linux_equal=linux.count == len(out)
        and linux.digest.digest() == hashlib.sha256(out).digest(),
        from_linux_equal=received == len(back) and got.digest() == hashlib.sha256(back).digest(),
        out_seconds=fin - start,
        back_seconds=end - fin,
        kills=len(killer.kills),
        kill_to_up_ms=[t * 1e3 for t in killer.kill_to_up],
        killed=killer.killed,
        sent_seen=linux.count,
        error=error,
    )


def reach(inet: hwl.net.Inet, timeout: float = 15.0) -> None:
    """Ping Linux until it answers: an e1000 holds reception for 1 s after its
    receiver is enabled."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            hwl.net.ping(LINUX_IP, timeout=0.5, inet=inet)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise HwlError(f"Linux ({LINUX_IP}) not reachable through INET") from None


DEMO_KILLS = 3  # with RS's own backoff (1 s units): restarts at once, after 2 s, after 4 s
DEMO_SECONDS = 150.0  # a bound on the whole transfer: 8 MiB takes about 15 s here


def demo(machine: Machine, mib: int, kills: int = DEMO_KILLS) -> bool:
    """``hwl up --tcp-transfer``: ``mib`` MiB from hwl.net to Linux's own socket in
    the namespace and 1 MiB back on one connection, the NIC driver SIGKILLed
    ``kills`` times meanwhile; prints what happened; True if every byte arrived."""
    with hwl.net.Inet.attach(machine.run_dir) as inet:
        rows = hwl.net.ifstatus(inet=inet)["interfaces"]
        label = str(rows[0]["name"]) if isinstance(rows, list) and isinstance(rows[0], dict) else ""
        reach(inet)
        out, back = payload(mib * MIB, 1), payload(MIB, 2)
        print(f"\nTCP: {mib} MiB from hwl.net to Linux's own socket at {LINUX_IP} (in the "
              f"machine's namespace) and 1 MiB back, one connection; meanwhile kill -9 "
              f"{label} {kills} times:", flush=True)  # fmt: skip
        result = transfer(machine, inet, out, back, label=label, kills=kills,
                          seconds=DEMO_SECONDS)  # fmt: skip
        status = "" if result.intact else inet_state(inet)
    for (pid, new, at), up_ms in zip(result.killed, result.kill_to_up_ms, strict=True):
        print(f"  kill -9 {pid} ({label}) at {at / MIB:.1f} MiB: back as pid {new} "
              f"{up_ms:.0f} ms later")  # fmt: skip
    if result.kills > 1:
        print("  (the waits are RS's restart backoff: none the first time, then 2^n s)")
    if result.intact and result.kills == kills:
        print(f"every byte arrived: SHA-256 equal both ways ({mib} MiB to Linux, 1 MiB back); "
              f"the connection stayed up through {kills} kills of {label} (no reset, no error; "
              f"{result.out_mb_s:.1f} MB/s to Linux)")  # fmt: skip
        return True
    print(f"TCP transfer FAILED: {result.error or 'bytes differ'}; SHA-256 equal to Linux "
          f"{result.to_linux_equal}, from Linux {result.from_linux_equal}; "
          f"{result.kills} of {kills} kills; {result.sent_seen} bytes reached Linux")  # fmt: skip
    print(status)
    return False


def inet_state(inet: hwl.net.Inet) -> str:
    """INET's interfaces and counters after a failed transfer, for the report."""
    try:
        status = hwl.net.ifstatus(inet=inet)
    except OSError as exc:
        return f"INET's status: none ({exc})"
    counters = status.get("counters")
    lines = [format_interfaces(status), "INET's counters:"]
    for name, values in sorted(counters.items()) if isinstance(counters, dict) else []:
        lines.append(f"  {name}: {values!r}")
    return "\n".join(lines)
