"""The retransmission timeout (RFC 6298): SRTT and RTTVAR from round-trip samples
(alpha 1/8, beta 1/4, K 4), 1 s before the first sample, a floor (RFC 6298 says
1 s; Linux uses 200 ms, and tests want it short), a ceiling of 60 s, and the
doubling backoff on each timeout. Karn's rule, no sample from a retransmitted
segment, is the caller's: it times only segments sent once."""

from __future__ import annotations

from dataclasses import dataclass

ALPHA = 0.125
BETA = 0.25
K = 4
GRANULARITY = 0.001
"""G of RFC 6298 2.2, the clock's granularity in seconds."""


@dataclass(slots=True)
class Rto:
    """One connection's estimator; ``rto`` is the timeout to arm, backoff included."""

    initial: float = 1.0
    floor: float = 1.0
    ceiling: float = 60.0
    srtt: float | None = None
    rttvar: float = 0.0
    base: float = 0.0
    backoffs: int = 0

    def __post_init__(self) -> None:
        self.base = self.initial

    @property
    def rto(self) -> float:
        return min(self.ceiling, self.base * (1 << min(self.backoffs, 16)))

    def sample(self, rtt: float) -> None:
        """Take a round-trip measurement of a segment sent once (RFC 6298 2.2, 2.3);
        it also ends any backoff (5.7's "new RTO" once an ACK comes)."""
        rtt = max(rtt, 0.0)
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = (1 - BETA) * self.rttvar + BETA * abs(self.srtt - rtt)
            self.srtt = (1 - ALPHA) * self.srtt + ALPHA * rtt
        raw = self.srtt + max(GRANULARITY, K * self.rttvar)
        self.base = min(self.ceiling, max(self.floor, raw))
        self.backoffs = 0

    def backoff(self) -> None:
        """A timeout expired: double the timer (5.5), up to the ceiling."""
        if self.rto < self.ceiling:
            self.backoffs += 1

    def reset_backoff(self) -> None:
        """New data was acknowledged: the backed-off timer goes back to the estimate."""
        self.backoffs = 0
