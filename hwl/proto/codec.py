"""The payload codec every IPC message body uses.

Bodies travel between OS processes, and the kernel decodes kernel-call payloads sent by
processes it does not trust, so nothing here uses pickle: a body is a small, typed byte
string. Decoding is bounded: every length and count is checked against the bytes that
remain before anything is allocated or looped over, containers nest at most MAX_DEPTH
deep, and bad input raises CodecError and nothing else.

Format, little endian::

    body   := ""                          the empty mapping (the common case)
            | u16 count, count * entry    count >= 1
    entry  := u8 len, name, value         name: UTF-8, 1..MAX_NAME bytes, unique per dict
    value  := "N" | "T" | "F"             None, True, False
            | "i" i64 | "f" f64           int (signed 64-bit), float (IEEE double)
            | "s" u32 len, UTF-8          str
            | "b" u32 len, raw            bytes (bytearray and memoryview encode as bytes)
            | "l" u32 count, count*value  list (tuples encode as lists)
            | "d" u16 count, count*entry  dict with str keys

The body is level 0; a list or dict value is one level deeper than its container, and no
container may be deeper than MAX_DEPTH.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import TypeAlias

__all__ = ["MAX_DEPTH", "MAX_NAME", "CodecError", "Value", "decode", "encode"]

Value: TypeAlias = bool | int | float | str | bytes | list["Value"] | dict[str, "Value"] | None

MAX_DEPTH = 8
"""Deepest container nesting allowed; a list or dict value at the top level is depth 1."""

MAX_NAME = 64
"""Longest field name, in UTF-8 bytes."""

_MAX_ENTRIES = 0xFFFF
_MAX_U32 = 0xFFFFFFFF

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_TAG_U32 = struct.Struct("<BI")
_TAG_I64 = struct.Struct("<Bq")
_TAG_F64 = struct.Struct("<Bd")

_N, _T, _F = 0x4E, 0x54, 0x46
_INT, _FLOAT, _STR, _BYTES, _LIST, _DICT = 0x69, 0x66, 0x73, 0x62, 0x6C, 0x64


class CodecError(ValueError):
    """A payload cannot be encoded or decoded; the message says what is wrong and where.

    ``offset`` is the byte offset of the problem when decoding, ``path`` the field path
    (like ``a.b[3]``) when encoding; the other is None.
    """

    def __init__(self, message: str, *, offset: int | None = None, path: str | None = None):
        super().__init__(message)
        self.offset = offset
        self.path = path


# --- encoding ----------------------------------------------------------------------------


class _Fault(Exception):
    """An encoding problem on its way up; each container on the way adds its path part."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.parts: list[str] = []


# Name -> u8 length + UTF-8, for names already checked. Names come from code, so this
# stays small; the cap keeps a caller that invents names from growing it forever.
_NAMES: dict[str, bytes] = {}
_NAMES_CAP = 4096


def encode(fields: Mapping[str, Value]) -> bytes:
    """Encode ``fields`` as a message body; the empty mapping encodes to ``b""``."""
    if type(fields) is not dict and not isinstance(fields, Mapping):
        raise CodecError(f"the body must be a mapping, not {type(fields).__name__}", path="")
    if not fields:
        return b""
    out = bytearray()
    try:
        _encode_entries(out, fields, 0, "")
    except _Fault as fault:
        path = "".join(reversed(fault.parts))
        where = f"field {path}" if path else "the body"
        raise CodecError(f"cannot encode {where}: {fault.reason}", path=path) from None
    return bytes(out)


def _encode_name(key: object) -> bytes:
    if not isinstance(key, str):
        raise _Fault(f"key {key!r} ({type(key).__name__}) is not a str")
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _Fault(f"name {key!r} is not encodable as UTF-8: {exc.reason}") from None
    if not 0 < len(raw) <= MAX_NAME:
        raise _Fault(f"name {key!r} is {len(raw)} bytes of UTF-8, must be 1..{MAX_NAME}")
    header = bytes((len(raw),)) + raw
    if type(key) is str and len(_NAMES) < _NAMES_CAP:
        _NAMES[key] = header
    return header


