"""TCP's pure parts one by one: sequence arithmetic across the wrap, the RTO
estimator (RFC 6298), the congestion window (RFC 5681, NewReno RFC 6582), and the
segment codec (round trip, options, checksum, and hypothesis on the decoder)."""

from __future__ import annotations

import contextlib
import struct
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwl.servers.inet.checksum import checksum, pseudo_sum
from hwl.servers.inet.tcp import seq
from hwl.servers.inet.tcp.congestion import NewReno, initial_window
from hwl.servers.inet.tcp.rto import Rto
from hwl.servers.inet.tcp.segment import (
    ACK,
    FIN,
    PSH,
    SYN,
    Segment,
    SegmentError,
    build,
    parse,
)

SRC = bytes([10, 0, 2, 15])
DST = bytes([10, 0, 2, 2])


# --- sequence numbers ---------------------------------------------------------------------


def test_sequence_order_across_the_wrap() -> None:
    top = seq.MASK
    assert seq.add(top, 1) == 0
    assert seq.add(5, -10) == seq.MOD - 5
    assert seq.lt(top, 0) and seq.gt(0, top)
    assert seq.diff(3, top) == 4 and seq.diff(top, 3) == -4
    assert seq.between(top - 1, 2, 10) and not seq.between(top - 1, 10, 10)
    assert seq.max_(top, 1) == 1 and seq.min_(top, 1) == top
    assert seq.le(7, 7) and seq.ge(7, 7) and not seq.lt(7, 7)


@given(st.integers(0, seq.MASK), st.integers(-(2**31) + 1, 2**31 - 1))
def test_sequence_diff_inverts_add(a: int, n: int) -> None:
    b = seq.add(a, n)
    assert seq.diff(b, a) == n
    assert seq.lt(a, b) == (n > 0)


# --- RTO ------------------------------------------------------------------------------------


def test_rto_follows_rfc6298() -> None:
    rto = Rto(initial=1.0, floor=0.2, ceiling=60.0)
    assert rto.rto == 1.0
    rto.sample(0.1)  # first: SRTT = R, RTTVAR = R/2, RTO = SRTT + 4 RTTVAR
    assert rto.srtt == pytest.approx(0.1) and rto.rttvar == pytest.approx(0.05)
    assert rto.rto == pytest.approx(0.3)
    rto.sample(0.3)  # RTTVAR = 3/4*0.05 + 1/4*0.2 = 0.0875; SRTT = 7/8*0.1 + 1/8*0.3 = 0.125
    assert rto.rttvar == pytest.approx(0.0875) and rto.srtt == pytest.approx(0.125)
    assert rto.rto == pytest.approx(0.125 + 4 * 0.0875)
    for _ in range(50):
        rto.sample(0.001)
    assert rto.rto == pytest.approx(0.2)  # the floor


def test_rto_backs_off_to_the_ceiling_and_a_sample_resets_it() -> None:
    rto = Rto(initial=1.0, floor=0.2, ceiling=60.0)
    seen = []
    for _ in range(10):
        rto.backoff()
        seen.append(rto.rto)
    assert seen[:6] == [2, 4, 8, 16, 32, 60]
    assert seen[-1] == 60
    rto.sample(0.5)
    assert rto.rto == pytest.approx(1.5)


# --- congestion -------------------------------------------------------------------------------


