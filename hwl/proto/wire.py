"""The wire between a process and the kernel: endpoints, frames and limits.

Every process holds one ``SOCK_SEQPACKET`` connection to the kernel, so one
``send`` is one frame and message boundaries come for free. A process sends a
*request* frame (an IPC primitive or a kernel call) and, unless the request was a
``CANCEL``, gets exactly one *response* frame back: the message it received, or a
status. The kernel forwards a message's payload as the sender wrote it; only
kernel-call payloads are decoded by the kernel (see :mod:`hwl.proto.codec`; vdevio's
are raw ops, see ``VDEVIO``).
"""

from __future__ import annotations

import enum
import struct
from typing import Final

# --- endpoints ----------------------------------------------------------------
# As in MINIX: an endpoint is (generation << 15) + slot, so a message addressed to
# a previous occupant of a slot is detected by its generation.
GENERATION_SHIFT: Final = 15
SLOT_MASK: Final = (1 << GENERATION_SHIFT) - 1
GENERATION_LIMIT: Final = 1 << 15
NR_SLOTS: Final = 1024

ANY: Final = 0x7ACE  # receive from anyone
NONE: Final = 0x6ACE  # no process
SELF: Final = 0x8ACE  # the caller itself
# The kernel's own sources; notifications from them carry hardware, clock and
# system events. HARDWARE is KERNEL, as in MINIX.
ASYNCM: Final = -5
IDLE: Final = -4
CLOCK: Final = -3
SYSTEM: Final = -2
KERNEL: Final = -1
HARDWARE: Final = KERNEL

ENDPOINT_NAMES: Final = {
    ANY: "ANY",
    NONE: "NONE",
    SELF: "SELF",
    ASYNCM: "ASYNCM",
    IDLE: "IDLE",
    CLOCK: "CLOCK",
    SYSTEM: "SYSTEM",
    KERNEL: "HARDWARE",
}

HZ: Final = 60  # clock ticks per second, MINIX's default; alarms and uptimes count them

# m_type of a notification, as MINIX's NOTIFY_MESSAGE.
NOTIFY_MESSAGE: Final = 0x1000


def make_endpoint(generation: int, slot: int) -> int:
    return (generation % GENERATION_LIMIT << GENERATION_SHIFT) + slot


def endpoint_slot(endpoint: int) -> int:
    return endpoint & SLOT_MASK


def endpoint_generation(endpoint: int) -> int:
    return endpoint >> GENERATION_SHIFT


def endpoint_name(endpoint: int) -> str:
    """``SYSTEM``, ``ANY`` … for special endpoints, else ``ep 32771 (slot 3, gen 1)``."""
    name = ENDPOINT_NAMES.get(endpoint)
    if name is not None:
        return name
    return f"ep {endpoint} (slot {endpoint_slot(endpoint)}, gen {endpoint_generation(endpoint)})"


# --- frames -----------------------------------------------------------------------


class Op(enum.IntEnum):
    """What a request frame asks of the kernel."""

    SEND = 1  # blocks until the receiver takes the message
    RECEIVE = 2  # from ANY or one endpoint
    SENDREC = 3  # send, then receive the reply from the same endpoint
    NOTIFY = 4  # non-blocking, coalesced per source
    SENDNB = 5  # send only if the receiver is waiting, else ENOTREADY
    SENDA = 6  # queue asynchronously; the status is kept for ASYNC_STATUS
    ASYNC_STATUS = 7  # delivery status of asynchronous sends
    KCALL = 8  # a kernel call; m_type is its number
    CANCEL = 9  # end the blocked call with EINTR (no frame of its own)
    REPLY_RECEIVE = 10  # SENDNB a reply, then RECEIVE from ANY: a server's loop in one frame


class Kind(enum.IntEnum):
    """What a response frame carries."""

    MESSAGE = 1  # a received message: source, m_type, payload
    STATUS = 2  # a call's result: status, and a kernel call's reply payload
    HELLO = 3  # the first frame: who the process is; its arena fd rides along


