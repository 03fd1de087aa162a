"""A test driver for the PCI server: a SEF service that runs what the test asks.

RS starts it with a system.conf entry of the test's choosing (its ``pci device`` /
``pci class`` lines are its ACL). The test (an operator, a user process) sends
``CMD`` by sendrec; the driver answers ``RESULT`` with ``status`` (0 or the errno;
the driver's own exception: helper_error.py's HELPER_ERROR with its traceback) and
``error``, plus what the step returned:

- "pci": ``Pci(conn, pci).<method>(*args)``; the result is ``result``
- "devices": every visible device, by first_dev/next_dev -> ``devices``
- "devio_in": ``conn.devio_in(port, width)`` -> ``value``
- "irq": hook IRQ line ``irq`` and give it back (it must be granted)
- "raw": sendrec ``m_type`` with ``payload`` (bytes, sent as is) to PCI ->
  ``m_type`` and ``fields`` of the reply
- "whoami": ``endpoint``, ``pid``
- "refind": look PCI up through RS again (after PCI restarted at a new endpoint)

PCI is looked up through RS at the first command (not during init, while RS
waits for the init to finish).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from helper_error import helper_failed

from hwl.ipc import codec
from hwl.ipc.client import IpcError
from hwl.system import sef
from hwl.system.pci import Pci, PciError

CMD, RESULT = 1, 2
METHODS = {
    "first_dev", "next_dev", "find_dev", "ids", "attr_r8", "attr_r16", "attr_r32",
    "attr_w8", "attr_w16", "attr_w32", "get_bar", "dev_name", "slot_name", "dev_info",
    "reserve", "release",
}  # fmt: skip


def plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    return value


class Driver:
    def __init__(self) -> None:
        self.pci: Pci | None = None

    def server(self) -> Pci:
        if self.pci is None:
            self.pci = Pci.find(sef.connection(), timeout=10)
        return self.pci

    def run(self, f: dict[str, Any]) -> dict[str, Any]:
        conn = sef.connection()
        op = f.get("op")
        if op == "pci":
            method = f["method"]
            if method not in METHODS:
                raise ValueError(f"no PCI method {method!r}")
            return {"result": plain(getattr(self.server(), method)(*f.get("args", [])))}
        if op == "devices":
            return {"devices": plain(list(self.server().devices()))}
        if op == "devio_in":
            return {"value": conn.devio_in(f["port"], f.get("width", 1))}
        if op == "irq":
            hook = conn.irq_setpolicy(f["irq"])
            conn.irq_rmpolicy(hook)
            return {}
        if op == "raw":
            reply = conn.sendrec(self.server().endpoint, f["m_type"], f["payload"], timeout=10)
            try:
                fields: codec.Value = reply.fields
            except codec.CodecError:
                fields = None
            return {"m_type": reply.m_type, "fields": fields}
        if op == "refind":
            self.pci = None
            return {"endpoint": self.server().endpoint}
        if op == "whoami":
            return {"endpoint": conn.endpoint, "pid": os.getpid()}
        raise ValueError(f"unknown op {op!r}")


def main() -> None:
    driver = Driver()
    sef.startup()
    m = sef.receive()
    while True:
        if m.m_type != CMD:
            m = sef.receive()
            continue
        try:
            result = driver.run(dict(m.fields))
            result["status"] = 0
        except PciError as exc:
            result = {"status": int(exc.errno), "error": exc.detail}
        except IpcError as exc:
            result = {"status": int(exc.errno), "error": str(exc)}
        except Exception as exc:  # the helper's own error; it must not end the driver
            result = helper_failed(exc)
        try:
            m = sef.reply_receive(m.source, RESULT, result)
        except IpcError:
            m = sef.receive()


if __name__ == "__main__":
    main()