def _encode_entries(out: bytearray, fields: Mapping[str, Value], depth: int, dot: str) -> None:
    """Append u16 count and the entries of ``fields``, whose values are at ``depth``."""
    count = len(fields)
    if count > _MAX_ENTRIES:
        raise _Fault(f"{count} entries, more than {_MAX_ENTRIES}")
    out += _U16.pack(count)
    names = _NAMES
    for key, value in fields.items():
        header = names.get(key)
        if header is None:
            header = _encode_name(key)
        out += header
        if type(value) is int:  # the common case, inline: encode() takes 15% less time
            try:
                out += _TAG_I64.pack(_INT, value)
                continue
            except struct.error:
                pass  # out of range: _encode_value says so, and the path is added below
        try:
            _encode_value(out, value, depth)
        except _Fault as fault:
            fault.parts.append(dot + key)
            raise


def _encode_value(out: bytearray, value: object, depth: int) -> None:
    """Append one tagged value held by a container at ``depth``."""
    kind = type(value)
    if kind is int:
        try:
            out += _TAG_I64.pack(_INT, value)
        except struct.error:
            raise _Fault(f"int {value} does not fit in signed 64 bits") from None
    elif kind is str:
        _encode_str(out, value)  # type: ignore[arg-type]
    elif value is None:
        out.append(_N)
    elif value is True:
        out.append(_T)
    elif value is False:
        out.append(_F)
    elif kind is float:
        out += _TAG_F64.pack(_FLOAT, value)
    elif kind is bytes:
        _encode_bytes(out, value)  # type: ignore[arg-type]
    elif kind is list or kind is tuple:
        _encode_list(out, value, depth)  # type: ignore[arg-type]
    elif kind is dict:
        _encode_dict(out, value, depth)  # type: ignore[arg-type]
    else:
        _encode_other(out, value, depth)


def _encode_other(out: bytearray, value: object, depth: int) -> None:
    """Subclasses of the supported types (IntEnum, StrEnum, ...) and other bytes-likes."""
    if isinstance(value, int):  # bool is final, so this is an int subclass
        _encode_value(out, int(value), depth)
    elif isinstance(value, float):
        _encode_value(out, float(value), depth)
    elif isinstance(value, str):
        _encode_str(out, value)
    elif isinstance(value, bytes | bytearray | memoryview):
        _encode_bytes(out, bytes(value))
    elif isinstance(value, list | tuple):
        _encode_list(out, value, depth)
    elif isinstance(value, Mapping):
        _encode_dict(out, value, depth)
    else:
        raise _Fault(f"unsupported type {type(value).__name__}")


def _encode_str(out: bytearray, value: str) -> None:
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _Fault(f"str is not encodable as UTF-8: {exc.reason}") from None
    if len(raw) > _MAX_U32:
        raise _Fault(f"str of {len(raw)} bytes is longer than {_MAX_U32}")
    out += _TAG_U32.pack(_STR, len(raw))
    out += raw


def _encode_bytes(out: bytearray, value: bytes) -> None:
    if len(value) > _MAX_U32:
        raise _Fault(f"bytes of length {len(value)} is longer than {_MAX_U32}")
    out += _TAG_U32.pack(_BYTES, len(value))
    out += value


