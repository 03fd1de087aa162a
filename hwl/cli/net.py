"""``hwl net frames PROFILE``: a NIC driver's quick check, frame by frame.

Boots the profile (its NIC driver under RS, Linux's stack in the machine's
network namespace), opens the driver as an NDEV client, sends an ARP request for
Linux's 10.0.2.2 and an ICMP echo request, and prints both replies with their
round trips. Exit status 1 if Linux did not answer.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from hwl.hw import ether
from hwl.ipc.client import Connection
from hwl.machine.machine import Machine
from hwl.system.boot import System
from hwl.system.ndev import NetDevice

GUEST_IP, LINUX_IP = "10.0.2.15", "10.0.2.2"
NIC_LABELS = ("dp8390", "rtl8139", "e1000")


def _first(dev: NetDevice, frame: bytes, match: Callable[[bytes], bool], timeout: float) -> float:
    """Send ``frame`` until a frame ``match``es (each try waits 0.2 s); its round trip in µs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        start = time.perf_counter()
        dev.send([frame])
        for _ in range(4):
            if any(match(f) for f in dev.recv(timeout=0.05)):
                return (time.perf_counter() - start) * 1e6
    return -1.0


def cmd_frames(args: argparse.Namespace) -> int:
    machine = Machine(args.profile, accel=args.accel, keep_run_dir=args.keep_run_dir)
    with machine, System.start(machine) as system:
        labels = [s.label for s in system.rs.status() if s.label in NIC_LABELS]
        if args.label:
            labels = [args.label]
        if not labels:
            print(f"no NIC driver in profile {args.profile} (known: {', '.join(NIC_LABELS)})")
            return 1
        ok = True
        with Connection.attach(Path(machine.run_dir) / "kernel.sock") as conn:
            for label in labels:
                ok &= _check(NetDevice(conn, label))
        return 0 if ok else 1


def _check(dev: NetDevice) -> bool:
    card = dev.open()
    print(f"{dev.label}: {card.name} {card.hwaddr.hex(':')} link {'up' if card.link else 'down'}")
    linux = ether.ip_bytes(LINUX_IP)
    replies: list[ether.Arp] = []

    def is_reply(f: bytes) -> bool:
        arp = ether.parse_arp(f)
        if arp is not None and arp.op == 2 and arp.sender_ip == linux:
            replies.append(arp)
        return bool(replies)

    rtt = _first(dev, ether.arp_request(card.hwaddr, GUEST_IP, LINUX_IP), is_reply, 5.0)
    if not replies:
        print(f"  ARP who-has {LINUX_IP}: no reply in 5 s; driver counters {dev.stats}")
        return False
    mac = replies[0].sender_mac
    print(f"  ARP who-has {LINUX_IP}: {LINUX_IP} is-at {mac.hex(':')} ({rtt:.0f} µs)")
    payload = b"hwl net frames".ljust(56, b".")
    echo = ether.icmp_echo(card.hwaddr, mac, ether.ip_bytes(GUEST_IP), linux, 1, 1, payload)

    def is_echo(f: bytes) -> bool:
        e = ether.parse_echo(f)
        return e is not None and not e.request and e.payload == payload

    rtt = _first(dev, echo, is_echo, 5.0)
    print(f"  ICMP echo to {LINUX_IP}: " + (f"reply, same payload ({rtt:.0f} µs)" if rtt >= 0
                                           else "no reply"))  # fmt: skip
    return rtt >= 0


def add_parser(
    top: argparse._SubParsersAction[argparse.ArgumentParser],
    machine_opts: Callable[[argparse.ArgumentParser], None],
) -> None:
    net = top.add_parser("net", help="network drivers").add_subparsers(dest="action", required=True)
    frames = net.add_parser("frames", help="ARP and ICMP echo to Linux through each NIC driver")
    machine_opts(frames)
    frames.add_argument("--label", help="only this driver (dp8390, rtl8139, e1000)")
    frames.set_defaults(func=cmd_frames)
