"""The client side of a request, written once for the RS, DS, PCI, VFS and INET
clients: one ``sendrec`` bounded by a timeout, and a failure (no answer, or an
error answer) raised as the client's own error; and a client's own connection
(:class:`Attachable`, :func:`attach`). See docs/errors.md."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Self, TypeVar

from hwl.ipc.client import Connection, IpcError, IpcTimeout, Message
from hwl.proto import codec, wire
from hwl.proto.errno import Errno, from_minix

#: Makes the client's error from (errno, call, detail): a CallError subclass, or
#: for INET's sockets an OSError.
ErrorMaker = Callable[[Errno, str, str], Exception]


class Attachable:
    """A client over ``conn``, a context manager: a connection :func:`attach` made
    is closed with the client; one passed in is the caller's to close."""

    conn: Connection
    _owns_conn = False

    def close(self) -> None:
        """Close the connection if :func:`attach` made it."""
        if self._owns_conn:
            self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


A = TypeVar("A", bound=Attachable)


def attach(run_dir: str | Path, make: Callable[[Connection], A]) -> A:
    """``make`` a client over a new connection to the kernel of the machine in
    ``run_dir``, as a user process; the client owns the connection."""
    conn = Connection.attach(Path(run_dir) / wire.SOCKET_NAME)
    try:
        client = make(conn)
    except BaseException:
        conn.close()
        raise
    client._owns_conn = True
    return client


def error_detail(reply: Message, server: str) -> str:
    """The ``error`` field of an error answer ("" if none)."""
    try:
        return str(reply.get("error", "") or "")
    except codec.CodecError as exc:
        return f"({server}'s reply does not decode: {exc})"


def request(
    conn: Connection,
    endpoint: int,
    m_type: int,
    fields: Mapping[str, codec.Value],
    *,
    call: str,
    server: str,
    error: ErrorMaker,
    timeout: float | None,
    counts: bool = False,
    timed_out: Errno | None = None,
    no_answer: Callable[[IpcError], str] = str,
    abandon: Callable[[], None] | None = None,
) -> Message:
    """Send ``m_type`` with ``fields`` to ``server`` at ``endpoint`` and return its
    answer if the status is 0 (or, with ``counts``, positive: a count or an fd).

    Raises ``error(errno, call, detail)``: for an error answer, its errno and
    ``error`` field; for a positive status that is no count, or an errno MINIX
    does not have, EGENERIC; when the IPC fails, the kernel's errno (``timed_out``
    instead of EINTR when the timeout ran out) and ``no_answer(exc)``.
    ``abandon`` runs when the wait ends without an answer (timeout or Ctrl-C), so
    the server can drop the request.
    """
    try:
        reply = conn.sendrec(endpoint, m_type, fields, timeout=timeout)
    except IpcTimeout as exc:
        if abandon is not None:
            abandon()
        raise error(timed_out or exc.errno, call, no_answer(exc)) from exc
    except IpcError as exc:
        raise error(exc.errno, call, no_answer(exc)) from exc
    except KeyboardInterrupt:
        if abandon is not None:
            abandon()
        raise
    if reply.m_type == 0 or (counts and reply.m_type > 0):
        return reply
    if reply.m_type > 0:
        raise error(Errno.EGENERIC, call, f"{server} answered {reply.m_type}, not 0 or an errno")
    detail = error_detail(reply, server)
    try:
        errno = from_minix(reply.m_type)
    except ValueError:
        errno, detail = Errno.EGENERIC, f"unknown errno {-reply.m_type}: {detail}"
    raise error(errno, call, detail)
