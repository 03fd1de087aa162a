"""ICMP: echo reply, the echo API, port unreachable and its rate limit
(servers/inet/icmp.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hwl.hw import ether as hw
from hwl.servers.inet import icmp, ipv4
from hwl.servers.inet.counters import Drop

A = ipv4.address("10.0.2.15")
B = ipv4.address("10.0.2.2")


def test_echo_reply_copies_id_seq_and_payload() -> None:
    request = hw.icmp_echo(bytes(6), bytes(6), B, A, 0x1234, 7, b"payload!")[34:]
    message = icmp.parse(request)
    assert isinstance(message, icmp.Message) and message.type == icmp.ECHO_REQUEST
    reply = icmp.echo_reply(message)
    assert reply == hw.icmp_echo(bytes(6), bytes(6), A, B, 0x1234, 7, b"payload!", reply=True)[34:]


def test_parse_checks_length_and_checksum() -> None:
    assert icmp.parse(b"\x08\x00\x00") == Drop("truncated", "3 bytes")
    good = icmp.echo_request(1, 2, b"abc")
    bad = good[:-1] + bytes([good[-1] ^ 1])
    result = icmp.parse(bad)
    assert isinstance(result, Drop) and result.reason == "bad_checksum"


def test_port_unreachable_quotes_header_and_eight_bytes() -> None:
    datagram = ipv4.build(B, A, 17, bytes(range(30)), 3)
    packet = ipv4.parse(datagram)
    assert isinstance(packet, ipv4.Packet)
    message = icmp.parse(icmp.port_unreachable(packet.header, packet.payload))
    assert isinstance(message, icmp.Message)
    assert (message.type, message.code, message.ident, message.seq) == (3, 3, 0, 0)
    assert message.payload == datagram[:28]


def test_token_bucket_bursts_then_refills_at_its_rate() -> None:
    bucket = icmp.TokenBucket(rate=10.0, burst=3.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(0.05)
    assert bucket.take(0.1)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(50.0)  # time going back adds nothing


def test_pinger_matches_each_reply_once_with_its_rtt() -> None:
    pinger = icmp.Pinger(0x4857)
    seq, message = pinger.request(B, b"x" * 8, 1.0)
    request = icmp.parse(message)
    assert isinstance(request, icmp.Message) and request.seq == seq
    reply = icmp.parse(icmp.echo_reply(request))
    assert isinstance(reply, icmp.Message)
    assert pinger.match(A, reply, 1.5) is None  # from the wrong host
    matched = pinger.match(B, reply, 1.25)
    assert matched == icmp.EchoReply(B, 0x4857, seq, b"x" * 8, 0.25)
    assert pinger.match(B, reply, 1.3) is None
    assert pinger.take() == [matched] and pinger.take() == []


def test_pinger_forgets_the_oldest_beyond_its_bound() -> None:
    pinger = icmp.Pinger(1)
    for n in range(icmp.MAX_OUTSTANDING + 5):
        pinger.request(B, b"", float(n))
    assert len(pinger.outstanding) == icmp.MAX_OUTSTANDING


@given(st.binary(max_size=1500))
def test_parse_never_raises(data: bytes) -> None:
    result = icmp.parse(data)
    assert isinstance(result, (icmp.Message, Drop))


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=1472))
def test_request_then_reply_round_trip(ident: int, seq: int, payload: bytes) -> None:
    request = icmp.parse(icmp.echo_request(ident, seq, payload))
    assert isinstance(request, icmp.Message)
    reply = icmp.parse(icmp.echo_reply(request))
    assert reply == icmp.Message(icmp.ECHO_REPLY, 0, ident, seq, payload)
