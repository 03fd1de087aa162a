"""The Stack glue without a network: ARP before IP output, ping both ways, UDP echo,
port unreachable, counted drops, TCP's hooks (servers/inet/stack.py)."""

from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwl.hw import ether as hw
from hwl.servers.inet import arp, ether, icmp, ipv4, udp
from hwl.servers.inet.checksum import checksum
from hwl.servers.inet.stack import Stack, StackError

MAC = bytes.fromhex("525400123456")
IP = ipv4.address("10.0.2.15")
PEER_MAC = bytes.fromhex("020000000202")
PEER = ipv4.address("10.0.2.2")
MASK = ipv4.address("255.255.255.0")


def make_stack() -> Stack:
    stack = Stack()
    stack.add_interface("eth0", MAC, ipv4.Config(IP, MASK, PEER), 0.0)
    [(ifname, gratuitous)] = stack.take_output()
    assert ifname == "eth0" and hw.parse_arp(gratuitous) == hw.Arp(1, MAC, IP, bytes(6), IP)
    return stack


def from_peer(proto: int, payload: bytes, *, dst: bytes = IP, ident: int = 1) -> bytes:
    return hw.ethernet(MAC, PEER_MAC, ether.ETH_P_IP, hw.ipv4(PEER, dst, proto, payload, ident))


def learned(stack: Stack) -> Stack:
    assert stack.input("eth0", hw.arp_request(PEER_MAC, "10.0.2.2", "10.0.2.15"), 0.0)
    return stack


def ip_of(frame: bytes) -> ipv4.Packet:
    decoded = ether.parse(frame)
    assert isinstance(decoded, ether.Frame) and decoded.ethertype == ether.ETH_P_IP
    packet = ipv4.parse(decoded.payload)
    assert isinstance(packet, ipv4.Packet)
    return packet


def test_ping_from_the_peer_is_answered() -> None:
    stack = learned(make_stack())
    [(_, frame)] = stack.input("eth0", hw.icmp_echo(PEER_MAC, MAC, PEER, IP, 5, 6, b"abc"), 1.0)
    echo = hw.parse_echo(frame)
    assert echo == hw.Echo(MAC, IP, PEER, False, 5, 6, b"abc")
    assert stack.icmp.echo_requests == 1 and stack.icmp.tx == 1


def test_output_waits_for_arp_and_ping_gets_its_reply() -> None:
    stack = make_stack()
    seq = stack.ping(PEER, 1.0, b"hello")
    [(_, request)] = stack.take_output()
    assert hw.parse_arp(request) == hw.Arp(1, MAC, IP, bytes(6), PEER)
    [(_, frame)] = stack.input("eth0", hw.arp_reply(PEER_MAC, "10.0.2.2", MAC, IP), 1.1)
    echo = hw.parse_echo(frame)
    assert echo is not None and echo.request and echo.seq == seq and echo.payload == b"hello"
    assert (
        stack.input(
            "eth0",
            hw.icmp_echo(PEER_MAC, MAC, PEER, IP, echo.ident, seq, b"hello", reply=True),
            1.3,
        )
        == []
    )
    [reply] = stack.echo_replies()
    assert (reply.src, reply.seq, reply.payload) == (PEER, seq, b"hello")
    assert reply.rtt == pytest.approx(0.3)


def test_a_default_route_resolves_the_gateway() -> None:
    stack = learned(make_stack())
    stack.ping(ipv4.address("192.0.2.1"), 0.0)
    [(_, frame)] = stack.take_output()
    assert frame[:6] == PEER_MAC and ip_of(frame).dst == ipv4.address("192.0.2.1")


def test_udp_echo_and_port_unreachable() -> None:
    stack = learned(make_stack())
    sock = stack.udp_bind(port=7)
    assert stack.input("eth0", from_peer(17, udp.build(PEER, IP, 40000, 7, b"ping")), 0.1) == []
    received = sock.recv()
    assert received == udp.Received(PEER, 40000, b"ping")
    stack.udp_send(sock, received.src, received.src_port, received.payload, 0.2)
    [(_, frame)] = stack.take_output()
    packet = ip_of(frame)
    assert udp.parse(packet.payload, packet.src, packet.dst) == udp.Datagram(7, 40000, b"ping")
    offending = from_peer(17, udp.build(PEER, IP, 40000, 9, b"closed"))
    [(_, frame)] = stack.input("eth0", offending, 0.3)
    message = icmp.parse(ip_of(frame).payload)
    assert isinstance(message, icmp.Message) and (message.type, message.code) == (3, 3)
    assert message.payload == offending[14 : 14 + 28]
    assert stack.udp.no_port == 1 and stack.icmp.unreach_out == 1


