"""INET's interfaces as ``hwl up`` prints them, next to RS's service table."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hwl.net.client import Inet, ifstatus
from hwl.system.rs import ServiceStatus

COLUMNS = ("IFACE", "ADDRESS", "GATEWAY", "MAC", "DRIVER", "LINK", "RESTARTS", "RX", "TX")


def format_interfaces(status: Mapping[str, object]) -> str:
    """An aligned table of IFSTATUS's interfaces: address, driver state, frames."""
    found = status.get("counters")
    counters: dict[str, Any] = found if isinstance(found, dict) else {}
    rows = status.get("interfaces")
    table = [COLUMNS]
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict):
            continue
        ether = counters.get(f"{row['name']}.ether", {})
        table.append((
            str(row["name"]), str(row["address"]), str(row["gateway"] or "-"), str(row["mac"]),
            f"{row['driver']} (ep {row['endpoint']})", "up" if row["link"] else "down",
            str(row["restarts"]), str(ether.get("rx", 0)), str(ether.get("tx", 0)),
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in table
    )


def interfaces_text(run_dir: Path, services: list[ServiceStatus]) -> str | None:
    """INET's interface table for the machine in ``run_dir``, or None when no INET
    runs there (or it does not answer: ``hwl up`` shows what it can)."""
    if not any(s.label == "inet" and s.state == "up" for s in services):
        return None
    try:
        with Inet.attach(run_dir) as inet:
            return format_interfaces(ifstatus(inet=inet))
    except OSError as exc:
        return f"inet: no interface status ({exc})"
