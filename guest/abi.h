/*
 * abi.h - the contract between the guest stub and hwl's host side.
 *
 * The host mirrors every constant and offset here in hwl/link/abi.py and
 * checks HWL_ABI_VERSION and the exported hwl_abi_info against its own
 * before it talks to a stub. Change both sides together and bump the version.
 *
 * Memory model: guest RAM is a shared file that the host maps, so a guest
 * physical address is an offset into that mapping. The stub runs with paging
 * off, so its pointers are physical addresses too.
 */
#ifndef HWL_ABI_H
#define HWL_ABI_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define HWL_ABI_VERSION 6u
#define HWL_MAGIC 0x314c5748u       /* "HWL1" read as little-endian bytes */

#define HWL_NSLOTS 8u               /* request slots in the ring */
#define HWL_MAX_OPS 254u            /* operations per slot (slot = 4096 bytes) */
#define HWL_IRQ_RING 64u            /* entries in the IRQ event ring */
#define HWL_NWATCH 8u               /* watched doorbells (struct hwl_watch) */
#define HWL_FRAME_OPS 16u           /* ops in a frame template (struct hwl_frames) */

/* Operation codes (hwl_op.code). "c" is both an argument and the result. */
#define HWL_OP_NOP 0u          /* c := a (echo; measures the bare round trip) */
#define HWL_OP_IN 1u           /* c := in<width>(port) */
#define HWL_OP_OUT 2u          /* out<width>(port, a) */
#define HWL_OP_INS 3u          /* rep ins<width>: a = count of units, b = guest phys addr */
#define HWL_OP_OUTS 4u         /* rep outs<width>: a = count of units, b = guest phys addr */
#define HWL_OP_WAIT 5u         /* poll in<width>(port) until (v & a) == b, at most c µs;
                                  c := last value read; on timeout the slot ends with
                                  HWL_ST_TIMEOUT and fail_index = this op */
#define HWL_OP_DELAY 6u        /* busy-wait a µs (TSC based) */
#define HWL_OP_IRQ_UNMASK 7u   /* unmask PIC line a (0..15, not 2, 3 or 4) */
#define HWL_OP_IRQ_MASK 8u     /* mask PIC line a */
#define HWL_OP_IRQ_WAIT 9u     /* wait at most c µs for PIC line a to fire, unmasking it
                                  first unless it fired already. Lines named by IRQ_WAIT
                                  ops are the slot's own while it runs: their interrupts
                                  are not posted to the IRQ ring but consumed here (the
                                  line masked again), until an IRQ_UNMASK of the line or
                                  the slot's end; one fired and not consumed by then is
                                  posted after the slot is published. c := 1 if it fired;
                                  on timeout the slot ends with HWL_ST_TIMEOUT and the
                                  line is left unmasked */
