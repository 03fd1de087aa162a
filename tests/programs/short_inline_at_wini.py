"""at_wini whose inline replies carry fewer bytes than their count: the malformed
driver reply of tests/test_vfs.py (VFS must answer EIO and serve on)."""

from __future__ import annotations

import runpy

from hwl.driver import blockdriver

real = blockdriver._inline_read


def short(*args: object) -> tuple[int, dict[str, object]]:
    done, fields = real(*args)  # type: ignore[arg-type]
    data = fields["data"]
    assert isinstance(data, bytes)
    return done, {"data": data[: len(data) // 2]}


blockdriver._inline_read = short  # type: ignore[assignment]
runpy.run_module("hwl.drivers.at_wini", run_name="__main__", alter_sys=True)
