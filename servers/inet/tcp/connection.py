"""One TCP connection (a TCB, RFC 9293 3.3.1) as a pure state machine.

The connection is driven from outside: ``input(segment, now)`` for each segment
the demultiplexer matched to it, ``tick(now)`` when ``next_deadline()`` has
passed, and the user calls (``send``, ``recv``, ``shutdown_write``, ``close``,
``abort``). Everything it sends goes to the ``emit`` callable as a Segment; the
caller adds addresses and checksum. Time is monotonic seconds, never read here.

What it does, and where from:

- states and segment arrival per RFC 9293 3.10, with RFC 5961's checks: a RST
  resets only at exactly RCV.NXT, a RST elsewhere in the window or a SYN in a
  synchronized state gets a challenge ACK, an ACK outside the window is dropped;
- the retransmission timer per RFC 6298 (``rto``), Karn's rule (one RTT sample at a
  time, none across a retransmission), exponential backoff, and an abort with
  ETIMEDOUT once no progress was made for ``r2`` seconds (``r2_syn`` for SYNs);
- congestion control per RFC 5681 with NewReno (``congestion``): fast retransmit
  at the third duplicate ACK, partial ACKs retransmit the next hole;
- sender SWS avoidance and Nagle (RFC 9293 3.8.6.2.1, off with ``nodelay``),
  receiver SWS avoidance (3.8.6.2.2) and a window that never shrinks;
- a persist timer whose probes carry one byte past a zero window and back off;
  no abort while the peer answers them;
- delayed ACKs: every second segment or after ``delack`` seconds, at once for
  out-of-order data, for a FIN and for a segment that filled a hole;
- an out-of-order queue bounded by the window and a segment count;
- FIN and half-close, RST, TIME_WAIT for 2*MSL.

Errors reach the user as OSError with the errno a socket would give
(ECONNREFUSED, ECONNRESET, ETIMEDOUT, EPIPE, ENOTCONN, EAGAIN).

See docs/inet.md.
"""

from __future__ import annotations

import enum
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass

from hwl.servers.inet.tcp import seq
from hwl.servers.inet.tcp.congestion import NewReno
from hwl.servers.inet.tcp.rto import Rto
from hwl.servers.inet.tcp.segment import ACK, FIN, PSH, RST, SYN, Segment

__all__ = ["Connection", "Emit", "State", "TcpConfig"]

DEFAULT_MSS = 536
"""The send MSS when the peer's SYN carries no MSS option (RFC 9293 3.7.1)."""

MAX_WINDOW = 0xFFFF
"""No window scaling is offered, so no window is larger than this."""

Emit = Callable[[Segment, float], None]
"""Where segments go, with the time they are sent."""


class State(enum.Enum):
    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN-SENT"
    SYN_RECEIVED = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSE_WAIT = "CLOSE-WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST-ACK"
    TIME_WAIT = "TIME-WAIT"


_SYNCED_SEND = (
    State.ESTABLISHED,
    State.CLOSE_WAIT,
    State.FIN_WAIT_1,
    State.CLOSING,
    State.LAST_ACK,
)
"""States in which data and FIN are sent."""
_RECEIVING = (State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2)
"""States in which the peer may still send data."""
_USER_SEND = (State.SYN_SENT, State.SYN_RECEIVED, State.ESTABLISHED, State.CLOSE_WAIT)
"""States in which the user may still queue data."""


@dataclass(frozen=True, slots=True)
class TcpConfig:
    """The tunables; defaults follow the RFCs and Linux where they differ only in taste."""

    mss: int = 1460
    """The MSS announced, and the largest segment sent."""
    rcv_buf: int = MAX_WINDOW
    """Receive buffer: unread data plus the window, at most 65535 (no window scaling)."""
    snd_buf: int = 256 * 1024
    """Send buffer: unacknowledged plus unsent data."""
    rto_initial: float = 1.0
    rto_min: float = 1.0
    """The RTO's floor: RFC 6298 says 1 s, Linux 200 ms; tests use 200 ms."""
    rto_max: float = 60.0
    r2: float = 100.0
    """Abort a connection that made no progress for this long (RFC 1122 R2 >= 100 s)."""
    r2_syn: float = 75.0
    """The same for a SYN or SYN-ACK that is never answered."""
    msl: float = 30.0
    """TIME_WAIT lasts 2*msl."""
    delack: float = 0.04
    """Longest an ACK is delayed (RFC 1122: under 0.5 s). Linux's minimum, 40 ms: it
    must stay well under the RTO's floor, else a lone segment's ACK comes after the
    sender's timer and every request-response exchange costs a spurious retransmission
    and a collapsed window (seen at 200 ms against a 200 ms floor)."""
    persist_max: float = 60.0
    fin_wait_2: float = 60.0
    """How long a connection closed by its user waits in FIN-WAIT-2 for the peer's FIN."""
    nodelay: bool = False
    ooo_segments: int = 256
    """Most out-of-order blocks kept."""
    challenge_acks: int = 10
    """Most RFC 5961 challenge ACKs a connection sends in a second."""


