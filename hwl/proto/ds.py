"""The DS protocol: the data store's requests, flags and driver-up keys.

Requests to DS (``DS_*``) are ``sendrec`` from any system process; the reply's
``m_type`` is 0 or a negative MINIX errno with an ``error`` field.

See docs/ds.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntFlag

from hwl.proto.fields import FieldError, get_flags, get_name

DS_BASE = 0x800
DS_PUBLISH = DS_BASE + 1  # key, type, value, flags
DS_RETRIEVE = DS_BASE + 2  # key, type -> value, owner
DS_DELETE = DS_BASE + 3  # key, type
DS_SUBSCRIBE = DS_BASE + 4  # regex, flags
DS_CHECK = DS_BASE + 5  # -> key, type, owner (one changed key; ENOENT when none)
DS_RETRIEVE_LABEL = DS_BASE + 6  # label -> endpoint, or endpoint -> label

DS_REQUEST_NAMES = {
    DS_PUBLISH: "publish",
    DS_RETRIEVE: "retrieve",
    DS_DELETE: "delete",
    DS_SUBSCRIBE: "subscribe",
    DS_CHECK: "check",
    DS_RETRIEVE_LABEL: "retrieve_label",
}


class DsFlag(IntFlag):
    """DS flags (MINIX's DSF_*)."""

    NONE = 0
    PRIVATE = 0x1  # only the owner may retrieve
    OVERWRITE = 0x2  # publish: replace an existing value; subscribe: replace
    INITIAL = 0x4  # subscribe: report the keys that already match


DS_TYPES = ("u32", "str", "mem", "label")
DS_MAX_KEY = 256
DS_MAX_MEM = 4096

# Driver-up keys that DS subscribers (VFS, INET) watch.
DRIVER_UP_BLK = "drv.blk."
DRIVER_UP_NET = "drv.net."

#: The value of a driver-up key once the driver is up (MINIX's DS_DRIVER_UP).
DS_DRIVER_UP = 1

U32_MAX = 0xFFFFFFFF
ENDPOINT_MIN, ENDPOINT_MAX = -(1 << 31), (1 << 31) - 1
PUBLISH_FLAGS = DsFlag.PRIVATE | DsFlag.OVERWRITE
SUBSCRIBE_FLAGS = DsFlag.INITIAL | DsFlag.OVERWRITE

DsValue = int | str | bytes
Fields = Mapping[str, object]


# ------------------------------------------------------------ typed requests
# Each is built from a request's fields; a bad field raises FieldError, which DS
# answers with EINVAL and the reason.


def check_type(type_: object) -> str:
    if not isinstance(type_, str) or type_ not in DS_TYPES:
        raise FieldError(f"type must be one of {', '.join(DS_TYPES)}, not {type_!r}")
    return type_


def check_value(type_: str, value: object) -> DsValue:
    """``value`` as an entry of ``type_`` holds it."""
    if type_ == "u32":
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= U32_MAX:
            raise FieldError(f"a u32 value must be an int in 0..{U32_MAX}, not {value!r:.40}")
        return value
    if type_ == "label":
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or not ENDPOINT_MIN <= value <= ENDPOINT_MAX
        ):
            raise FieldError(f"a label value must be an endpoint (int), not {value!r:.40}")
        return value
    if type_ == "str":
        if not isinstance(value, str):
            raise FieldError(f"a str value must be a str, not {type(value).__name__}")
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > DS_MAX_MEM:
            raise FieldError(f"a str value is {size} bytes; the limit is {DS_MAX_MEM}")
        return value
    if not isinstance(value, bytes):
        raise FieldError(f"a mem value must be bytes, not {type(value).__name__}")
    if len(value) > DS_MAX_MEM:
        raise FieldError(f"a mem value is {len(value)} bytes; the limit is {DS_MAX_MEM}")
    return value


def _field(fields: Fields, name: str) -> object:
    if name not in fields:
        raise FieldError(f"the request lacks the field {name!r}")
    return fields[name]


@dataclass(frozen=True)
class DsPublish:
    key: str
    type: str
    value: DsValue
    flags: DsFlag

    @classmethod
    def from_fields(cls, fields: Fields) -> DsPublish:
        key = get_name(fields, "key", DS_MAX_KEY)
        type_ = check_type(_field(fields, "type"))
        value = check_value(type_, _field(fields, "value"))
        return cls(key, type_, value, DsFlag(get_flags(fields, "flags", PUBLISH_FLAGS)))


@dataclass(frozen=True)
class DsKey:
    """DS_RETRIEVE and DS_DELETE: one entry, by key and type."""

    key: str
    type: str

    @classmethod
    def from_fields(cls, fields: Fields) -> DsKey:
        return cls(get_name(fields, "key", DS_MAX_KEY), check_type(_field(fields, "type")))


@dataclass(frozen=True)
class DsSubscribe:
    regex: str
    flags: DsFlag

    @classmethod
    def from_fields(cls, fields: Fields) -> DsSubscribe:
        regex = get_name(fields, "regex", DS_MAX_KEY)
        return cls(regex, DsFlag(get_flags(fields, "flags", SUBSCRIBE_FLAGS)))


@dataclass(frozen=True)
class DsRetrieveLabel:
    """Either ``label`` (-> its endpoint) or ``endpoint`` (-> its label); the other None."""

    label: str | None
    endpoint: int | None

    @classmethod
    def from_fields(cls, fields: Fields) -> DsRetrieveLabel:
        if ("label" in fields) == ("endpoint" in fields):
            raise FieldError("retrieve_label takes either a label or an endpoint")
        if "label" in fields:
            return cls(get_name(fields, "label", DS_MAX_KEY), None)
        endpoint = check_value("label", fields["endpoint"])
        assert isinstance(endpoint, int)
        return cls(None, endpoint)