def test_port_unreachable_is_rate_limited() -> None:
    stack = learned(make_stack())
    sent = 0
    for n in range(30):
        frame = from_peer(17, udp.build(PEER, IP, 40000, 9, b"x"), ident=n)
        sent += len(stack.input("eth0", frame, 1.0))
    assert sent == 10 and stack.icmp.rate_limited == 20
    assert len(stack.input("eth0", from_peer(17, udp.build(PEER, IP, 40000, 9, b"x")), 1.1)) == 1


def test_no_unreachable_for_broadcasts() -> None:
    stack = learned(make_stack())
    broadcast = ipv4.address("10.0.2.255")
    assert (
        stack.input("eth0", from_peer(17, udp.build(PEER, broadcast, 1, 9, b""), dst=broadcast), 0)
        == []
    )
    assert stack.udp.no_port == 1 and stack.icmp.unreach_out == 0


def test_full_queues_drop_and_count() -> None:
    stack = learned(make_stack())
    sock = stack.udp_bind(port=7, limit=2)
    for n in range(5):
        stack.input("eth0", from_peer(17, udp.build(PEER, IP, 1, 7, bytes([n])), ident=n), 0)
    assert stack.udp.rx == 5 and stack.udp.queue_full == 3 and sock.drops == 3


def bad_frames() -> dict[str, tuple[bytes, str, str]]:
    """Bad frames from the peer, with the counter set and field each must bump."""
    good = hw.ipv4(PEER, IP, 1, icmp.echo_request(1, 1, b"x"))

    def patched(raw: bytes, **fields: int) -> bytes:
        vihl, tos, total, ident, frag, ttl, proto, _sum, src, dst = struct.unpack_from(
            "!BBHHHBBH4s4s", raw
        )
        values = dict(vihl=vihl, total=total, frag=frag)
        values.update(fields)
        header = struct.pack(
            "!BBHHHBBH4s4s",
            values["vihl"],
            tos,
            values["total"],
            ident,
            values["frag"],
            ttl,
            proto,
            0,
            src,
            dst,
        )
        header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
        return header + raw[20:]

    def frame(payload: bytes, ethertype: int = ether.ETH_P_IP) -> bytes:
        return hw.ethernet(MAC, PEER_MAC, ethertype, payload)

    bad_sum = good[:10] + bytes([good[10] ^ 0xFF]) + good[11:]
    bad_udp = bytearray(udp.build(PEER, IP, 1, 7, b"data"))
    bad_udp[-1] ^= 1
    return {
        "short": (frame(b"")[:10], "eth0.ether", "runt"),
        "unknown type": (frame(bytes(46), 0x88B5), "eth0.ether", "unknown_type"),
        "ipv6": (frame(bytes(46), ether.ETH_P_IPV6), "eth0.ether", "ipv6"),
        "802.3": (frame(bytes(46), 46), "eth0.ether", "ieee8023"),
        "truncated ip": (frame(good[:19]), "ip", "truncated"),
        "bad ip checksum": (frame(bad_sum), "ip", "bad_checksum"),
        "ihl < 5": (frame(patched(good, vihl=0x44)), "ip", "bad_ihl"),
        "length beyond frame": (frame(patched(good, total=len(good) + 40)), "ip", "bad_length"),
        "fragment": (frame(patched(good, frag=ipv4.MF)), "ip", "fragments"),
        "bad udp checksum": (frame(hw.ipv4(PEER, IP, 17, bytes(bad_udp))), "udp", "bad_checksum"),
        "bad icmp checksum": (
            frame(hw.ipv4(PEER, IP, 1, b"\x08\x00\x00\x00\x00\x01\x00\x01")),
            "icmp",
            "bad_checksum",
        ),
        "not for us": (
            frame(hw.ipv4(PEER, ipv4.address("10.0.2.99"), 1, icmp.echo_request(1, 1, b""))),
            "ip",
            "not_ours",
        ),
        "other mac": (
            hw.ethernet(PEER_MAC, PEER_MAC, ether.ETH_P_IP, good),
            "eth0.ether",
            "not_ours",
        ),
    }


