"""NDEV: the network-driver protocol (MINIX 3.4's, with frames carried inline).

A client (INET, a test, ``hwl net``) talks to one NIC driver built on
:mod:`hwl.driver.netdriver`. Requests carry ``id`` (echoed in the reply) and
``sync`` (true: the client waits in ``sendrec`` and the reply goes with the
driver's next receive; false: the client sent with ``senda`` and the reply comes
back by ``senda``). Replies have their own message types and a ``result``: a
count, 0, or a negative MINIX errno with ``error`` saying why.

- ``INIT``: the first request to an incarnation; requests before it are dropped
  without a reply (a restarted driver must be re-initialised by its client, which
  learns of the restart from DS's ``drv.net.<label>`` key). The reply names the
  card: ``hwaddr`` (6 bytes), ``name``, ``link``, ``caps``, ``max_send``/``max_recv``
  (frames per request). The client becomes the one that gets STATUS messages.
- ``CONF``: ``set`` (a mask of CONF_*) and the values it names: ``mode`` (MODE_*),
  ``mcast`` (a list of 6-byte addresses). DOWN answers every pending request EINTR.
- ``SEND``: 14..1514-byte Ethernet frames without FCS (the driver pads to 60),
  packed (below); answered with the count the card took once it has them (they
  leave in order).
- ``RECV``: up to ``max`` frames; answered at once if frames are waiting, else when
  they arrive. Several RECVs may be pending; they are answered in order.
- ``STATUS`` (driver to client, unsolicited, by ``senda``): link state and counters;
  the client answers ``STATUS_REPLY`` before the next one is sent.

Frames ride packed in a SEND and a RECV reply (:func:`frames_fields`,
:func:`frames_of`): ``frames`` the bytes of all of them back to back, ``lens``
each one's length as a little-endian u16. A list of small byte strings cost the
codec work per frame on both sides, a third of a SEND's time for 64-byte frames.

See docs/network.md.
"""

from __future__ import annotations

import sys
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate, count, islice
from operator import add
from typing import Final, overload

from hwl.proto.ds import DS_DRIVER_UP as DS_DRIVER_UP  # the value of drv.net.<label>
from hwl.proto.fields import FieldError, get_bool, get_bytes, get_int, get_list

NDEV_BASE: Final = 0x1A00
INIT: Final = NDEV_BASE + 1
CONF: Final = NDEV_BASE + 2
SEND: Final = NDEV_BASE + 3
RECV: Final = NDEV_BASE + 4
STATUS_REPLY: Final = NDEV_BASE + 5

REPLY_BASE: Final = 0x1A80
INIT_REPLY: Final = REPLY_BASE + 1
CONF_REPLY: Final = REPLY_BASE + 2
SEND_REPLY: Final = REPLY_BASE + 3
RECV_REPLY: Final = REPLY_BASE + 4
STATUS: Final = REPLY_BASE + 5

REQUEST_NAMES: Final = {
    INIT: "init",
    CONF: "conf",
    SEND: "send",
    RECV: "recv",
    STATUS_REPLY: "status_reply",
}
REPLY_OF: Final = {INIT: INIT_REPLY, CONF: CONF_REPLY, SEND: SEND_REPLY, RECV: RECV_REPLY}

# CONF ``set`` bits
CONF_MODE: Final = 0x01
CONF_MCAST: Final = 0x02
# modes (MINIX's NDEV_MODE_*)
MODE_DOWN: Final = 0x00
MODE_UP: Final = 0x01
MODE_BCAST: Final = 0x02
MODE_MCAST_LIST: Final = 0x04
MODE_MCAST_ALL: Final = 0x08
MODE_PROMISC: Final = 0x10
MODE_MASK: Final = 0x1F
MAX_MCAST: Final = 16  # more multicast addresses: the driver takes MCAST_ALL

