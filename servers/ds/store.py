"""The data store's state and rules, without any IPC: what DS does with a request
(MINIX's ``servers/ds/store.c``; the rules, and where hwl differs, in docs/ds.md).

An entry is named by its key and its type and owned by its publisher's label;
only the owner overwrites (with OVERWRITE) or deletes it, and a PRIVATE entry is
its owner's alone. Only RS publishes ``label`` entries; deleting one deletes the
subscriptions and entries of that label. A subscription is one anchored regex per
process; each changed key is handed out once by ``check``, in the order of its
first change; a dead subscriber's subscription goes with ``drop_subscriber``.

Everything a request carries is checked here (``handle``): a bad request is a
:class:`StoreError` with EINVAL and a message that says what is wrong, never a crash.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from hwl.errors import Refusal
from hwl.proto import codec
from hwl.proto import ds as dsp
from hwl.proto.ds import DsFlag
from hwl.proto.errno import Errno
from hwl.proto.fields import FieldError, get_name

MAX_ENTRIES = 4096
"""Entries DS keeps at most (MINIX: 2 * NR_SYS_PROCS); beyond, publish is ENOMEM."""

MAX_SUBSCRIPTIONS = 1024
"""Subscriptions at most (one per process; the kernel has 1024 slots); beyond, EAGAIN."""

T = TypeVar("T")

STATE_VERSION = 1

Value = int | str | bytes
Key = tuple[str, str]  # (type, key)


class StoreError(Refusal):
    """A request DS refuses: ``errno`` goes back as the reply's status, ``why``
    (also ``message``) as its ``error`` field; ``str()`` is "EINVAL: why"."""

    @property
    def message(self) -> str:
        return self.why

    def __str__(self) -> str:
        return f"{self.errno.name}: {self.why}"


def _invalid(message: str) -> StoreError:
    return StoreError(Errno.EINVAL, message)


@dataclass
class Entry:
    key: str
    type: str
    value: Value
    owner: str  # the publisher's label
    private: bool = False


@dataclass
class Subscription:
    endpoint: int
    owner: str  # the subscriber's label
    regex: str
    pattern: re.Pattern[str]
    changed: dict[Key, str] = field(default_factory=dict)  # (type, key) -> entry owner

    def mark(self, entry: Entry) -> bool:
        """Note ``entry`` as changed if this subscription may see it; True if so."""
        if entry.private and self.owner != entry.owner:
            return False
        if self.pattern.fullmatch(entry.key) is None:
            return False
        # A key changed twice before a check keeps its place; the owner is the latest.
        self.changed[(entry.type, entry.key)] = entry.owner
        return True


@dataclass(frozen=True)
class Caller:
    """Who sent a request: its endpoint, its label (None: unknown) and whether it is
    RS (which alone may publish labels)."""

    endpoint: int
    label: str | None
    is_rs: bool = False


@dataclass
class Outcome:
    """What DS answers (``fields``; the status is 0) and whom it notifies."""

    fields: dict[str, codec.Value] = field(default_factory=dict)
    notify: list[int] = field(default_factory=list)


# ---------------------------------------------------------------- validation
# The field rules live with the protocol (hwl.proto.ds); these wrappers give their
# FieldError as a StoreError, for the saved state that a live update hands over.
def _checked(check: Callable[[], T]) -> T:
    try:
        return check()
    except FieldError as exc:
        raise _invalid(str(exc)) from exc


def check_key(key: object, what: str = "key") -> str:
    return _checked(lambda: get_name({what: key}, what, dsp.DS_MAX_KEY))


def check_type(type_: object) -> str:
    return _checked(lambda: dsp.check_type(type_))


def check_value(type_: str, value: object) -> Value:
    return _checked(lambda: dsp.check_value(type_, value))


def compile_regex(regex: object) -> re.Pattern[str]:
    text = check_key(regex, "regex")
    try:
        return re.compile(text)
    except (re.error, RecursionError, OverflowError) as exc:
        raise _invalid(f"regex {text!r} does not compile: {exc}") from exc


def _need(caller: Caller, errno: Errno, what: str) -> str:
    if caller.label is None:
        raise StoreError(errno, f"{what}: DS does not know the label of endpoint {caller.endpoint}")
    return caller.label


# --------------------------------------------------------------------- store
class Store:
    """Entries, the label index and subscriptions."""

    def __init__(
        self, max_entries: int = MAX_ENTRIES, max_subscriptions: int = MAX_SUBSCRIPTIONS
    ) -> None:
        self.max_entries = max_entries
        self.max_subscriptions = max_subscriptions
        self.entries: dict[Key, Entry] = {}
        self.labels: dict[int, str] = {}  # endpoint -> label, from the label entries
        self.subs: dict[int, Subscription] = {}  # subscriber endpoint -> subscription

    # ------------------------------------------------------------ lookups
    def get(self, key: str, type_: str) -> Entry | None:
        return self.entries.get((type_, key))

    def label_of(self, endpoint: int) -> str | None:
        """The label RS published for ``endpoint`` (MINIX's ds_getprocname)."""
        return self.labels.get(endpoint)

    def endpoint_of(self, label: str) -> int | None:
        entry = self.entries.get(("label", label))
        return int(entry.value) if entry is not None else None

    # --------------------------------------------------------------- changes
    def _changed(self, entry: Entry) -> list[int]:
        """Mark ``entry`` changed for every subscription that may see it; returns the
        subscribers to notify."""
        return [sub.endpoint for sub in self.subs.values() if sub.mark(entry)]

    def _remove(self, entry: Entry) -> list[int]:
        del self.entries[(entry.type, entry.key)]
        if entry.type == "label" and self.labels.get(int(entry.value)) == entry.key:
            del self.labels[int(entry.value)]
        return self._changed(entry)

    # ---------------------------------------------------------------- publish
    def publish(
        self, caller: Caller, key: str, type_: str, value: Value, flags: DsFlag = DsFlag.NONE
    ) -> list[int]:
        """Store a value; returns the subscribers to notify."""
        owner = _need(caller, Errno.EPERM, "publish")
        if type_ == "label" and not caller.is_rs:
            raise StoreError(Errno.EPERM, f"publish {key!r}: only RS publishes labels")
        entry = self.get(key, type_)
        if entry is None and type_ == "label":
            # MINIX also finds a label entry by its endpoint.
            old_label = self.labels.get(int(value))
            entry = self.get(old_label, "label") if old_label is not None else None
        notify: list[int] = []
        if entry is not None:
            if entry.owner != owner:
                raise StoreError(
                    Errno.EPERM,
                    f"publish {key!r}: the {entry.type} entry {entry.key!r} belongs to "
                    f"{entry.owner!r}, not {owner!r}",
                )
            if not flags & DsFlag.OVERWRITE:
                raise StoreError(
                    Errno.EEXIST,
                    f"publish {key!r}: the {entry.type} entry {entry.key!r} exists "
                    "(publish with OVERWRITE to replace it)",
                )
            if type_ == "label":
                old_endpoint = int(entry.value)
                if self.labels.get(old_endpoint) == entry.key:
                    del self.labels[old_endpoint]
                if entry.key != key:  # found by its endpoint: the label is renamed
                    del self.entries[("label", entry.key)]
                    notify += self._changed(entry)
                if old_endpoint != value:
                    # The label names a new process; the old one is gone, and so is
                    # its subscription.
                    self.subs.pop(old_endpoint, None)
        elif len(self.entries) >= self.max_entries:
            raise StoreError(Errno.ENOMEM, f"publish {key!r}: the store is full")
        new = Entry(key, type_, value, owner, bool(flags & DsFlag.PRIVATE))
        self.entries[(type_, key)] = new
        if type_ == "label":
            self.labels[int(value)] = key
        notify += self._changed(new)
        return _unique(notify)

    # --------------------------------------------------------------- retrieve
    def retrieve(self, caller: Caller, key: str, type_: str) -> Entry:
        entry = self.get(key, type_)
        if entry is None:
            raise StoreError(Errno.ESRCH, f"retrieve: no {type_} entry {key!r}")
        if entry.private and entry.owner != caller.label:
            raise StoreError(
                Errno.EPERM, f"retrieve: the {type_} entry {key!r} is private to {entry.owner!r}"
            )
        return entry

    # ----------------------------------------------------------------- delete
    def delete(self, caller: Caller, key: str, type_: str) -> list[int]:
        owner = _need(caller, Errno.EPERM, "delete")
        entry = self.get(key, type_)
        if entry is None:
            raise StoreError(Errno.ESRCH, f"delete: no {type_} entry {key!r}")
        if entry.owner != owner:
            raise StoreError(
                Errno.EPERM, f"delete: the {type_} entry {key!r} belongs to {entry.owner!r}"
            )
        notify: list[int] = []
        if type_ == "label":
            # The service is gone: its subscriptions and its entries go with it.
            for ep in [ep for ep, sub in self.subs.items() if sub.owner == key]:
                del self.subs[ep]
            for owned in [e for e in self.entries.values() if e.owner == key]:
                notify += self._remove(owned)
        if (type_, key) in self.entries:
            notify += self._remove(entry)
        return _unique(notify)

    # ------------------------------------------------------------- subscribe
    def subscribe(self, caller: Caller, regex: str, flags: DsFlag = DsFlag.NONE) -> list[int]:
        """Subscribe ``caller``; returns [caller] when INITIAL found matching keys."""
        owner = _need(caller, Errno.ESRCH, "subscribe")
        pattern = compile_regex(regex)
        if caller.endpoint in self.subs:
            if not flags & DsFlag.OVERWRITE:
                raise StoreError(
                    Errno.EEXIST,
                    f"subscribe: {owner!r} already subscribes to "
                    f"{self.subs[caller.endpoint].regex!r} (OVERWRITE replaces it)",
                )
            del self.subs[caller.endpoint]
        elif len(self.subs) >= self.max_subscriptions:
            raise StoreError(Errno.EAGAIN, "subscribe: no free subscription slot")
        sub = Subscription(caller.endpoint, owner, regex, pattern)
        self.subs[caller.endpoint] = sub
        if flags & DsFlag.INITIAL:
            for entry in self.entries.values():
                sub.mark(entry)
        return [caller.endpoint] if sub.changed else []

    def check(self, caller: Caller) -> tuple[str, str, str]:
        """One changed key of the caller's subscription: (key, type, owner)."""
        sub = self.subs.get(caller.endpoint)
        if sub is None:
            raise StoreError(Errno.ESRCH, f"check: endpoint {caller.endpoint} has no subscription")
        if not sub.changed:
            raise StoreError(Errno.ENOENT, "check: no changed key")
        (type_, key), owner = next(iter(sub.changed.items()))
        del sub.changed[(type_, key)]
        return key, type_, owner

    def drop_subscriber(self, endpoint: int) -> bool:
        """Forget a subscriber that is gone; True if it had a subscription."""
        return self.subs.pop(endpoint, None) is not None

    def prune_subscribers(self, alive: Iterable[int]) -> list[int]:
        """Drop the subscriptions of every endpoint not in ``alive``."""
        living = set(alive)
        dead = [ep for ep in self.subs if ep not in living]
        for ep in dead:
            del self.subs[ep]
        return dead

    def drop_dead(self, alive: Iterable[int]) -> list[int]:
        """What died while no DS ran (a restarted DS's store is its predecessor's):
        subscriptions of endpoints not in ``alive``, and labels of such endpoints
        with what their service owned, as RS's delete would have removed them.
        Returns the subscribers to notify."""
        living = set(alive)
        self.prune_subscribers(living)
        notify: list[int] = []
        for entry in [e for e in self.entries.values() if e.type == "label"]:
            if int(entry.value) not in living and (entry.type, entry.key) in self.entries:
                notify += self.delete(Caller(0, entry.owner, True), entry.key, "label")
        return _unique(notify)

    # --------------------------------------------------------- state transfer
    def save(self) -> bytes:
        """The whole store as a codec body, for the new version of a live update."""
        entries: list[codec.Value] = [
            {"key": e.key, "type": e.type, "value": e.value, "owner": e.owner, "private": e.private}
            for e in self.entries.values()
        ]
        subs: list[codec.Value] = [
            {
                "endpoint": s.endpoint,
                "owner": s.owner,
                "regex": s.regex,
                "changed": [[k, t, o] for (t, k), o in s.changed.items()],
            }
            for s in self.subs.values()
        ]
        return codec.encode({"version": STATE_VERSION, "entries": entries, "subs": subs})

    @classmethod
    def restore(cls, saved: bytes) -> Store:
        """A store from :meth:`save`'s bytes; StoreError (EINVAL) if they are bad."""
        try:
            state = codec.decode(saved)
        except codec.CodecError as exc:
            raise _invalid(f"saved state does not decode: {exc}") from exc
        if state.get("version") != STATE_VERSION:
            raise _invalid(f"saved state has version {state.get('version')!r}, not {STATE_VERSION}")
        store = cls()
        entries, subs = state.get("entries"), state.get("subs")
        if not isinstance(entries, list) or not isinstance(subs, list):
            raise _invalid("saved state lacks its entries or subscriptions")
        for item in entries:
            if not isinstance(item, dict) or not isinstance(item.get("owner"), str):
                raise _invalid(f"saved entry is malformed: {item!r:.80}")
            type_ = check_type(item.get("type"))
            key = check_key(item.get("key"))
            value = check_value(type_, item.get("value"))
            store.entries[(type_, key)] = Entry(
                key, type_, value, str(item["owner"]), bool(item.get("private"))
            )
            if type_ == "label":
                store.labels[int(value)] = key
        for item in subs:
            endpoint = item.get("endpoint") if isinstance(item, dict) else None
            owner = item.get("owner") if isinstance(item, dict) else None
            changed = item.get("changed") if isinstance(item, dict) else None
            if (
                not isinstance(item, dict)
                or not isinstance(endpoint, int)
                or not isinstance(owner, str)
                or not isinstance(changed, list)
            ):
                raise _invalid(f"saved subscription is malformed: {item!r:.80}")
            regex = check_key(item.get("regex"), "regex")
            sub = Subscription(endpoint, owner, regex, compile_regex(regex))
            for change in changed:
                if not (
                    isinstance(change, list)
                    and len(change) == 3
                    and all(isinstance(part, str) for part in change)
                ):
                    raise _invalid(f"saved change is malformed: {change!r:.80}")
                key, type_, entry_owner = (str(part) for part in change)
                sub.changed[(type_, key)] = entry_owner
            store.subs[sub.endpoint] = sub
        return store


def _unique(endpoints: list[int]) -> list[int]:
    return list(dict.fromkeys(endpoints))


# ------------------------------------------------------------------- requests
def handle(store: Store, caller: Caller, m_type: int, fields: Mapping[str, codec.Value]) -> Outcome:
    """Carry out one DS request; StoreError says why it was refused (EINVAL for a
    bad field, from the protocol's typed request)."""
    try:
        return _handle(store, caller, m_type, fields)
    except FieldError as exc:
        raise _invalid(str(exc)) from exc


def _handle(
    store: Store, caller: Caller, m_type: int, fields: Mapping[str, codec.Value]
) -> Outcome:
    if m_type == dsp.DS_PUBLISH:
        pub = dsp.DsPublish.from_fields(fields)
        return Outcome(notify=store.publish(caller, pub.key, pub.type, pub.value, pub.flags))
    if m_type == dsp.DS_RETRIEVE:
        req = dsp.DsKey.from_fields(fields)
        entry = store.retrieve(caller, req.key, req.type)
        return Outcome({"value": entry.value, "owner": entry.owner})
    if m_type == dsp.DS_DELETE:
        req = dsp.DsKey.from_fields(fields)
        return Outcome(notify=store.delete(caller, req.key, req.type))
    if m_type == dsp.DS_SUBSCRIBE:
        sub = dsp.DsSubscribe.from_fields(fields)
        return Outcome(notify=store.subscribe(caller, sub.regex, sub.flags))
    if m_type == dsp.DS_CHECK:
        key, type_, owner = store.check(caller)
        return Outcome({"key": key, "type": type_, "owner": owner})
    if m_type == dsp.DS_RETRIEVE_LABEL:
        return Outcome(_retrieve_label(store, dsp.DsRetrieveLabel.from_fields(fields)))
    raise StoreError(Errno.ENOSYS, f"DS has no request type {m_type:#x}")


def _retrieve_label(store: Store, req: dsp.DsRetrieveLabel) -> dict[str, codec.Value]:
    if req.label is not None:
        endpoint = store.endpoint_of(req.label)
        if endpoint is None:
            raise StoreError(Errno.ESRCH, f"retrieve_label: no label {req.label!r}")
        return {"label": req.label, "endpoint": endpoint}
    assert req.endpoint is not None
    name = store.label_of(req.endpoint)
    if name is None:
        raise StoreError(Errno.ESRCH, f"retrieve_label: no label for endpoint {req.endpoint}")
    return {"label": name, "endpoint": req.endpoint}
