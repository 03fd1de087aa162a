"""DS end to end: ``python -m hwl.servers.ds`` on a kernel without a machine.

The test process is the kernel's root and plays RS: it starts DS, sends SEF_INIT,
publishes labels and answers RS_LOOKUP. Agents (tests/programs/ds_agent.py) with
their own labels are the other system processes that use DS through
``hwl.system.ds``.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agents import FULL_IPC, Agent, conf, errno_of

from hwl import ipc
from hwl.ipc import codec
from hwl.kernel.errno import Errno
from hwl.kernel.launcher import KernelProcess
from hwl.system import proto
from hwl.system.ds import Ds, DsError
from hwl.system.proto import InitType, LuState

ROOT = Path(__file__).resolve().parent.parent
DS_AGENT = str(Path(__file__).parent / "programs" / "ds_agent.py")
DS_ARGV = [sys.executable, "-m", "hwl.servers.ds"]


def ds_conf() -> str:
    """DS's entry in the shipped system.conf."""
    text = (ROOT / "system.conf").read_text()
    found = re.search(r"^service ds\b.*?^};", text, re.S | re.M)
    assert found, "system.conf has no service ds"
    return found.group(0)


def gone(root: ipc.Connection, ep: int, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while any(p["endpoint"] == ep for p in root.proctab()):
        assert time.monotonic() < deadline, f"endpoint {ep} did not die"
        time.sleep(0.01)


def start_ds(
    root: ipc.Connection, endpoint: int | None = None, **init: codec.Value
) -> tuple[int, dict[str, Any]]:
    """Spawn DS and run the init handshake as RS does; returns (endpoint, RS_INIT)."""
    ep, _pid = root.spawn(DS_ARGV, "ds", conf=ds_conf(), endpoint=endpoint)
    fields: dict[str, codec.Value] = {"type": 0, "flags": 0, "restarts": 0, "endpoint": ep}
    fields.update(init)
    root.senda(ep, proto.SEF_INIT, fields)
    m = root.receive(ep, timeout=10)
    assert m.m_type == proto.RS_INIT, m
    return ep, dict(m.fields)


def kill(root: ipc.Connection, ep: int) -> None:
    try:
        root.kill(ep)
    except ipc.IpcError:
        return
    gone(root, ep)


class Party(Agent):
    """An agent that speaks to DS through hwl.system.ds."""

    ds: int

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        r = self.cmd("ds", endpoint=self.ds, method=method, args=list(args), kwargs=kwargs)
        if r["status"]:
            raise DsError(Errno(r["status"]), method, r.get("error", ""))
        return r.get("result")

    def refused(self, errno: Errno, method: str, *args: Any, **kwargs: Any) -> str:
        with pytest.raises(DsError) as err:
            self.call(method, *args, **kwargs)
        assert err.value.errno is errno, err.value
        return str(err.value)

    def raw(self, m_type: int, payload: bytes) -> tuple[int, dict[str, codec.Value]]:
        r = self.cmd("sendrec", dest=self.ds, m_type=m_type, data=payload)
        assert r["status"] == 0, r
        return r["m_type"], codec.decode(r["payload"])

    def wait_notify(self) -> None:
        r = self.cmd("wait_notify", source=self.ds)
        assert r["status"] == 0, r

    def flush_notify(self) -> None:
        """Forget notifications that came before (the agent keeps each one it took
        while idle, so a second publish can leave a second notify)."""
        assert self.cmd("flush_notify", source=self.ds)["status"] == 0

    def no_notify(self, within: float = 0.2) -> None:
        r = self.cmd("wait_notify", source=self.ds, wait=within)
        assert errno_of(r) is Errno.EINTR, r


def spawn_party(root: ipc.Connection, label: str, ds: int, endpoint: int | None = None) -> Party:
    ep, pid = root.spawn(
        [sys.executable, DS_AGENT], label, conf=conf(label, FULL_IPC), endpoint=endpoint
    )
    party = Party(root, ep, pid, label)
    party.ds = ds
    return party


@pytest.fixture(scope="module")
def ds(kernel: KernelProcess) -> Iterator[int]:
    assert kernel.root is not None
    ep, init = start_ds(kernel.root)
    assert init["result"] == 0
    yield ep
    kill(kernel.root, ep)


@pytest.fixture(scope="module")
def parties(kernel: KernelProcess, ds: int) -> Iterator[tuple[Party, Party]]:
    assert kernel.root is not None
    alpha = spawn_party(kernel.root, "alpha", ds)
    beta = spawn_party(kernel.root, "beta", ds)
    yield alpha, beta
    kill(kernel.root, alpha.ep)
    kill(kernel.root, beta.ep)


def test_ds_reports_its_init_to_rs(root: ipc.Connection, ds: int) -> None:
    assert any(p["endpoint"] == ds and p["label"] == "ds" for p in root.proctab())


def test_values_are_shared_and_owned(parties: tuple[Party, Party]) -> None:
    alpha, beta = parties
    alpha.call("publish_u32", "e2e.u32", 0xDEADBEEF)
    alpha.call("publish_str", "e2e.str", "héllo")
    alpha.call("publish_mem", "e2e.mem", bytes(range(256)) * 16)
    assert beta.call("retrieve_u32", "e2e.u32") == 0xDEADBEEF
    assert beta.call("retrieve_str", "e2e.str") == "héllo"
    assert beta.call("retrieve_mem", "e2e.mem") == bytes(range(256)) * 16
    assert beta.call("retrieve", "e2e.u32", "u32") == [0xDEADBEEF, "alpha"]
    # The same key with another type is another entry.
    beta.refused(Errno.ESRCH, "retrieve_str", "e2e.u32")


def test_ownership_and_flags(parties: tuple[Party, Party]) -> None:
    alpha, beta = parties
    alpha.call("publish_u32", "own.k", 1)
    alpha.refused(Errno.EEXIST, "publish_u32", "own.k", 2)
    alpha.call("publish_u32", "own.k", 2, overwrite=True)
    assert "belongs to 'alpha'" in beta.refused(
        Errno.EPERM, "publish_u32", "own.k", 3, overwrite=True
    )
    beta.refused(Errno.EPERM, "delete_u32", "own.k")
    assert beta.call("retrieve_u32", "own.k") == 2
    alpha.call("publish_str", "own.secret", "mine", private=True)
    beta.refused(Errno.EPERM, "retrieve_str", "own.secret")
    assert alpha.call("retrieve_str", "own.secret") == "mine"
    alpha.call("delete_u32", "own.k")
    beta.refused(Errno.ESRCH, "retrieve_u32", "own.k")
    beta.refused(Errno.ESRCH, "delete_u32", "own.k")


def test_subscribe_notify_check_across_processes(parties: tuple[Party, Party]) -> None:
    alpha, beta = parties
    alpha.call("publish_u32", "drv.blk.old", 1)
    beta.call("subscribe", r"drv\.blk\..*", initial=True)
    beta.refused(Errno.EEXIST, "subscribe", r"drv\.blk\..*")
    beta.wait_notify()
    assert beta.call("changes") == [["drv.blk.old", "u32"]]
    assert beta.call("check") is None

    alpha.call("publish_u32", proto.DRIVER_UP_NET + "alpha", 1)  # not watched
    alpha.call("publish_u32", proto.DRIVER_UP_BLK + "alpha", 1)
    alpha.call("publish_u32", proto.DRIVER_UP_BLK + "alpha", 2, overwrite=True)
    beta.wait_notify()
    # Changed twice, reported once: check drains by key.
    assert beta.call("check_owner") == ["drv.blk.alpha", "u32", "alpha"]
    assert beta.call("check") is None
    beta.flush_notify()
    alpha.call("publish_u32", proto.DRIVER_UP_NET + "other", 1)
    beta.no_notify()

    alpha.call("delete_u32", "drv.blk.alpha")
    beta.wait_notify()
    assert beta.call("changes") == [["drv.blk.alpha", "u32"]]
    beta.refused(Errno.ESRCH, "retrieve_u32", "drv.blk.alpha")

    beta.call("subscribe", "nothing", overwrite=True)
    beta.flush_notify()
    alpha.call("publish_u32", "drv.blk.new", 1)
    beta.no_notify()
    alpha.refused(Errno.ESRCH, "check")  # alpha has no subscription


def test_labels_come_from_rs(root: ipc.Connection, ds: int, parties: tuple[Party, Party]) -> None:
    alpha, beta = parties
    rs = Ds(root, ds, timeout=10)
    rs.publish_label("alpha", alpha.ep)
    rs.publish_label("beta", beta.ep)
    with pytest.raises(DsError) as err:
        rs.publish_label("alpha", alpha.ep)
    assert err.value.errno is Errno.EEXIST
    alpha.refused(Errno.EPERM, "publish_label", "fake", 12345)
    assert beta.call("retrieve_label", "alpha") == alpha.ep
    assert beta.call("retrieve_label_name", alpha.ep) == "alpha"
    beta.refused(Errno.ESRCH, "retrieve_label", "nobody")
    beta.refused(Errno.ESRCH, "retrieve_label_name", root.endpoint)

    # RS publishes asynchronously: DS's reply is not taken, and DS serves on.
    root.senda(ds, proto.DS_PUBLISH, {"key": "gamma", "type": "label", "value": 4242})
    deadline = time.monotonic() + 5
    while True:
        try:
            assert rs.retrieve_label("gamma") == 4242
            break
        except DsError as exc:
            assert exc.errno is Errno.ESRCH and time.monotonic() < deadline
            time.sleep(0.01)
    assert rs.retrieve_label_name(4242) == "gamma"
    rs.delete_label("gamma")
    with pytest.raises(DsError) as err:
        rs.retrieve_label("gamma")
    assert err.value.errno is Errno.ESRCH


def test_deleting_a_label_takes_its_entries(
    root: ipc.Connection, ds: int, parties: tuple[Party, Party]
) -> None:
    _, beta = parties
    rs = Ds(root, ds, timeout=10)
    gamma = spawn_party(root, "gamma", ds)
    try:
        rs.publish_label("gamma", gamma.ep, overwrite=True)
        gamma.call("publish_u32", "drv.net.gamma", 1)
        beta.call("subscribe", r"drv\.net\.gamma", overwrite=True)
        rs.delete_label("gamma")  # as RS does when a service goes away
        beta.wait_notify()
        assert beta.call("changes") == [["drv.net.gamma", "u32"]]
        beta.refused(Errno.ESRCH, "retrieve_u32", "drv.net.gamma")
    finally:
        kill(root, gamma.ep)


def test_a_dead_subscribers_subscription_is_dropped(
    root: ipc.Connection, ds: int, parties: tuple[Party, Party]
) -> None:
    alpha, _ = parties
    delta = spawn_party(root, "delta", ds)
    delta.call("subscribe", r"dead\..*")
    kill(root, delta.ep)
    alpha.call("publish_u32", "dead.1", 1)  # DS's notify fails: it drops the subscription
    # The same endpoint again (RS's restart policy keeps it): a new subscription
    # succeeds without OVERWRITE, so the old one is gone.
    again = spawn_party(root, "delta", ds, endpoint=delta.ep)
    try:
        assert again.ep == delta.ep
        again.call("subscribe", r"dead\..*")
    finally:
        kill(root, again.ep)


def test_bad_requests_get_einval_and_ds_serves_on(parties: tuple[Party, Party]) -> None:
    alpha, beta = parties
    cases: list[tuple[int, bytes, Errno]] = [
        (proto.DS_PUBLISH, b"\xff\xfe garbage", Errno.EINVAL),
        (proto.DS_PUBLISH, codec.encode({"key": "k", "type": "u32"}), Errno.EINVAL),
        (proto.DS_PUBLISH, codec.encode({"key": "k", "type": "u32", "value": -5}), Errno.EINVAL),
        (proto.DS_PUBLISH, codec.encode({"key": "k", "type": "blob", "value": 1}), Errno.EINVAL),
        (
            proto.DS_PUBLISH,
            codec.encode({"key": "k" * 300, "type": "u32", "value": 1}),
            Errno.EINVAL,
        ),
        (
            proto.DS_PUBLISH,
            codec.encode({"key": "k", "type": "mem", "value": bytes(proto.DS_MAX_MEM + 1)}),
            Errno.EINVAL,
        ),
        (proto.DS_SUBSCRIBE, codec.encode({"regex": "(["}), Errno.EINVAL),
        (proto.DS_RETRIEVE, b"", Errno.EINVAL),
        (0x8FF, b"", Errno.ENOSYS),
    ]
    for m_type, payload, errno in cases:
        status, fields = alpha.raw(m_type, payload)
        assert status == -errno, (m_type, payload[:20], status, fields)
        assert isinstance(fields.get("error"), str) and fields["error"]
    alpha.call("publish_u32", "after.bad", 7)
    assert beta.call("retrieve_u32", "after.bad") == 7


def test_ds_never_answers_a_reply(root: ipc.Connection, ds: int) -> None:
    # A status (m_type <= 0) is someone's stray reply; answering it with ENOSYS could
    # start an endless exchange of error replies with another server.
    for status in (0, -int(Errno.ENOSYS)):
        with pytest.raises(ipc.IpcTimeout):
            root.sendrec(ds, status, {"error": "a stray reply"}, timeout=0.3)
    Ds(root, ds, timeout=5).publish_u32("after.stray", 1)  # DS serves on


def test_find_asks_rs(root: ipc.Connection, ds: int, parties: tuple[Party, Party]) -> None:
    alpha, _ = parties
    alpha.start("ds_find")
    m = root.receive(alpha.ep, timeout=5)
    assert (m.m_type, m["label"]) == (proto.RS_LOOKUP, "ds")
    root.sendnb(alpha.ep, 0, {"endpoint": ds})
    assert alpha.result() == {"status": 0, "endpoint": ds}


def test_live_update_carries_the_store(root: ipc.Connection) -> None:
    old, init = start_ds(root)
    assert init["result"] == 0
    user = spawn_party(root, "lu_user", old)
    try:
        user.call("publish_str", "lu.kept", "still here")
        user.call("subscribe", r"lu\..*")
        root.senda(old, proto.SEF_LU_PREPARE, {"state": int(LuState.WORK_FREE)})
        ready = root.receive(old, timeout=5)
        assert (ready.m_type, ready["result"]) == (proto.RS_LU_PREPARE, 0)
        saved = ready["saved"]
        assert isinstance(saved, bytes) and saved
        kill(root, old)
        new, init = start_ds(root, endpoint=old, type=int(InitType.LU), saved=saved)
        assert (new, init["result"]) == (old, 0)
        user.start("ds", endpoint=new, method="retrieve_str", args=["lu.kept"], kwargs={})
        time.sleep(0.5)  # a new version serves nothing before RS's go-ahead:
        (row,) = [p for p in root.proctab() if p["endpoint"] == user.ep]
        assert (row["state"], row["blocked_on"]) == ("sending", new), row  # waits at DS
        root.notify(new)  # RS's, after the swap (here the old one is dead)
        assert user.result() == {"status": 0, "result": "still here"}
        user.call("publish_u32", "lu.new", 1)  # the subscription came along
        user.wait_notify()
        assert user.call("changes") == [["lu.new", "u32"]]
    finally:
        kill(root, user.ep)
        kill(root, old)
