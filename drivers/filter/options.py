"""The filter's options, MINIX style: one ``key=value,flag,...`` string (or several
arguments), e.g. ``driver=at_wini,driver2=at_wini1,checksum=crc,mirror``.

- ``driver`` / ``driver2``: the labels of the main and the backup disk driver;
  ``minor`` / ``minor2`` their minors (default 0, the whole disk).
- ``checksum``: ``none`` (no layout: requests pass through), ``nil`` (the layout,
  each sum only the sector number), ``xor``, ``crc`` (CRC32C) or ``md5``.
- ``sum_sec``: data sectors per group (default 8, as MINIX's NR_SUM_SEC).
- ``mirror``: write both drivers, read the main one, fall back on the other.
- ``readback``: read every write back and compare (MINIX does it always).
- ``retries``: re-issues of one request after a problem before EIO (MINIX's N).
- ``restarts``: problems in a row after which a mirror side is dropped (M).
- ``timeout``: seconds a disk driver has to answer one request (T).
- ``deadwait``: seconds to wait for a dead driver's next incarnation.
- ``format``: at a fresh start, write the checksum of every sector (the data is
  kept) and, with ``mirror``, copy the main disk to the backup.

See docs/filter.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import sums

__all__ = ["OptionError", "Options", "parse"]


class OptionError(ValueError):
    """An argument the filter does not understand."""


@dataclass
class Options:
    driver: str = ""
    driver2: str = ""
    minor: int = 0
    minor2: int = 0
    checksum: str = "none"
    sum_sec: int = 8
    mirror: bool = False
    readback: bool = False
    retries: int = 3
    restarts: int = 3
    timeout: float = 3.0
    deadwait: float = 60.0
    format: bool = False

    @property
    def layout(self) -> bool:
        """Whether the disk holds checksum sectors between the data."""
        return self.checksum != "none"


_INTS = {"minor", "minor2", "sum_sec", "retries", "restarts"}
_FLOATS = {"timeout", "deadwait"}
_FLAGS = {"mirror", "readback", "format"}


def parse(argv: list[str]) -> Options:
    """Options from the command line (each argument may hold several, comma separated)."""
    o = Options()
    for arg in argv:
        for item in filter(None, (x.strip() for x in arg.split(","))):
            key, eq, value = item.partition("=")
            try:
                if key in ("driver", "driver2", "label0", "label1"):
                    setattr(o, {"label0": "driver", "label1": "driver2"}.get(key, key), value)
                elif key == "checksum":
                    o.checksum = value
                elif key in _INTS:
                    setattr(o, key, int(value))
                elif key in _FLOATS:
                    setattr(o, key, float(value))
                elif key in _FLAGS:
                    setattr(o, key, not eq or value not in ("0", "no"))
                elif key.startswith("no") and key[2:] in _FLAGS and not eq:
                    setattr(o, key[2:], False)
                else:
                    raise OptionError(f"unknown option {item!r}")
            except ValueError as exc:
                if isinstance(exc, OptionError):
                    raise
                raise OptionError(f"option {item!r}: {exc}") from None
    if not o.driver:
        raise OptionError("no driver=LABEL given")
    if o.mirror and not o.driver2:
        raise OptionError("mirror needs driver2=LABEL")
    if o.mirror and o.driver2 == o.driver:
        raise OptionError("mirror needs two different drivers")
    if o.checksum not in ("none", *sums.SIZES):
        raise OptionError(f"checksum={o.checksum!r}: use none, {', '.join(sums.SIZES)}")
    if o.layout and not 0 < o.sum_sec * sums.SIZES[o.checksum] <= sums.SECTOR:
        raise OptionError(f"sum_sec={o.sum_sec}: the sums must fit one sector")
    if o.retries < 0 or o.restarts < 1 or o.timeout <= 0 or o.deadwait <= 0:
        raise OptionError("retries >= 0, restarts >= 1, timeout and deadwait > 0")
    return o
