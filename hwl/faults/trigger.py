"""The fault trigger (Linux's fault-injection attributes, seeded) under the name the
faults and campaigns use; it lives in :mod:`hwl.kernel.trigger` because the kernel's
own hardware faults (``faultctl``) draw on it, and the kernel imports nothing of
hwl.faults (whose faults drive RS and QMP).

See docs/faults.md.
"""

from hwl.kernel.trigger import Trigger

__all__ = ["Trigger"]
