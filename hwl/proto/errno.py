"""MINIX 3 error numbers, as one enum shared by the kernel, servers and drivers.

MINIX keeps errnos negative inside the system (its headers define ``_SIGN`` as ``-``
when compiling system code), so a reply status of ``-202`` means ``EDEADSRCDST``.
The enum stores the positive numbers, as user space sees them; :func:`to_minix` and
:func:`from_minix` convert to and from the negative form that travels in messages.

The values follow MINIX 3.4: 1..96 are the NetBSD-compatible POSIX errors, 200..217
are MINIX's own IPC and system errors. ``ERESTART`` is MINIX's 200 ("service
restarted"), not NetBSD's kernel-internal -3.
"""

from __future__ import annotations

import enum


class Errno(enum.IntEnum):
    """An error number, positive; ``Errno.EPERM.description`` says what it means."""

    EPERM = 1
    ENOENT = 2
    ESRCH = 3
    EINTR = 4
    EIO = 5
    ENXIO = 6
    E2BIG = 7
    ENOEXEC = 8
    EBADF = 9
    ECHILD = 10
    EDEADLK = 11
    ENOMEM = 12
    EACCES = 13
    EFAULT = 14
    ENOTBLK = 15
    EBUSY = 16
    EEXIST = 17
    EXDEV = 18
    ENODEV = 19
    ENOTDIR = 20
    EISDIR = 21
    EINVAL = 22
    ENFILE = 23
    EMFILE = 24
    ENOTTY = 25
    ETXTBSY = 26
    EFBIG = 27
    ENOSPC = 28
    ESPIPE = 29
    EROFS = 30
    EMLINK = 31
    EPIPE = 32
    EDOM = 33
    ERANGE = 34
    EAGAIN = 35
    EWOULDBLOCK = 35  # an alias of EAGAIN, as in MINIX
    EINPROGRESS = 36
    EALREADY = 37
    ENOTSOCK = 38
    EDESTADDRREQ = 39
    EMSGSIZE = 40
    EPROTOTYPE = 41
    ENOPROTOOPT = 42
    EPROTONOSUPPORT = 43
    ESOCKTNOSUPPORT = 44
    EOPNOTSUPP = 45
    EPFNOSUPPORT = 46
    EAFNOSUPPORT = 47
    EADDRINUSE = 48
    EADDRNOTAVAIL = 49
    ENETDOWN = 50
    ENETUNREACH = 51
    ENETRESET = 52
    ECONNABORTED = 53
    ECONNRESET = 54
    ENOBUFS = 55
    EISCONN = 56
    ENOTCONN = 57
    ESHUTDOWN = 58
    ETOOMANYREFS = 59
    ETIMEDOUT = 60
    ECONNREFUSED = 61
    ELOOP = 62
    ENAMETOOLONG = 63
    EHOSTDOWN = 64
    EHOSTUNREACH = 65
    ENOTEMPTY = 66
    EPROCLIM = 67
    EUSERS = 68
    EDQUOT = 69
    ESTALE = 70
    EREMOTE = 71
    EBADRPC = 72
    ERPCMISMATCH = 73
    EPROGUNAVAIL = 74
    EPROGMISMATCH = 75
    EPROCUNAVAIL = 76
    ENOLCK = 77
    ENOSYS = 78
    EFTYPE = 79
    EAUTH = 80
    ENEEDAUTH = 81
    EIDRM = 82
    ENOMSG = 83
    EOVERFLOW = 84
    EILSEQ = 85
    ENOTSUP = 86
    ECANCELED = 87
    EBADMSG = 88
    ENODATA = 89
    ENOSR = 90
    ENOSTR = 91
    ETIME = 92
    ENOATTR = 93
    EMULTIHOP = 94
    ENOLINK = 95
    EPROTO = 96

    # MINIX's own errors, used by IPC and the system servers.
    ERESTART = 200
    ENOTREADY = 201
    EDEADSRCDST = 202
    EDONTREPLY = 203
    EGENERIC = 204
    EPACKSIZE = 205
    EURG = 206
    ENOURG = 207
    ELOCKED = 208
    EBADCALL = 209
    ECALLDENIED = 210
    ETRAPDENIED = 211
    EBADREQUEST = 212
    EBADMODE = 213
    ENOCONN = 214
    EDEADEPT = 215
    EBADEPT = 216
    EBADCPU = 217

    @property
    def description(self) -> str:
        """One line saying what the error means, in hwl's words."""
        return _DESCRIPTIONS[self]

    @property
    def minix(self) -> int:
        """The negative number MINIX system code carries in a message."""
        return -int(self)