#define HWL_OP_MMIO_RD 10u     /* c := load<width>(a): a volatile load of exactly that width
                                  from guest-physical a (1, 2 or 4; QEMU's e1000 takes 4) */
#define HWL_OP_MMIO_WR 11u     /* store<width>(a, b) */
#define HWL_OP_MMIO_WAIT 12u   /* poll load<width>(a) until (v & b) == c, at most
                                  port * 10 µs (port 0: one read); c := last value read;
                                  on timeout the slot ends with HWL_ST_TIMEOUT as WAIT's.
                                  MMIO ops: a must be at or above ctl.ram_bytes (never
                                  RAM, the stub's own included), aligned to the width,
                                  and a + width must not wrap; else HWL_ST_BADARG */
#define HWL_MMIO_WAIT_UNIT_US 10u
#define HWL_OP_NATIVE_PIO 16u  /* native loops: b = guest phys addr of a struct hwl_native; */
#define HWL_OP_NATIVE_DMA 17u  /*   c := its status. See struct hwl_native. */
#define HWL_OP_NATIVE_RAND 18u
#define HWL_OP_NATIVE_DMA_WRITE 19u
/* 20..23: reserved for the NIC native loops (native_nic.c). */

/* Slot / native status codes. */
#define HWL_ST_OK 0u
#define HWL_ST_TIMEOUT 1u      /* a WAIT or a native loop's wait ran out of time */
#define HWL_ST_BADOP 2u        /* unknown op code */
#define HWL_ST_BADARG 3u       /* bad width, line, count, or address outside usable RAM */
#define HWL_ST_DEVERR 4u       /* native loop: the drive set ERR or DF */

/* Doorbell bytes on COM2 (0x2f8, IRQ 3). Host -> stub: any byte wakes a halted
 * stub. Stub -> host: sent only while ctl.host_waiting is non-zero. */
#define HWL_BELL_DONE 'D'      /* a slot completed */
#define HWL_BELL_IRQ 'I'       /* an IRQ event was pushed */

struct hwl_op {                /* 16 bytes */
    u8 code;
    u8 width;                  /* 1, 2 or 4 for port operations */
    u16 port;
    u32 a;
    u32 b;
    u32 c;
};

struct hwl_slot {              /* 4096 bytes */
    u32 nops;                  /* host: number of ops (1..HWL_MAX_OPS) */
    u32 status;                /* stub: HWL_ST_* */
    u32 fail_index;            /* stub: index of the op that failed (status != OK) */
    u32 quiet;                 /* host: 1 = no doorbell at this slot's completion even
                                  while host_waiting (a posted batch nobody waits for) */
    u32 reserved[4];
    struct hwl_op ops[HWL_MAX_OPS];
};

/* A watched doorbell: a driver's device write that the stub makes itself, in its
 * loop, whenever a u32 in the driver's DMA memory (`word`) changes, so that a NIC
 * driver rings its card's transmit doorbell with a store into its own memory and
 * no kernel call. The kernel fills an entry after it checked `op` as one of the
 * driver's vdevio ops (an OUT or MMIO_WR to a port or BAR the driver holds) and
 * clears it (gen = 0) before the driver's buffers or rights go.
 * Arming: gen = 0, the fields, then gen = a new non-zero value; the stub takes
 * `base` (the word when the kernel armed it) as the value it has seen, so a
 * change made right after arming is not lost. `flags` HWL_WATCH_VALUE: the
 * op's value (a for OUT, b for MMIO_WR) is the word's new value, masked to the
 * width (a tail index), else the op's own (a fixed "poll" value).
 * Halting: the stub stores 1 into every armed watch's `sleep` word, then sets
 * ctl.stub_sleeping, fences (host_fence) and looks at the words once more; it
 * stores 0 when it runs again. A driver stores the word, fences, and reads its
 * sleep word. 0: the stub will see the word. HWL_WATCH_ASLEEP (also shown from
 * arming until the stub takes the watch up): the driver makes a kernel call
 * that wakes the stub, which makes the write itself from the word before it
 * runs the call's slot; a write of the value in that slot could run after the
 * stub wrote a newer one and move a tail back. HWL_WATCH_ENDED (the kernel
 * shows it once the stub no longer runs the watch): the driver makes the write
 * through the kernel itself. */
#define HWL_WATCH_VALUE 1u
#define HWL_WATCH_FRAMES 2u
#define HWL_WATCH_ASLEEP 1u
#define HWL_WATCH_ENDED 2u

/* A frame template (flags HWL_WATCH_FRAMES, ctl.frames[] at the watch's index):
 * the word counts the frames a driver has staged, and for each new one the stub
 * runs the template's ops, patched with the frame's length (from a u16 table,
 * one entry per staging slot), its slot's address or its bytes, as a PIO NIC
 * (ne2k) needs a dozen register accesses per frame and at_wini's command ring a
 * dozen per read. After each frame it stores the count of frames done, and of
 * frames refused (a length of 0, over max_len or short of a patched byte, an op
 * that failed, a wait that ran out), into the two u32 at `done`. The kernel fills the entry, checks the
 * ops as vdevio ops, every patch's target and that every slot lies in the
 * driver's DMA buffer, then arms the watch; the stub copies the entry when it
 * takes the watch up. Patches (one per op, `patch[i]`): */
#define HWL_PATCH_NONE 0u
#define HWL_PATCH_LEN_LO 1u     /* an OUT's a := length & 0xff */
#define HWL_PATCH_LEN_HI 2u     /* an OUT's a := length >> 8 */
#define HWL_PATCH_LEN4_LO 3u    /* an OUT's a := length rounded up to 4, & 0xff */
#define HWL_PATCH_LEN4_HI 4u    /* an OUT's a := that rounded length >> 8 */
#define HWL_PATCH_SLOT 5u       /* an OUTS moves the frame: a := the rounded length /
                                   width, b := base + slot * stride (every OUTS) */
#define HWL_PATCH_BYTE0 6u      /* an OUT's a := byte k of the frame, for PATCH_BYTE0 + k
                                   (k < 16; a frame shorter than a patched byte is refused
                                   before any op runs): a disk command's sector and count */
#define HWL_PATCH_BYTES 16u
struct hwl_frames {            /* 304 bytes, host-written */
    u32 table;                 /*  0 guest phys of u16 length[slots] */
    u32 slots;                 /*  4 staging slots; frame n uses slot n % slots */
    u32 stride;                /*  8 bytes per slot */
    u32 base;                  /* 12 guest phys of slot 0 */
    u32 done;                  /* 16 guest phys of u32 done, u32 refused */
    u32 nops;                  /* 20 1..HWL_FRAME_OPS */
    u32 max_len;               /* 24 longer frames are refused (rounded up, <= stride) */
    u32 reserved;              /* 28 */
    u8 patch[HWL_FRAME_OPS];   /* 32 HWL_PATCH_* per op */
    struct hwl_op ops[HWL_FRAME_OPS]; /* 48 */
};
struct hwl_watch {             /* 48 bytes, host-written */
    u32 gen;                   /*  0 0 = off */
    u32 word;                  /*  4 guest phys of the watched u32 */
    u32 sleep;                 /*  8 guest phys of the u32 the stub sets while halting */
    u32 flags;                 /* 12 HWL_WATCH_VALUE */
    u32 base;                  /* 16 the word's value when armed */
    u32 reserved[3];           /* 20 */
    struct hwl_op op;          /* 32 OUT or MMIO_WR */
};

/* The control block. Each field has one writer, named first. Counters are
 * free-running u32 values; a ring index is counter % ring size. */
struct hwl_ctl {
    u32 magic;                 /*  0 stub: HWL_MAGIC once initialised */
    u32 abi_version;           /*  4 stub: HWL_ABI_VERSION */
    u32 ready;                 /*  8 stub: 1 when serving requests */
    u32 tsc_khz;               /* 12 stub: TSC rate calibrated against the PIT */
    u32 ram_bytes;             /* 16 stub: RAM size from the multiboot info */
    u32 free_base;             /* 20 stub: first byte the host may use for buffers */
    u32 spin_us;               /* 24 host (stub sets default 20000): poll this long after
                                     the last request before halting */
    u32 stub_sleeping;         /* 28 stub: 1 while halted, waiting for a doorbell */
    u32 host_waiting;          /* 32 host: 1 while the host sleeps on COM2 */
    u32 req_head;              /* 36 host: slots posted */
    u32 req_tail;              /* 40 stub: slots completed */
    u32 irq_head;              /* 44 stub: IRQ events pushed */
    u32 irq_tail;              /* 48 host: IRQ events consumed */
    u32 irq_mask;              /* 52 stub: current 16-bit PIC mask, bit set = masked */
    u32 halts;                 /* 56 stub: times the stub halted */
    u32 bells_sent;            /* 60 stub: doorbell bytes sent to the host */
    u32 irq_count[16];         /* 64 stub: interrupts seen per line */
    u32 irq_ring[HWL_IRQ_RING];/* 128 stub: line number of each event */
    struct hwl_watch watch[HWL_NWATCH]; /* 384 host: watched doorbells */
    struct hwl_frames frames[HWL_NWATCH]; /* 768 host: the frame templates of watches */
};                             /* 3200 bytes */

/* Argument block for the native loops, the physical limits for benchmarks.
 * PIO: SET MULTIPLE (multiple), then READ MULTIPLE (0xC4, LBA28) commands of
 *   up to 256 sectors, 32-bit data transfers, until `count` sectors are read
 *   into buf (buf must hold 128 KiB; each command overwrites it).
 * DMA: `count` READ DMA EXT (0x25) commands of `sectors` sectors each
 *   (1..65536), sequential from lba, into buf (64 KiB aligned); the stub
 *   builds the PRD table at prd (4 KiB aligned, room for 512 entries).
 * DMA_WRITE: as DMA, with WRITE DMA EXT (0x35) commands from buf (every
 *   command writes the same `sectors` sectors of buf).
 * RAND: `count` READ DMA (0xC8, LBA28) commands of 8 sectors at
 *   lba + 8 * (r % span), r from the LCG r = r * 1664525 + 1013904223
 *   seeded with seed (the value used is r >> 8), into buf via one PRD at prd.
 * All: the channel's IRQ stays masked at the PIC; waits poll the bus-master
 * status (DMA) or the ATA status (PIO) with a 2 s timeout each. */
struct hwl_native {
    u16 cmd_base;              /*  0 e.g. 0x1f0 */
    u16 ctl_base;              /*  2 e.g. 0x3f6 */
    u16 bm_base;               /*  4 bus-master base of this channel (BAR4, +8 for secondary) */
    u8 drive;                  /*  6 0 = master, 1 = slave */
    u8 multiple;               /*  7 PIO: sectors per DRQ block */
    u32 lba;                   /*  8 */
    u32 count;                 /* 12 */
    u32 sectors;               /* 16 DMA: sectors per command */
    u32 buf;                   /* 20 guest phys */
    u32 prd;                   /* 24 guest phys */
    u32 span;                  /* 28 RAND: number of 4 KiB blocks to choose from */
    u32 seed;                  /* 32 RAND */
    u32 status;                /* 36 out: HWL_ST_* */
    u32 ata_status;            /* 40 out: last ATA status | error << 8 */
    u32 done;                  /* 44 out: units completed (sectors / commands) */
    u64 tsc_elapsed;           /* 48 out: TSC ticks for the whole loop */
};                             /* 56 bytes */

/* Exported, read by the host from the ELF file with pyelftools. */
struct hwl_abi_info {
    u32 version;               /* HWL_ABI_VERSION */
    u32 magic;                 /* HWL_MAGIC */
    u32 ctl_size;              /* sizeof(struct hwl_ctl) */
    u32 slot_size;             /* sizeof(struct hwl_slot) */
    u32 nslots;                /* HWL_NSLOTS */
    u32 max_ops;               /* HWL_MAX_OPS */
    u32 native_size;           /* sizeof(struct hwl_native) */
    u32 irq_ring;              /* HWL_IRQ_RING */
};

/* Symbols the host looks up: hwl_abi_info (struct hwl_abi_info, .rodata),
 * hwl_ctl (struct hwl_ctl, 4 KiB aligned, its own page),
 * hwl_slots (struct hwl_slot[HWL_NSLOTS], 4 KiB aligned), _end. */

/* ---- NIC native loops (native_nic.c) -------------------------------------
 * NATIVE_NIC_TX: b = guest phys addr of a struct hwl_nic_native; c := its status.
 * The loop sets up the TX side of one NIC by itself (polled, the device's
 * interrupts masked at the device), sends `count` copies of the frame and
 * records the TSC time of the sending loop (setup excluded). The host enables
 * PCI bus mastering (rtl8139, e1000) first. It leaves ne2k stopped, rtl8139
 * reset (out of C+ mode) and e1000 with TCTL = 0.
 * ne2k_pci: reset; per frame the frame goes into NIC memory at page 0x40 by
 *   remote DMA (RBCR, RSAR, CR = RWRITE, rep outsl, wait ISR.RDC, ack), then
 *   TPSR, TBCR0/1, CR = TRANS|START, wait ISR.PTX, ack: what a driver does for
 *   each new frame on a card without DMA.
 * rtl8139 (C+): CR.RST, CpCmd TxEnb, TxAddr = ring, CR.TE; per batch of
 *   `batch` frames, descriptors 0..batch-1 get OWN|FS|LS|length (EOR on the
 *   last), one TxPoll write, then every OWN must be clear.
 * e1000: TCTL = 0, 64 descriptors at ring all pointing at frame (EOP|IFCS|RS),
 *   TCTL = EN|PSP; per batch one TDT write, then every DD must be set.
 * A device that did not take a frame ends the loop with HWL_ST_DEVERR, a wait
 * that ran out (2 s) with HWL_ST_TIMEOUT; `done` counts frames sent before. */
#define HWL_OP_NATIVE_NIC_TX 20u

#define HWL_NIC_NE2K 1u               /* ne2k_pci, 10ec:8029 */
#define HWL_NIC_RTL8139 2u            /* rtl8139 in C+ mode, 10ec:8139 */
#define HWL_NIC_E1000 3u              /* e1000 (82540EM), 8086:100e */
#define HWL_NIC_RING_BYTES 1024u      /* 64 descriptors of 16 bytes */

struct hwl_nic_native {
    u32 kind;                  /*  0 HWL_NIC_* */
    u32 io_base;               /*  4 ne2k, rtl8139: I/O BAR0 */
    u32 mmio_base;             /*  8 e1000: BAR0, 4 KiB aligned, above RAM */
    u32 frame;                 /* 12 guest phys; (length + 3) & ~3 bytes readable */
    u32 length;                /* 16 60..1514, without FCS */
    u32 ring;                  /* 20 guest phys, 256-byte aligned, HWL_NIC_RING_BYTES
                                     (rtl8139, e1000; the loop writes it) */
    u32 count;                 /* 24 frames to send */
    u32 batch;                 /* 28 frames per doorbell write: rtl8139 1..64, e1000
                                     1..63, ne2k ignores it; 0 means 1 */
    u32 status;                /* 32 out: HWL_ST_* */
    u32 done;                  /* 36 out: frames sent */
    u64 tsc_elapsed;           /* 40 out: TSC ticks of the sending loop */
};                             /* 48 bytes */

#endif