def _encode_list(out: bytearray, value: list[Value] | tuple[Value, ...], depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise _Fault(f"nested more than {MAX_DEPTH} containers deep")
    count = len(value)
    if count > _MAX_U32:
        raise _Fault(f"list of {count} items is longer than {_MAX_U32}")
    out += _TAG_U32.pack(_LIST, count)
    depth += 1
    index = 0
    try:
        for index, item in enumerate(value):  # noqa: B007 - read by the handler
            _encode_value(out, item, depth)
    except _Fault as fault:
        fault.parts.append(f"[{index}]")
        raise


def _encode_dict(out: bytearray, value: Mapping[str, Value], depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise _Fault(f"nested more than {MAX_DEPTH} containers deep")
    out.append(_DICT)
    _encode_entries(out, value, depth + 1, ".")


# --- decoding ----------------------------------------------------------------------------


def decode(data: bytes | bytearray | memoryview) -> dict[str, Value]:
    """Decode a message body; raises CodecError (and nothing else) if it is malformed."""
    if not data:
        return {}
    if type(data) is not bytes:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"decode() needs bytes, not {type(data).__name__}")
        data = bytes(data)  # one copy, as large as the input; slices below are then bytes
    end = len(data)
    if end < 2:
        raise _truncated(0, end, 2, "the u16 entry count")
    if data[0] == 0 and data[1] == 0:
        raise CodecError(
            "at byte 0: entry count is 0, but the empty body is encoded as zero bytes",
            offset=0,
        )
    fields, pos = _decode_entries(data, 0, end, 0)
    if pos != end:
        raise CodecError(f"{end - pos} trailing bytes after the body, at byte {pos}", offset=pos)
    return fields


def _truncated(pos: int, end: int, need: int, what: str) -> CodecError:
    return CodecError(
        f"truncated at byte {pos}: {what} needs {need} bytes, {max(end - pos, 0)} remain",
        offset=pos,
    )


def _decode_entries(data: bytes, pos: int, end: int, depth: int) -> tuple[dict[str, Value], int]:
    """Decode u16 count and entries at ``pos``; their values are held at ``depth``."""
    if pos + 2 > end:
        raise _truncated(pos, end, 2, "a u16 entry count")
    count = data[pos] | data[pos + 1] << 8
    start = pos
    pos += 2
    if count * 3 > end - pos:  # u8 length, a name of at least 1 byte, a tag
        raise CodecError(
            f"at byte {start}: {count} entries declared, but {end - pos} bytes cannot hold them",
            offset=start,
        )
    fields: dict[str, Value] = {}
    for _ in range(count):
        if pos >= end:
            raise _truncated(pos, end, 1, "a name length")
        size = data[pos]
        if not 0 < size <= MAX_NAME:
            raise CodecError(
                f"at byte {pos}: name length {size} is outside 1..{MAX_NAME}", offset=pos
            )
        pos += 1
        stop = pos + size
        if stop > end:
            raise _truncated(pos, end, size, "a name")
        try:
            name = data[pos:stop].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CodecError(
                f"at byte {pos}: name is not valid UTF-8 ({exc.reason} at byte {pos + exc.start})",
                offset=pos,
            ) from None
        if name in fields:
            raise CodecError(f"at byte {pos}: duplicate key {name!r}", offset=pos)
        if stop + 9 <= end and data[stop] == _INT:  # the common case, inline
            fields[name] = _I64.unpack_from(data, stop + 1)[0]
            pos = stop + 9
        else:
            fields[name], pos = _decode_value(data, stop, end, depth)
    return fields, pos


def _decode_value(data: bytes, pos: int, end: int, depth: int) -> tuple[Value, int]:
    """Decode one tagged value at ``pos``, held by a container at ``depth``."""
    if pos >= end:
        raise _truncated(pos, end, 1, "a value tag")
    tag = data[pos]
    at = pos
    pos += 1
    if tag == _INT:
        if pos + 8 > end:
            raise _truncated(pos, end, 8, "an int")
        return _I64.unpack_from(data, pos)[0], pos + 8
    if tag in (_STR, _BYTES):
        if pos + 4 > end:
            raise _truncated(pos, end, 4, "a u32 length")
        size = _U32.unpack_from(data, pos)[0]
        pos += 4
        stop = pos + size
        if stop > end:
            kind = "str" if tag == _STR else "bytes"
            raise CodecError(
                f"at byte {at}: {kind} declares {size} bytes, but only {end - pos} remain",
                offset=at,
            )
        if tag == _BYTES:
            return data[pos:stop], stop
        try:
            return data[pos:stop].decode("utf-8"), stop
        except UnicodeDecodeError as exc:
            raise CodecError(
                f"at byte {at}: str is not valid UTF-8 ({exc.reason} at byte {pos + exc.start})",
                offset=at,
            ) from None
    if tag == _T:
        return True, pos
    if tag == _F:
        return False, pos
    if tag == _N:
        return None, pos
    if tag == _FLOAT:
        if pos + 8 > end:
            raise _truncated(pos, end, 8, "a float")
        return _F64.unpack_from(data, pos)[0], pos + 8
    if tag in (_LIST, _DICT):
        if depth >= MAX_DEPTH:
            raise CodecError(
                f"at byte {at}: nested more than {MAX_DEPTH} containers deep", offset=at
            )
        if tag == _DICT:
            return _decode_entries(data, pos, end, depth + 1)
        if pos + 4 > end:
            raise _truncated(pos, end, 4, "a u32 list count")
        count = _U32.unpack_from(data, pos)[0]
        pos += 4
        if count > end - pos:  # every item takes at least its tag byte
            raise CodecError(
                f"at byte {at}: list declares {count} items, but only {end - pos} bytes remain",
                offset=at,
            )
        depth += 1
        items: list[Value] = []
        append = items.append
        for _ in range(count):
            item, pos = _decode_value(data, pos, end, depth)
            append(item)
        return items, pos
    raise CodecError(f"at byte {at}: unknown tag 0x{tag:02x} ({chr(tag)!r})", offset=at)
