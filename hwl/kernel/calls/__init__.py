"""The kernel calls, one module per family (see :mod:`hwl.kernel.calls.dispatch`)."""

from hwl.kernel.calls.base import CallError
from hwl.kernel.calls.devio import IRQ_WAIT_US, MAX_BLOCKS, MAX_WAIT_US
from hwl.kernel.calls.devio import shape as _shape
from hwl.kernel.calls.dispatch import Calls

__all__ = ["IRQ_WAIT_US", "MAX_BLOCKS", "MAX_WAIT_US", "CallError", "Calls", "_shape"]
