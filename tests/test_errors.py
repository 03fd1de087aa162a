"""The error tree (hwl/errors.py), the reply skeleton (hwl.system.serve) and the
client call skeleton (hwl.system.call), without a kernel: the skeletons get a
handler that raises, or a stand-in connection that answers what the test says.
The servers and clients using them are tested as processes in test_ds.py,
test_pci_server.py, test_vfs.py, test_rs*.py and test_inet_server.py."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, cast

import pytest

from hwl.errors import CallError, ErrnoError, HwlError, Refusal
from hwl.ipc.client import Connection, IpcError, IpcTimeout, KernelGone, Message
from hwl.proto import codec, wire
from hwl.proto.errno import Errno
from hwl.system import call, serve
from hwl.system.ds import DsError
from hwl.system.pci import PciError
from hwl.system.rs import RsError
from hwl.system.vfs import VfsError

log = logging.getLogger("test_errors")


# ----------------------------------------------------------------------- the tree


def test_client_errors_are_call_errors_with_their_old_texts() -> None:
    for cls in (DsError, PciError, RsError, VfsError, IpcError):
        exc = cls(Errno.EBUSY, "reserve", "held by 7")
        assert isinstance(exc, CallError) and isinstance(exc, ErrnoError)
        assert isinstance(exc, HwlError) and not isinstance(exc, Refusal)
        assert (exc.errno, exc.call, exc.detail, exc.why) == (
            Errno.EBUSY, "reserve", "held by 7", "held by 7"
        )  # fmt: skip
    assert str(DsError(Errno.EPERM, "publish k")) == "ds publish k: EPERM (" + (
        Errno.EPERM.description + ")"
    )
    assert str(PciError(Errno.EBUSY, "PCI_RESERVE", "x")).startswith("pci PCI_RESERVE: EBUSY (")
    rs = RsError(Errno.ESRCH, "down")
    assert (str(rs), rs.request, rs.detail) == (
        f"down failed: ESRCH: {Errno.ESRCH.description}", "down", Errno.ESRCH.description
    )  # fmt: skip


def test_vfs_error_stays_an_os_error_with_the_minix_errno() -> None:
    exc = VfsError(Errno.EIO, "read", "bad sector")
    assert isinstance(exc, OSError)
    assert exc.errno is Errno.EIO and exc.minix_errno is Errno.EIO and int(exc.errno) == 5
    text = f"vfs read: EIO ({Errno.EIO.description}): bad sector"
    assert exc.args == (5, text) and exc.strerror == text
    assert str(exc) == f"[Errno 5] {text}"


def test_refusal_reply_is_the_wire_answer() -> None:
    assert Refusal(Errno.ENOENT, "no key 'k'").reply() == (-2, {"error": "no key 'k'"})
    assert Refusal(Errno.EIO).reply() == (-5, {"error": Errno.EIO.description})


# --------------------------------------------------------------- the reply skeleton


def raising(exc: BaseException) -> Callable[[], dict[str, codec.Value]]:
    def handle() -> dict[str, codec.Value]:
        raise exc

    return handle


def test_answer_passes_the_handlers_answer_through() -> None:
    assert serve.Answering(log).answer(lambda: {"n": 1}, "REQ", 7) == {"n": 1}


def test_a_refusal_is_answered_and_logged_at_the_servers_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    answering = serve.Answering(log, level=lambda exc: logging.WARNING)
    with caplog.at_level(logging.DEBUG, "test_errors"):
        reply = answering.answer(raising(Refusal(Errno.EPERM, "not yours")), "REQ", 7)
    assert reply == (-int(Errno.EPERM), {"error": "not yours"})
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, f"REQ from {wire.endpoint_name(7)} refused: not yours")
    ]


def test_a_malformed_request_is_einval_in_the_servers_words() -> None:
    plain = serve.Answering(log)
    inet = serve.Answering(log, malformed_text=lambda name, exc: f"malformed {name}: {exc}")
    bad = codec.CodecError("truncated")
    assert plain.answer(raising(bad), "REQ", 7) == (-22, {"error": "malformed request: truncated"})
    assert inet.answer(raising(bad), "SEND", 7) == (-22, {"error": "malformed SEND: truncated"})
    none = serve.Answering(log, malformed=())  # then it is a bug
    assert none.answer(raising(bad), "REQ", 7) == (
        -int(Errno.EGENERIC),
        {"error": "internal error"},
    )


def test_a_bug_is_logged_with_its_traceback_and_answered(caplog: pytest.LogCaptureFixture) -> None:
    answering = serve.Answering(log, failed_text=lambda name, exc: f"{name} failed: {exc!r}")
    with caplog.at_level(logging.ERROR, "test_errors"):
        reply = answering.answer(raising(ZeroDivisionError("oops")), "REQ", 7)
    assert reply == (-int(Errno.EGENERIC), {"error": "REQ failed: ZeroDivisionError('oops')"})
    (record,) = caplog.records
    assert record.exc_info is not None and record.exc_info[0] is ZeroDivisionError


def test_a_driver_library_lets_a_bug_end_the_process() -> None:
    answering = serve.Answering(log, answer_bugs=False)
    with pytest.raises(ZeroDivisionError):
        answering.answer(raising(ZeroDivisionError()), "REQ", 7)
    eio = (-int(Errno.EIO), {"error": Errno.EIO.description})
    assert answering.answer(raising(Refusal(Errno.EIO)), "REQ", 7) == eio


def test_a_failed_call_is_answered_with_its_errno_only_where_the_server_says() -> None:
    failed = IpcError(Errno.EFAULT, "safecopyfrom", "grant 3 is revoked")
    with_calls = serve.Answering(log, call_text=lambda name, exc: f"{name}: {exc}")
    assert with_calls.answer(raising(failed), "REQ", 7) == (
        -int(Errno.EFAULT), {"error": f"REQ: {failed}"}
    )  # fmt: skip
    bug = (-int(Errno.EGENERIC), {"error": "internal error"})
    assert serve.Answering(log).answer(raising(failed), "REQ", 7) == bug


def test_what_passes_is_not_answered() -> None:
    class Later(Exception):
        pass

    answering = serve.Answering(log, passes=(KernelGone, Later))
    for exc in (KernelGone("gone"), Later()):
        with pytest.raises(type(exc)):
            answering.answer(raising(exc), "REQ", 7)


# ---------------------------------------------------------- the client call skeleton


class FakeConn:
    """Answers each sendrec with the next of ``answers`` (a Message or an exception)."""

    def __init__(self, *answers: Message | BaseException) -> None:
        self.answers = list(answers)
        self.sent: list[tuple[int, int, dict[str, Any], float | None]] = []

    def sendrec(
        self, dest: int, m_type: int, fields: dict[str, Any], timeout: float | None = None
    ) -> Message:
        self.sent.append((dest, m_type, dict(fields), timeout))
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def reply(status: int, **fields: codec.Value) -> Message:
    return Message(source=5, m_type=status, payload=codec.encode(fields))


def ask(conn: FakeConn, **kw: Any) -> Message:
    kw.setdefault("timeout", 2.0)
    return call.request(
        cast(Connection, conn), 5, 0x100, {"a": 1}, call="REQ", server="SRV", error=DsError, **kw
    )


def test_an_ok_answer_is_returned_and_the_request_sent_as_given() -> None:
    conn = FakeConn(reply(0, n=3), reply(7))
    assert ask(conn)["n"] == 3
    assert conn.sent == [(5, 0x100, {"a": 1}, 2.0)]
    assert ask(conn, counts=True).m_type == 7  # a count, as VFS's read answers


def test_an_error_answer_raises_the_clients_error() -> None:
    with pytest.raises(DsError) as info:
        ask(FakeConn(reply(-int(Errno.EPERM), error="not yours")))
    assert (info.value.errno, info.value.call, info.value.detail) == (
        Errno.EPERM, "REQ", "not yours"
    )  # fmt: skip


def test_odd_statuses_are_egeneric_with_what_came() -> None:
    with pytest.raises(DsError) as info:
        ask(FakeConn(reply(7)))
    assert info.value.errno is Errno.EGENERIC and "SRV answered 7" in info.value.detail
    with pytest.raises(DsError) as info:
        ask(FakeConn(reply(-999, error="what")))
    assert info.value.errno is Errno.EGENERIC
    assert info.value.detail == "unknown errno 999: what"
    garbled = Message(source=5, m_type=-int(Errno.EIO), payload=b"\xff\xff")
    with pytest.raises(DsError) as info:
        ask(FakeConn(garbled))
    assert info.value.errno is Errno.EIO and "SRV's reply does not decode" in info.value.detail


def test_no_answer_is_the_kernels_errno_or_the_clients_timeout_errno() -> None:
    dead = IpcError(Errno.EDEADSRCDST, "sendrec", "the server died")
    with pytest.raises(DsError) as info:
        ask(FakeConn(dead), no_answer=lambda exc: f"no answer: {exc.detail}")
    assert (
        info.value.errno is Errno.EDEADSRCDST and info.value.detail == "no answer: the server died"
    )
    assert info.value.__cause__ is dead
    timeout = IpcTimeout(Errno.EINTR, "sendrec", "2.0 s")
    with pytest.raises(DsError) as info:
        ask(FakeConn(timeout))
    assert info.value.errno is Errno.EINTR
    with pytest.raises(DsError) as info:
        ask(FakeConn(timeout), timed_out=Errno.ETIMEDOUT)
    assert info.value.errno is Errno.ETIMEDOUT


def test_abandon_runs_when_the_wait_ends_without_an_answer() -> None:
    abandoned: list[str] = []
    timeout = IpcTimeout(Errno.EINTR, "sendrec", "2.0 s")
    with pytest.raises(DsError):
        ask(FakeConn(timeout), abandon=lambda: abandoned.append("timeout"))
    with pytest.raises(KeyboardInterrupt):
        ask(FakeConn(KeyboardInterrupt()), abandon=lambda: abandoned.append("ctrl-c"))
    with pytest.raises(DsError):
        ask(FakeConn(reply(-int(Errno.EIO))), abandon=lambda: abandoned.append("answered"))
    assert abandoned == ["timeout", "ctrl-c"]
