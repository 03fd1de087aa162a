"""MINIX errnos, now :mod:`hwl.proto.errno`; this name stays for existing imports."""

from hwl.proto.errno import Errno, ErrnoError, errno_of, from_minix, to_minix

__all__ = ["Errno", "ErrnoError", "errno_of", "from_minix", "to_minix"]