ETH_MIN: Final = 60  # without FCS; shorter frames are padded by the driver
ETH_MAX: Final = 1514
ETH_HEADER: Final = 14
#: Frame bytes per SEND request or RECV reply: the rest of an 8 KiB message is the codec's.
MAX_FRAME_BYTES: Final = 7936
MAX_FRAMES: Final = 128  # frames per SEND request or RECV reply
_LEN = array("H")  # a frame's length in ``lens``


def is_request(m_type: int) -> bool:
    return m_type in REQUEST_NAMES


def _id(f: Mapping[str, object]) -> int:
    return get_int(f, "id", 0, (1 << 31) - 1, 0)


def _sync(f: Mapping[str, object]) -> bool:
    return get_bool(f, "sync", False)


@dataclass(frozen=True)
class Init:
    id: int
    sync: bool

    @classmethod
    def from_fields(cls, f: Mapping[str, object]) -> Init:
        return cls(_id(f), _sync(f))


@dataclass(frozen=True)
class Conf:
    id: int
    sync: bool
    set: int
    mode: int
    mcast: tuple[bytes, ...] = ()

    @classmethod
    def from_fields(cls, f: Mapping[str, object]) -> Conf:
        what = get_int(f, "set", 0, CONF_MODE | CONF_MCAST)
        mode = get_int(f, "mode", 0, MODE_MASK, MODE_DOWN) if what & CONF_MODE else MODE_DOWN
        mcast: list[bytes] = []
        if what & CONF_MCAST:
            for i, addr in enumerate(get_list(f, "mcast", 256)):
                if not isinstance(addr, bytes) or len(addr) != 6:
                    raise FieldError(f"mcast[{i}] is not a 6-byte address")
                mcast.append(addr)
        return cls(_id(f), _sync(f), what, mode, tuple(mcast))


@dataclass(frozen=True)
class Send:
    id: int
    sync: bool
    frames: Frames

    @classmethod
    def from_fields(cls, f: Mapping[str, object]) -> Send:
        return cls(_id(f), _sync(f), frames_of(f))


@dataclass(frozen=True)
class Recv:
    id: int
    sync: bool
    max: int

    @classmethod
    def from_fields(cls, f: Mapping[str, object]) -> Recv:
        return cls(_id(f), _sync(f), get_int(f, "max", 1, MAX_FRAMES, MAX_FRAMES))


@dataclass(frozen=True)
class StatusReply:
    id: int

    @classmethod
    def from_fields(cls, f: Mapping[str, object]) -> StatusReply:
        return cls(_id(f))


Request = Init | Conf | Send | Recv | StatusReply
_PARSERS: Final[dict[int, Callable[[Mapping[str, object]], Request]]] = {
    INIT: Init.from_fields,
    CONF: Conf.from_fields,
    SEND: Send.from_fields,
    RECV: Recv.from_fields,
    STATUS_REPLY: StatusReply.from_fields,
}


def parse(m_type: int, fields: Mapping[str, object]) -> Request:
    """The typed request of a message; FieldError names the bad field."""
    parser = _PARSERS.get(m_type)
    if parser is None:
        raise FieldError(f"message type {m_type:#x} is not an NDEV request")
    return parser(fields)


