"""What a live update of the PCI server carries: the device table and the
reservations, so the new version does not probe the bus while drivers use it.

See docs/pci.md.
"""

from __future__ import annotations

from hwl.ipc import codec, wire
from hwl.servers.pci.bus import Device

MAX_SAVED = wire.MAX_PAYLOAD - 256


def save(
    devices: list[Device], holders: dict[int, int], channels: dict[tuple[int, int], int]
) -> bytes:
    data = codec.encode(
        {
            "devices": [d.to_fields() for d in devices],
            "holders": [[devind, ep] for devind, ep in sorted(holders.items())],
            "channels": [[dv, ch, ep] for (dv, ch), ep in sorted(channels.items())],
        }
    )
    if len(data) > MAX_SAVED:
        raise ValueError(f"the device table is {len(data)} bytes; an update carries {MAX_SAVED}")
    return data


def restore(saved: bytes) -> tuple[list[Device], dict[int, int]]:
    """The device table and reservations that ``state_save`` encoded."""
    state = codec.decode(saved)
    devices, holders = state["devices"], state["holders"]
    if not isinstance(devices, list) or not isinstance(holders, list):
        raise ValueError("devices and holders must be lists")
    table = [Device.from_fields(d) for d in devices if isinstance(d, dict)]
    if [d.devind for d in table] != list(range(len(devices))):
        raise ValueError("the device table is not in devind order")
    held: dict[int, int] = {}
    for pair in holders:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise ValueError(f"a reservation is {pair!r}, not [devind, endpoint]")
        devind, endpoint = pair
        if type(devind) is not int or type(endpoint) is not int:
            raise ValueError(f"a reservation is {pair!r}, not [devind, endpoint]")
        if not 0 <= devind < len(table):
            raise ValueError(f"a reservation names device {devind}")
        held[devind] = endpoint
    return table, held


def restore_channels(saved: bytes) -> dict[tuple[int, int], int]:
    """The per-channel reservations ``state_save`` encoded (none from an older version)."""
    rows = codec.decode(saved).get("channels", [])
    held: dict[tuple[int, int], int] = {}
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, list) and len(row) == 3 and all(type(x) is int for x in row):
            devind, channel, endpoint = (x for x in row if isinstance(x, int))
            held[(devind, channel)] = endpoint
    return held