class Connection:
    """One TCB, opened by :meth:`connect` or by :meth:`accept` (a SYN a listener
    accepted) right after it is made."""

    def __init__(
        self,
        cfg: TcpConfig,
        local: tuple[bytes, int],
        remote: tuple[bytes, int],
        iss: int,
        emit: Emit,
        now: float,
    ) -> None:
        self.cfg = cfg
        self.local = local
        self.remote = remote
        self.emit = emit
        self.state = State.CLOSED
        self.error: int | None = None
        self.soft_error: int | None = None
        """The last ICMP-like failure below us (EHOSTUNREACH...), reported instead of
        ETIMEDOUT if the connection times out (RFC 1122 4.2.3.9: soft errors do not abort)."""
        self.nodelay = cfg.nodelay
        self.passive = False
        self.user_closed = False
        self.on_change: Callable[[Connection], None] | None = None
        """Called after a state change, for the demultiplexer and the socket layer."""
        self.now = now
        # Send side.
        self.iss = iss
        self.snd_una = iss
        self.snd_nxt = iss
        self.snd_max = iss
        self.snd_wnd = 0
        self.snd_wl1 = 0
        self.snd_wl2 = 0
        self.max_sndwnd = 0
        self.sndbuf = bytearray()
        self.buf_seq = seq.add(iss, 1)
        self.fin_queued = False
        self.fin_seq = 0
        self.send_mss = min(cfg.mss, DEFAULT_MSS)
        # Receive side.
        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_adv = 0
        self.rcvbuf = bytearray()
        self.rcv_cap = min(cfg.rcv_buf, MAX_WINDOW)
        self.fin_received = False
        self.ooo: list[tuple[int, bytes]] = []
        self.ooo_fin: int | None = None
        self.ack_now = False
        self.rcv_segs = 0
        # Timers (absolute deadlines) and their state.
        self.rto = Rto(cfg.rto_initial, cfg.rto_min, cfg.rto_max)
        self.cc = NewReno(self.send_mss, recover=iss)
        self.rexmit_at: float | None = None
        self.persist_at: float | None = None
        self.delack_at: float | None = None
        self.timewait_at: float | None = None
        self.fw2_at: float | None = None
        self.progress_at = now
        """Last time the peer acknowledged something new (or the connection began)."""
        self.heard_at = now
        """Last time an acceptable segment came from the peer."""
        self.persist_backoffs = 0
        self.probed_at = now
        self.sent_at = now
        """When data last went out, for RFC 5681 4.1's restart after idle."""
        self.challenge_window = now
        self.challenges = 0
        self.rtt_seq: int | None = None
        self.rtt_sent = 0.0
        self.counters: dict[str, int] = {}

    # --- opening ----------------------------------------------------------------------

    def connect(self) -> Connection:
        """connect(): send a SYN and wait in SYN-SENT."""
        self.state = State.SYN_SENT
        self._send_syn(self.now)
        return self

    def accept(self, syn: Segment) -> Connection:
        """A listener's answer to ``syn``: a SYN-ACK, and SYN-RECEIVED."""
        self.passive = True
        self._take_syn(syn)
        self.state = State.SYN_RECEIVED
        self._send_syn(self.now)
        return self

    def _take_syn(self, syn: Segment) -> None:
        self.irs = syn.seq
        self.rcv_nxt = seq.add(syn.seq, 1)
        self.rcv_adv = self.rcv_nxt
        self.send_mss = max(64, min(self.cfg.mss, syn.mss if syn.mss else DEFAULT_MSS))
        self.cc = NewReno(self.send_mss, recover=self.iss)

    def _send_syn(self, now: float) -> None:
        """The SYN (SYN-SENT) or SYN-ACK (SYN-RECEIVED), first or again."""
        flags = SYN | (ACK if self.state is State.SYN_RECEIVED else 0)
        ack = self.rcv_nxt if flags & ACK else 0
        window = self._window() if flags & ACK else self.rcv_cap
        self._count("syn_sent")
        self.emit(
            Segment(self.local[1], self.remote[1], self.iss, ack, flags, window, b"", self.cfg.mss),
            now,
        )
        if flags & ACK:
            self.rcv_adv = seq.add(self.rcv_nxt, window)
        self.snd_nxt = self.snd_max = seq.add(self.iss, 1)
        if self.rexmit_at is None:
            self.rexmit_at = now + self.rto.rto
            self.rtt_seq, self.rtt_sent = self.iss, now

    # --- the user's calls -------------------------------------------------------------

    def send(self, data: bytes | bytearray | memoryview, now: float) -> int:
        """Queue what fits of ``data`` in the send buffer; returns the count (0 when full)."""
        self.now = now
        self._check_user_send()
        room = max(0, self.cfg.snd_buf - len(self.sndbuf))
        taken = bytes(memoryview(data)[:room])
        self.sndbuf += taken
        self._run(now)
        return len(taken)

    def recv(self, n: int, now: float) -> bytes:
        """Up to ``n`` bytes in order; b"" at the end of the stream; EAGAIN when none yet."""
        self.now = now
        if self.rcvbuf:
            out = bytes(self.rcvbuf[:n])
            del self.rcvbuf[:n]
            self._window_opened()
            self._run(now)
            return out
        if self.fin_received:
            return b""
        if self.error is not None:
            raise OSError(self.error, os.strerror(self.error))
        if self.state in (State.CLOSED, State.TIME_WAIT, State.CLOSE_WAIT):
            return b""
        raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))

    @property
    def readable(self) -> int:
        """Bytes ready for ``recv``."""
        return len(self.rcvbuf)

    @property
    def writable(self) -> int:
        """Bytes ``send`` would take now."""
        return max(0, self.cfg.snd_buf - len(self.sndbuf)) if self.state in _USER_SEND else 0

    @property
    def at_eof(self) -> bool:
        """The peer's FIN arrived (or the connection ended) and all data was read."""
        return not self.rcvbuf and (self.fin_received or self.state is State.CLOSED)

    def shutdown_write(self, now: float) -> None:
        """No more data from us: a FIN follows what is queued."""
        self.now = now
        if self.state in (State.CLOSED, State.LISTEN):
            self._raise_closed()
        if self.fin_queued:
            return
        if self.state is State.SYN_SENT and not self.sndbuf:
            self._close_now(None)
            return
        self.fin_queued = True
        self.fin_seq = seq.add(self.buf_seq, len(self.sndbuf))
        if self.state is State.ESTABLISHED:
            self._set_state(State.FIN_WAIT_1)
        elif self.state is State.CLOSE_WAIT:
            self._set_state(State.LAST_ACK)
        self._run(now)

    def close(self, now: float) -> None:
        """The user is done both ways. Unread data makes it an abort (RST), as Linux
        does; else the FIN goes after the queued data."""
        self.now = now
        self.user_closed = True
        if self.state is State.CLOSED:
            return
        if self.rcvbuf:
            self.abort(now)
            return
        if not self.fin_queued:
            self.shutdown_write(now)
        if self.state is State.FIN_WAIT_2 and self.fw2_at is None:
            self.fw2_at = now + self.cfg.fin_wait_2

    def abort(self, now: float) -> None:
        """Reset the connection (RFC 9293 3.10.5): a RST to the peer, nothing queued kept."""
        self.now = now
        if self.state in (State.SYN_RECEIVED, *_SYNCED_SEND, State.FIN_WAIT_2):
            self._send_rst(self.snd_max)
        self.user_closed = True
        self._close_now(None)

    def set_nodelay(self, on: bool, now: float) -> None:
        self.nodelay = on
        self._run(now)

    def _check_user_send(self) -> None:
        if self.error is not None:
            raise OSError(self.error, os.strerror(self.error))
        if self.fin_queued or self.state not in _USER_SEND:
            code = errno.EPIPE if self.state is not State.CLOSED else errno.ENOTCONN
            raise OSError(code, os.strerror(code))

    def _raise_closed(self) -> None:
        code = self.error if self.error is not None else errno.ENOTCONN
        raise OSError(code, os.strerror(code))

    # --- timers -----------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """The earliest time ``tick`` has something to do, None when nothing is armed."""
        times = [
            t
            for t in (
                self.rexmit_at,
                self.persist_at,
                self.delack_at,
                self.timewait_at,
                self.fw2_at,
            )
            if t is not None
        ]
        return min(times) if times else None

    def tick(self, now: float) -> None:
        """Run the timers due at ``now``."""
        self.now = now
        if self.timewait_at is not None and now >= self.timewait_at:
            self._close_now(None)
            return
        if self.fw2_at is not None and now >= self.fw2_at and self.state is State.FIN_WAIT_2:
            self._close_now(None)
            return
        if self.rexmit_at is not None and now >= self.rexmit_at:
            self._on_rexmit_timeout(now)
        if self._closed():
            return
        if self.persist_at is not None and now >= self.persist_at:
            self._on_persist_timeout(now)
        if self._closed():
            return
        if self.delack_at is not None and now >= self.delack_at:
            self.ack_now = True
        self._run(now)

    def _on_rexmit_timeout(self, now: float) -> None:
        self.rexmit_at = None
        self.rtt_seq = None
        self._count("timeouts")
        limit = (
            self.cfg.r2_syn if self.state in (State.SYN_SENT, State.SYN_RECEIVED) else self.cfg.r2
        )
        if now - self.progress_at >= limit:
            self._close_now(self.soft_error or errno.ETIMEDOUT)
            return
        self.rto.backoff()
        if self.state in (State.SYN_SENT, State.SYN_RECEIVED):
            self.rexmit_at = now + self.rto.rto
            self._send_syn(now)
            self.rtt_seq = None
            return
        flight = seq.diff(self.snd_max, self.snd_una)
        self.cc.on_timeout(flight, self.snd_max)
        self.snd_nxt = self.snd_una
        self.rexmit_at = now + self.rto.rto
        self._output(now, force=True)

    def _on_persist_timeout(self, now: float) -> None:
        self.persist_at = None
        if self.heard_at < self.probed_at and now - self.heard_at >= self.cfg.r2:
            # The last probe went unanswered and the peer is silent since r2.
            self._close_now(self.soft_error or errno.ETIMEDOUT)
            return
        self.probed_at = now
        self._count("window_probes")
        self.persist_backoffs += 1
        self.snd_nxt = self.snd_una
        self._output(now, force=True)

    def _persist_interval(self) -> float:
        base = max(self.rto.base, self.cfg.rto_min)
        return min(self.cfg.persist_max, base * (1 << min(self.persist_backoffs, 16)))

    # --- segment arrival (RFC 9293 3.10.7) ----------------------------------------------

    def input(self, seg: Segment, now: float) -> None:
        """One segment for this connection."""
        self.now = now
        self._count("segments_in")
        if self.state is State.CLOSED:
            return
        if self.state is State.SYN_SENT:
            self._input_syn_sent(seg, now)
        else:
            self._input_synced(seg, now)
        self._run(now)

    def _input_syn_sent(self, seg: Segment, now: float) -> None:
        acceptable = False
        if seg.has(ACK):
            if seq.le(seg.ack, self.iss) or seq.gt(seg.ack, self.snd_max):
                if not seg.has(RST):
                    self._send_rst(seg.ack)
                return
            acceptable = True
        if seg.has(RST):
            if acceptable:
                self._close_now(errno.ECONNREFUSED)
            return
        if not seg.has(SYN):
            return
        self._take_syn(seg)
        self.heard_at = now
        if acceptable:
            self._sample_rtt(seg.ack, now)
            self.snd_una = seg.ack
            self.rexmit_at = None
            self.rto.reset_backoff()
            self.progress_at = now
            self._update_window(seg, force=True)
            self._established()
            self.ack_now = True
            if seg.payload or seg.has(FIN):
                self._text(seq.add(seg.seq, 1), seg.payload, seg.has(FIN), now)
        else:
            # Simultaneous open: answer with our SYN and an ACK of theirs.
            self.state = State.SYN_RECEIVED
            self.rexmit_at = None
            self._send_syn(now)

    def _input_synced(self, seg: Segment, now: float) -> None:
        if (
            self.state is State.SYN_RECEIVED
            and seg.flags & (SYN | ACK | RST) == SYN | ACK
            and seg.seq == self.irs
            and seg.ack == self.snd_max
        ):
            # Simultaneous open: the peer's SYN-ACK answers ours.
            self._sample_rtt(seg.ack, now)
            self.snd_una = seg.ack
            self.rexmit_at = None
            self._update_window(seg, force=True)
            self._established()
            self.ack_now = True
            return
        if not self._acceptable(seg):
            self._count("unacceptable")
            if seg.has(RST):
                return
            if self.state is State.TIME_WAIT and seg.has(FIN):
                self.timewait_at = now + 2 * self.cfg.msl
            self.ack_now = True
            return
        self.heard_at = now
        self.soft_error = None
        if seg.has(RST):
            self._on_rst(seg)
            return
        if seg.has(SYN):
            if self.state is State.SYN_RECEIVED and self.passive and seg.seq == self.irs:
                return  # a retransmitted SYN: our SYN-ACK will be repeated by the timer
            self._challenge(now)
            return
        if not seg.has(ACK):
            return
        if self.state is State.SYN_RECEIVED:
            if not (seq.gt(seg.ack, self.snd_una) and seq.le(seg.ack, self.snd_max)):
                self._send_rst(seg.ack)
                return
            self._update_window(seg, force=True)
            self._established()
        if not self._on_ack(seg, now):
            return
        if self._closed():
            return
        start, payload, fin = self._trim(seg)
        if len(payload) < len(seg.payload) or fin != seg.has(FIN):
            self.ack_now = True  # old or out-of-window bytes: say where we are
        if (payload or fin) and self.state in _RECEIVING:
            if self.user_closed and payload:
                # Nobody will read it: tell the peer (Linux does the same).
                self._send_rst(self.snd_max)
                self._close_now(None)
                return
            self._text(start, payload, fin, now)

    def _acceptable(self, seg: Segment) -> bool:
        """RFC 9293 3.10.7.4's four cases against the window last advertised."""
        wnd = max(0, seq.diff(self.rcv_adv, self.rcv_nxt))
        length = seg.seg_len
        right = seq.add(self.rcv_nxt, wnd)
        if wnd == 0:
            # RFC 9293 says nothing is acceptable but ACKs, URGs and RSTs; like Linux,
            # take a segment at exactly RCV.NXT (its data is trimmed away): its ACK and
            # window count, a probe gets its answer and a FIN is not kept waiting.
            return seg.seq == self.rcv_nxt
        if length == 0:
            return seq.between(self.rcv_nxt, seg.seq, right)
        last = seq.add(seg.seq, length - 1)
        return seq.between(self.rcv_nxt, seg.seq, right) or seq.between(self.rcv_nxt, last, right)

    def _trim(self, seg: Segment) -> tuple[int, bytes, bool]:
        """The segment's data and FIN cut to the window: (first sequence, data, fin)."""
        start = seg.seq
        payload = seg.payload
        fin = seg.has(FIN)
        if seg.has(SYN):
            start = seq.add(start, 1)
        early = seq.diff(self.rcv_nxt, start)
        if early > 0:
            if early > len(payload):
                return self.rcv_nxt, b"", False
            payload = payload[early:]
            start = self.rcv_nxt
        wnd = max(0, seq.diff(self.rcv_adv, self.rcv_nxt))
        room = wnd - seq.diff(start, self.rcv_nxt)
        if len(payload) > room:
            payload = payload[: max(0, room)]
            fin = False
        return start, payload, fin

    def _on_rst(self, seg: Segment) -> None:
        if seg.seq != self.rcv_nxt:
            self._challenge(self.now)  # RFC 5961 3.2: in the window but not exact
            return
        self._count("resets_in")
        if self.state is State.SYN_RECEIVED:
            self._close_now(None if self.passive else errno.ECONNREFUSED)
        elif self.state in (State.CLOSING, State.LAST_ACK, State.TIME_WAIT):
            self._close_now(None)
        else:
            self._close_now(errno.ECONNRESET)

    def _challenge(self, now: float) -> None:
        """A challenge ACK (RFC 5961 3.2, 4.2), at most ``challenge_acks`` a second
        (section 7), so forged segments cannot make us a traffic amplifier."""
        if now - self.challenge_window >= 1.0:
            self.challenge_window = now
            self.challenges = 0
        if self.challenges >= self.cfg.challenge_acks:
            self._count("challenge_acks_limited")
            return
        self.challenges += 1
        self._count("challenge_acks")
        self.ack_now = True

    def _on_ack(self, seg: Segment, now: float) -> bool:
        """The ACK field (RFC 9293 3.10.7.4 fifth): False when the segment is dropped."""
        ack = seg.ack
        if seq.gt(ack, self.snd_max):
            self.ack_now = True
            return False
        if seq.lt(ack, seq.add(self.snd_una, -max(self.max_sndwnd, MAX_WINDOW))):
            self.ack_now = True  # RFC 5961 5.2: too old to be real
            return False
        if seq.gt(ack, self.snd_una):
            self._new_ack(ack, now)
        elif (
            ack == self.snd_una
            and not seg.payload
            and not seg.has(SYN | FIN)
            and seg.window == self.snd_wnd
            and self.snd_wnd > 0
            and self.snd_max != self.snd_una
        ):
            flight = seq.diff(self.snd_max, self.snd_una)
            self._count("dupacks")
            if self.cc.on_dupack(self.snd_una, self.snd_max, flight):
                self._count("fast_retransmits")
                self._retransmit_first()
        self._update_window(seg)
        self._acked_fin(now)
        return True

    def _new_ack(self, ack: int, now: float) -> None:
        flight = seq.diff(self.snd_max, self.snd_una)
        data_acked = min(len(self.sndbuf), max(0, seq.diff(ack, self.buf_seq)))
        del self.sndbuf[:data_acked]
        self.buf_seq = seq.add(self.buf_seq, data_acked)
        self._sample_rtt(ack, now)
        self.rto.reset_backoff()
        acked = seq.diff(ack, self.snd_una)
        if self.snd_una == self.iss:
            acked -= 1  # our SYN: not data, no congestion credit
            flight -= 1
        self.snd_una = ack
        if seq.lt(self.snd_nxt, ack):
            self.snd_nxt = ack
        self.progress_at = now
        self.persist_backoffs = 0
        partial = self.cc.on_ack(acked, ack, flight)
        self.rexmit_at = None if ack == self.snd_max else now + self.rto.rto
        if partial:
            self._count("partial_acks")
            self._retransmit_first()

    def _acked_fin(self, now: float) -> None:
        if not (self.fin_queued and seq.gt(self.snd_una, self.fin_seq)):
            return
        if self.state is State.FIN_WAIT_1:
            self._set_state(State.FIN_WAIT_2)
            if self.user_closed:
                self.fw2_at = now + self.cfg.fin_wait_2
        elif self.state is State.CLOSING:
            self._time_wait(now)
        elif self.state is State.LAST_ACK:
            self._close_now(None)

    def _sample_rtt(self, ack: int, now: float) -> None:
        if self.rtt_seq is not None and seq.gt(ack, self.rtt_seq):
            self.rto.sample(now - self.rtt_sent)
            self.rtt_seq = None

    def _update_window(self, seg: Segment, force: bool = False) -> None:
        """RFC 9293's SND.WL1/WL2 rule: only a newer segment updates the window."""
        if (
            force
            or seq.lt(self.snd_wl1, seg.seq)
            or (self.snd_wl1 == seg.seq and seq.le(self.snd_wl2, seg.ack))
        ):
            self.snd_wnd = seg.window
            self.snd_wl1 = seg.seq
            self.snd_wl2 = seg.ack
            self.max_sndwnd = max(self.max_sndwnd, seg.window)
            if seg.window > 0:
                self.persist_at = None

    def _text(self, start: int, payload: bytes, fin: bool, now: float) -> None:
        """Segment text and FIN (RFC 9293 3.10.7.4 seventh and eighth)."""
        if start == self.rcv_nxt:
            room = self.rcv_cap - len(self.rcvbuf)
            if len(payload) > room:
                payload, fin = payload[:room], False
            filled_hole = bool(self.ooo)
            self.rcvbuf += payload
            self.rcv_nxt = seq.add(self.rcv_nxt, len(payload))
            self._pull_ooo()
            if fin:
                self.ooo_fin = self.rcv_nxt
            if payload:
                self._count("bytes_in", len(payload))
                self.rcv_segs += 1
                if filled_hole or self.rcv_segs >= 2:
                    self.ack_now = True
                elif self.delack_at is None:
                    self.delack_at = now + self.cfg.delack
        else:
            self._count("ooo_segments")
            if payload:
                self._ooo_insert(start, payload)
            if fin:
                self.ooo_fin = seq.add(start, len(payload))
            self.ack_now = True
        if self.ooo_fin is not None and self.ooo_fin == self.rcv_nxt:
            self._on_fin(now)

    def _ooo_insert(self, start: int, payload: bytes) -> None:
        """Keep a block that came early; blocks are merged and sorted by distance."""
        blocks = [(seq.diff(s, self.rcv_nxt), d) for s, d in self.ooo]
        blocks.append((seq.diff(start, self.rcv_nxt), payload))
        blocks.sort(key=lambda b: b[0])
        merged: list[tuple[int, bytearray]] = []
        for off, data in blocks:
            if merged and off <= merged[-1][0] + len(merged[-1][1]):
                end = merged[-1][0] + len(merged[-1][1])
                merged[-1][1].extend(data[end - off :])
            else:
                merged.append((off, bytearray(data)))
        del merged[self.cfg.ooo_segments :]
        self.ooo = [(seq.add(self.rcv_nxt, off), bytes(data)) for off, data in merged]

    def _pull_ooo(self) -> None:
        """Move the blocks that now continue the stream into the receive buffer."""
        while self.ooo and seq.le(self.ooo[0][0], self.rcv_nxt):
            start, data = self.ooo.pop(0)
            fresh = data[seq.diff(self.rcv_nxt, start) :]
            fresh = fresh[: max(0, self.rcv_cap - len(self.rcvbuf))]
            self.rcvbuf += fresh
            self.rcv_nxt = seq.add(self.rcv_nxt, len(fresh))
            self._count("bytes_in", len(fresh))

    def _on_fin(self, now: float) -> None:
        self.ooo_fin = None
        self.fin_received = True
        self.rcv_nxt = seq.add(self.rcv_nxt, 1)
        self.ack_now = True
        if self.state is State.ESTABLISHED:
            self._set_state(State.CLOSE_WAIT)
        elif self.state is State.FIN_WAIT_1:
            if self.fin_queued and seq.gt(self.snd_una, self.fin_seq):
                self._time_wait(now)
            else:
                self._set_state(State.CLOSING)
        elif self.state is State.FIN_WAIT_2:
            self._time_wait(now)

    # --- sending ------------------------------------------------------------------------

    def _run(self, now: float) -> None:
        """After any event: send what may go, answer what needs an ACK, arm the persist timer."""
        self.now = now
        if self.state is State.CLOSED:
            return
        if self.state in _SYNCED_SEND:
            self._output(now)
        elif self.ack_now and self.state in (State.FIN_WAIT_2, State.TIME_WAIT, State.SYN_RECEIVED):
            self._send_ack()
        self._arm_persist(now)

    def _arm_persist(self, now: float) -> None:
        if self.state not in _SYNCED_SEND or self.rexmit_at is not None:
            self.persist_at = None if self.rexmit_at is not None else self.persist_at
            return
        waiting = len(self.sndbuf) > 0 or (self.fin_queued and seq.le(self.snd_una, self.fin_seq))
        flight = seq.diff(self.snd_nxt, self.snd_una)
        if waiting and (self.snd_wnd == 0 or flight == 0):
            if self.persist_at is None:
                self.persist_at = now + self._persist_interval()
        else:
            self.persist_at = None

    def _output(self, now: float, force: bool = False) -> None:
        """Send what the windows, Nagle and SWS avoidance allow (the shape of BSD's
        tcp_output); ``force`` sends one segment regardless (timeouts, probes)."""
        if not force and self.rexmit_at is None and seq.gt(self.snd_nxt, self.snd_una):
            # Only a window probe is out (it has no retransmission timer): the window
            # opened, so the stream goes on from the byte the probe carried.
            self.snd_nxt = self.snd_una
        for _ in range(4096):
            flight = seq.diff(self.snd_nxt, self.snd_una)
            index = seq.diff(self.snd_nxt, self.buf_seq)
            avail = max(0, len(self.sndbuf) - index)
            usable = min(self.snd_wnd, self.cc.cwnd) - flight
            probe = force and self.snd_wnd == 0 and avail > 0
            n = 1 if probe else max(0, min(avail, usable, self.send_mss))
            fin = self.fin_queued and n == avail and seq.add(self.snd_nxt, n) == self.fin_seq
            if not self._should_send(n, avail, flight, fin, force):
                return
            self._send_segment(index, n, fin, now, probe)
            force = False
            if n == 0 and not fin:
                return

    def _should_send(self, n: int, avail: int, flight: int, fin: bool, force: bool) -> bool:
        if n > 0:
            if n == self.send_mss or force:
                return True
            if seq.lt(self.snd_nxt, self.snd_max):
                return True  # going back over data already sent once
            if n == avail and (self.nodelay or flight == 0 or self.fin_queued):
                return True  # Nagle: a small segment only with nothing in flight
            if self.max_sndwnd and n >= self.max_sndwnd // 2:
                return True  # sender SWS avoidance
        return fin or self.ack_now or force

    def _send_segment(self, index: int, n: int, fin: bool, now: float, probe: bool) -> None:
        if n and self.snd_una == self.snd_max and now - self.sent_at > self.rto.rto:
            self.cc.restart_after_idle()
        self.sent_at = now
        payload = bytes(self.sndbuf[index : index + n])
        flags = ACK
        if n and index + n == len(self.sndbuf):
            flags |= PSH
        if fin:
            flags |= FIN
        if seq.lt(self.snd_nxt, self.snd_max) and (n or fin):
            self._count("retransmits")
            if self.rtt_seq is not None and seq.ge(self.rtt_seq, self.snd_nxt):
                self.rtt_seq = None  # Karn: what is being timed was sent again
        elif n and self.rtt_seq is None:
            self.rtt_seq, self.rtt_sent = self.snd_nxt, now
        # A pure ACK carries SND.MAX, as BSD's: after a go-back the peer may have
        # everything up to it, and an ACK below its RCV.NXT would be unacceptable.
        self._emit(self.snd_nxt if n or fin else self.snd_max, flags, payload)
        self.snd_nxt = seq.add(self.snd_nxt, n + fin)
        if seq.gt(self.snd_nxt, self.snd_max):
            self.snd_max = self.snd_nxt
        if (n or fin) and not probe and self.rexmit_at is None:
            self.rexmit_at = now + self.rto.rto
            self.progress_at = now  # R2 counts from the first send of what is outstanding
            self.persist_at = None

    def _retransmit_first(self) -> None:
        """The segment at SND.UNA, once, without moving SND.NXT (fast retransmit and
        NewReno's partial ACKs)."""
        n = min(self.send_mss, len(self.sndbuf))
        fin = self.fin_queued and n == len(self.sndbuf) and seq.le(self.fin_seq, self.snd_max)
        if not (n or fin):
            return
        if self.rtt_seq is not None:
            self.rtt_seq = None
        self._count("retransmits")
        self._emit(self.snd_una, ACK | (FIN if fin else 0), bytes(self.sndbuf[:n]))
        self.rexmit_at = self.now + self.rto.rto

    def _send_ack(self) -> None:
        self._emit(self.snd_max, ACK, b"")

    def _emit(self, sequence: int, flags: int, payload: bytes) -> None:
        window = self._window()
        self.rcv_adv = seq.max_(self.rcv_adv, seq.add(self.rcv_nxt, window))
        self.ack_now = False
        self.delack_at = None
        self.rcv_segs = 0
        self._count("segments_out")
        self.emit(
            Segment(self.local[1], self.remote[1], sequence, self.rcv_nxt, flags, window, payload),
            self.now,
        )

    def _send_rst(self, sequence: int) -> None:
        self._count("resets_out")
        self.emit(Segment(self.local[1], self.remote[1], sequence, 0, RST, 0), self.now)

    def _window(self) -> int:
        """The window to advertise: receiver SWS avoidance (RFC 9293 3.8.6.2.2) opens it
        only by a segment or half the buffer at a time, and it never shrinks."""
        free = max(0, self.rcv_cap - len(self.rcvbuf))
        current = max(0, seq.diff(self.rcv_adv, self.rcv_nxt))
        if free - current >= min(self.rcv_cap // 2, self.cfg.mss):
            return min(free, MAX_WINDOW)
        return min(current, MAX_WINDOW)

    def _window_opened(self) -> None:
        """After a read: tell the peer when the window grew enough to matter."""
        if self.state not in _RECEIVING:
            return
        current = max(0, seq.diff(self.rcv_adv, self.rcv_nxt))
        new = self._window()
        if new - current >= max(2 * self.cfg.mss, self.rcv_cap // 4) or (
            current < self.cfg.mss <= new
        ):
            self.ack_now = True

    # --- state changes ------------------------------------------------------------------

    def _established(self) -> None:
        if self.fin_queued:
            self._set_state(State.FIN_WAIT_1)
        else:
            self._set_state(State.ESTABLISHED)

    def _time_wait(self, now: float) -> None:
        self.rexmit_at = self.persist_at = self.fw2_at = None
        self.timewait_at = now + 2 * self.cfg.msl
        self._set_state(State.TIME_WAIT)

    def _close_now(self, error: int | None) -> None:
        if error is not None:
            self.error = error
        self.rexmit_at = self.persist_at = self.delack_at = None
        self.timewait_at = self.fw2_at = None
        self.sndbuf.clear()
        self.ooo.clear()
        self._set_state(State.CLOSED)

    def _closed(self) -> bool:
        """A method, not an inline test, so type narrowing forgets it across calls."""
        return self.state is State.CLOSED

    def _set_state(self, state: State) -> None:
        if state is self.state:
            return
        self.state = state
        if self.on_change is not None:
            self.on_change(self)

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n
