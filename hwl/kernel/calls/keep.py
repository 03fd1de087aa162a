"""``keep``: state a system process keeps in the kernel across its own death, under
its label (the store is :mod:`hwl.kernel.keep`)."""

from __future__ import annotations

from hwl.kernel.calls.base import I32_MAX, Fields, Reply, deny, fail, get_int, get_str
from hwl.kernel.calls.grants import Grants
from hwl.kernel.errno import Errno
from hwl.kernel.keep import KeepError, KeptState
from hwl.kernel.proc import Proc


class KeepCalls:
    def __init__(self) -> None:
        self.kept = KeptState()

    def do_keep(self, proc: Proc, f: Fields) -> Reply:
        """State kept across the caller's death under its label (hwl/kernel/keep.py):
        ``op`` put copies ``length`` bytes at ``offset`` of its arena into the blob;
        get says the blob's ``length`` and, when ``offset`` is given and ``length``
        (the room there) holds it, copies it there (``copied``)."""
        if not proc.priv.system:
            deny("keep: only system processes keep state")
        op = get_str(f, "op")
        if op == "put":
            length = get_int(f, "length", 0, I32_MAX)
            data = b""
            if length:
                view, start = Grants.own(proc, get_int(f, "offset", 0, I32_MAX), length)
                data = bytes(view[start : start + length])
            try:
                self.kept.put(proc.label, data)
            except KeepError as exc:
                fail(Errno.E2BIG, f"keep: {exc}")
            return {}
        if op != "get":
            fail(Errno.EINVAL, f"keep: unknown op {op!r} (put, get)")
        blob = self.kept.get(proc.label)
        size = len(blob) if blob is not None else 0
        room = get_int(f, "length", 0, I32_MAX, 0)
        copied = blob is not None and "offset" in f and size <= room
        if copied and blob:
            view, start = Grants.own(proc, get_int(f, "offset", 0, I32_MAX), size)
            view[start : start + size] = blob
        return {"length": size, "kept": blob is not None, "copied": copied}
