"""Hardware faults the kernel injects at its own layer (hwl/kernel/hwfaults.py),
set with the root-only ``faultctl`` kernel call: a flipped bit in a port read, a
lost interrupt, a spurious one.

The host is a kernel whose root the caller is (``KernelProcess.start(machine)``
makes the starter root: kernel-level tests, a campaign that runs its own root).
Under ``hwl up`` the root is RS, and these faults are not at hand. The trigger
is handed to the kernel, which offers it each read of the port or each
interrupt on the line; heal reports how often it fired (``fired``,
``opportunities``, in the heal event).

See docs/faults.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from hwl.faults.base import Fault, FaultError
from hwl.faults.trigger import Trigger
from hwl.ipc import codec
from hwl.ipc.client import Connection, IpcError


class KernelRoot(Protocol):
    """A kernel and the caller's root connection to it (KernelProcess)."""

    @property
    def run_dir(self) -> Path: ...

    @property
    def root(self) -> Connection | None: ...


class _KernelFault(Fault):
    def __init__(self, host: KernelRoot, trigger: Trigger | None = None) -> None:
        super().__init__(host.run_dir, trigger)
        self.host = host
        if self.trigger.probability != int(self.trigger.probability):
            raise ValueError("the kernel takes a whole-number probability")

    def faultctl(self, **fields: codec.Value) -> dict[str, codec.Value]:
        root = self.host.root
        if root is None:
            raise FaultError(f"{self}: the caller is not the kernel's root")
        try:
            return root.kcall("faultctl", fields)
        except IpcError as exc:
            raise FaultError(f"{self}: faultctl: {exc}") from exc

    def _trigger_fields(self) -> dict[str, codec.Value]:
        t = self.trigger
        return {
            "probability": int(t.probability),
            "interval": t.interval,
            "times": t.times,
            "space": t.space,
            "seed": t.seed,
        }

    def _add(self, **where: codec.Value) -> None:
        reply = self.faultctl(op="add", kind=self.kind, **where, **self._trigger_fields())
        self.detail["kernel_id"] = reply["id"]

    def _heal(self) -> None:
        ended = self.faultctl(op="remove", id=self.detail["kernel_id"])["fault"]
        assert isinstance(ended, dict)
        self.detail.update(fired=ended["fired"], opportunities=ended["opportunities"])

    def offer(self, size: int = 1) -> bool:
        raise FaultError(f"{self}: the kernel asks the trigger, at each port read or interrupt")


class PortBitFlip(_KernelFault):
    """Flip ``bit`` of what a read of ``port`` returns (devio, vdevio's IN ops)."""

    kind = "port-flip"

    def __init__(self, host: KernelRoot, port: int, bit: int, trigger: Trigger | None = None):
        super().__init__(host, trigger)
        self.port = port
        self.bit = bit

    def target(self) -> str:
        return f"port {self.port:#x}"

    def params(self) -> dict[str, Any]:
        return {"port": self.port, "bit": self.bit}

    def _inject(self) -> None:
        self._add(port=self.port, bit=self.bit)


class LostIrq(_KernelFault):
    """An interrupt on ``line`` forwarded by the stub is not notified; the line
    stays masked until the owner's irqenable. Interrupts a vdevio batch waits for
    inside the stub never reach the kernel's dispatch and are not lost."""

    kind = "irq-lost"

    def __init__(self, host: KernelRoot, line: int, trigger: Trigger | None = None) -> None:
        super().__init__(host, trigger)
        self.line = line

    def target(self) -> str:
        return f"IRQ {self.line}"

    def params(self) -> dict[str, Any]:
        return {"line": self.line}

    def _inject(self) -> None:
        self._add(line=self.line)


class SpuriousIrq(_KernelFault):
    """One interrupt on ``line`` that no device raised: its hooks are notified and
    the line masked, as for a real one. Instant."""

    kind = "irq-spurious"
    instant = True

    def __init__(self, host: KernelRoot, line: int) -> None:
        super().__init__(host)
        self.line = line

    def target(self) -> str:
        return f"IRQ {self.line}"

    def _inject(self) -> None:
        self.detail["hooks"] = self.faultctl(op="spurious", line=self.line)["hooks"]
