"""Congestion control: slow start and congestion avoidance (RFC 5681) with NewReno's
fast recovery (RFC 6582). All counts are in bytes; the connection feeds it ACK
events and asks ``cwnd``. Pure arithmetic: what to retransmit is the caller's,
told through the return values."""

from __future__ import annotations

from dataclasses import dataclass

from hwl.servers.inet.tcp import seq

DUPACK_THRESHOLD = 3


def initial_window(mss: int) -> int:
    """RFC 5681 3.1's IW: 4 segments up to 1095 B, 3 up to 2190 B, else 2."""
    return min(4 * mss, max(2 * mss, 4380))


@dataclass(slots=True)
class NewReno:
    """One connection's congestion state."""

    mss: int
    cwnd: int = 0
    ssthresh: int = 0xFFFFFFFF
    dupacks: int = 0
    in_recovery: bool = False
    recover: int = 0
    """The highest sequence sent when recovery began (RFC 6582's ``recover``)."""

    def __post_init__(self) -> None:
        if self.cwnd == 0:
            self.cwnd = initial_window(self.mss)

    def on_ack(self, acked: int, ack: int, flight: int) -> bool:
        """New data acknowledged: ``acked`` bytes up to ``ack``, ``flight`` the bytes
        that were outstanding before it. True when this is a partial ACK in
        recovery, after which the first unacknowledged segment is retransmitted."""
        self.dupacks = 0
        if self.in_recovery:
            if seq.ge(ack, self.recover):
                # Full acknowledgement (RFC 6582 3.2 step 3, option 1 of deflating).
                self.cwnd = min(self.ssthresh, max(flight - acked, self.mss) + self.mss)
                self.in_recovery = False
                return False
            # Partial acknowledgement: deflate by what was acked, keep one segment.
            self.cwnd = max(self.mss, self.cwnd - acked + (self.mss if acked >= self.mss else 0))
            return True
        if self.cwnd < self.ssthresh:
            self.cwnd += min(acked, self.mss)
        else:
            self.cwnd += max(1, self.mss * self.mss // self.cwnd)
        return False

    def on_dupack(self, snd_una: int, snd_max: int, flight: int) -> bool:
        """A duplicate ACK (RFC 5681's definition, the caller's to check). True when
        fast retransmit starts now: the segment at ``snd_una`` goes again."""
        self.dupacks += 1
        if self.in_recovery:
            self.cwnd += self.mss
            return False
        if self.dupacks != DUPACK_THRESHOLD:
            return False
        if seq.lt(snd_una, self.recover):
            # RFC 6582 3.2 step 2: dupacks for data sent before the last recovery or
            # timeout do not start another one.
            return False
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.recover = snd_max
        self.cwnd = self.ssthresh + DUPACK_THRESHOLD * self.mss
        self.in_recovery = True
        return True

    def restart_after_idle(self) -> None:
        """Nothing was sent for an RTO (RFC 5681 4.1): the ACK clock is gone, so start
        again from the initial window (ssthresh keeps what was learnt)."""
        self.cwnd = min(self.cwnd, initial_window(self.mss))

    def on_timeout(self, flight: int, snd_max: int) -> None:
        """The retransmission timer expired (RFC 5681 3.1 (4), RFC 6582 4)."""
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.mss
        self.dupacks = 0
        self.in_recovery = False
        self.recover = snd_max
