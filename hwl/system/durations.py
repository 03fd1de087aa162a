"""Durations as the ``service`` command writes them: clock ticks, or seconds as ``NHZ``.

MINIX's ``service`` reads ``-period 120`` as 120 ticks and ``-period 2HZ`` as two
seconds' worth of ticks (``2 * HZ``); hwl keeps that syntax so that commands and
system scripts read the same. Only whole numbers are accepted: a tick is the unit
RS schedules in, and ``0.5HZ`` would hide a rounding. ``HZ`` is
:data:`hwl.ipc.wire.HZ` (60), the tick rate of the kernel's clock.
"""

from __future__ import annotations

import re
from typing import Final

from hwl.ipc.wire import HZ

#: The largest duration accepted, in ticks: a year, far beyond any sane period, and
#: well inside the codec's 64-bit integers.
MAX_TICKS: Final = 365 * 24 * 3600 * HZ

_DURATION = re.compile(r"([0-9]+)(HZ)?")
_FORMS: Final = f"ticks (e.g. {2 * HZ}) or seconds as NHZ (e.g. 2HZ = {2 * HZ} ticks)"


def parse_ticks(text: str, what: str = "duration") -> int:
    """``"120"`` -> 120, ``"5HZ"`` -> ``5 * HZ``, ``"0"`` -> 0; ValueError naming ``text``.

    ``what`` names the value in the message (``"period"``, ``"maxtime"``), so that
    the error says which option was wrong.
    """
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"bad {what} {text!r}: expected {_FORMS}")
    ticks = int(match.group(1)) * (HZ if match.group(2) else 1)
    if ticks > MAX_TICKS:
        raise ValueError(f"bad {what} {text!r}: more than a year ({MAX_TICKS} ticks)")
    return ticks


def format_ticks(ticks: int) -> str:
    """``300`` -> ``"5HZ"`` when a whole number of seconds, else the ticks (``"90"``)."""
    if ticks > 0 and ticks % HZ == 0:
        return f"{ticks // HZ}HZ"
    return str(ticks)
