"""at_wini's live-update state: what the old version hands the new one at the same
endpoint (the channel's bus-master base and IRQ hook, the DMA buffers, the
drives), as codec values. The kernel's ``update`` keeps the PCI reservation's
grants, the hook and the buffers with the endpoint; this names them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hwl.ipc import codec
from hwl.ipc.kcalls import DmaHandle

from .channel import Drive

if TYPE_CHECKING:
    from .main import AtWini


def save(wini: AtWini) -> codec.Value:
    """What the new version needs to carry on at this endpoint."""
    channel, dma = wini.channel, wini.dma
    handles = [h for h in (dma.buf, dma.prd, dma.ring.handle) if h is not None]
    return {
        "ints": [wini.args.instance, int(wini.args.pio), channel.bm, channel.hook, dma.prd_size],
        "dma": [x for h in handles for x in (h.id, h.phys, h.size)],
        "drives": [
            {
                "ints": [d.number, d.sectors, int(d.lba48), int(d.dirty), d.multiple],
                "model": d.model,
                "parts": [x for part in d.parts for x in part],
            }
            for d in wini.drives.values()
        ],
    }


def restore(wini: AtWini, value: codec.Value) -> None:
    """Take the old version's state; ValueError if it is not one this version can use
    (another instance or mode, or malformed)."""
    args, channel, dma = wini.args, wini.channel, wini.dma
    state = _map(value, "driver state")
    instance, pio, channel.bm, channel.hook, dma.prd_size = _ints(state.get("ints"), "ints", 5)
    if instance != args.instance or bool(pio) != args.pio:
        raise ValueError(
            f"the running version drives instance {instance} "
            f"{'in PIO' if pio else 'with DMA'}; this one was started for "
            f"instance {args.instance} {'in PIO' if args.pio else 'with DMA'}"
        )
    handles = _ints(state.get("dma"), "dma", 0 if args.pio else 6, or_more=3)
    if handles:  # the DMA buffer, the PRD table, and the ring's buffer if it had one
        dma.buf, dma.prd = (
            DmaHandle(handles[0], handles[1], handles[2]),
            DmaHandle(handles[3], handles[4], handles[5]),
        )
        if len(handles) == 9:  # the new version arms the ring on it again
            dma.ring.handle = DmaHandle(handles[6], handles[7], handles[8])
    rows = state.get("drives")
    if not isinstance(rows, list):
        raise ValueError(f"drives {rows!r}")
    for row in rows:
        fields = _map(row, "drive")
        number, sectors, lba48, dirty, multiple = _ints(fields.get("ints"), "drive", 5)
        drive = Drive(number, str(fields.get("model")), sectors, bool(lba48), dirty=bool(dirty),
                      multiple=multiple)  # fmt: skip
        parts = _ints(fields.get("parts"), "parts", 8, or_none=True)
        drive.parts = list(zip(parts[::2], parts[1::2], strict=True))
        wini.drives[number] = drive


def _map(value: codec.Value, what: str) -> dict[str, codec.Value]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} {value!r} is not a map")
    return value


def _ints(
    value: codec.Value, what: str, count: int, or_none: bool = False, or_more: int = 0
) -> list[int]:
    """A list of ``count`` integers (or, with ``or_none``, an empty list; with
    ``or_more``, ``count + or_more``)."""
    if not isinstance(value, list) or not all(
        isinstance(x, int) and not isinstance(x, bool) for x in value
    ):
        raise ValueError(f"{what} {value!r} is not a list of integers")
    if len(value) not in (count, count + or_more) and not (or_none and not value):
        raise ValueError(f"{what} {value!r} does not hold {count} integers")
    return [int(x) for x in value]  # type: ignore[arg-type]
