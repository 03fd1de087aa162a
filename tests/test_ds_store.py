"""DS's store alone (servers/ds/store.py): ownership, flags, types, subscriptions.

These are unit tests of pure logic; tests/test_ds.py runs DS as a real process. At
the end, the store across DS's death: the restart callback with a stand-in for the
kernel's ``keep``, then DS as RS's service (no QEMU) SIGKILLed and restarted.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
from test_ds import gone, kill, spawn_party, start_ds

from hwl import ipc
from hwl.ipc import codec
from hwl.kernel.errno import Errno
from hwl.kernel.keep import KeptState
from hwl.servers.ds.main import DataStore
from hwl.servers.ds.store import Caller, Store, StoreError, handle
from hwl.system import proto
from hwl.system.proto import DsFlag, InitFlag, InitType
from hwl.system.sef import InitInfo

RS = Caller(1, "rs", is_rs=True)
A = Caller(10, "alpha")
B = Caller(20, "beta")
NOBODY = Caller(99, None)


@pytest.fixture
def store() -> Store:
    return Store()


def refused(errno: Errno, call: Any, *args: Any) -> StoreError:
    with pytest.raises(StoreError) as err:
        call(*args)
    assert err.value.errno is errno, err.value
    assert err.value.message
    return err.value


def request(store: Store, caller: Caller, m_type: int, **fields: codec.Value) -> dict[str, Any]:
    return dict(handle(store, caller, m_type, fields).fields)


def drain(store: Store, caller: Caller) -> list[tuple[str, str, str]]:
    seen = []
    while True:
        try:
            seen.append(store.check(caller))
        except StoreError as exc:
            assert exc.errno is Errno.ENOENT
            return seen


# ------------------------------------------------------------------ publish
@pytest.mark.parametrize(
    ("type_", "value"), [("u32", 0), ("u32", 0xFFFFFFFF), ("str", "héllo"), ("mem", b"\0\1\2")]
)
def test_publish_and_retrieve_each_type(store: Store, type_: str, value: Any) -> None:
    store.publish(A, "k", type_, value)
    entry = store.retrieve(B, "k", type_)
    assert (entry.value, entry.owner, entry.type) == (value, "alpha", type_)


def test_types_are_separate_name_spaces(store: Store) -> None:
    store.publish(A, "k", "u32", 7)
    store.publish(A, "k", "str", "seven")  # no EEXIST: another type, another entry
    assert store.retrieve(A, "k", "u32").value == 7
    assert store.retrieve(A, "k", "str").value == "seven"
    refused(Errno.ESRCH, store.retrieve, A, "k", "mem")  # the wrong type finds nothing
    refused(Errno.ESRCH, store.delete, A, "k", "mem")
    store.delete(A, "k", "u32")
    assert store.retrieve(A, "k", "str").value == "seven"


def test_publishing_an_own_key_again_needs_overwrite(store: Store) -> None:
    store.publish(A, "k", "u32", 1)
    refused(Errno.EEXIST, store.publish, A, "k", "u32", 2)
    assert store.retrieve(A, "k", "u32").value == 1
    store.publish(A, "k", "u32", 2, DsFlag.OVERWRITE)
    assert store.retrieve(A, "k", "u32").value == 2


def test_another_owners_key_is_eperm_with_or_without_overwrite(store: Store) -> None:
    store.publish(A, "k", "str", "a's")
    refused(Errno.EPERM, store.publish, B, "k", "str", "b's")
    refused(Errno.EPERM, store.publish, B, "k", "str", "b's", DsFlag.OVERWRITE)
    assert store.retrieve(B, "k", "str").value == "a's"


def test_a_caller_without_a_label_may_not_publish_or_delete(store: Store) -> None:
    refused(Errno.EPERM, store.publish, NOBODY, "k", "u32", 1)
    store.publish(A, "k", "u32", 1)
    refused(Errno.EPERM, store.delete, NOBODY, "k", "u32")


def test_the_store_has_a_size_limit(store: Store) -> None:
    small = Store(max_entries=2)
    small.publish(A, "a", "u32", 1)
    small.publish(A, "b", "u32", 1)
    refused(Errno.ENOMEM, small.publish, A, "c", "u32", 1)
    small.publish(A, "b", "u32", 2, DsFlag.OVERWRITE)  # overwriting needs no new slot


# ----------------------------------------------------------------- retrieve
def test_missing_key_is_esrch(store: Store) -> None:
    refused(Errno.ESRCH, store.retrieve, A, "nothing", "u32")


def test_private_entries_are_for_their_owner_only(store: Store) -> None:
    store.publish(A, "secret", "mem", b"x", DsFlag.PRIVATE)
    assert store.retrieve(A, "secret", "mem").value == b"x"
    refused(Errno.EPERM, store.retrieve, B, "secret", "mem")
    refused(Errno.EPERM, store.retrieve, NOBODY, "secret", "mem")
    # Overwriting without PRIVATE makes it public.
    store.publish(A, "secret", "mem", b"y", DsFlag.OVERWRITE)
    assert store.retrieve(B, "secret", "mem").value == b"y"


# ------------------------------------------------------------------- delete
def test_only_the_owner_deletes(store: Store) -> None:
    store.publish(A, "k", "u32", 1)
    refused(Errno.EPERM, store.delete, B, "k", "u32")
    store.delete(A, "k", "u32")
    refused(Errno.ESRCH, store.retrieve, A, "k", "u32")
    refused(Errno.ESRCH, store.delete, A, "k", "u32")


# ------------------------------------------------------------------- labels
def test_only_rs_publishes_labels(store: Store) -> None:
    refused(Errno.EPERM, store.publish, A, "alpha", "label", 10)
    store.publish(RS, "alpha", "label", 10)
    assert store.endpoint_of("alpha") == 10
    assert store.label_of(10) == "alpha"
    assert store.retrieve(B, "alpha", "label").value == 10


def test_a_label_entry_is_also_found_by_endpoint(store: Store) -> None:
    store.publish(RS, "alpha", "label", 10)
    refused(Errno.EEXIST, store.publish, RS, "other", "label", 10)
    store.publish(RS, "other", "label", 10, DsFlag.OVERWRITE)  # renames the entry
    assert store.endpoint_of("alpha") is None
    assert (store.endpoint_of("other"), store.label_of(10)) == (10, "other")


def test_a_label_moving_to_a_new_endpoint_drops_the_old_subscription(store: Store) -> None:
    store.publish(RS, "alpha", "label", 10)
    store.subscribe(A, "x")
    store.publish(RS, "alpha", "label", 11, DsFlag.OVERWRITE)  # alpha restarted
    assert 10 not in store.subs
    assert store.label_of(10) is None and store.label_of(11) == "alpha"


def test_deleting_a_label_takes_its_subscriptions_and_entries(store: Store) -> None:
    store.publish(RS, "alpha", "label", 10)
    store.publish(A, "drv.blk.alpha", "u32", 1)
    store.publish(B, "beta.key", "u32", 2)
    store.subscribe(A, ".*")
    store.subscribe(B, r"drv\..*")
    refused(Errno.EPERM, store.delete, A, "alpha", "label")  # labels are RS's
    notify = store.delete(RS, "alpha", "label")
    assert notify == [B.endpoint]
    assert A.endpoint not in store.subs
    refused(Errno.ESRCH, store.retrieve, B, "drv.blk.alpha", "u32")
    assert store.retrieve(B, "beta.key", "u32").value == 2
    assert store.label_of(10) is None
    assert drain(store, B) == [("drv.blk.alpha", "u32", "alpha")]


# --------------------------------------------------------------- subscribe
def test_publish_notifies_matching_subscribers_and_check_drains(store: Store) -> None:
    assert store.subscribe(B, r"drv\.blk\..*") == []
    assert store.publish(A, "drv.blk.at_wini", "u32", 1) == [B.endpoint]
    assert store.publish(A, "drv.net.dp8390", "u32", 1) == []
    assert store.publish(A, "drv.blk.filter", "str", "up") == [B.endpoint]
    assert drain(store, B) == [
        ("drv.blk.at_wini", "u32", "alpha"),
        ("drv.blk.filter", "str", "alpha"),
    ]


def test_regex_is_anchored_at_both_ends(store: Store) -> None:
    store.subscribe(B, "drv")
    assert store.publish(A, "drv.blk.x", "u32", 1) == []
    assert store.publish(A, "xdrv", "u32", 1) == []
    assert store.publish(A, "drv", "u32", 1) == [B.endpoint]
    store.subscribe(B, "a|b", DsFlag.OVERWRITE)  # alternation is anchored as a whole
    assert store.publish(A, "ab", "u32", 1) == []
    assert store.publish(A, "b", "u32", 1) == [B.endpoint]


def test_a_key_changed_twice_is_reported_once(store: Store) -> None:
    store.subscribe(B, "k.*")
    store.publish(A, "k1", "u32", 1)
    store.publish(A, "k2", "u32", 1)
    store.publish(A, "k1", "u32", 2, DsFlag.OVERWRITE)
    assert [key for key, _, _ in drain(store, B)] == ["k1", "k2"]


def test_deletion_is_a_change(store: Store) -> None:
    store.publish(A, "k", "u32", 1)
    store.subscribe(B, "k")
    assert store.delete(A, "k", "u32") == [B.endpoint]
    assert drain(store, B) == [("k", "u32", "alpha")]


def test_initial_reports_keys_that_already_match(store: Store) -> None:
    store.publish(A, "drv.blk.a", "u32", 1)
    store.publish(A, "drv.blk.b", "u32", 1)
    store.publish(A, "other", "u32", 1)
    assert store.subscribe(B, r"drv\.blk\..*", DsFlag.INITIAL) == [B.endpoint]
    assert sorted(k for k, _, _ in drain(store, B)) == ["drv.blk.a", "drv.blk.b"]
    # Without INITIAL, the keys already there are not reported.
    assert store.subscribe(B, r"drv\.blk\..*", DsFlag.OVERWRITE) == []
    assert drain(store, B) == []


def test_initial_with_nothing_matching_does_not_notify(store: Store) -> None:
    assert store.subscribe(B, "nothing.*", DsFlag.INITIAL) == []


def test_a_second_subscription_is_eexist_unless_overwrite(store: Store) -> None:
    store.subscribe(B, "a")
    refused(Errno.EEXIST, store.subscribe, B, "b")
    store.publish(A, "a", "u32", 1)
    store.subscribe(B, "b", DsFlag.OVERWRITE)  # replaces, and forgets pending changes
    assert drain(store, B) == []
    assert store.publish(A, "a", "u32", 2, DsFlag.OVERWRITE) == []
    assert store.publish(A, "b", "u32", 1) == [B.endpoint]


def test_subscriptions_belong_to_processes(store: Store) -> None:
    # Two processes with the same label each have their own subscription.
    twin = Caller(21, "beta")
    store.subscribe(B, "k")
    store.subscribe(twin, "k")
    assert store.publish(A, "k", "u32", 1) == [B.endpoint, twin.endpoint]
    assert store.drop_subscriber(B.endpoint)
    assert not store.drop_subscriber(B.endpoint)
    assert store.publish(A, "k", "u32", 2, DsFlag.OVERWRITE) == [twin.endpoint]


def test_prune_drops_the_dead(store: Store) -> None:
    store.subscribe(A, "x")
    store.subscribe(B, "x")
    assert store.prune_subscribers([B.endpoint]) == [A.endpoint]
    assert list(store.subs) == [B.endpoint]


def test_check_without_subscription_is_esrch_and_without_changes_enoent(store: Store) -> None:
    refused(Errno.ESRCH, store.check, B)
    store.subscribe(B, "x")
    refused(Errno.ENOENT, store.check, B)


def test_a_caller_without_a_label_may_not_subscribe(store: Store) -> None:
    refused(Errno.ESRCH, store.subscribe, NOBODY, "x")


def test_private_changes_are_reported_to_the_owner_only(store: Store) -> None:
    store.subscribe(A, "s")
    store.subscribe(B, "s")
    assert store.publish(A, "s", "u32", 1, DsFlag.PRIVATE) == [A.endpoint]
    assert store.delete(A, "s", "u32") == [A.endpoint]
    assert drain(store, B) == []
    store.publish(A, "s", "u32", 1, DsFlag.PRIVATE)
    assert store.subscribe(B, "s", DsFlag.OVERWRITE | DsFlag.INITIAL) == []


def test_subscription_table_has_a_limit() -> None:
    small = Store(max_subscriptions=1)
    small.subscribe(A, "x")
    refused(Errno.EAGAIN, small.subscribe, B, "x")
    small.subscribe(A, "y", DsFlag.OVERWRITE)  # replacing needs no new slot


def test_bad_regex_is_einval_and_leaves_the_old_subscription(store: Store) -> None:
    store.subscribe(B, "k")
    refused(Errno.EINVAL, store.subscribe, B, "(unclosed", DsFlag.OVERWRITE)
    assert store.subs[B.endpoint].regex == "k"


# ------------------------------------------------------------ state transfer
def test_save_and_restore_keep_everything(store: Store) -> None:
    store.publish(RS, "alpha", "label", 10)
    store.publish(A, "u", "u32", 5, DsFlag.PRIVATE)
    store.publish(A, "s", "str", "text")
    store.publish(B, "m", "mem", bytes(range(256)))
    store.subscribe(B, ".*")
    store.publish(A, "late", "u32", 1)
    again = Store.restore(store.save())
    assert again.entries == store.entries
    assert again.labels == {10: "alpha"}
    assert again.subs[B.endpoint].regex == ".*"
    refused(Errno.EPERM, again.retrieve, B, "u", "u32")
    assert drain(again, B) == [("late", "u32", "alpha")]
    assert again.publish(A, "more", "u32", 1) == [B.endpoint]


@pytest.mark.parametrize(
    "saved",
    [
        b"junk",
        codec.encode({"version": 99, "entries": [], "subs": []}),
        codec.encode({"version": 1, "entries": [{"key": "k"}], "subs": []}),
        codec.encode(
            {"version": 1, "entries": [], "subs": [{"endpoint": 1, "owner": "x", "changed": []}]}
        ),
    ],
)
def test_restore_refuses_bad_state(saved: bytes) -> None:
    refused(Errno.EINVAL, Store.restore, saved)


# ----------------------------------------------------------------- requests
def test_requests_round_trip(store: Store) -> None:
    request(store, A, proto.DS_PUBLISH, key="k", type="u32", value=3, flags=0)
    assert request(store, B, proto.DS_RETRIEVE, key="k", type="u32") == {
        "value": 3,
        "owner": "alpha",
    }
    request(store, B, proto.DS_SUBSCRIBE, regex="k", flags=int(DsFlag.INITIAL))
    assert request(store, B, proto.DS_CHECK) == {"key": "k", "type": "u32", "owner": "alpha"}
    request(store, A, proto.DS_DELETE, key="k", type="u32")
    request(store, RS, proto.DS_PUBLISH, key="alpha", type="label", value=10)
    assert request(store, B, proto.DS_RETRIEVE_LABEL, label="alpha") == {
        "label": "alpha",
        "endpoint": 10,
    }
    assert request(store, B, proto.DS_RETRIEVE_LABEL, endpoint=10)["label"] == "alpha"
    refused(Errno.ESRCH, handle, store, B, proto.DS_RETRIEVE_LABEL, {"label": "nobody"})
    refused(Errno.ESRCH, handle, store, B, proto.DS_RETRIEVE_LABEL, {"endpoint": 12345})


BIG = "k" * (proto.DS_MAX_KEY + 1)


@pytest.mark.parametrize(
    ("m_type", "fields"),
    [
        (proto.DS_PUBLISH, {"type": "u32", "value": 1}),  # no key
        (proto.DS_PUBLISH, {"key": "k", "value": 1}),  # no type
        (proto.DS_PUBLISH, {"key": "k", "type": "u32"}),  # no value
        (proto.DS_PUBLISH, {"key": "", "type": "u32", "value": 1}),
        (proto.DS_PUBLISH, {"key": BIG, "type": "u32", "value": 1}),
        (proto.DS_PUBLISH, {"key": "a\0b", "type": "u32", "value": 1}),
        (proto.DS_PUBLISH, {"key": 5, "type": "u32", "value": 1}),
        (proto.DS_PUBLISH, {"key": "k", "type": "float", "value": 1}),
        (proto.DS_PUBLISH, {"key": "k", "type": "u32", "value": -1}),
        (proto.DS_PUBLISH, {"key": "k", "type": "u32", "value": 1 << 32}),
        (proto.DS_PUBLISH, {"key": "k", "type": "u32", "value": True}),
        (proto.DS_PUBLISH, {"key": "k", "type": "u32", "value": "1"}),
        (proto.DS_PUBLISH, {"key": "k", "type": "str", "value": b"bytes"}),
        (proto.DS_PUBLISH, {"key": "k", "type": "str", "value": "é" * proto.DS_MAX_MEM}),
        (proto.DS_PUBLISH, {"key": "k", "type": "mem", "value": "text"}),
        (proto.DS_PUBLISH, {"key": "k", "type": "mem", "value": bytes(proto.DS_MAX_MEM + 1)}),
        (proto.DS_PUBLISH, {"key": "k", "type": "label", "value": "ep"}),
        (proto.DS_PUBLISH, {"key": "k", "type": "u32", "value": 1, "flags": 0x100}),
        (proto.DS_PUBLISH, {"key": "k", "type": "u32", "value": 1, "flags": "x"}),
        (proto.DS_PUBLISH, {"key": "k", "type": "u32", "value": 1, "flags": 4}),  # INITIAL
        (proto.DS_RETRIEVE, {"key": "k"}),
        (proto.DS_RETRIEVE, {"key": None, "type": "u32"}),
        (proto.DS_DELETE, {"type": "u32"}),
        (proto.DS_SUBSCRIBE, {}),
        (proto.DS_SUBSCRIBE, {"regex": "("}),
        (proto.DS_SUBSCRIBE, {"regex": "*"}),
        (proto.DS_SUBSCRIBE, {"regex": BIG}),
        (proto.DS_SUBSCRIBE, {"regex": "k", "flags": int(DsFlag.PRIVATE)}),
        (proto.DS_RETRIEVE_LABEL, {}),
        (proto.DS_RETRIEVE_LABEL, {"label": "a", "endpoint": 1}),
        (proto.DS_RETRIEVE_LABEL, {"endpoint": "1"}),
    ],
)
def test_bad_requests_are_einval(store: Store, m_type: int, fields: dict[str, Any]) -> None:
    refused(Errno.EINVAL, handle, store, RS, m_type, fields)
    assert not store.entries and not store.subs


def test_unknown_request_is_enosys(store: Store) -> None:
    refused(Errno.ENOSYS, handle, store, A, 0x1234, {})


def test_limits_are_inclusive(store: Store) -> None:
    key = "k" * proto.DS_MAX_KEY
    store.publish(A, key, "mem", bytes(proto.DS_MAX_MEM))
    store.publish(A, key, "str", "s" * proto.DS_MAX_MEM)
    store.subscribe(A, key)


def test_live_update_callbacks_of_the_server() -> None:
    old = DataStore()
    old.store.publish(A, "k", "u32", 1)
    saved = old.state_save(int(proto.LuState.WORK_FREE), 0)
    new = DataStore()
    info = InitInfo(InitType.LU, InitFlag.NONE, 0, 1, saved)
    assert new.init_lu(info) == 0
    assert new.store.retrieve(B, "k", "u32").value == 1
    bad = InitInfo(InitType.LU, InitFlag.NONE, 0, 1, b"junk")
    assert new.init_lu(bad) == Errno.EINVAL
    # A store too big for one SEF message refuses the update instead.
    for i in range(4):
        old.store.publish(A, f"big{i}", "mem", bytes(proto.DS_MAX_MEM))
    refused(Errno.E2BIG, old.state_save, int(proto.LuState.WORK_FREE), 0)


# ------------------------------------------------------- across DS's death
class FakeKernel:
    """The kernel's ``keep`` for the label ds, without a kernel."""

    def __init__(self) -> None:
        self.kept = KeptState()

    def keep_put(self, data: bytes) -> None:
        self.kept.put("ds", data)

    def keep_get(self) -> bytes | None:
        return self.kept.get("ds")


