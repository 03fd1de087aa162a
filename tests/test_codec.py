"""The IPC payload codec: round trips, and bad input only ever raises CodecError."""

from __future__ import annotations

import contextlib
import enum
import math
import struct
import tracemalloc
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwl.ipc.codec import MAX_DEPTH, MAX_NAME, CodecError, Value, decode, encode

FAST = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.text(min_size=1, max_size=MAX_NAME).filter(
    lambda name: len(name.encode("utf-8")) <= MAX_NAME
)
scalars: st.SearchStrategy[Value] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=20),
)


def values_nesting(levels: int) -> st.SearchStrategy[Value]:
    """Values with at most ``levels`` containers nested inside each other."""
    strategy = scalars
    for _ in range(levels):
        strategy = st.one_of(
            scalars,
            st.lists(strategy, max_size=3),
            st.dictionaries(names, strategy, max_size=3),
        )
    return strategy


bodies = st.dictionaries(names, values_nesting(MAX_DEPTH), max_size=5)


def same(a: object, b: object) -> bool:
    """Equal, of the same type (True is not 1), with nan equal to nan and -0.0 not 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same(a[key], b[key]) for key in a)
    return a == b


def nested_lists(levels: int, leaf: Value = 1) -> list[Any]:
    """``levels`` lists nested inside each other, the innermost holding ``leaf``."""
    value: list[Any] = [leaf]
    for _ in range(levels - 1):
        value = [value]
    return value


def entry(name: bytes, value: bytes) -> bytes:
    return bytes((len(name),)) + name + value


def body(*entries: bytes) -> bytes:
    return struct.pack("<H", len(entries)) + b"".join(entries)


# --- round trips -------------------------------------------------------------------------


@FAST
@given(bodies)
def test_round_trip(fields: dict[str, Value]) -> None:
    data = encode(fields)
    decoded = decode(data)
    assert same(decoded, fields)
    assert encode(decoded) == data
    assert same(decode(bytearray(data)), fields)
    assert same(decode(memoryview(data)), fields)


def test_empty_body_is_zero_bytes() -> None:
    assert encode({}) == b""
    assert decode(b"") == {}
    assert decode(bytearray()) == {}
    assert decode(memoryview(b"")) == {}


def test_bool_stays_bool_and_int_stays_int() -> None:
    decoded = decode(encode({"t": True, "f": False, "one": 1, "zero": 0, "l": [True, 1]}))
    assert same(decoded, {"t": True, "f": False, "one": 1, "zero": 0, "l": [True, 1]})


def test_edge_scalars() -> None:
    fields: dict[str, Value] = {
        "min": -(2**63),
        "max": 2**63 - 1,
        "nan": math.nan,
        "inf": -math.inf,
        "negzero": -0.0,
        "s": "",
        "b": b"",
        "u": "ünïcødé ☃ \U0001f600 \x00",
        "l": [],
        "d": {},
        "名前": None,
    }
    assert same(decode(encode(fields)), fields)


def test_tuples_bytearrays_and_subclasses_encode_as_the_base_types() -> None:
    class Color(enum.IntEnum):
        RED = 3

    class Name(enum.StrEnum):
        DISK = "disk"

    fields: dict[str, Any] = {
        "t": (1, (2, "x")),
        "ba": bytearray(b"ab"),
        "mv": memoryview(b"cd"),
        "e": Color.RED,
        "n": Name.DISK,
    }
    decoded = decode(encode(fields))
    assert same(decoded, {"t": [1, [2, "x"]], "ba": b"ab", "mv": b"cd", "e": 3, "n": "disk"})


def test_known_encoding() -> None:
    data = encode({"a": 1, "b": "hi", "c": [True, None], "d": {"e": b"\x00"}, "f": 0.5})
    assert data == (
        b"\x05\x00"
        b"\x01ai\x01\x00\x00\x00\x00\x00\x00\x00"
        b"\x01bs\x02\x00\x00\x00hi"
        b"\x01cl\x02\x00\x00\x00TN"
        b"\x01dd\x01\x00\x01eb\x01\x00\x00\x00\x00"
        b"\x01ff" + struct.pack("<d", 0.5)
    )


def test_names_are_limited_in_utf8_bytes() -> None:
    longest = "é" * (MAX_NAME // 2)
    assert decode(encode({longest: 1})) == {longest: 1}
    with pytest.raises(CodecError, match="66 bytes"):
        encode({longest + "é": 1})
    with pytest.raises(CodecError, match="0 bytes"):
        encode({"": 1})


def test_depth_limit_is_inclusive() -> None:
    deepest = {"a": nested_lists(MAX_DEPTH)}
    assert decode(encode(deepest)) == deepest
    deepest_dicts: dict[str, Any] = {"x": 1}
    for _ in range(MAX_DEPTH):
        deepest_dicts = {"x": deepest_dicts}
    assert decode(encode(deepest_dicts)) == deepest_dicts


# --- hostile input -----------------------------------------------------------------------


def decodes_or_raises_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):  # anything else (IndexError, ...) fails the test
        decode(data)


@FAST
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_codec_error(data: bytes) -> None:
    decodes_or_raises_codec_error(data)


# Bytes that are mostly tags, small counts and 0xff, so decoding gets past the header.
plausible = st.lists(st.sampled_from(b"NTFifsbld\x00\x01\x02\x03\x80\xff"), max_size=300).map(bytes)


@FAST
@given(plausible)
def test_plausible_bytes_only_raise_codec_error(data: bytes) -> None:
    decodes_or_raises_codec_error(b"\x01\x00\x01a" + data)
    decodes_or_raises_codec_error(data)


@FAST
@given(bodies, st.data())
def test_mutated_encodings_only_raise_codec_error(
    fields: dict[str, Value], data: st.DataObject
) -> None:
    encoded = bytearray(encode(fields))
    for _ in range(data.draw(st.integers(1, 4))):
        if not encoded:
            break
        at = data.draw(st.integers(0, len(encoded) - 1))
        encoded[at] = data.draw(st.integers(0, 255))
    decodes_or_raises_codec_error(bytes(encoded))


@FAST
@given(bodies.filter(bool))
def test_every_truncation_raises(fields: dict[str, Value]) -> None:
    data = encode(fields)
    for size in range(1, len(data)):
        with pytest.raises(CodecError, match=r"truncated|declare|cannot hold"):
            decode(data[:size])


@FAST
@given(bodies, st.binary(min_size=1, max_size=10))
def test_trailing_bytes_raise(fields: dict[str, Value], extra: bytes) -> None:
    with pytest.raises(CodecError):
        decode(encode(fields) + extra)


def test_trailing_bytes_message() -> None:
    with pytest.raises(CodecError, match="2 trailing bytes after the body, at byte 5") as info:
        decode(body(entry(b"a", b"N")) + b"xx")
    assert info.value.offset == 5


def test_unknown_tag() -> None:
    with pytest.raises(CodecError, match=r"at byte 4: unknown tag 0x5a \('Z'\)") as info:
        decode(body(entry(b"a", b"Z")))
    assert info.value.offset == 4


def test_bad_utf8_name() -> None:
    with pytest.raises(CodecError, match="at byte 3: name is not valid UTF-8"):
        decode(body(entry(b"\xff", b"N")))


def test_bad_utf8_str() -> None:
    with pytest.raises(CodecError, match="at byte 4: str is not valid UTF-8"):
        decode(body(entry(b"a", b"s\x02\x00\x00\x00\xc3\x28")))


def test_name_length_out_of_range() -> None:
    with pytest.raises(CodecError, match="name length 0 is outside"):
        decode(b"\x01\x00\x00NN")
    with pytest.raises(CodecError, match=f"name length {MAX_NAME + 1} is outside"):
        decode(body(entry(b"n" * (MAX_NAME + 1), b"N")))


def test_duplicate_key() -> None:
    with pytest.raises(CodecError, match="duplicate key 'a'"):
        decode(body(entry(b"a", b"N"), entry(b"a", b"T")))
    with pytest.raises(CodecError, match="duplicate key 'b'"):
        decode(body(entry(b"a", b"d\x02\x00" + entry(b"b", b"N") + entry(b"b", b"N"))))


def test_zero_count_body_is_not_the_empty_body() -> None:
    with pytest.raises(CodecError, match="entry count is 0"):
        decode(b"\x00\x00")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"s\xff\xff\xff\xff", "str declares 4294967295 bytes"),
        (b"b\xff\xff\xff\xff", "bytes declares 4294967295 bytes"),
        (b"l\xff\xff\xff\xff", "list declares 4294967295 items"),
        (b"d\xff\xff", "65535 entries declared"),
    ],
)
def test_huge_declared_sizes_fail_fast(value: bytes, message: str) -> None:
    data = body(entry(b"a", value))
    tracemalloc.start()
    try:
        with pytest.raises(CodecError, match=message):
            decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_top_level_count_larger_than_the_body() -> None:
    with pytest.raises(CodecError, match="at byte 0: 65535 entries declared"):
        decode(b"\xff\xff\x01aN")


def test_decode_depth_limit() -> None:
    def lists(levels: int) -> bytes:
        return b"l\x01\x00\x00\x00" * levels + b"N"

    assert decode(body(entry(b"a", lists(MAX_DEPTH)))) == {"a": nested_lists(MAX_DEPTH, None)}
    with pytest.raises(
        CodecError, match=f"at byte {4 + 5 * MAX_DEPTH}: nested more than 8 containers deep"
    ):
        decode(body(entry(b"a", lists(MAX_DEPTH + 1))))
    dicts = b"d\x01\x00\x01x" * (MAX_DEPTH + 1) + b"N"
    with pytest.raises(CodecError, match="nested more than 8 containers deep"):
        decode(body(entry(b"a", dicts)))


# --- what encode refuses -----------------------------------------------------------------


def test_encode_depth_limit() -> None:
    with pytest.raises(
        CodecError,
        match=r"field a" + r"\[0\]" * MAX_DEPTH + ": nested more than 8 containers deep$",
    ):
        encode({"a": nested_lists(MAX_DEPTH + 1)})


@pytest.mark.parametrize("number", [2**63, -(2**63) - 1, 2**100])
def test_encode_int_out_of_range(number: int) -> None:
    with pytest.raises(CodecError, match=f"field n: int {number} does not fit in signed 64"):
        encode({"n": number})
    with pytest.raises(CodecError, match=r"field l\[1\]: int .* does not fit"):
        encode({"l": [0, number]})


def test_encode_unsupported_type_names_the_path() -> None:
    with pytest.raises(CodecError, match=r"field a\.b\[3\]: unsupported type set") as info:
        encode({"a": {"b": [0, 1, 2, {1, 2}]}})  # type: ignore[list-item]
    assert info.value.path == "a.b[3]"
    with pytest.raises(CodecError, match="field x: unsupported type object"):
        encode({"x": object()})  # type: ignore[dict-item]


def test_encode_bad_keys() -> None:
    with pytest.raises(CodecError, match=r"field a: key 3 \(int\) is not a str"):
        encode({"a": {3: 1}})  # type: ignore[dict-item]
    with pytest.raises(CodecError, match=r"the body: key b'k' \(bytes\) is not a str"):
        encode({b"k": 1})  # type: ignore[dict-item]


def test_encode_too_many_entries() -> None:
    with pytest.raises(CodecError, match="65536 entries, more than 65535"):
        encode({f"k{i}": None for i in range(65536)})


def test_encode_unencodable_str() -> None:
    with pytest.raises(CodecError, match="field s: str is not encodable as UTF-8"):
        encode({"s": "\udc80"})


def test_encode_needs_a_mapping() -> None:
    with pytest.raises(CodecError, match="must be a mapping, not list"):
        encode([("a", 1)])  # type: ignore[arg-type]
