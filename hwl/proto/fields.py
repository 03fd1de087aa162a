"""Typed readers for a message's fields: one error type for every bad field.

A protocol module builds a frozen dataclass from a message's decoded fields with
these readers; a missing field, a field of the wrong type or out of its range
raises :class:`FieldError`, which a server answers with EINVAL and the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

_MISSING: Any = object()
T = TypeVar("T")


class FieldError(ValueError):
    """A message field is missing, of the wrong type, or out of range."""


def _get(fields: Mapping[str, object], name: str, kind: type[T], what: str, default: T) -> T:
    """The field, present (or defaulted) and of ``kind``, named ``what`` in the error
    (a bool is no integer here, though Python says it is)."""
    value = fields.get(name, default)
    if value is _MISSING:
        raise FieldError(f"field {name!r} is missing")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise FieldError(f"field {name!r} must be {what}, not {type(value).__name__}")
    return value


def get_int(
    fields: Mapping[str, object], name: str, low: int, high: int, default: int = _MISSING
) -> int:
    value = _get(fields, name, int, "an integer", default)
    if not low <= value <= high:
        raise FieldError(f"field {name!r}={value} is outside {low}..{high}")
    return value


def get_str(fields: Mapping[str, object], name: str, default: str = _MISSING) -> str:
    return _get(fields, name, str, "a string", default)


def get_bytes(
    fields: Mapping[str, object], name: str, max_len: int, default: bytes = _MISSING
) -> bytes:
    value = _get(fields, name, bytes, "bytes", default)
    if len(value) > max_len:
        raise FieldError(f"field {name!r} holds {len(value)} bytes (at most {max_len})")
    return value


def get_list(
    fields: Mapping[str, object], name: str, max_len: int, default: list[object] = _MISSING
) -> list[object]:
    value: list[object] = _get(fields, name, list, "a list", default)
    if len(value) > max_len:
        raise FieldError(f"field {name!r} has {len(value)} items (at most {max_len})")
    return value


def get_name(fields: Mapping[str, object], name: str, max_len: int = 256) -> str:
    """A non-empty string of at most ``max_len`` characters and no NUL: a key, a
    label, a regex, a path."""
    value = get_str(fields, name)
    if not value:
        raise FieldError(f"field {name!r} is empty")
    if len(value) > max_len:
        raise FieldError(f"field {name!r} is {len(value)} characters long; the limit is {max_len}")
    if "\0" in value:
        raise FieldError(f"field {name!r} contains a NUL character")
    return value


def get_bool(fields: Mapping[str, object], name: str, default: bool = _MISSING) -> bool:
    return _get(fields, name, bool, "a bool", default)


def get_flags(fields: Mapping[str, object], name: str, allowed: int, default: int = 0) -> int:
    """An integer of flag bits, each one of ``allowed``."""
    value = get_int(fields, name, 0, (1 << 63) - 1, default)
    allowed = int(allowed)  # ~ of an IntFlag keeps only the flag's own bits
    if value & ~allowed:
        raise FieldError(f"field {name!r}={value:#x} has bits outside {allowed:#x}")
    return value


def get_str_list(
    fields: Mapping[str, object], name: str, max_len: int, default: list[str] = _MISSING
) -> list[str]:
    """A list of strings (argv, say)."""
    items = get_list(fields, name, max_len, default)  # type: ignore[arg-type]
    if not all(isinstance(item, str) for item in items):
        raise FieldError(f"field {name!r} must be a list of strings")
    return [str(item) for item in items]


def get_optional_int(fields: Mapping[str, object], name: str, low: int, high: int) -> int | None:
    """An integer field that may be absent (None), as ``position`` in pread/pwrite."""
    if name not in fields:
        return None
    return get_int(fields, name, low, high)