def restarted(kernel: FakeKernel, alive: set[int]) -> tuple[DataStore, list[int]]:
    """A new DS's restart init against ``kernel``, with ``alive`` the kernel's
    endpoints; the server and whom it notified."""
    new = DataStore(kernel)
    notified: list[int] = []
    new.alive = lambda: alive  # type: ignore[method-assign]
    new.notify = notified.extend  # type: ignore[method-assign,assignment]
    info = InitInfo(InitType.RESTART, InitFlag.NONE, 1, 1, b"")
    assert new.init_restart(info) == 0
    return new, notified


def test_a_restarted_ds_has_what_the_dead_one_kept() -> None:
    kernel = FakeKernel()
    old = DataStore(kernel)
    assert old.init_fresh(InitInfo(InitType.FRESH, InitFlag.NONE, 0, 1, b"")) == 0
    request(old.store, RS, proto.DS_PUBLISH, key="alpha", type="label", value=10, flags=0)
    request(old.store, RS, proto.DS_PUBLISH, key="beta", type="label", value=20, flags=0)
    old.store.publish(A, "drv.blk.alpha", "u32", 1)
    old.store.publish(B, "secret", "str", "b", DsFlag.PRIVATE)
    old.store.subscribe(A, r"drv\..*")
    old.store.subscribe(B, r"drv\..*")
    old.store.publish(A, "drv.net.alpha", "u32", 2)
    old.keep()
    assert old.keeps == 2  # the fresh empty store, then this

    new, notified = restarted(kernel, {1, 10, 20})
    assert new.store.retrieve(B, "drv.blk.alpha", "u32").owner == "alpha"
    assert new.store.retrieve(B, "secret", "str").value == "b"
    refused(Errno.EPERM, new.store.retrieve, A, "secret", "str")
    assert new.store.endpoint_of("alpha") == 10 and new.store.label_of(20) == "beta"
    # Both subscriptions, with the change not yet checked.
    assert set(new.store.subs) == {10, 20} and notified == []
    assert drain(new.store, A) == [("drv.net.alpha", "u32", "alpha")]
    assert new.store.publish(A, "drv.blk.alpha", "u32", 3, DsFlag.OVERWRITE) == [10, 20]


