"""Typed requests of hwl.proto (DS, VFS) and the field readers: a bad field is one
error type, FieldError, with a reason; and the protocol package imports nothing
else of hwl, so any process can import it."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

import hwl.proto
from hwl.proto import ds as dsp
from hwl.proto import vfs as vp
from hwl.proto.ds import DsFlag
from hwl.proto.fields import FieldError, get_flags, get_name, get_optional_int, get_str_list


def test_the_protocol_package_imports_nothing_else_of_hwl() -> None:
    package = Path(hwl.proto.__file__).parent
    imported = set()
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add((source.name, node.module))
            elif isinstance(node, ast.Import):
                imported.update((source.name, alias.name) for alias in node.names)
    outside = {
        (name, mod)
        for name, mod in imported
        if mod.split(".")[0] == "hwl" and not (mod == "hwl.proto" or mod.startswith("hwl.proto."))
    }
    assert len(imported) > 5 and not outside, outside


def test_old_module_names_are_the_same_objects() -> None:
    from hwl.driver import proto as old_bdev
    from hwl.ipc import codec as old_codec
    from hwl.kernel import errno as old_errno
    from hwl.proto import bdev, codec, errno
    from hwl.system import proto as old_system

    assert old_codec.CodecError is codec.CodecError
    assert old_errno.Errno is errno.Errno
    assert old_system.DsFlag is dsp.DsFlag and old_bdev.BDEV_OPEN == bdev.BDEV_OPEN


def test_publish_is_typed() -> None:
    pub = dsp.DsPublish.from_fields({"key": "k", "type": "u32", "value": 7, "flags": 2})
    assert pub == dsp.DsPublish("k", "u32", 7, DsFlag.OVERWRITE)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"type": "u32", "value": 1}, "'key' is missing"),
        ({"key": "k", "type": "u32", "value": 1, "flags": 0x100}, "bits outside"),
        ({"key": "k", "type": "float", "value": 1}, "type must be one of"),
        ({"key": "a\0b", "type": "u32", "value": 1}, "NUL"),
        ({"key": "k", "type": "u32", "value": True}, "u32 value"),
    ],
)
def test_a_bad_publish_says_why(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(FieldError, match=reason):
        dsp.DsPublish.from_fields(fields)


def test_retrieve_label_takes_one_of_two() -> None:
    assert dsp.DsRetrieveLabel.from_fields({"endpoint": 5}) == dsp.DsRetrieveLabel(None, 5)
    with pytest.raises(FieldError, match="either"):
        dsp.DsRetrieveLabel.from_fields({"label": "a", "endpoint": 5})


def test_vfs_requests_are_typed() -> None:
    assert vp.parse_request(vp.VFS_READ, {"fd": 1, "count": 9, "grant": 3}) == vp.VfsIo(
        1, 9, 3, None
    )
    assert vp.parse_request(vp.VFS_OPEN, {"path": "/dev/c0d0", "flags": 2}) == vp.VfsOpen(
        "/dev/c0d0", 2
    )
    with pytest.raises(FieldError, match="'fd' must be an integer"):
        vp.parse_request(vp.VFS_LSEEK, {"fd": "x", "offset": 0, "whence": 0})
    with pytest.raises(KeyError):
        vp.parse_request(vp.VFS_BASE + 99, {})


def test_field_readers() -> None:
    assert get_optional_int({}, "position", 0, 10) is None
    assert get_str_list({"argv": ["a", "b"]}, "argv", 4) == ["a", "b"]
    with pytest.raises(FieldError):
        get_str_list({"argv": ["a", 1]}, "argv", 4)
    with pytest.raises(FieldError, match="empty"):
        get_name({"label": ""}, "label")
    assert get_flags({"flags": DsFlag.INITIAL}, "flags", DsFlag.INITIAL) == 4
    with pytest.raises(FieldError):
        get_flags({"flags": 8}, "flags", DsFlag.INITIAL | DsFlag.OVERWRITE)