@pytest.mark.parametrize("name", list(bad_frames()))
def test_bad_frames_are_dropped_counted_and_the_next_ping_answered(name: str) -> None:
    stack = learned(make_stack())
    frame, group, field = bad_frames()[name]
    before = stack.counters()
    assert stack.input("eth0", frame, 1.0) == []
    after = stack.counters()
    assert after[group][field] == before[group][field] + 1
    changed = {(g, f) for g in after for f in after[g] if after[g][f] != before[g][f]}
    assert (group, field) in changed
    out = stack.input("eth0", hw.icmp_echo(PEER_MAC, MAC, PEER, IP, 1, 2, b"next"), 1.1)
    assert len(out) == 1 and hw.parse_echo(out[0][1]) is not None


def test_tcp_hooks() -> None:
    stack = learned(make_stack())
    seen: list[tuple[bytes, bytes, bytes, float]] = []
    stack.tcp_input = lambda src, dst, segment, now: seen.append((src, dst, segment, now))
    stack.input("eth0", from_peer(6, b"segment-bytes"), 2.0)
    assert seen == [(PEER, IP, b"segment-bytes", 2.0)]
    assert stack.source_for(PEER) == IP
    stack.ip_output(PEER, ipv4.PROTO_TCP, b"reply", 2.1, df=True)
    [(_, frame)] = stack.take_output()
    packet = ip_of(frame)
    assert packet.df and packet.proto == 6 and packet.payload == b"reply" and packet.ttl == 64
    with pytest.raises(OSError) as caught:
        stack.ip_output(PEER, 6, bytes(1481), 2.2)
    assert caught.value.errno == errno.EMSGSIZE


def test_tcp_without_a_hook_is_counted() -> None:
    stack = learned(make_stack())
    stack.input("eth0", from_peer(6, b"segment"), 0)
    assert stack.ip.no_protocol == 1


def test_unresolved_next_hop_fails_tcp_with_ehostunreach() -> None:
    stack = make_stack()
    failed: list[tuple[bytes, int, bytes]] = []
    stack.tcp_unreachable = lambda dst, err, segment: failed.append((dst, err, segment))
    other = ipv4.address("10.0.2.77")
    stack.ip_output(other, ipv4.PROTO_TCP, b"syn", 0.0, df=True)
    requests = len(stack.take_output())
    now = 0.0
    while not failed and now < 10.0:
        now = stack.deadline() or 10.0
        requests += len(stack.tick(now))
    assert failed == [(other, errno.EHOSTUNREACH, b"syn")] and requests == 3 and now == 3.0


def test_no_route_is_enetunreach() -> None:
    stack = Stack()
    stack.add_interface("eth0", MAC, ipv4.Config(IP, MASK), 0.0)
    with pytest.raises(OSError) as caught:
        stack.ip_output(ipv4.address("8.8.8.8"), 17, b"", 0.0)
    assert caught.value.errno == errno.ENETUNREACH
    with pytest.raises(StackError):
        stack.input("eth9", b"", 0.0)


def test_a_disabled_interface_drops_and_reenabling_announces() -> None:
    stack = learned(make_stack())
    stack.disable("eth0")
    assert stack.input("eth0", hw.icmp_echo(PEER_MAC, MAC, PEER, IP, 1, 1, b""), 0.0) == []
    stack.enable("eth0", 1.0)
    [(_, frame)] = stack.take_output()
    assert hw.parse_arp(frame) == hw.Arp(arp.REQUEST, MAC, IP, bytes(6), IP)
    assert stack.interface("eth0").counters.down == 1
    assert stack.interface("eth0").arp.lookup(PEER, 1.0) == PEER_MAC  # the cache survives


