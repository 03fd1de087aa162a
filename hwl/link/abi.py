"""The stub's ABI as seen from Python: a byte-for-byte mirror of guest/abi.h.

Every offset here must match the C structs; `check_abi_info` compares the
sizes the stub exports in `hwl_abi_info` with these before any request is sent.
"""

from __future__ import annotations

import struct
from typing import Final

ABI_VERSION: Final = 6
MAGIC: Final = 0x314C5748

NSLOTS: Final = 8
MAX_OPS: Final = 254
IRQ_RING: Final = 64
NWATCH: Final = 8  # watched doorbells (struct hwl_watch)

OP_NOP: Final = 0
OP_IN: Final = 1
OP_OUT: Final = 2
OP_INS: Final = 3
OP_OUTS: Final = 4
OP_WAIT: Final = 5
OP_DELAY: Final = 6
OP_IRQ_UNMASK: Final = 7
OP_IRQ_MASK: Final = 8
OP_IRQ_WAIT: Final = 9
OP_MMIO_RD: Final = 10
OP_MMIO_WR: Final = 11
OP_MMIO_WAIT: Final = 12
MMIO_WAIT_UNIT_US: Final = 10  # MMIO_WAIT's timeout: the op's port field in these units
MMIO_WAIT_MAX_US: Final = 0xFFFF * MMIO_WAIT_UNIT_US
MMIO_CODES: Final = frozenset({OP_MMIO_RD, OP_MMIO_WR, OP_MMIO_WAIT})
OP_NATIVE_PIO: Final = 16
OP_NATIVE_DMA: Final = 17
OP_NATIVE_RAND: Final = 18
OP_NATIVE_DMA_WRITE: Final = 19

ST_OK: Final = 0
ST_TIMEOUT: Final = 1
ST_BADOP: Final = 2
ST_BADARG: Final = 3
ST_DEVERR: Final = 4

STATUS_NAMES: Final = {
    ST_OK: "ok",
    ST_TIMEOUT: "timeout",
    ST_BADOP: "unknown operation",
    ST_BADARG: "bad argument",
    ST_DEVERR: "device error",
}

BELL_DONE: Final = b"D"
BELL_IRQ: Final = b"I"

# struct hwl_op: u8 code, u8 width, u16 port, u32 a, u32 b, u32 c
OP: Final = struct.Struct("<BBHIII")
OP_SIZE: Final = 16
OP_C_OFFSET: Final = 12

# struct hwl_slot: u32 nops, status, fail_index, reserved[5], ops[MAX_OPS]
SLOT_SIZE: Final = 4096
SLOT_NOPS: Final = 0
SLOT_STATUS: Final = 4
SLOT_FAIL_INDEX: Final = 8
SLOT_QUIET: Final = 12  # host: 1 = no doorbell at this slot's completion
SLOT_OPS: Final = 32

# struct hwl_ctl, as indexes of u32 words
CTL_SIZE: Final = 3200
W_MAGIC: Final = 0
W_ABI_VERSION: Final = 1
W_READY: Final = 2
W_TSC_KHZ: Final = 3
W_RAM_BYTES: Final = 4
W_FREE_BASE: Final = 5
W_SPIN_US: Final = 6
W_STUB_SLEEPING: Final = 7
W_HOST_WAITING: Final = 8
W_REQ_HEAD: Final = 9
W_REQ_TAIL: Final = 10
W_IRQ_HEAD: Final = 11
W_IRQ_TAIL: Final = 12
W_IRQ_MASK: Final = 13
W_HALTS: Final = 14
W_BELLS_SENT: Final = 15
W_IRQ_COUNT: Final = 16
W_IRQ_RING: Final = 32
W_WATCH: Final = 96  # struct hwl_watch watch[NWATCH], WATCH_WORDS words each

# struct hwl_watch, as word indexes from its start (host-written)
WATCH_WORDS: Final = 12
WATCH_GEN: Final = 0
WATCH_WORD: Final = 1
WATCH_SLEEP: Final = 2
WATCH_FLAGS: Final = 3
WATCH_BASE: Final = 4
WATCH_OP: Final = 8  # its struct hwl_op, four words
WATCH_VALUE: Final = 1  # flags: the op's value is the word's new value
WATCH_FRAMES: Final = 2  # flags: the word counts staged frames; frames[] holds the template
WATCH_ASLEEP: Final = 1  # sleep word: wake the stub, which then makes the write
WATCH_ENDED: Final = 2  # sleep word: the watch ended; make the write through the kernel

# struct hwl_frames (a frame template), ctl.frames[NWATCH] at byte FRAMES_OFFSET
FRAMES_OFFSET: Final = 768
FRAMES_SIZE: Final = 304
FRAME_OPS: Final = 16
FRAMES_HEAD: Final = struct.Struct("<IIIIIIII16s")  # table..reserved, patch[16]
PATCH_NONE, PATCH_LEN_LO, PATCH_LEN_HI, PATCH_LEN4_LO, PATCH_LEN4_HI = 0, 1, 2, 3, 4
PATCH_SLOT: Final = 5
PATCH_BYTE0: Final = 6  # an OUT's value := byte k of the frame, for PATCH_BYTE0 + k
PATCH_BYTES: Final = 16

# struct hwl_native
NATIVE: Final = struct.Struct("<HHHBBIIIIIIIIIIQ")
NATIVE_SIZE: Final = 56
NATIVE_STATUS_OFFSET: Final = 36

# struct hwl_abi_info: eight u32
ABI_INFO: Final = struct.Struct("<8I")
EXPECTED_ABI_INFO: Final = (
    ABI_VERSION,
    MAGIC,
    CTL_SIZE,
    SLOT_SIZE,
    NSLOTS,
    MAX_OPS,
    NATIVE_SIZE,
    IRQ_RING,
)
ABI_INFO_FIELDS: Final = (
    "version",
    "magic",
    "ctl_size",
    "slot_size",
    "nslots",
    "max_ops",
    "native_size",
    "irq_ring",
)

assert NATIVE.size == NATIVE_SIZE
assert SLOT_OPS + MAX_OPS * OP_SIZE == SLOT_SIZE


def mismatches(info: tuple[int, ...]) -> list[str]:
    """Name each field of the stub's hwl_abi_info that differs from this host's."""
    return [
        f"{name}: stub has {got:#x}, host expects {want:#x}"
        for name, got, want in zip(ABI_INFO_FIELDS, info, EXPECTED_ABI_INFO, strict=True)
        if got != want
    ]


# ---- NIC native loops (guest/native_nic.c; struct hwl_nic_native in abi.h)
OP_NATIVE_NIC_TX: Final = 20

NIC_NE2K: Final = 1
NIC_RTL8139: Final = 2
NIC_E1000: Final = 3
NIC_RING_BYTES: Final = 1024

# kind, io_base, mmio_base, frame, length, ring, count, batch; out: status, done, tsc_elapsed
NIC_NATIVE: Final = struct.Struct("<IIIIIIIIIIQ")
NIC_NATIVE_SIZE: Final = 48
NIC_NATIVE_OUT_OFFSET: Final = 32

assert NIC_NATIVE.size == NIC_NATIVE_SIZE
