"""The NDEV decoder (no QEMU): any fields give a typed request or FieldError, never
another exception; well-formed requests survive the codec unchanged."""

from __future__ import annotations

from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwl import frames as hwl_frames
from hwl.ipc import codec
from hwl.proto import ndev
from hwl.proto.fields import FieldError

names = st.sampled_from(["id", "sync", "set", "mode", "mcast", "frames", "lens", "max", "x"])
scalars = (
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.binary(max_size=1600)
    | st.text(max_size=20)
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=8) | st.dictionaries(names, inner, max_size=4),
    max_leaves=20,
)


@given(st.sampled_from(sorted(ndev.REQUEST_NAMES)), st.dictionaries(names, values, max_size=6))
def test_any_fields_decode_or_raise_field_error(
    m_type: int, fields: dict[str, codec.Value]
) -> None:
    try:
        request = ndev.parse(m_type, fields)
    except FieldError:
        return
    assert (
        type(request).__name__.lower().replace("statusreply", "status_reply")
        == (ndev.REQUEST_NAMES[m_type])
    )


@given(
    st.lists(st.binary(min_size=ndev.ETH_HEADER, max_size=ndev.ETH_MAX), min_size=1, max_size=5),
    st.integers(0, 2**31 - 1),
)
def test_send_round_trips_through_the_codec(frames: list[bytes], ident: int) -> None:
    payload = codec.encode({**ndev.frames_fields(frames), "id": ident, "sync": True})
    request = ndev.parse(ndev.SEND, codec.decode(payload))
    assert isinstance(request, ndev.Send)
    assert list(request.frames) == frames and request.id == ident and request.sync


def test_bad_fields_name_the_field() -> None:
    packed = ndev.frames_fields([bytes(60), bytes(61)])
    bad_lens: list[tuple[dict[str, object], str]] = [
        ({"frames": bytes(63), "lens": b"\x3c\x00\x03\x00"}, r"frames\[1\] is 3 bytes"),
        ({**packed, "frames": bytes(120)}, "add up to 121 bytes, 'frames' holds 120"),
        ({**packed, "lens": b"\x3c\x00\x3d"}, "holds 3 bytes, not u16 lengths"),
        ({**packed, "lens": b""}, "'lens' is empty"),
        ({"lens": packed["lens"]}, "frames"),
        ({"frames": [bytes(60)], "lens": packed["lens"]}, "frames"),  # the old list form
    ]
    for fields, why in bad_lens:
        with pytest.raises(FieldError, match=why):
            ndev.parse(ndev.SEND, fields)
    with pytest.raises(FieldError, match="mcast"):
        ndev.parse(ndev.CONF, {"set": ndev.CONF_MCAST, "mcast": [b"12345"]})
    with pytest.raises(FieldError, match="not an NDEV request"):
        ndev.parse(0x1234, {})


def test_frames_fit_keeps_a_reply_under_the_message_limit() -> None:
    for size in (60, 64, 512, 1514):
        frames = [bytes(size)] * 200
        n = ndev.frames_fit(frames, ndev.MAX_FRAMES)
        assert n > 0
        payload = codec.encode({"id": 1, "result": n, **ndev.frames_fields(frames[:n])})
        assert len(payload) <= 8192 - 64


@given(st.lists(st.binary(min_size=ndev.ETH_HEADER, max_size=200), min_size=1, max_size=20),
       st.integers(0, 19), st.integers(0, 7))  # fmt: skip
def test_packed_frames_slice_like_a_list_and_scatter_into_a_ring(
    frames: list[bytes], cut: int, first: int
) -> None:
    packed = ndev.Frames.of(frames)
    assert list(packed) == frames and list(packed[cut:]) == frames[cut:]
    assert ndev.frames_fields(packed[cut:]) == ndev.frames_fields(frames[cut:])
    slots, stride, base = 32, 256, 64
    ring = memoryview(bytearray(b"\xee" * (base + slots * stride)))
    lens = hwl_frames.scatter(ring, base, stride, slots, first, packed, ndev.ETH_MIN)
    for k, frame in enumerate(frames):
        at = base + (first + k) % slots * stride
        padded = frame + bytes(max(0, ndev.ETH_MIN - len(frame)))
        assert lens[k] == len(padded) and bytes(ring[at : at + len(padded)]) == padded


def test_scatter_refuses_what_does_not_fit() -> None:
    ring = memoryview(bytearray(4 * 128))
    with pytest.raises(ValueError, match="5 frames from slot 0 of 4"):
        hwl_frames.scatter(ring, 0, 128, 4, 0, ndev.Frames.of([bytes(60)] * 5), 60)
    with pytest.raises(ValueError, match="128-byte slots"):
        hwl_frames.scatter(ring, 0, 128, 4, 0, ndev.Frames.of([bytes(129)]), 60)
    with pytest.raises(ValueError, match="ring"):
        hwl_frames.scatter(ring, 128, 128, 4, 0, ndev.Frames.of([bytes(60)]), 60)
    bad = ndev.Frames(b"x" * 60, array("H", [60, 60]), array("I", [0, 30]))
    with pytest.raises(ValueError, match="outside their data"):
        hwl_frames.scatter(ring, 0, 128, 4, 0, bad, 60)
