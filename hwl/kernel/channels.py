"""Call channels: the kernel makes them and can end them; Linux carries them
(docs/channels.md).

A client's first ``sendrec`` to a server that serves channels asks the kernel for
one (kernel call ``chanopen``), checked as a send is; the client gets one end of a
SEQPACKET socketpair and the server the other, as a CHANNEL_GRANT from the client's
endpoint. Later calls and replies never wake the kernel.

The kernel keeps both ends: shutting one down ends the channel for every holder.
A channel belongs to one client and one server incarnation: the death of either,
a live update of either, or a ``privctl`` that no longer allows the call ends it;
a client blocked on it then reads EOF (EDEADSRCDST), and a send on an ended
channel fails EPIPE (the request never left). A cycle with a channel call in it
is not refused with ELOCKED (:meth:`Channels.watch_cycles` logs it), and a server's
callers are served round robin, not strictly first come first served.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from typing import Protocol

from hwl.ipc import wire
from hwl.kernel.proc import Proc, ProcTable

log = logging.getLogger(__name__)

MAX_PER_CLIENT = 64  # channels one process may hold as a client


@dataclass(eq=False)
class Channel:
    """One client's channel to one server; the kernel's ends of it."""

    client: int  # endpoints
    server: int
    client_end: socket.socket
    server_end: socket.socket

    def shut(self) -> None:
        """End the channel for every holder of either end."""
        for end in (self.client_end, self.server_end):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()


class Ringer(Protocol):
    """How a registry tells a server something waits for it (the IPC layer)."""

    def ring(self, proc: Proc) -> None: ...


class Channels:
    """Every channel, by (client, server) endpoint."""

    def __init__(self, table: ProcTable, ringer: Ringer) -> None:
        self.table = table
        self.ringer = ringer
        self._by_pair: dict[tuple[int, int], Channel] = {}
        self._reported: set[frozenset[int]] = set()  # cycles logged already

    def __len__(self) -> int:
        return len(self._by_pair)

    def open(self, client: Proc, server: Proc) -> Channel:
        """A new channel; its server end is queued for the server. The caller has
        checked the ipc line. Raises LookupError when the client holds too many."""
        old = self._by_pair.pop((client.endpoint, server.endpoint), None)
        if old is not None:  # the client asks again: it lost its end
            self._end(old)
        if sum(1 for c, _ in self._by_pair if c == client.endpoint) >= MAX_PER_CLIENT:
            raise LookupError(f"{client.label} holds {MAX_PER_CLIENT} channels already")
        client_end, server_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        channel = Channel(client.endpoint, server.endpoint, client_end, server_end)
        self._by_pair[(client.endpoint, server.endpoint)] = channel
        self._grant(server, channel)
        return channel

    def _grant(self, server: Proc, channel: Channel) -> None:
        server.grants.append(channel)
        self.ringer.ring(server)

    def _end(self, channel: Channel) -> None:
        server = self.table.lookup(channel.server)
        if server is not None and channel in server.grants:
            server.grants.remove(channel)
        channel.shut()

    def _end_where(self, endpoints: set[int], *, clients: bool, servers: bool) -> int:
        ended = 0
        for pair, channel in list(self._by_pair.items()):
            if (clients and pair[0] in endpoints) or (servers and pair[1] in endpoints):
                del self._by_pair[pair]
                self._end(channel)
                ended += 1
        return ended

    def process_died(self, proc: Proc) -> None:
        """Every channel of a dead process ends: its callers read EOF now."""
        self._end_where({proc.endpoint}, clients=True, servers=True)
        proc.grants.clear()

    def updated(self, a: Proc, b: Proc) -> None:
        """``update`` swapped the programs behind ``a`` and ``b``. Channels they
        held as clients end (the program now at the endpoint has no end of them;
        neither was in a call); channels they serve go to the program now behind
        the endpoint, with their unread requests."""
        self._end_where({a.endpoint, b.endpoint}, clients=True, servers=False)
        for proc in (a, b):
            for channel in self._by_pair.values():
                if channel.server == proc.endpoint and channel not in proc.grants:
                    proc.grants.append(channel)
            if proc.grants:
                self.ringer.ring(proc)

    def recheck(self, proc: Proc) -> None:
        """``proc``'s privileges changed: end the channels its ipc line (or its
        servers' and clients') no longer allows."""
        for (client_ep, server_ep), channel in list(self._by_pair.items()):
            if proc.endpoint not in (client_ep, server_ep):
                continue
            client, server = self.table.lookup(client_ep), self.table.lookup(server_ep)
            if client is None or server is None or not client.priv.may_send_to(server.priv):
                del self._by_pair[(client_ep, server_ep)]
                self._end(channel)
                log.info("channel %s -> %s closed: no longer on the ipc line",
                         wire.endpoint_name(client_ep), wire.endpoint_name(server_ep))  # fmt: skip

    def watch_cycles(self) -> list[list[Proc]]:
        """The watchdog for what ELOCKED no longer catches: cycles of waiting
        processes with at least one call on a channel among the waits (read from
        the processes' arenas). Each cycle is logged once, while it lasts."""
        found: list[list[Proc]] = []
        seen: set[frozenset[int]] = set()
        for start in self.table:
            cycle = self._cycle_from(start)
            if cycle is None:
                continue
            key = frozenset(p.endpoint for p in cycle)
            if key in seen:
                continue
            seen.add(key)
            found.append(cycle)
            if key not in self._reported:
                names = " -> ".join(f"{p.label} ({p.endpoint})" for p in [*cycle, cycle[0]])
                log.warning("channel call cycle (a deadlock ELOCKED cannot refuse): %s", names)
        self._reported = seen
        return found

    def _cycle_from(self, start: Proc) -> list[Proc] | None:
        path: list[Proc] = []
        on_channel = False
        proc: Proc | None = start
        while proc is not None and proc not in path:
            path.append(proc)
            target = proc.channel_wait()
            if target != wire.NONE:
                on_channel = True
            else:
                target = proc.blocked_on()
            proc = self.table.lookup(target) if target not in (wire.ANY, wire.NONE) else None
        if proc is not start or not on_channel:
            return None
        return path

    def close_all(self) -> None:
        for channel in self._by_pair.values():
            channel.shut()
        self._by_pair.clear()


def new_event_fd() -> int:
    """The counter the kernel bumps when a message waits for a channel server."""
    return os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
