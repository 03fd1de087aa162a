"""ARP packets and the ArpTable: reply, learn, cache expiry, bounded queues, retries
and EHOSTUNREACH, gratuitous ARP (servers/inet/arp.py)."""

from __future__ import annotations

import errno

from hypothesis import given
from hypothesis import strategies as st

from hwl.hw import ether as hw
from hwl.servers.inet import arp, ether
from hwl.servers.inet.counters import Drop

MAC = bytes.fromhex("525400123456")
IP = bytes([10, 0, 2, 15])
PEER_MAC = bytes.fromhex("020000000202")
PEER_IP = bytes([10, 0, 2, 2])
OTHER_IP = bytes([10, 0, 2, 3])


class Rig:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.failed: list[tuple[bytes, int, bytes, int]] = []
        self.table = arp.ArpTable(MAC, IP, self.sent.append, lambda *args: self.failed.append(args))

    def arps(self) -> list[hw.Arp]:
        out = [a for a in (hw.parse_arp(f) for f in self.sent) if a is not None]
        self.sent.clear()
        return out


def test_build_matches_the_reference_builder() -> None:
    packet = arp.build(arp.REQUEST, PEER_MAC, PEER_IP, bytes(6), IP)
    assert packet == hw.arp_request(PEER_MAC, "10.0.2.2", "10.0.2.15")[14:]


def test_a_request_for_us_is_answered_and_its_sender_learned() -> None:
    rig = Rig()
    rig.table.input(hw.arp_request(PEER_MAC, "10.0.2.2", "10.0.2.15")[14:], 0.0)
    [reply] = rig.arps()
    assert reply == hw.Arp(arp.REPLY, MAC, IP, PEER_MAC, PEER_IP)
    assert rig.table.lookup(PEER_IP, 1.0) == PEER_MAC
    assert rig.table.counters.learned == 1 and rig.table.counters.replies_out == 1


def test_a_request_for_another_host_is_ignored_and_not_learned() -> None:
    rig = Rig()
    rig.table.input(hw.arp_request(PEER_MAC, "10.0.2.2", "10.0.2.3")[14:], 0.0)
    assert rig.sent == [] and rig.table.lookup(PEER_IP, 0.0) is None


def test_a_known_sender_is_refreshed_by_any_packet() -> None:
    rig = Rig()
    rig.table.input(hw.arp_request(PEER_MAC, "10.0.2.2", "10.0.2.15")[14:], 0.0)
    new_mac = bytes.fromhex("020000000999")
    rig.table.input(hw.arp_request(new_mac, "10.0.2.2", "10.0.2.3")[14:], 50.0)
    assert rig.table.lookup(PEER_IP, 100.0) == new_mac


def test_probes_and_our_own_echo_teach_nothing() -> None:
    rig = Rig()
    rig.table.input(arp.build(arp.REQUEST, PEER_MAC, bytes(4), bytes(6), IP), 0.0)
    assert rig.table.cache == {} and len(rig.arps()) == 1  # a probe is still answered
    rig.table.input(arp.build(arp.REPLY, MAC, PEER_IP, MAC, IP), 0.0)
    assert rig.table.cache == {}


def test_entries_expire_after_a_minute() -> None:
    rig = Rig()
    rig.table.input(hw.arp_reply(PEER_MAC, "10.0.2.2", MAC, IP)[14:], 10.0)
    assert rig.table.lookup(PEER_IP, 69.9) == PEER_MAC
    assert rig.table.lookup(PEER_IP, 70.0) is None
    rig.table.tick(70.0)
    assert rig.table.cache == {} and rig.table.counters.expired == 1


def test_output_queues_three_resolves_and_flushes_in_order() -> None:
    rig = Rig()
    for n in range(4):
        rig.table.output(PEER_IP, ether.ETH_P_IP, bytes([n]) * 30, 0.0)
    [request] = rig.arps()
    assert request == hw.Arp(arp.REQUEST, MAC, IP, bytes(6), PEER_IP)
    assert rig.table.counters.queue_drops == 1
    rig.table.input(hw.arp_reply(PEER_MAC, "10.0.2.2", MAC, IP)[14:], 0.5)
    frames = [ether.parse(f) for f in rig.sent]
    assert [f.payload[0] for f in frames if isinstance(f, ether.Frame)] == [1, 2, 3]
    assert all(isinstance(f, ether.Frame) and f.dst == PEER_MAC for f in frames)
    rig.sent.clear()
    rig.table.output(PEER_IP, ether.ETH_P_IP, b"now", 0.6)
    assert len(rig.sent) == 1 and rig.table.pending == {}


def test_three_requests_a_second_apart_then_ehostunreach() -> None:
    rig = Rig()
    rig.table.output(OTHER_IP, ether.ETH_P_IP, b"a", 0.0)
    rig.table.output(OTHER_IP, ether.ETH_P_IP, b"b", 0.1)
    times = [0.0]
    now = 0.0
    assert len(rig.arps()) == 1
    while now < 5.0 and not rig.failed:
        now = round(now + 0.1, 1)
        rig.table.tick(now)
        if rig.arps():
            times.append(now)
    assert times == [0.0, 1.0, 2.0]
    assert now == 3.0
    assert rig.failed == [
        (OTHER_IP, ether.ETH_P_IP, b"a", errno.EHOSTUNREACH),
        (OTHER_IP, ether.ETH_P_IP, b"b", errno.EHOSTUNREACH),
    ]
    assert rig.table.pending == {} and rig.table.deadline() is None


def test_gratuitous_arp_announces_our_address() -> None:
    rig = Rig()
    rig.table.announce()
    [frame] = rig.sent
    assert frame[:6] == ether.BROADCAST and len(frame) == 60
    assert hw.parse_arp(frame) == hw.Arp(arp.REQUEST, MAC, IP, bytes(6), IP)


def test_the_cache_is_bounded() -> None:
    rig = Rig()
    for n in range(arp.MAX_ENTRIES + 10):
        sender = bytes([10, 1, n >> 8, n & 0xFF])
        rig.table.input(arp.build(arp.REQUEST, PEER_MAC, sender, bytes(6), IP), float(n))
    assert len(rig.table.cache) == arp.MAX_ENTRIES
    assert bytes([10, 1, 0, 0]) not in rig.table.cache


@given(st.binary(max_size=100))
def test_parse_and_input_never_raise(data: bytes) -> None:
    assert isinstance(arp.parse(data), (arp.Packet, Drop))
    rig = Rig()
    rig.table.input(data, 0.0)
    assert len(rig.sent) <= 1


@given(st.integers(1, 2), st.binary(min_size=6, max_size=6), st.binary(min_size=4, max_size=4))
def test_build_then_parse(op: int, mac: bytes, ip: bytes) -> None:
    assert arp.parse(arp.build(op, mac, ip, MAC, IP)) == arp.Packet(op, mac, ip, MAC, IP)


def test_another_host_claiming_our_address_teaches_nothing() -> None:
    rig = Rig()
    rig.table.input(arp.build(arp.REQUEST, PEER_MAC, IP, bytes(6), IP), 0.0)
    assert rig.table.cache == {} and rig.sent == [] and rig.table.counters.conflicts == 1