@dataclass
class Stats:
    """A driver's counters (STATUS carries them; ``hwl up`` shows them)."""

    sent: int = 0
    received: int = 0
    oerror: int = 0  # frames that could not be sent
    ierror: int = 0  # frames the device flagged bad
    iqdrop: int = 0  # frames dropped for want of room (the device's or ours)
    dropped_requests: int = 0  # requests dropped before INIT
    bad_requests: int = 0  # malformed requests answered EINVAL

    def as_fields(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass(frozen=True)
class InitReply:
    """What INIT answers: the card as the client will drive it."""

    hwaddr: bytes
    name: str
    link: bool
    caps: int = 0
    max_send: int = MAX_FRAMES
    max_recv: int = MAX_FRAMES

    @classmethod
    def from_fields(cls, f: Mapping[str, object]) -> InitReply:
        name = f.get("name", "")
        link = f.get("link", False)
        return cls(
            hwaddr=get_bytes(f, "hwaddr", 6),
            name=name if isinstance(name, str) else "",
            link=bool(link),
            caps=get_int(f, "caps", 0, 0xFFFFFFFF, 0),
            max_send=get_int(f, "max_send", 1, MAX_FRAMES, MAX_FRAMES),
            max_recv=get_int(f, "max_recv", 1, MAX_FRAMES, MAX_FRAMES),
        )


def frames_fit(frames: Iterable[bytes], limit: int) -> int:
    """How many of the first ``frames`` (at most ``limit``) fit in one message
    (each takes its bytes and its length in ``lens``), counted at C speed."""
    sizes = accumulate(map(len, islice(frames, limit)))
    totals = list(map(add, sizes, count(_LEN.itemsize, _LEN.itemsize)))
    return bisect_right(totals, MAX_FRAME_BYTES)


def frames_fields(frames: Sequence[bytes]) -> dict[str, bytes]:
    """``frames`` packed for a SEND or a RECV reply (the module's docstring)."""
    if isinstance(frames, Frames):
        data, lens = frames.data, frames.lens  # whole only if it was not sliced
        if len(data) != sum(lens):
            data = b"".join(frames)
    else:
        data, lens = b"".join(frames), array("H", map(len, frames))
    if sys.byteorder == "big":
        lens = array("H", lens)
        lens.byteswap()
    return {"frames": data, "lens": lens.tobytes()}


class Frames(Sequence[bytes]):
    """Frames packed back to back, as a SEND carries them: a sequence of bytes for
    any driver, and the packed form (``data``, ``lens``, ``starts``) for one that
    copies them all in one call (hwl.frames.scatter). A slice is a Frames."""

    __slots__ = ("data", "lens", "starts")

    def __init__(self, data: bytes, lens: array[int], starts: array[int]) -> None:
        self.data, self.lens, self.starts = data, lens, starts

    @classmethod
    def of(cls, frames: Sequence[bytes]) -> Frames:
        if isinstance(frames, Frames):
            return frames
        lens = array("H", map(len, frames))
        return cls(b"".join(frames), lens, array("I", accumulate(lens, initial=0))[:-1])

    def __len__(self) -> int:
        return len(self.lens)

    @overload
    def __getitem__(self, i: int) -> bytes: ...
    @overload
    def __getitem__(self, i: slice) -> Frames: ...
    def __getitem__(self, i: int | slice) -> bytes | Frames:
        if isinstance(i, slice):
            return Frames(self.data, self.lens[i], self.starts[i])
        start = self.starts[i]
        return self.data[start : start + self.lens[i]]


def frames_of(f: Mapping[str, object]) -> Frames:
    """The frames :func:`frames_fields` packed, each 14..1514 bytes; FieldError
    naming the first bad one, or the fields that do not agree."""
    data = get_bytes(f, "frames", MAX_FRAME_BYTES)
    raw = get_bytes(f, "lens", MAX_FRAMES * _LEN.itemsize)
    if not raw:
        raise FieldError("field 'lens' is empty")
    if len(raw) % _LEN.itemsize:
        raise FieldError(f"field 'lens' holds {len(raw)} bytes, not u16 lengths")
    lens = array("H", raw)
    if sys.byteorder == "big":
        lens.byteswap()
    if min(lens) < ETH_HEADER or max(lens) > ETH_MAX:
        i, bad = next((i, n) for i, n in enumerate(lens) if not ETH_HEADER <= n <= ETH_MAX)
        raise FieldError(f"frames[{i}] is {bad} bytes ({ETH_HEADER}..{ETH_MAX})")
    if sum(lens) != len(data):
        raise FieldError(f"'lens' add up to {sum(lens)} bytes, 'frames' holds {len(data)}")
    return Frames(data, lens, array("I", accumulate(lens, initial=0))[:-1])
