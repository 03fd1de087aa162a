"""The link to the stub as the kernel's parts see it: there may be none (a kernel
without a machine), and it may have gone with QEMU (``link_ok`` false)."""

from __future__ import annotations

from typing import Protocol

from hwl.link.link import Link


class HasLink(Protocol):
    """Whatever holds the link (the kernel); read only."""

    @property
    def link(self) -> Link | None: ...

    @property
    def link_ok(self) -> bool: ...
