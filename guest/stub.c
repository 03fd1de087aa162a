/* stub.c - boot sequence, the shared control block and the request/halt main loop. */
#include "hw.h"

volatile struct hwl_ctl hwl_ctl __attribute__((section(".bss.hwl_ctl"), aligned(4096)));
volatile struct hwl_slot hwl_slots[HWL_NSLOTS] __attribute__((section(".bss.hwl_slots"), aligned(4096)));

__attribute__((used)) const struct hwl_abi_info hwl_abi_info = {
    .version = HWL_ABI_VERSION,
    .magic = HWL_MAGIC,
    .ctl_size = sizeof(struct hwl_ctl),
    .slot_size = sizeof(struct hwl_slot),
    .nslots = HWL_NSLOTS,
    .max_ops = HWL_MAX_OPS,
    .native_size = sizeof(struct hwl_native),
    .irq_ring = HWL_IRQ_RING,
};

/* Layout checks: abi.h is mirrored byte for byte by the host. */
_Static_assert(sizeof(struct hwl_op) == 16, "hwl_op size");
_Static_assert(sizeof(struct hwl_slot) == 4096, "hwl_slot size");
_Static_assert(sizeof(struct hwl_ctl) == 3200, "hwl_ctl size");
_Static_assert(sizeof(struct hwl_frames) == 304, "hwl_frames size");
_Static_assert(__builtin_offsetof(struct hwl_ctl, frames) == 768, "frames offset");
_Static_assert(sizeof(struct hwl_watch) == 48, "hwl_watch size");
_Static_assert(__builtin_offsetof(struct hwl_ctl, watch) == 384, "watch offset");
_Static_assert(sizeof(struct hwl_native) == 56, "hwl_native size");
_Static_assert(__builtin_offsetof(struct hwl_ctl, irq_count) == 64, "irq_count offset");
_Static_assert(__builtin_offsetof(struct hwl_ctl, irq_ring) == 128, "irq_ring offset");
_Static_assert(__builtin_offsetof(struct hwl_native, tsc_elapsed) == 48, "tsc_elapsed offset");
_Static_assert((HWL_NSLOTS & (HWL_NSLOTS - 1)) == 0, "HWL_NSLOTS power of two");

extern char _end[];

u32 stub_free_base;
u32 stub_ram_bytes;

#define MB_BOOT_MAGIC 0x2BADB002u

int range_ok(u32 addr, u64 len)
{
    return addr >= stub_free_base && addr < stub_ram_bytes &&
           (u64)addr + len <= (u64)stub_ram_bytes;
}

static void fatal(const char *msg)
{
    log_puts("hwl-stub: ");
    log_puts(msg);
    log_putc('\n');
    halt_forever();
}

/* 1 if the host has posted a slot past tail. A head more than HWL_NSLOTS
 * ahead is not a valid ring state: it is a torn or transient write by the
 * host (e.g. Python's struct.pack_into zero-fills before it writes), so it
 * is ignored until it settles. */
static inline int work_pending(u32 tail)
{
    return hwl_ctl.req_head - tail - 1u < HWL_NSLOTS;
}

/* Idle: poll for spin_us after the last work, then halt until an interrupt. */
static void serve_forever(void)
{
    volatile struct hwl_ctl *c = &hwl_ctl;
    u32 tail = c->req_tail;
    u32 iter = 0, one;
    u64 spin_end = deadline_us(c->spin_us);

    for (;;) {
        if (work_pending(tail)) {
            volatile struct hwl_slot *slot = &hwl_slots[tail % HWL_NSLOTS];
            u32 quiet = slot->quiet;    /* read now: the host reuses the slot once done */

            watch_ring();           /* a word stored before this slot was posted: first */
            run_slot(slot);
            barrier();
            c->req_tail = ++tail;
            full_barrier();         /* publish req_tail before reading host_waiting */
            if (c->host_waiting && !quiet) {
                u32 f = irq_save();
                bell_send(HWL_BELL_DONE);
                irq_restore(f);
            }
            irq_post_unclaimed();   /* after the slot's end is published */
            spin_end = deadline_us(c->spin_us);
            continue;
        }
        if (watch_ring()) {
            spin_end = deadline_us(c->spin_us);
            continue;
        }
        if (++iter & 63)
            continue;
        if (!expired(spin_end))
            continue;

        cli();
        watch_sleep(HWL_WATCH_ASLEEP); /* drivers wake the stub with a kernel call */
        one = 1;
        asm volatile("xchgl %0, %1" : "+r"(one), "+m"(c->stub_sleeping) : : "memory");
        host_fence();               /* the sleep words and stub_sleeping before the re-checks */
        if (!work_pending(tail) && !watch_due()) {
            asm volatile("sti; hlt" ::: "memory");
            c->stub_sleeping = 0;
            c->halts++;
        } else {
            c->stub_sleeping = 0;
            sti();
        }
        watch_sleep(0);
        spin_end = deadline_us(c->spin_us);
    }
}

void stub_main(u32 magic, u32 mbinfo)
{
    volatile struct hwl_ctl *c = &hwl_ctl;
    const u32 *mbi = (const u32 *)mbinfo;
    u32 mem_upper;

    serial_init();
    if (magic != MB_BOOT_MAGIC)
        fatal("not booted by a multiboot loader");
    if (!(mbi[0] & 1))
        fatal("multiboot info has no memory size");
    mem_upper = mbi[2];             /* KiB above 1 MiB */
    if (mem_upper > 0xffffffffu / 1024u - 1024u)
        mem_upper = 0xffffffffu / 1024u - 1024u;
    stub_ram_bytes = (mem_upper + 1024u) * 1024u;
    stub_free_base = ((u32)_end + 0x10000u + 0xfffffu) & ~0xfffffu;
    if (stub_free_base >= stub_ram_bytes)
        fatal("not enough RAM");

    pic_init();
    idt_init();
    tsc_calibrate();

    c->magic = HWL_MAGIC;
    c->abi_version = HWL_ABI_VERSION;
    c->tsc_khz = tsc_khz;
    c->ram_bytes = stub_ram_bytes;
    c->free_base = stub_free_base;
    /* Idle polling after the last request, then hlt until the doorbell. Measured
     * on the whole disk path (spin set at run time, same machine and at_wini):
     * 20, 10, 5, 2 and 1 ms are alike within the noise; 500 us and less collapse
     * (4 KiB random reads 2472 -> 1826 IOPS at 500 us, 282 at 100 us, 361 at 0:
     * a read that finds the stub halted pays about 2.4 ms more, the doorbell's
     * wake-up of the halted TCG vCPU). A shorter spin is not better: 20 ms stays. */
    c->spin_us = 20000;
    barrier();
    c->ready = 1;

    log_puts("hwl-stub ready abi=");
    log_dec(HWL_ABI_VERSION);
    log_puts(" tsc_khz=");
    log_dec(tsc_khz);
    log_puts(" ram=");
    log_dec(stub_ram_bytes);
    log_puts(" ctl=0x");
    log_hex((u32)&hwl_ctl);
    log_puts(" slots=0x");
    log_hex((u32)hwl_slots);
    log_putc('\n');

    sti();
    serve_forever();
}
