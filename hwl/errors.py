"""Exceptions raised by hwl. Each keeps its cause and says what to do about it.

The tree (docs/errors.md): :class:`HwlError` is the root; :class:`ErrnoError`
carries a MINIX errno; a server refuses with a :class:`Refusal`, a client raises a
:class:`CallError` for an error answer.
"""

from __future__ import annotations

from typing import ClassVar

from hwl.proto.codec import Value
from hwl.proto.errno import Errno


class HwlError(Exception):
    """Base class of every error hwl raises on purpose."""


class ErrnoError(HwlError):
    """An error with a MINIX errno: ``errno`` says how, ``why`` (default: the errno's
    description) says why; ``str()`` is ``why``. Raise it as ``raise X(...) from
    exc`` so the cause stays with it."""

    def __init__(self, errno: Errno, why: str = "") -> None:
        self.errno = errno
        self.why = why or errno.description
        super().__init__(str(self))  # args (and so repr) carry the text, as usual

    def __str__(self) -> str:
        return self.why


class Refusal(ErrnoError):
    """What a server or driver answers a request with, raised in its handler: the
    reply is ``-errno`` with ``why`` as its ``error`` field (:meth:`reply`)."""

    def reply(self) -> tuple[int, dict[str, Value]]:
        """The answer on the wire: the negative errno and ``{"error": why}``."""
        return -int(self.errno), {"error": self.why}


class CallError(ErrnoError):
    """A call's error answer, as its client raises it: ``errno``, the ``call`` that
    failed and the server's (or the kernel's) ``detail``. ``str()`` is
    "<prefix><call>: ENAME (description): detail"; ``prefix`` names the server."""

    prefix: ClassVar[str] = ""

    def __init__(self, errno: Errno, call: str, detail: str = "") -> None:
        self.call = call
        self.detail = detail
        super().__init__(errno, detail)

    def __str__(self) -> str:
        text = f"{self.prefix}{self.call}: {self.errno.name} ({self.errno.description})"
        return f"{text}: {self.detail}" if self.detail else text


class ProfileError(HwlError):
    """A machine profile is malformed; the message names file, line and key."""


class QemuNotFoundError(HwlError):
    """No QEMU binary on this machine."""


class QemuExitedError(HwlError):
    """QEMU exited while hwl still needed it; the message carries its stderr."""

    def __init__(self, message: str, *, returncode: int | None, stderr: str) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


class StubError(HwlError):
    """Something is wrong with the guest stub."""


class StubBuildError(StubError):
    """The stub did not compile or link; the message carries the compiler output."""


class StubAbiError(StubError):
    """The stub's ELF does not match the ABI this hwl speaks."""


class StubTimeoutError(StubError):
    """The stub never reported ready, or stopped answering requests."""


class NativeBuildError(HwlError):
    """A host-side C helper (hwl/native.py) did not compile; the message carries
    the compiler output."""


class LinkError(HwlError):
    """A request batch failed inside the stub."""

    def __init__(self, message: str, *, status: int, op_index: int) -> None:
        super().__init__(message)
        self.status = status
        self.op_index = op_index


class LinkWaitTimeoutError(LinkError):
    """A "wait until (port & mask) == value" step ran out of time."""

    def __init__(self, message: str, *, op_index: int, last_value: int) -> None:
        super().__init__(message, status=1, op_index=op_index)
        self.last_value = last_value


class IrqTimeoutError(HwlError):
    """No interrupt arrived in time."""


class GuestMemoryError(HwlError):
    """A guest-memory access or allocation is out of range or out of space."""