def test_slow_start_then_congestion_avoidance() -> None:
    mss = 1000
    cc = NewReno(mss, ssthresh=8000)
    assert cc.cwnd == initial_window(mss) == 4000
    assert initial_window(1460) == 4380 and initial_window(536) == 2144
    for _ in range(4):
        cc.on_ack(mss, 0, cc.cwnd)
    assert cc.cwnd == 8000  # slow start: one MSS per ACK of a full segment
    cc.on_ack(mss, 0, cc.cwnd)
    assert cc.cwnd == 8000 + mss * mss // 8000  # avoidance: about one MSS per window
    before = cc.cwnd
    for _ in range(before // mss):
        cc.on_ack(mss, 0, cc.cwnd)
    assert before + mss - 200 <= cc.cwnd <= before + mss


def test_newreno_fast_retransmit_partial_and_full_ack() -> None:
    mss = 1000
    cc = NewReno(mss, cwnd=10_000, recover=0)
    una, snd_max, flight = 1000, 11_000, 10_000
    assert not cc.on_dupack(una, snd_max, flight)
    assert not cc.on_dupack(una, snd_max, flight)
    assert cc.on_dupack(una, snd_max, flight)  # third: fast retransmit
    assert cc.in_recovery and cc.ssthresh == 5000 and cc.cwnd == 8000
    assert not cc.on_dupack(una, snd_max, flight)
    assert cc.cwnd == 9000  # inflation
    assert cc.on_ack(3000, 4000, flight)  # partial: retransmit the next hole
    assert cc.in_recovery and cc.cwnd == 9000 - 3000 + mss
    assert not cc.on_ack(7000, snd_max, 7000)  # full: deflate, leave recovery
    assert not cc.in_recovery and cc.cwnd <= cc.ssthresh


def test_an_idle_connection_restarts_from_the_initial_window() -> None:
    cc = NewReno(1000, cwnd=30_000, ssthresh=20_000)
    cc.restart_after_idle()
    assert cc.cwnd == 4000 and cc.ssthresh == 20_000
    small = NewReno(1000, cwnd=2000)
    small.restart_after_idle()
    assert small.cwnd == 2000


def test_timeout_collapses_the_window_and_blocks_stale_dupacks() -> None:
    cc = NewReno(1000, cwnd=20_000, recover=0)
    cc.on_timeout(20_000, 21_000)
    assert cc.cwnd == 1000 and cc.ssthresh == 10_000
    for _ in range(3):
        started = cc.on_dupack(5000, 21_000, 16_000)
    assert not started  # dupacks for data sent before the timeout


# --- segments -------------------------------------------------------------------------------


def test_segment_round_trip_and_mss_only_on_request() -> None:
    syn = Segment(40000, 80, 0xFFFFFFF0, 0, SYN, 65535, b"", 1460)
    raw = build(syn, SRC, DST)
    assert len(raw) == 24 and raw[12] >> 4 == 6
    assert parse(raw, SRC, DST) == syn
    data = Segment(80, 40000, 1, 2, ACK | PSH | FIN, 1000, b"hello" * 301)
    raw = build(data, SRC, DST)
    back = parse(raw, SRC, DST)
    assert back == data and back.payload == data.payload and back.seg_len == 1506
    assert back.describe().startswith("80>40000 [FPA]")


def test_checksum_covers_the_pseudo_header_and_the_data() -> None:
    raw = bytearray(build(Segment(1, 2, 3, 4, ACK, 5, b"abc"), SRC, DST))
    with pytest.raises(SegmentError, match="checksum"):
        parse(bytes(raw), SRC, bytes([10, 0, 2, 3]))
    raw[-1] ^= 1
    with pytest.raises(SegmentError, match="checksum"):
        parse(bytes(raw), SRC, DST)


def _with_options(opts: bytes, payload: bytes = b"xy") -> bytes:
    """A SYN whose options are ``opts`` (padded to 4), checksum filled in."""
    opts += b"\0" * (-len(opts) % 4)
    header = struct.pack("!HHIIBBHHH", 5, 6, 7, 0, (5 + len(opts) // 4) << 4, SYN, 100, 0, 0)
    plain = header + opts + payload
    csum = checksum(plain, pseudo_sum(SRC, DST, 6, len(plain)))
    return plain[:16] + struct.pack("!H", csum) + plain[18:]


def test_linux_syn_options_yield_the_mss_and_nothing_else() -> None:
    # Linux's SYN: MSS, SACK-permitted, timestamps, NOP, window scale.
    opts = bytes.fromhex("020405b4") + b"\x04\x02" + b"\x08\x0a" + bytes(8) + b"\x01\x03\x03\x07"
    seg = parse(_with_options(opts), SRC, DST)
    assert seg.mss == 1460 and seg.payload == b"xy"


@pytest.mark.parametrize(
    "opts",
    [b"\x05", b"\x08\x01", b"\x08\x00", b"\x08\x30", b"\x02\x03\x05\xb4", b"\x01\x01\x02"],
)
def test_bad_options_are_refused(opts: bytes) -> None:
    with pytest.raises(SegmentError):
        parse(_with_options(opts), SRC, DST)


def test_short_and_bad_offsets_are_refused() -> None:
    raw = build(Segment(1, 2, 3, 4, ACK, 5, b""), SRC, DST)
    with pytest.raises(SegmentError, match="shorter"):
        parse(raw[:19], SRC, DST)
    for off in (4, 6):
        bad = raw[:12] + bytes([off << 4]) + raw[13:]
        with pytest.raises(SegmentError, match="offset"):
            parse(bad, SRC, DST)


@given(st.binary(max_size=120))
def test_decoder_raises_only_its_own_error_on_noise(data: bytes) -> None:
    started = time.perf_counter()
    with contextlib.suppress(SegmentError):
        parse(data, SRC, DST)
    # microseconds normally: the bound catches a decoder that loops on noise, with
    # room for a loaded host descheduling the test for a while
    assert time.perf_counter() - started < 2.0


@given(st.binary(min_size=20, max_size=80), st.binary(max_size=40))
def test_decoder_on_headers_with_a_valid_checksum(header: bytes, payload: bytes) -> None:
    """Random headers with the checksum made right reach the option parser."""
    plain = header[:16] + b"\0\0" + header[18:] + payload
    csum = checksum(plain, pseudo_sum(SRC, DST, 6, len(plain)))
    raw = plain[:16] + struct.pack("!H", csum) + plain[18:]
    try:
        seg = parse(raw, SRC, DST)
    except SegmentError:
        return
    assert seg.mss is None or 0 <= seg.mss <= 0xFFFF
    assert len(seg.payload) <= len(raw) - 20
