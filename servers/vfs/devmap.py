"""The device map: a device file name to (driver label, minor).

``/dev/c<C>d<D>`` is drive D of controller channel C, ``/dev/c<C>d<D>p<N>`` its
MBR primary partition N (0..3). Channel 0 is the at_wini instance labelled
``at_wini``, channel 1 ``at_wini1``; at_wini numbers minors drive * 5 + n, n = 0
for the whole disk and 1..4 for the partitions (docs/drivers.md).

VFS's ``--channel C=LABEL`` names another driver for a channel (:func:`set_label`):
``--channel 0=filter`` puts the filter driver (docs/filter.md) behind ``/dev/c0d0``;
its minors are numbered as at_wini's (it has minor 0 only).
"""

from __future__ import annotations

import re
from typing import Final

LABELS: Final = {0: "at_wini", 1: "at_wini1"}
_labels = dict(LABELS)  # what this VFS uses: LABELS unless set_label changed one
DRIVES: Final = 2
PARTITIONS: Final = 4

_NAME = re.compile(r"/dev/c([0-9])d([0-9])(?:p([0-9]))?")


def lookup(path: str) -> tuple[str, int] | None:
    """(label, minor) of a device file, or None for a name that is no device."""
    match = _NAME.fullmatch(path)
    if match is None:
        return None
    channel, drive = int(match[1]), int(match[2])
    part = None if match[3] is None else int(match[3])
    if channel not in _labels or drive >= DRIVES or (part is not None and part >= PARTITIONS):
        return None
    return _labels[channel], drive * 5 + (0 if part is None else part + 1)


def names() -> list[str]:
    """Every device file name, in order."""
    out = []
    for channel in sorted(_labels):
        for drive in range(DRIVES):
            out.append(f"/dev/c{channel}d{drive}")
            out.extend(f"/dev/c{channel}d{drive}p{p}" for p in range(PARTITIONS))
    return out


def set_label(channel: int, label: str) -> None:
    """Serve channel ``channel``'s device files through the driver ``label``."""
    if channel not in LABELS or not label:
        raise ValueError(f"channel {channel} (one of {sorted(LABELS)}) and a label")
    _labels[channel] = label
