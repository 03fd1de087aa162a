"""Sequence numbers are 32-bit and wrap (RFC 9293 3.4): order is decided by the
signed difference modulo 2**32, valid while the numbers compared are less than
2**31 apart, which windows of at most 65535 bytes guarantee."""

from __future__ import annotations

MOD = 1 << 32
MASK = MOD - 1
_HALF = 1 << 31


def add(a: int, n: int) -> int:
    """``a + n`` in sequence space."""
    return (a + n) & MASK


def diff(a: int, b: int) -> int:
    """``a - b`` as a signed distance in (-2**31, 2**31]."""
    d = (a - b) & MASK
    return d - MOD if d > _HALF else d


def lt(a: int, b: int) -> bool:
    return diff(a, b) < 0


def le(a: int, b: int) -> bool:
    return diff(a, b) <= 0


def gt(a: int, b: int) -> bool:
    return diff(a, b) > 0


def ge(a: int, b: int) -> bool:
    return diff(a, b) >= 0


def between(low: int, x: int, high: int) -> bool:
    """``low <= x < high`` in sequence space (an empty range when low == high)."""
    return le(low, x) and lt(x, high)


def max_(a: int, b: int) -> int:
    return a if ge(a, b) else b


def min_(a: int, b: int) -> int:
    return a if le(a, b) else b