def to_minix(e: Errno | int) -> int:
    """The negative form of an errno, as replies inside the system carry it."""
    return -abs(int(e))


def from_minix(code: int) -> Errno:
    """The errno behind a reply status, negative (system form) or positive.

    Raises ``ValueError`` for 0 (that is OK, not an error) and for unknown numbers.
    """
    if code == 0:
        raise ValueError("status 0 is OK, not an errno")
    return Errno(abs(code))


def errno_of(code: int) -> Errno:
    """:func:`from_minix` for a status already known to be a failure: EGENERIC
    stands in for 0 and for numbers that are no MINIX errno."""
    try:
        return from_minix(code)
    except ValueError:
        return Errno.EGENERIC


_DESCRIPTIONS: dict[Errno, str] = {
    Errno.EPERM: "operation not permitted to this caller",
    Errno.ENOENT: "no such file or directory",
    Errno.ESRCH: "no such process",
    Errno.EINTR: "interrupted before it completed",
    Errno.EIO: "input/output error from the device",
    Errno.ENXIO: "no such device or address, or the device is not configured",
    Errno.E2BIG: "argument list is too long",
    Errno.ENOEXEC: "not an executable format",
    Errno.EBADF: "bad file descriptor",
    Errno.ECHILD: "no child processes to wait for",
    Errno.EDEADLK: "waiting would deadlock",
    Errno.ENOMEM: "out of memory",
    Errno.EACCES: "access denied",
    Errno.EFAULT: "bad address",
    Errno.ENOTBLK: "a block device is required",
    Errno.EBUSY: "device or resource is busy",
    Errno.EEXIST: "already exists",
    Errno.EXDEV: "link across devices",
    Errno.ENODEV: "the device does not support this operation",
    Errno.ENOTDIR: "not a directory",
    Errno.EISDIR: "is a directory",
    Errno.EINVAL: "invalid argument",
    Errno.ENFILE: "the system has too many open files",
    Errno.EMFILE: "this process has too many open files",
    Errno.ENOTTY: "ioctl not suited to this device",
    Errno.ETXTBSY: "text file is in use",
    Errno.EFBIG: "file would grow too large",
    Errno.ENOSPC: "no space left on the device",
    Errno.ESPIPE: "cannot seek on this object",
    Errno.EROFS: "the file system is read-only",
    Errno.EMLINK: "too many hard links",
    Errno.EPIPE: "the other end of the pipe is closed",
    Errno.EDOM: "argument outside the function's domain",
    Errno.ERANGE: "result does not fit",
    Errno.EAGAIN: "not possible right now; try again (would block)",
    Errno.EINPROGRESS: "started, and still in progress",
    Errno.EALREADY: "already in progress",
    Errno.ENOTSOCK: "not a socket",
    Errno.EDESTADDRREQ: "a destination address is needed",
    Errno.EMSGSIZE: "message is too long",
    Errno.EPROTOTYPE: "protocol does not fit this socket type",
    Errno.ENOPROTOOPT: "protocol option not available",
    Errno.EPROTONOSUPPORT: "protocol not supported",
    Errno.ESOCKTNOSUPPORT: "socket type not supported",
    Errno.EOPNOTSUPP: "operation not supported on this object",
    Errno.EPFNOSUPPORT: "protocol family not supported",
    Errno.EAFNOSUPPORT: "address family not supported",
    Errno.EADDRINUSE: "address is already in use",
    Errno.EADDRNOTAVAIL: "address cannot be assigned here",
    Errno.ENETDOWN: "the network is down",
    Errno.ENETUNREACH: "the network cannot be reached",
    Errno.ENETRESET: "the network reset the connection",
    Errno.ECONNABORTED: "connection aborted on this side",
    Errno.ECONNRESET: "connection reset by the peer",
    Errno.ENOBUFS: "out of buffer space",
    Errno.EISCONN: "socket is already connected",
    Errno.ENOTCONN: "socket is not connected",
    Errno.ESHUTDOWN: "socket was shut down for sending",
    Errno.ETOOMANYREFS: "too many references",
    Errno.ETIMEDOUT: "timed out",
    Errno.ECONNREFUSED: "connection refused by the peer",
    Errno.ELOOP: "too many levels of symbolic links",
    Errno.ENAMETOOLONG: "name is too long",
    Errno.EHOSTDOWN: "the host is down",
    Errno.EHOSTUNREACH: "the host cannot be reached",
    Errno.ENOTEMPTY: "directory is not empty",
    Errno.EPROCLIM: "too many processes",
    Errno.EUSERS: "too many users",
    Errno.EDQUOT: "disk quota exceeded",
    Errno.ESTALE: "stale remote file handle",
    Errno.EREMOTE: "too many levels of remote paths",
    Errno.EBADRPC: "malformed RPC structure",
    Errno.ERPCMISMATCH: "RPC version mismatch",
    Errno.EPROGUNAVAIL: "RPC program not available",
    Errno.EPROGMISMATCH: "RPC program version mismatch",
    Errno.EPROCUNAVAIL: "RPC procedure not offered by the program",
    Errno.ENOLCK: "no locks left",
    Errno.ENOSYS: "not implemented",
    Errno.EFTYPE: "file type or format does not fit",
    Errno.EAUTH: "authentication failed",
    Errno.ENEEDAUTH: "an authenticator is required",
    Errno.EIDRM: "the identifier was removed",
    Errno.ENOMSG: "no message of the wanted type",
    Errno.EOVERFLOW: "value too large for its data type",
    Errno.EILSEQ: "invalid byte sequence",
    Errno.ENOTSUP: "not supported",
    Errno.ECANCELED: "canceled",
    Errno.EBADMSG: "malformed or corrupt message",
    Errno.ENODATA: "no data available",
    Errno.ENOSR: "out of STREAMS resources",
    Errno.ENOSTR: "not a STREAM",
    Errno.ETIME: "STREAMS timer expired",
    Errno.ENOATTR: "no such attribute",
    Errno.EMULTIHOP: "multihop attempted",
    Errno.ENOLINK: "the link was severed",
    Errno.EPROTO: "protocol error",
    Errno.ERESTART: "the service was restarted; redo the request",
    Errno.ENOTREADY: "the source or destination is not ready",
    Errno.EDEADSRCDST: "the source or destination died",
    Errno.EDONTREPLY: "pseudo-status: the handler must not send a reply",
    Errno.EGENERIC: "generic error",
    Errno.EPACKSIZE: "packet size is invalid for the protocol",
    Errno.EURG: "urgent data is present",
    Errno.ENOURG: "no urgent data is present",
    Errno.ELOCKED: "sending would deadlock, so the message was refused",
    Errno.EBADCALL: "no such system or kernel call",
    Errno.ECALLDENIED: "the caller's privileges do not allow this call",
    Errno.ETRAPDENIED: "the caller may not use this IPC primitive",
    Errno.EBADREQUEST: "the destination cannot handle this request",
    Errno.EBADMODE: "bad mode in an ioctl",
    Errno.ENOCONN: "no such connection",
    Errno.EDEADEPT: "the endpoint is not alive",
    Errno.EBADEPT: "the endpoint is invalid",
    Errno.EBADCPU: "the requested CPU is not working",
}
