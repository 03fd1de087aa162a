"""A server's answer to one request, written once for every server and driver
library (docs/errors.md): the handler returns its answer or raises a
:class:`~hwl.errors.Refusal`; a request that does not decode is EINVAL; any other
exception is a bug, logged with its traceback and answered EGENERIC, and the
server serves on (a driver library may let it end the process instead: RS
restarts a driver, and its clients recover)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from hwl.errors import CallError, Refusal
from hwl.ipc.client import KernelGone
from hwl.proto import codec, wire
from hwl.proto.errno import Errno
from hwl.proto.fields import FieldError

T = TypeVar("T")

#: An answer on the wire: the status (0, a count, or ``-errno``) and the fields.
Reply = tuple[int, dict[str, codec.Value]]

#: What parsing a malformed request raises.
MALFORMED: tuple[type[Exception], ...] = (codec.CodecError, FieldError)


def _malformed_request(name: str, exc: Exception) -> str:
    return f"malformed request: {exc}"


def _internal_error(name: str, exc: Exception) -> str:
    return "internal error"


def _quiet(refusal: Refusal) -> int:
    return logging.DEBUG


@dataclass(frozen=True)
class Answering:
    """How one server answers what goes wrong: its ``log``; the exceptions that
    mean a malformed request (``malformed``) and the text it answers them with;
    the text for a bug (``failed_text``; ``answer_bugs`` False: re-raise it);
    the log level of a refusal; ``call_text``, if a call the handler makes (to
    the kernel, another server) that fails is answered with that call's errno and
    this text (None: such a failure is a bug like any other); and what ``passes``
    to the caller unanswered (the kernel gone, a server's own "answer later")."""

    log: logging.Logger
    malformed: tuple[type[Exception], ...] = MALFORMED
    malformed_text: Callable[[str, Exception], str] = _malformed_request
    failed_text: Callable[[str, Exception], str] = _internal_error
    answer_bugs: bool = True
    level: Callable[[Refusal], int] = _quiet
    call_text: Callable[[str, CallError], str] | None = None
    passes: tuple[type[Exception], ...] = (KernelGone,)

    def answer(self, handle: Callable[[], T], name: str, source: int) -> T | Reply:
        """``handle()``'s answer, or the reply for what it raised; ``name`` is the
        request's (for the log and the texts), ``source`` who sent it."""
        try:
            return handle()
        except Refusal as exc:
            who = wire.endpoint_name(source)
            self.log.log(self.level(exc), "%s from %s refused: %s", name, who, exc.why)
            return exc.reply()
        except self.passes:
            raise
        except self.malformed as exc:
            return -int(Errno.EINVAL), {"error": self.malformed_text(name, exc)}
        except CallError as exc:
            if self.call_text is None:
                return self._bug(exc, name, source)
            self.log.warning("%s from %s: a call failed: %s", name, source, exc)
            return -int(exc.errno), {"error": self.call_text(name, exc)}
        except Exception as exc:
            return self._bug(exc, name, source)

    def _bug(self, exc: Exception, name: str, source: int) -> Reply:
        if not self.answer_bugs:
            raise exc
        self.log.exception("%s from %s failed", name, wire.endpoint_name(source))
        return -int(Errno.EGENERIC), {"error": self.failed_text(name, exc)}
