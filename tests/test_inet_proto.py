"""The INET protocol's decoders (no QEMU): any fields give a typed request or
FieldError, never another exception; well-formed requests survive the codec."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwl.ipc import codec
from hwl.proto import inet
from hwl.proto.fields import FieldError

names = st.sampled_from(
    [
        "sock",
        "type",
        "addr",
        "port",
        "data",
        "max",
        "timeout",
        "name",
        "value",
        "size",
        "backlog",
        "how",
        "x",
    ]
)
scalars = (
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True)
    | st.binary(max_size=1600) | st.text(max_size=20)
    | st.sampled_from(["10.0.2.2", "0.0.0.0", "256.1.1.1", "1.2.3", "01.2.3.4", " 1.2.3.4"])
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=8) | st.dictionaries(names, inner, max_size=4),
    max_leaves=20,
)


@given(
    st.sampled_from(sorted(inet.REQUEST_NAMES)) | st.integers(-(2**31), 2**31),
    st.dictionaries(names, values, max_size=6),
)
def test_any_fields_decode_or_raise_field_error(
    m_type: int, fields: dict[str, codec.Value]
) -> None:
    try:
        request = inet.parse(m_type, fields)
    except FieldError:
        return
    assert m_type in inet.REQUEST_NAMES
    assert isinstance(request, inet.Request)


@given(
    st.integers(0, inet.MAX_SOCK),
    st.binary(max_size=inet.MAX_IO),
    st.ip_addresses(v=4).map(str),
    st.integers(0, 0xFFFF),
)
def test_sendto_round_trips_through_the_codec(sock: int, data: bytes, addr: str, port: int) -> None:
    payload = codec.encode({"sock": sock, "data": data, "addr": addr, "port": port})
    request = inet.parse(inet.SENDTO, codec.decode(payload))
    assert request == inet.SendTo(sock, data, addr, port)


@given(st.integers(0, inet.MAX_SOCK), st.integers(0, 1 << 31), st.floats(0, inet.MAX_TIMEOUT))
def test_recvfrom_round_trips(sock: int, limit: int, timeout: float) -> None:
    payload = codec.encode({"sock": sock, "max": limit, "timeout": timeout})
    request = inet.parse(inet.RECVFROM, codec.decode(payload))
    assert request == inet.RecvFrom(sock, min(limit, inet.MAX_RECV), timeout)


def test_bad_fields_name_the_field() -> None:
    with pytest.raises(FieldError, match=r"'addr'.*not an IPv4 address"):
        inet.parse(inet.BIND, {"sock": 1, "addr": "10.0.2", "port": 7})
    with pytest.raises(FieldError, match="'port'=70000"):
        inet.parse(inet.CONNECT, {"sock": 1, "addr": "10.0.2.2", "port": 70000})
    with pytest.raises(FieldError, match="'data' holds 7681 bytes"):
        inet.parse(inet.SENDTO, {"sock": 1, "data": bytes(7681), "addr": "1.2.3.4", "port": 9})
    with pytest.raises(FieldError, match="'how'=3"):
        inet.parse(inet.SHUTDOWN, {"sock": 1, "how": 3})
    with pytest.raises(FieldError, match="'port' without 'addr'"):
        inet.parse(inet.SENDTO, {"sock": 1, "data": b"", "port": 9})
    with pytest.raises(FieldError, match="'timeout'"):
        inet.parse(inet.RECVFROM, {"sock": 1, "max": 10, "timeout": -1})
    with pytest.raises(FieldError, match="'timeout'"):
        inet.parse(inet.RECVFROM, {"sock": 1, "max": 10, "timeout": float("nan")})
    with pytest.raises(FieldError, match="'type'=3"):
        inet.parse(inet.SOCKET, {"type": 3})
    with pytest.raises(FieldError, match="'value' is missing"):
        inet.parse(inet.SETSOCKOPT, {"sock": 1, "name": "broadcast"})
    with pytest.raises(FieldError, match="not an INET request"):
        inet.parse(0x1234, {})


def test_defaults() -> None:
    assert inet.parse(inet.SENDTO, {"sock": 3, "data": b"x"}) == inet.SendTo(3, b"x", None, 0)
    assert inet.parse(inet.RECVFROM, {"sock": 3, "max": 9}) == inet.RecvFrom(3, 9, None)
    assert inet.parse(inet.PING, {"addr": "10.0.2.2"}) == inet.Ping("10.0.2.2", 1.0, 56)
    assert inet.parse(inet.LISTEN, {"sock": 3}) == inet.Listen(3, 5)
    assert inet.parse(inet.LISTEN, {"sock": 3, "backlog": -4}) == inet.Listen(3, 1)
    assert inet.parse(inet.ACCEPT, {"sock": 3}) == inet.Accept(3, None)
    assert inet.parse(inet.GETSOCKOPT, {"sock": 3, "name": "ttl"}) == inet.SockOpt(3, "ttl", None)
