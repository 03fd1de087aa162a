"""Exceptions raised by hwl. Each keeps its cause and says what to do about it."""

from __future__ import annotations


class HwlError(Exception):
    """Base class of every error hwl raises on purpose."""


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
