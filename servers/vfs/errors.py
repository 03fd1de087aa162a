"""How a VFS request fails: refused at once with an errno, or held while its
driver is down (recovery re-issues it)."""

from __future__ import annotations

from hwl.errors import Refusal


class Refused(Refusal):
    """A request answered with ``-errno`` at once."""


class DriverDown(Exception):
    """The driver did not serve the call; the request waits for it."""