def test_a_restarted_ds_drops_what_died_meanwhile() -> None:
    kernel = FakeKernel()
    old = DataStore(kernel)
    request(old.store, RS, proto.DS_PUBLISH, key="alpha", type="label", value=10, flags=0)
    request(old.store, RS, proto.DS_PUBLISH, key="beta", type="label", value=20, flags=0)
    old.store.publish(B, "drv.blk.beta", "u32", 1)
    old.store.subscribe(A, r"drv\..*")
    old.store.subscribe(B, r"drv\..*")
    old.keep()
    new, notified = restarted(kernel, {1, 10})  # beta (endpoint 20) died while DS was down
    assert new.store.endpoint_of("beta") is None and new.store.label_of(20) is None
    refused(Errno.ESRCH, new.store.retrieve, A, "drv.blk.beta", "u32")
    assert set(new.store.subs) == {10} and notified == [10]
    assert drain(new.store, A) == [("drv.blk.beta", "u32", "beta")]  # its deletion


def test_a_restart_without_kept_state_starts_empty() -> None:
    new, _ = restarted(FakeKernel(), {1})
    assert not new.store.entries and not new.store.subs


def test_ds_sigkilled_comes_back_with_its_store(root: ipc.Connection) -> None:
    """DS as a real process (the test plays RS, as tests/test_ds.py), SIGKILLed and
    started again with a restart init: the new DS has every key, label and
    subscription (no re-announce, no new subscribe), and its next change notifies
    the old subscriber."""
    ds, init = start_ds(root)
    assert init["result"] == 0
    alpha = spawn_party(root, "alpha", ds)
    beta = spawn_party(root, "beta", ds)
    try:
        root.send(ds, proto.DS_PUBLISH, {"key": "alpha", "type": "label", "value": alpha.ep})
        alpha.call("publish_u32", "count", 7)
        beta.call("subscribe", r"drv\..*")
        alpha.call("publish_str", "drv.blk.alpha", "up")
        beta.wait_notify()
        assert beta.call("check") == ["drv.blk.alpha", "str"]
        alpha.call("publish_str", "drv.net.alpha", "up")  # not checked before the death
        beta.wait_notify()

        pid = next(p["pid"] for p in root.proctab() if p["endpoint"] == ds)
        os.kill(pid, signal.SIGKILL)
        gone(root, ds)
        ds, init = start_ds(root, type=int(InitType.RESTART), restarts=1)
        assert init["result"] == 0
        alpha.ds = beta.ds = ds
        assert beta.call("retrieve_u32", "count") == 7
        assert beta.call("retrieve_label", "alpha") == alpha.ep
        assert beta.call("check") == ["drv.net.alpha", "str"]  # its subscription, kept
        assert beta.call("check") is None
        alpha.call("publish_str", "drv.blk.alpha2", "up")
        beta.wait_notify()  # from the new DS
        assert beta.call("check") == ["drv.blk.alpha2", "str"]
    finally:
        for ep in (alpha.ep, beta.ep, ds):
            kill(root, ep)
