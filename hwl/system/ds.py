"""Client calls of DS, the data store (MINIX's ``ds_*`` functions in libsys).

>>> ds = Ds.find(conn)                      # ask RS where DS is
>>> ds.publish_u32("answer", 42)
>>> ds.retrieve_u32("answer")
42
>>> ds.subscribe(r"drv\\.blk\\..*", initial=True)
>>> # ... a notify from ds.endpoint arrives ...
>>> for key, type_ in ds.changes():         # drain with check until nothing is left
...     ...

Keys of different types are separate entries (a u32 ``x`` and a str ``x``). An entry
belongs to the label of its publisher; see ``servers/ds/store.py`` for the rules and
``docs/ds.md`` for the protocol. Every failure is a :class:`DsError` with the MINIX
errno: ESRCH (no such key), EPERM (not the owner, or private), EEXIST (exists; pass
``overwrite``), EINVAL (a bad request), or the IPC error when DS cannot be reached.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

from hwl.errors import CallError
from hwl.ipc.client import Message
from hwl.proto import codec
from hwl.proto import ds as dsp
from hwl.proto.ds import DsFlag
from hwl.proto.errno import Errno
from hwl.system.call import request
from hwl.system.rs import ServerClient

__all__ = ["Ds", "DsError"]

T = TypeVar("T", int, str, bytes)


class DsError(CallError):
    """A DS call failed: ``errno`` says how, ``detail`` is DS's (or the kernel's) reason."""

    prefix = "ds "


def _flags(*, private: bool = False, overwrite: bool = False, initial: bool = False) -> int:
    flags = DsFlag.NONE
    if private:
        flags |= DsFlag.PRIVATE
    if overwrite:
        flags |= DsFlag.OVERWRITE
    if initial:
        flags |= DsFlag.INITIAL
    return int(flags)


class Ds(ServerClient):
    """DS at ``endpoint``, called over ``conn``; ``timeout`` bounds each call.
    ``Ds.find(conn)`` asks RS where DS is."""

    label = "ds"
    error = DsError

    # ------------------------------------------------------------------ call
    def _call(self, call: str, m_type: int, fields: dict[str, codec.Value]) -> Message:
        return request(self.conn, self.endpoint, m_type, fields, call=call, server="DS",
                       error=DsError, timeout=self.timeout)  # fmt: skip

    def publish(
        self,
        key: str,
        type_: str,
        value: int | str | bytes,
        *,
        private: bool = False,
        overwrite: bool = False,
    ) -> None:
        fields: dict[str, codec.Value] = {"key": key, "type": type_, "value": value}
        fields["flags"] = _flags(private=private, overwrite=overwrite)
        self._call(f"publish {key}", dsp.DS_PUBLISH, fields)

    def retrieve(self, key: str, type_: str) -> tuple[int | str | bytes, str]:
        """The value of ``key`` and its owner's label."""
        reply = self._call(f"retrieve {key}", dsp.DS_RETRIEVE, {"key": key, "type": type_})
        value, owner = reply.get("value"), reply.get("owner")
        if not isinstance(value, (int, str, bytes)) or not isinstance(owner, str):
            raise DsError(Errno.EGENERIC, f"retrieve {key}", f"malformed reply {reply.fields}")
        return value, owner

    def delete(self, key: str, type_: str) -> None:
        self._call(f"delete {key}", dsp.DS_DELETE, {"key": key, "type": type_})

    # ------------------------------------------------------------- per type
    def publish_u32(
        self, key: str, value: int, *, private: bool = False, overwrite: bool = False
    ) -> None:
        self.publish(key, "u32", value, private=private, overwrite=overwrite)

    def publish_str(
        self, key: str, value: str, *, private: bool = False, overwrite: bool = False
    ) -> None:
        self.publish(key, "str", value, private=private, overwrite=overwrite)

    def publish_mem(
        self, key: str, value: bytes, *, private: bool = False, overwrite: bool = False
    ) -> None:
        self.publish(key, "mem", bytes(value), private=private, overwrite=overwrite)

    def publish_label(self, label: str, endpoint: int, *, overwrite: bool = False) -> None:
        """Map ``label`` to ``endpoint`` (only RS may)."""
        self.publish(label, "label", endpoint, overwrite=overwrite)

    def retrieve_u32(self, key: str) -> int:
        return self._typed(key, "u32", int)

    def retrieve_str(self, key: str) -> str:
        return self._typed(key, "str", str)

    def retrieve_mem(self, key: str) -> bytes:
        return self._typed(key, "mem", bytes)

    def retrieve_label(self, label: str) -> int:
        """The endpoint RS published for ``label``."""
        reply = self._call(f"retrieve_label {label}", dsp.DS_RETRIEVE_LABEL, {"label": label})
        endpoint = reply.get("endpoint")
        if not isinstance(endpoint, int):
            raise DsError(Errno.EGENERIC, "retrieve_label", f"malformed reply {reply.fields}")
        return endpoint

    def retrieve_label_name(self, endpoint: int) -> str:
        """The label RS published for ``endpoint``."""
        reply = self._call(
            f"retrieve_label {endpoint}", dsp.DS_RETRIEVE_LABEL, {"endpoint": endpoint}
        )
        label = reply.get("label")
        if not isinstance(label, str):
            raise DsError(Errno.EGENERIC, "retrieve_label", f"malformed reply {reply.fields}")
        return label

    def _typed(self, key: str, type_: str, kind: type[T]) -> T:
        value, _owner = self.retrieve(key, type_)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise DsError(Errno.EGENERIC, f"retrieve {key}", f"DS answered a {type(value)}")
        return value

    def delete_u32(self, key: str) -> None:
        self.delete(key, "u32")

    def delete_str(self, key: str) -> None:
        self.delete(key, "str")

    def delete_mem(self, key: str) -> None:
        self.delete(key, "mem")

    def delete_label(self, label: str) -> None:
        """Forget ``label`` (only RS may); its subscriptions and entries go with it."""
        self.delete(label, "label")

    # ------------------------------------------------------------ subscribe
    def subscribe(self, regex: str, *, initial: bool = False, overwrite: bool = False) -> None:
        """Watch the keys ``regex`` matches as a whole; DS notifies this process when
        one changes. ``initial`` reports the keys that already match as changed;
        ``overwrite`` replaces this process's subscription (else EEXIST)."""
        flags = _flags(initial=initial, overwrite=overwrite)
        self._call("subscribe", dsp.DS_SUBSCRIBE, {"regex": regex, "flags": flags})

    def check(self) -> tuple[str, str] | None:
        """One changed key as (key, type), or None when nothing changed."""
        change = self.check_owner()
        return None if change is None else (change[0], change[1])

    def check_owner(self) -> tuple[str, str, str] | None:
        """As :meth:`check`, with the label of the entry's owner: (key, type, owner)."""
        try:
            reply = self._call("check", dsp.DS_CHECK, {})
        except DsError as exc:
            if exc.errno is Errno.ENOENT:
                return None
            raise
        key, type_, owner = reply.get("key"), reply.get("type"), reply.get("owner")
        if not (isinstance(key, str) and isinstance(type_, str) and isinstance(owner, str)):
            raise DsError(Errno.EGENERIC, "check", f"malformed reply {reply.fields}")
        return key, type_, owner

    def changes(self) -> Iterator[tuple[str, str]]:
        """Every changed key, (key, type), until none is left (after a notify)."""
        while (change := self.check()) is not None:
            yield change
