"""hwl bench nic: each NIC driver against the stub's native loop and Linux's stack.

Per NIC, on its own machine (profile ``ne2k``, ``rtl8139`` or ``e1000``), native
first on ``machine.link`` before the kernel takes it, as bench/disk.py does:

- ``<nic>_native_tx64_pps``: the stub's own loop sending 64-byte frames
  (hwl.hw.nic_native, as many per doorbell as the driver may batch; the median
  of five runs of 20,000 frames);
- ``<nic>_tx64_pps`` / ``<nic>_tx1514_pps``: frames/s a user process pushes
  through the driver (NDEV SENDs of as many frames as the driver takes in one
  call, its INIT reply's max_send, at most 100; the median of five rounds);
  ``<nic>_tx64_ratio`` is tx64 over the native loop (target >= 0.5);
- ``<nic>_rx64_pps``: frames/s the client receives while Linux floods the card
  from the namespace (a raw socket; no native limit is printed for it);
- ``<nic>_echo_rtt_p50_us`` (min, p99): an ICMP echo to Linux and its reply,
  frame by frame through the driver;
- ``<nic>_kill_to_frame_ms``: SIGKILL of the driver while Linux floods it, to the
  first flood frame the client receives from the new incarnation (p50 over
  ``KILLS`` kills; target <= 100 ms).
Not a timed test: absolute figures move 2-3x between runs and hosts.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import time

from hwl.benchmarks import Targets, report
from hwl.hw import ether
from hwl.system.nicrig import GUEST_IP, LINUX_IP, NATIVE_NAMES, Flood, Nic, nic_up

PROFILES = {name: profile for profile, name in NATIVE_NAMES.items()}  # NIC -> its profile
TX_FRAMES = 20_000
TX_ROUNDS = 5
ECHOES = 200
KILLS = 10
TARGETS: Targets = {
    **{f"{n}_tx64_ratio": (">=", 0.5) for n in PROFILES},
    **{f"{n}_kill_to_frame_ms": ("<=", 100.0) for n in PROFILES},
}


def tx_pps(nic: Nic, size: int, count: int) -> float:
    """The median of TX_ROUNDS rounds of ``count`` frames (as the native loop's)."""
    frame = ether.ethernet(ether.BROADCAST, nic.mac, ether.ETH_P_TEST, bytes(size - 14))
    assert nic.dev.card is not None
    chunk = [frame] * min(100, nic.dev.card.max_send)  # what the driver takes per call
    nic.dev.send(chunk)  # warm-up
    rounds = []
    for _ in range(TX_ROUNDS):
        start = time.perf_counter()
        sent = 0
        while sent < count:
            sent += nic.dev.send(chunk)
        rounds.append(sent / (time.perf_counter() - start))
    return statistics.median(rounds)


def rx_pps(nic: Nic, seconds: float = 2.0) -> float:
    with Flood(nic, size=64, seconds=seconds + 1):
        nic.dev.recv(timeout=0.5)
        got, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            got += len(nic.dev.recv(timeout=0.2))
        return got / (time.perf_counter() - start)


def echo_rtts(nic: Nic, count: int) -> list[float]:
    linux = nic.arp().sender_mac
    me, them = ether.ip_bytes(GUEST_IP), ether.ip_bytes(LINUX_IP)
    rtts = []
    for seq in range(count):
        request = ether.icmp_echo(nic.mac, linux, me, them, 0x6877, seq, bytes(56))
        start = time.perf_counter()
        nic.dev.send([request])
        deadline = start + 1.0
        while time.perf_counter() < deadline:
            frames = nic.dev.recv(timeout=0.2)
            if any((e := ether.parse_echo(f)) and not e.request and e.seq == seq for f in frames):
                rtts.append((time.perf_counter() - start) * 1e6)
                break
    return rtts


def kill_to_frame_ms(nic: Nic, kills: int) -> list[float]:
    times = []
    # bounded by time only: while a card takes no frames (a dead e1000, a full
    # ne2k ring) the TAP drops them fast, and a frame count ran out in a few kills
    with Flood(nic, size=64, count=10**9, seconds=kills * 5.0):
        for _ in range(kills):
            pid, ep = nic.service_pid(), nic.dev.endpoint
            start = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            nic.dev.reopen(timeout=10, old=ep)
            while time.perf_counter() - start < 10:
                if any(f[12:14] == b"\x88\xb5" for f in nic.dev.recv(timeout=0.05)):
                    times.append((time.perf_counter() - start) * 1e3)
                    break
            time.sleep(0.2)
    return times


def measure(name: str, profile: str, accel: str) -> dict[str, float]:
    figures: dict[str, float] = {}
    with nic_up(profile, accel=accel, native=True) as nic:
        native = nic.native_pps
        figures[f"{name}_native_tx64_pps"] = native
        nic.arp(timeout=10)
        figures[f"{name}_tx64_pps"] = tx64 = tx_pps(nic, 64, TX_FRAMES)
        figures[f"{name}_tx64_ratio"] = tx64 / native
        figures[f"{name}_tx1514_pps"] = tx_pps(nic, 1514, TX_FRAMES // 4)
        figures[f"{name}_rx64_pps"] = rx_pps(nic)
        rtts = sorted(echo_rtts(nic, ECHOES))
        figures[f"{name}_echo_rtt_p50_us"] = statistics.median(rtts)
        figures[f"{name}_echo_rtt_min_us"] = rtts[0]
        figures[f"{name}_echo_rtt_p99_us"] = rtts[int(len(rtts) * 0.99) - 1]
        figures[f"{name}_echo_lost"] = ECHOES - len(rtts)
        kills = kill_to_frame_ms(nic, KILLS)
        figures[f"{name}_kill_to_frame_ms"] = statistics.median(kills)
        figures[f"{name}_kill_to_frame_max_ms"] = max(kills)
        figures[f"{name}_kill_lost"] = KILLS - len(kills)  # no frame within 10 s
    return figures


def main(args: argparse.Namespace) -> int:
    names = [args.nic] if getattr(args, "nic", None) else list(PROFILES)
    figures: dict[str, float] = {}
    accel = args.accel
    for name in names:
        figures.update(measure(name, PROFILES[name], accel))
    targets = {k: v for k, v in TARGETS.items() if k in figures}
    report("nic", figures, targets, accel, args.json)
    return 0
