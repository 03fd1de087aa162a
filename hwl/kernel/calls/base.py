"""What every kernel call family shares: the refusal, reading a call's fields, the reply.

A call's payload is a codec dict and so is its reply (vdevio's are raw ops, see
``wire.VDEVIO``). A handler returns the reply, a :class:`WithFds` when descriptors
ride along with it (SCM_RIGHTS), or None when it answers later (it waits for the
stub); it refuses by raising :class:`CallError` (:func:`fail`, or :func:`deny` for a
privilege violation, logged as a warning). A malformed field is EINVAL with the
reason in the reply's ``error``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

from hwl.config.system_conf import ServiceConfig, SystemConfError
from hwl.config.system_conf import parse as parse_conf
from hwl.ipc import codec
from hwl.kernel.errno import Errno, ErrnoError
from hwl.kernel.proc import Proc
from hwl.kernel.stublink import HasLink
from hwl.link.link import Link

Fields = dict[str, codec.Value]
Reply = dict[str, codec.Value]


@dataclass
class WithFds:
    """A reply with descriptors riding along (not owned: the sender keeps them open)."""

    reply: Reply
    fds: list[int] = field(default_factory=list)


Answer = Reply | WithFds | bytes  # bytes: a binary call's reply payload (vdevio)
AnswerT = TypeVar("AnswerT", bound=Answer)
Handler = Callable[[Proc, Fields], "Answer | None"]


class CallError(ErrnoError):
    """A refused call: the errno that travels back and why."""

    def __init__(self, errno: Errno, why: str, *, warn: bool = False) -> None:
        super().__init__(errno, why)
        self.warn = warn  # a privilege violation: logged as a warning


def fail(errno: Errno, why: str) -> NoReturn:
    raise CallError(errno, why)


def deny(why: str) -> NoReturn:
    raise CallError(Errno.EPERM, why, warn=True)


# --- reading fields ---------------------------------------------------------------
MISSING: Any = object()


def get_int(
    f: dict[str, codec.Value], name: str, low: int, high: int, default: int = MISSING
) -> int:
    value = f.get(name, default)
    if value is MISSING:
        fail(Errno.EINVAL, f"field '{name}' is missing")
    if not isinstance(value, int) or isinstance(value, bool):
        fail(Errno.EINVAL, f"field '{name}' must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        fail(Errno.EINVAL, f"field '{name}'={value} is outside {low}..{high}")
    return value


def get_str(f: dict[str, codec.Value], name: str, default: str = MISSING) -> str:
    value = f.get(name, default)
    if value is MISSING:
        fail(Errno.EINVAL, f"field '{name}' is missing")
    if not isinstance(value, str):
        fail(Errno.EINVAL, f"field '{name}' must be a string, not {type(value).__name__}")
    return value


def get_bytes(f: dict[str, codec.Value], name: str) -> bytes:
    value = f.get(name, MISSING)
    if not isinstance(value, bytes):
        fail(Errno.EINVAL, f"field '{name}' must be bytes")
    return value


def get_bool(f: dict[str, codec.Value], name: str, default: bool = False) -> bool:
    value = f.get(name, default)
    if not isinstance(value, bool):
        fail(Errno.EINVAL, f"field '{name}' must be a boolean")
    return value


def one_entry(call: str, text: str, origin: str) -> ServiceConfig:
    """The one system.conf service entry ``text`` must hold."""
    try:
        conf = parse_conf(text, origin)
    except SystemConfError as exc:
        fail(Errno.EINVAL, f"{call}: {exc}")
    if len(conf) != 1:
        fail(Errno.EINVAL, f"{call}: the conf holds {len(conf)} service entries, not 1")
    (entry,) = conf
    return entry


U32 = 0xFFFFFFFF
I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1


def require_link(machine: HasLink) -> Link:
    """The link to the stub, or the refusal of a call that needs one."""
    link = machine.link
    if link is None:
        fail(Errno.ENODEV, "this kernel has no machine")
    if not machine.link_ok:
        fail(Errno.EIO, "the machine is gone (QEMU exited)")
    return link
