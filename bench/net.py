"""hwl bench net: INET over each NIC against Linux's own stack in the namespace.

Per NIC, on its own machine (profile ``inet-ne2k``, ``inet-rtl8139`` or ``inet``
(e1000)), RS with backoff unit 0 (a kill a second would otherwise measure RS's
2^n-second backoff, as in bench/disk.py), this process an ``hwl.net`` client and
Linux's end plain sockets made inside the namespace, driven from threads bounded
in count and time:

- ``<nic>_udp_rtt_p50_us`` (min, p99): a 64-byte UDP datagram to Linux's echo
  socket and its echo back, one at a time (``ECHOES`` round trips);
- ``<nic>_udp_tx64_pps``: 64-byte UDP datagrams a client sends through INET per
  second (``TX_DGRAMS`` SENDTOs back to back); ``<nic>_udp_tx64_delivered`` is
  the fraction Linux's socket received;
- ``<nic>_tcp_tx_mb_s`` / ``<nic>_tcp_rx_mb_s``: ``TCP_MIB`` MiB to Linux, then as
  much back on the same connection (hwl.net.demo), SHA-256 checked both
  ways; median over the runs;
- ``<nic>_under_kills_ratio``: one connection sends to Linux for 2 x runs + 1
  phases of ``--seconds`` (default 5), alternately quiet and with the NIC driver
  SIGKILLed once a second (the first 0.5 s in; each kill waits until RS shows the
  driver up again with a new pid). A run's ratio is its kills phase's MB/s (what
  Linux read in that window) over the mean of the quiet phases around it (the
  host's speed drifts), median over the runs (target >= 0.8). Every byte is
  hashed at both ends: a difference fails the benchmark.
  ``<nic>_kill_to_byte_ms`` is the median time from a kill to the end of the
  longest gap in Linux's reads in the second after it: the first byte delivered
  again; ``<nic>_kill_to_up_ms`` the median time until RS shows the driver up.
Not a timed test: absolute figures move 2-3x between runs and hosts.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import statistics
import threading
import time

import hwl.net
from hwl.benchmarks import Targets, report
from hwl.errors import HwlError
from hwl.machine.machine import Machine
from hwl.net import demo as netdemo
from hwl.system.boot import System
from hwl.system.nicrig import LinuxUdp

#: NIC -> (its inet profile, its driver's label)
PROFILES = {"ne2k_pci": ("inet-ne2k", "dp8390"), "rtl8139": ("inet-rtl8139", "rtl8139"),
            "e1000": ("inet", "e1000")}  # fmt: skip
ECHOES = 500
TX_DGRAMS = 5000
DGRAM = 64
TCP_MIB = 8
SECONDS = 5.0  # each phase of the kills figure
KILL_OFFSET = 0.5  # the first kill, seconds into a kills phase; then one a second
CHUNK = 64 << 10  # the sender's sendall size in the kills figure
TARGETS: Targets = {f"{n}_under_kills_ratio": (">=", 0.8) for n in PROFILES}


class WrongData(HwlError):
    """Linux read other bytes than hwl.net sent."""


def udp_rtts_us(machine: Machine, inet: hwl.net.Inet) -> list[float]:
    data = bytes(range(DGRAM))
    rtts = []
    with LinuxUdp(machine, echo=True, count=ECHOES + 20, seconds=120) as linux, \
            hwl.net.socket(hwl.net.AF_INET, hwl.net.SOCK_DGRAM, inet=inet) as s:  # fmt: skip
        s.settimeout(2.0)
        for i in range(ECHOES + 20):  # the first 20: warm-up (ARP, caches)
            start = time.perf_counter()
            s.sendto(data, linux.address)
            if s.recvfrom(2048)[0] != data:
                raise WrongData("the UDP echo differs")
            if i >= 20:
                rtts.append((time.perf_counter() - start) * 1e6)
    return sorted(rtts)


def udp_tx_pps(machine: Machine, inet: hwl.net.Inet) -> tuple[float, float]:
    """Datagrams/s sent, and the fraction Linux received."""
    data = bytes(DGRAM)
    with LinuxUdp(machine, echo=False, count=TX_DGRAMS, seconds=120) as linux, \
            hwl.net.socket(hwl.net.AF_INET, hwl.net.SOCK_DGRAM, inet=inet) as s:  # fmt: skip
        s.sendto(data, linux.address)  # warm-up; bound, ARP resolved
        time.sleep(0.2)
        before = linux.received
        start = time.perf_counter()
        for _ in range(TX_DGRAMS - 1):
            s.sendto(data, linux.address)
        pps = (TX_DGRAMS - 1) / (time.perf_counter() - start)
        deadline = time.monotonic() + 2.0  # the last ones still on their way
        while linux.received - before < TX_DGRAMS - 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        return pps, (linux.received - before) / (TX_DGRAMS - 1)


def tcp_mb_s(machine: Machine, inet: hwl.net.Inet, runs: int) -> tuple[float, float]:
    """Medians of MB/s to Linux and from Linux."""
    tx, rx = [], []
    for run in range(runs + 1):  # the first: warm-up
        out, back = (
            netdemo.payload(TCP_MIB << 20, 2 * run),
            netdemo.payload(TCP_MIB << 20, 2 * run + 1),
        )
        result = netdemo.transfer(machine, inet, out, back, seconds=300)
        if not result.intact:
            raise WrongData(f"TCP {TCP_MIB} MiB each way: {result}")
        if run:
            tx.append(result.out_mb_s)
            rx.append(result.back_mb_s)
    return statistics.median(tx), statistics.median(rx)


class Phases:
    """One connection sending to Linux through quiet and kills phases."""

    def __init__(self, machine: Machine, label: str, runs: int, seconds: float) -> None:
        self.machine, self.label, self.seconds = machine, label, seconds
        self.phases = 2 * runs + 1
        self.start = 0.0
        self.killers: list[netdemo.Killer] = []

    def run(self, inet: hwl.net.Inet) -> netdemo.LinuxEnd:
        block = netdemo.payload(CHUNK, 99)
        sent = hashlib.sha256()
        count = 0
        bound = self.phases * self.seconds + 120
        with (
            netdemo.LinuxEnd(self.machine, seconds=bound, timeline=True) as linux,
            hwl.net.socket(hwl.net.AF_INET, hwl.net.SOCK_STREAM, inet=inet) as s,
        ):
            s.settimeout(60.0)
            s.connect(linux.address)
            s.sendall(block)  # warm-up: the window opened
            sent.update(block)
            count += len(block)
            self.start = time.monotonic()
            schedule = threading.Thread(target=self._schedule, daemon=True)
            schedule.start()
            while time.monotonic() < self.start + self.phases * self.seconds:
                s.sendall(block)
                sent.update(block)
                count += len(block)
            s.shutdown(hwl.net.SHUT_WR)
            s.settimeout(60.0)
            if s.recv(100) != b"":
                raise WrongData("Linux sent bytes it was not asked for")
            schedule.join(self.seconds + 60)
        for killer in self.killers:
            if killer.error is not None:
                raise HwlError(f"the killer thread failed: {killer.error}") from killer.error
        if linux.error is not None:
            raise HwlError(f"Linux's end failed: {linux.error!r}")
        if linux.count != count or linux.digest.digest() != sent.digest():
            raise WrongData(f"Linux read {linux.count} bytes of {count}, or other bytes")
        return linux

    def _schedule(self) -> None:
        """A killer for each odd phase: a kill at KILL_OFFSET and once a second after."""
        for phase in range(1, self.phases, 2):
            begin = self.start + phase * self.seconds
            kills = int(self.seconds - KILL_OFFSET) + 1
            marks = [int((begin + KILL_OFFSET + k) * 1e3) for k in range(kills)]
            killer = netdemo.Killer(self.machine.run_dir, self.label,
                                    lambda: int(time.monotonic() * 1e3), marks,
                                    seconds=self.seconds + 30)  # fmt: skip
            self.killers.append(killer)
            time.sleep(max(0.0, begin - time.monotonic()))
            killer.run()

    def window_mb_s(self, linux: netdemo.LinuxEnd, phase: int) -> float:
        begin = self.start + phase * self.seconds
        end = begin + self.seconds
        inside = [n for t, n in linux.reads if begin <= t < end]
        before = [n for t, n in linux.reads if t < begin]
        if not inside:
            return 0.0
        return (inside[-1] - (before[-1] if before else 0)) / self.seconds / 1e6


def kill_to_byte_ms(reads: list[tuple[float, int]], kill: float) -> float:
    """From ``kill`` to the end of the longest gap between Linux's reads in the
    second after it: the first byte delivered again."""
    times = [t for t, _ in reads if kill < t <= kill + 1.0]
    if not times:
        return 1e3
    edges = [kill, *times]
    gaps = [(b - a, b) for a, b in itertools.pairwise(edges)]
    return (max(gaps)[1] - kill) * 1e3


def kills_figures(machine: Machine, inet: hwl.net.Inet, label: str, runs: int,
                  seconds: float) -> dict[str, float]:  # fmt: skip
    phases = Phases(machine, label, runs, seconds)
    linux = phases.run(inet)
    quiet = [phases.window_mb_s(linux, p) for p in range(0, phases.phases, 2)]
    loud = [phases.window_mb_s(linux, p) for p in range(1, phases.phases, 2)]
    ratios = [k / statistics.mean(quiet[i : i + 2]) for i, k in enumerate(loud)]
    kills = [t for killer in phases.killers for t in killer.kills]
    ups = [t * 1e3 for killer in phases.killers for t in killer.kill_to_up]
    return {
        "tcp_quiet_mb_s": statistics.median(quiet),
        "tcp_under_kills_mb_s": statistics.median(loud),
        "under_kills_ratio": statistics.median(ratios),
        "kills": len(kills),
        "kill_to_byte_ms": statistics.median(kill_to_byte_ms(linux.reads, k) for k in kills),
        "kill_to_up_ms": statistics.median(ups),
    }


def measure(name: str, accel: str, runs: int, seconds: float) -> tuple[dict[str, float], str]:
    """The NIC's figures, and the machine's accelerator."""
    profile, label = PROFILES[name]
    figures: dict[str, float] = {}
    with (
        Machine(profile, accel=accel) as machine,
        System.start(machine, backoff_unit=0.0),
        hwl.net.Inet.attach(machine.run_dir) as inet,
    ):
        netdemo.reach(inet)
        rtts = udp_rtts_us(machine, inet)
        figures["udp_rtt_p50_us"] = statistics.median(rtts)
        figures["udp_rtt_min_us"] = rtts[0]
        figures["udp_rtt_p99_us"] = rtts[int(len(rtts) * 0.99) - 1]
        pps, delivered = udp_tx_pps(machine, inet)
        figures["udp_tx64_pps"] = pps
        figures["udp_tx64_delivered"] = delivered
        tx, rx = tcp_mb_s(machine, inet, runs)
        figures["tcp_tx_mb_s"], figures["tcp_rx_mb_s"] = tx, rx
        figures.update(kills_figures(machine, inet, label, runs, seconds))
    return {f"{name}_{key}": value for key, value in figures.items()}, machine.accel


def main(args: argparse.Namespace) -> int:
    names = [args.nic] if getattr(args, "nic", None) else list(PROFILES)
    runs = args.repeat or 3
    seconds = getattr(args, "seconds", 0) or SECONDS
    figures: dict[str, float] = {}
    accel = args.accel
    for name in names:
        found, accel = measure(name, args.accel, runs, seconds)
        figures.update(found)
    figures["runs"] = runs
    targets = {k: v for k, v in TARGETS.items() if k in figures}
    report("net", figures, targets, accel, args.json)
    return 0