def test_two_interfaces_route_by_network() -> None:
    stack = make_stack()
    mac1 = bytes.fromhex("525400123457")
    stack.add_interface("eth1", mac1, ipv4.Config(ipv4.address("192.168.5.1"), MASK), 0.0)
    stack.take_output()
    stack.ping(ipv4.address("192.168.5.9"), 0.0)
    stack.ping(PEER, 0.0)
    assert [ifname for ifname, _ in stack.take_output()] == ["eth1", "eth0"]
    assert set(stack.counters()) == {
        "eth0.ether",
        "eth0.arp",
        "eth1.ether",
        "eth1.arp",
        "ip",
        "icmp",
        "udp",
    }


@settings(max_examples=300)
@given(st.binary(max_size=200), st.sampled_from([ether.ETH_P_IP, ether.ETH_P_ARP, 0x88B5]))
def test_any_frame_is_handled_without_raising(payload: bytes, ethertype: int) -> None:
    stack = make_stack()
    stack.udp_bind(port=7)
    out = stack.input("eth0", hw.ethernet(MAC, PEER_MAC, ethertype, payload), 0.0)
    assert len(out) <= 2


@given(st.binary(min_size=20, max_size=100), st.integers(0, 7))
def test_any_ip_header_with_a_fixed_checksum_is_handled(raw: bytes, proto_pick: int) -> None:
    stack = learned(make_stack())
    header = bytearray(raw[:20])
    header[0] = 0x40 | (header[0] & 0x0F)
    header[9] = (1, 6, 17, 17, 1, 1, 17, 50)[proto_pick]
    header[12:20] = PEER + IP
    header[10:12] = b"\0\0"
    header[10:12] = struct.pack("!H", checksum(bytes(header)))
    out = stack.input(
        "eth0", hw.ethernet(MAC, PEER_MAC, ether.ETH_P_IP, bytes(header) + raw[20:]), 0.0
    )
    assert len(out) <= 1


@pytest.mark.parametrize(
    "source", ["10.0.2.255", "255.255.255.255", "224.0.0.1", "240.0.0.1", "0.1.2.3"]
)
def test_martian_sources_are_dropped(source: str) -> None:
    stack = learned(make_stack())
    stack.udp_bind(port=7)
    frame = hw.ethernet(
        MAC,
        PEER_MAC,
        ether.ETH_P_IP,
        hw.ipv4(ipv4.address(source), IP, 1, icmp.echo_request(1, 1, b"")),
    )
    assert stack.input("eth0", frame, 0.0) == []
    assert stack.ip.bad_source == 1 and stack.icmp.rx == 0


def test_datagrams_to_ourselves_loop_back_at_the_next_tick() -> None:
    stack = make_stack()
    server = stack.udp_bind(port=7)
    client = stack.udp_bind()
    stack.udp_send(client, IP, 7, b"to me", 0.0)
    seq = stack.ping(IP, 0.0, b"self")
    assert server.recv() is None and stack.deadline() == 0.0
    assert stack.tick(0.0) == []
    assert server.recv() == udp.Received(IP, client.port, b"to me")
    assert stack.deadline() == 0.0  # the echo reply, caused by the request, waits a tick
    assert stack.tick(0.1) == []
    [reply] = stack.echo_replies()
    assert (reply.src, reply.seq, reply.payload) == (IP, seq, b"self")
    assert stack.deadline() is None and stack.ip.loopback == 3


def test_the_loopback_queue_is_bounded() -> None:
    stack = make_stack()
    sock = stack.udp_bind()
    for _ in range(256):
        stack.udp_send(sock, IP, 9, b"", 0.0)
    with pytest.raises(OSError) as caught:
        stack.udp_send(sock, IP, 9, b"", 0.0)
    assert caught.value.errno == errno.ENOBUFS


def test_a_new_config_moves_routes_and_is_announced() -> None:
    stack = learned(make_stack())
    new = ipv4.address("10.0.3.15")
    stack.set_config("eth0", ipv4.Config(new, MASK), 1.0)
    [(_, frame)] = stack.take_output()
    assert hw.parse_arp(frame) == hw.Arp(arp.REQUEST, MAC, new, bytes(6), new)
    assert stack.source_for(ipv4.address("10.0.3.1")) == new
    with pytest.raises(OSError):
        stack.source_for(PEER)
    assert stack.input("eth0", hw.icmp_echo(PEER_MAC, MAC, PEER, IP, 1, 1, b""), 1.1) == []
    assert stack.ip.not_ours == 1
