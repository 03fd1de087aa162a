"""Call channels: ``chanserve`` (the caller serves channels) and ``chanopen`` (a
channel to a server), hwl's own; the channels themselves are
:mod:`hwl.kernel.channels`'s. ``HWL_CHANNELS=0`` in the kernel's environment turns
them off: every message then takes the kernel path.
"""

from __future__ import annotations

import os
from typing import Protocol

from hwl.ipc import wire
from hwl.kernel.calls.base import (
    I32_MAX,
    I32_MIN,
    CallError,
    Fields,
    WithFds,
    fail,
    get_int,
)
from hwl.kernel.calls.grants import Procs
from hwl.kernel.channels import Channel, new_event_fd
from hwl.kernel.errno import Errno
from hwl.kernel.proc import Proc

MAX_GRANTS = 200  # channels handed over with chanserve's reply (SCM_RIGHTS takes 253 fds)


class Opener(Protocol):
    """The kernel's channels (hwl.kernel.channels.Channels)."""

    def open(self, client: Proc, server: Proc) -> Channel: ...


class ChannelCalls:
    def __init__(self, table: Procs, channels: Opener) -> None:
        self.table = table
        self.channels = channels

    def do_chanserve(self, proc: Proc, f: Fields) -> WithFds:
        """The caller serves call channels from now on: the reply carries its event
        fd, which the kernel bumps when a kernel-path message waits while the
        caller is not in a kernel receive (see hwl.kernel.channels)."""
        _channels_on()
        if proc.event_fd < 0:
            proc.event_fd = new_event_fd()
        proc.armed = False  # it receives (non-blocking) before it first polls
        # The channels already granted to the endpoint come along (a live update's
        # new version may answer their calls before its first receive).
        granted, proc.grants = proc.grants[:MAX_GRANTS], proc.grants[MAX_GRANTS:]
        fds = [proc.event_fd] + [c.server_end.fileno() for c in granted]
        return WithFds({"clients": [c.client for c in granted]}, fds)

    def do_chanopen(self, proc: Proc, f: Fields) -> WithFds:
        """A call channel from the caller to ``dest``: checked as a send is (the
        target lives, the ipc line allows it), refused (ENOTSUP) if ``dest`` does
        not serve channels; the reply carries the caller's end."""
        _channels_on()
        dest = get_int(f, "dest", I32_MIN, I32_MAX)
        target = self.table.lookup(dest)
        if target is None:
            fail(Errno.EDEADSRCDST, f"chanopen: {wire.endpoint_name(dest)} is not a live process")
        if target is proc:
            fail(Errno.ELOCKED, "chanopen: a channel to itself")
        if not proc.priv.may_send_to(target.priv):  # no reply exception: a channel is for calls
            raise CallError(Errno.ECALLDENIED, f"chanopen: {target.label} is not on its ipc line",
                            warn=True)  # fmt: skip
        if target.event_fd < 0:
            fail(Errno.ENOTSUP, f"chanopen: {target.label} does not serve call channels")
        try:
            channel = self.channels.open(proc, target)
        except LookupError as exc:
            fail(Errno.EAGAIN, f"chanopen: {exc}")
        except OSError as exc:  # out of descriptors: the caller stays on the kernel path
            fail(Errno.EAGAIN, f"chanopen: no channel now ({exc.strerror or exc})")
        return WithFds({"server": target.endpoint}, [channel.client_end.fileno()])


def _channels_on() -> None:
    """``HWL_CHANNELS=0`` in the kernel's environment: every message on the kernel path."""
    if os.environ.get(wire.ENV_CHANNELS, "1") == "0":
        fail(Errno.ENOSYS, f"call channels are off (${wire.ENV_CHANNELS}=0)")
