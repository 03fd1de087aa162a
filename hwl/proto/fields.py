"""Typed readers for a message's fields: one error type for every bad field.

A protocol module builds a frozen dataclass from a message's decoded fields with
these readers; a missing field, a field of the wrong type or out of its range
raises :class:`FieldError`, which a server answers with EINVAL and the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_MISSING: Any = object()


class FieldError(ValueError):
    """A message field is missing, of the wrong type, or out of range."""


def get_int(
    fields: Mapping[str, object], name: str, low: int, high: int, default: int = _MISSING
) -> int:
    value = fields.get(name, default)
    if value is _MISSING:
        raise FieldError(f"field {name!r} is missing")
    if not isinstance(value, int) or isinstance(value, bool):
        raise FieldError(f"field {name!r} must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise FieldError(f"field {name!r}={value} is outside {low}..{high}")
    return value


def get_str(fields: Mapping[str, object], name: str, default: str = _MISSING) -> str:
    value = fields.get(name, default)
    if value is _MISSING:
        raise FieldError(f"field {name!r} is missing")
    if not isinstance(value, str):
        raise FieldError(f"field {name!r} must be a string, not {type(value).__name__}")
    return value


def get_bytes(
    fields: Mapping[str, object], name: str, max_len: int, default: bytes = _MISSING
) -> bytes:
    value = fields.get(name, default)
    if value is _MISSING:
        raise FieldError(f"field {name!r} is missing")
    if not isinstance(value, bytes):
        raise FieldError(f"field {name!r} must be bytes, not {type(value).__name__}")
    if len(value) > max_len:
        raise FieldError(f"field {name!r} holds {len(value)} bytes (at most {max_len})")
    return value


def get_list(
    fields: Mapping[str, object], name: str, max_len: int, default: list[object] = _MISSING
) -> list[object]:
    value = fields.get(name, default)
    if value is _MISSING:
        raise FieldError(f"field {name!r} is missing")
    if not isinstance(value, list):
        raise FieldError(f"field {name!r} must be a list, not {type(value).__name__}")
    if len(value) > max_len:
        raise FieldError(f"field {name!r} has {len(value)} items (at most {max_len})")
    return value