# Request: op, flags, spare, peer endpoint (or 0), m_type (or kernel call number).
REQUEST: Final = struct.Struct("<BBHii")
# Response: kind, flags, reply errno, status (0 or a negative errno), source, m_type.
# The reply errno is that of the reply half of a REPLY_RECEIVE (0 if it was taken).
RESPONSE: Final = struct.Struct("<BBHiii")

MAX_PAYLOAD: Final = 8192
MAX_REQUEST: Final = REQUEST.size + MAX_PAYLOAD
MAX_RESPONSE: Final = RESPONSE.size + MAX_PAYLOAD
# A kernel call's request may be larger than a message: a posted vdevio of three
# stub slots (a ne2k SEND of 63 frames, hwl.proto.vdevio). Answers stay MAX_RESPONSE.
MAX_KCALL_PAYLOAD: Final = 16384
MAX_KCALL_REQUEST: Final = REQUEST.size + MAX_KCALL_PAYLOAD

# Request flags.
FLAG_NOTIFY_DONE: Final = 1  # SENDA: notify the sender (from ASYNCM) on delivery
# RECEIVE, REPLY_RECEIVE of a process serving call channels: answer ENOTREADY at
# once if nothing waits, and ring the process's event fd when something arrives.
FLAG_NONBLOCK: Final = 2

# Response flags.
# A message a non-blocking receive took and that left nothing else waiting: the
# kernel will ring the event fd for the next one, as after ENOTREADY, so the
# process goes straight to its channels and event fd instead of asking again.
RESP_ARMED: Final = 1

# --- call channels ----------------------------------------------------------------
# A client's sendrec to a server that serves channels goes on a socket of its own
# once the kernel made one (kernel call ``chanopen``): a request frame there is a
# REQUEST header (op SENDREC, spare = the call's id) and payload; the answer a
# RESPONSE header (kind MESSAGE, reply errno field = the call's id) and payload.
# The server learns of a new channel as a message of this type from the client's
# endpoint, with the channel's socket riding along (SCM_RIGHTS).
CHANNEL_GRANT: Final = 0x1001
# Kernel calls every process may make: they are IPC, checked by the ipc line.
IPC_KERNEL_CALLS: Final = frozenset({"chanopen", "chanserve"})
ENV_CHANNELS: Final = "HWL_CHANNELS"  # "0": every message on the kernel path

# --- kernel calls ----------------------------------------------------------------
# The number travels in m_type; the names are the system.conf ``system`` names.
KERNEL_CALL_NUMBERS: Final[dict[str, int]] = {
    name: number
    for number, name in enumerate(
        (
            "devio",
            "vdevio",
            "sdevio",
            "irqsetpolicy",
            "irqenable",
            "irqdisable",
            "irqrmpolicy",
            "privctl",
            "statectl",
            "umap",
            "dmaalloc",
            "dmafree",
            "dmacopy",
            "setalarm",
            "getinfo",
            "safecopyfrom",
            "safecopyto",
            "vsafecopy",
            "safememset",
            "spawn",
            "kill",
            "exit",
            "diagctl",
            "update",
            "dmamap",
            "dmaadopt",
            "chanopen",
            "chanserve",
            "faultctl",
            "keep",
            "sumcopyto",
        ),
        start=1,
    )
}
KERNEL_CALL_NAMES: Final = {number: name for name, number in KERNEL_CALL_NUMBERS.items()}

# vdevio, the hottest call (every driver command), skips the codec both ways: the
# request's payload is the packed ops (hwl.link.abi), its peer field the IRQ hook
# to re-enable once the batch ran (or NO_HOOK); the reply's payload is the ops
# with their results. An error reply carries the codec's {"error": why} as usual.
VDEVIO: Final = KERNEL_CALL_NUMBERS["vdevio"]
NO_HOOK: Final = -1

# --- the environment of a spawned process ---------------------------------------
ENV_FD: Final = "HWL_KERNEL_FD"  # the inherited connection to the kernel

# --- where user processes attach: a socket in the kernel's run directory -------
SOCKET_NAME: Final = "kernel.sock"
