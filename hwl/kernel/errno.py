"""MINIX errnos, now :mod:`hwl.proto.errno` (and ``ErrnoError``, :mod:`hwl.errors`);
this name stays for existing imports."""

from hwl.errors import ErrnoError
from hwl.proto.errno import Errno, errno_of, from_minix, to_minix

__all__ = ["Errno", "ErrnoError", "errno_of", "from_minix", "to_minix"]
