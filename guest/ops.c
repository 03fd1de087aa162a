/* ops.c - executes one request slot: port I/O, waits, delays, IRQ masks, native loops. */
#include "hw.h"

static int width_ok(u32 w)
{
    return w == 1 || w == 2 || w == 4;
}

static u32 port_in(u32 width, u16 port)
{
    if (width == 1)
        return inb(port);
    if (width == 2)
        return inw(port);
    return inl(port);
}

static void port_out(u32 width, u16 port, u32 v)
{
    if (width == 1)
        outb(port, (u8)v);
    else if (width == 2)
        outw(port, (u16)v);
    else
        outl(port, v);
}

static void rep_ins(u32 width, u16 port, u32 addr, u32 count)
{
    void *p = (void *)addr;

    if (width == 1)
        asm volatile("rep insb" : "+D"(p), "+c"(count) : "d"(port) : "memory");
    else if (width == 2)
        asm volatile("rep insw" : "+D"(p), "+c"(count) : "d"(port) : "memory");
    else
        asm volatile("rep insl" : "+D"(p), "+c"(count) : "d"(port) : "memory");
}

static void rep_outs(u32 width, u16 port, u32 addr, u32 count)
{
    const void *p = (const void *)addr;

    if (width == 1)
        asm volatile("rep outsb" : "+S"(p), "+c"(count) : "d"(port) : "memory");
    else if (width == 2)
        asm volatile("rep outsw" : "+S"(p), "+c"(count) : "d"(port) : "memory");
    else
        asm volatile("rep outsl" : "+S"(p), "+c"(count) : "d"(port) : "memory");
}

/* MMIO: device memory only, above every byte of RAM (the stub's own included),
 * naturally aligned, no wrap-around. */
static int mmio_ok(u32 addr, u32 width)
{
    return width_ok(width) && addr >= stub_ram_bytes && (addr & (width - 1)) == 0 &&
           (u64)addr + width <= 0x100000000ull;
}

/* Exactly one access of exactly `width` bytes: QEMU's e1000 registers are 32-bit
 * only, and a split or widened access would be another register access. */
static u32 mmio_read(u32 width, u32 addr)
{
    if (width == 1)
        return *(volatile u8 *)addr;
    if (width == 2)
        return *(volatile u16 *)addr;
    return *(volatile u32 *)addr;
}

static void mmio_write(u32 width, u32 addr, u32 v)
{
    if (width == 1)
        *(volatile u8 *)addr = (u8)v;
    else if (width == 2)
        *(volatile u16 *)addr = (u16)v;
    else
        *(volatile u32 *)addr = v;
}

/* Lines the host may not touch: 2 = cascade, 3 = COM2 doorbell, 4 = COM1 log. */
static int line_ok(u32 line)
{
    return line <= 15 && line != 2 && line != 3 && line != 4;
}

/* Runs one op; returns HWL_ST_*. Results go to op->c. */
static u32 run_op(volatile struct hwl_op *op)
{
    u32 code = op->code, width = op->width;
    u16 port = op->port;
    u32 a = op->a, b = op->b, c = op->c;
    u32 v, f, st;
    u64 dl;

    switch (code) {
    case HWL_OP_NOP:
        op->c = a;
        return HWL_ST_OK;

    case HWL_OP_IN:
        if (!width_ok(width))
            return HWL_ST_BADARG;
        op->c = port_in(width, port);
        return HWL_ST_OK;

    case HWL_OP_OUT:
        if (!width_ok(width))
            return HWL_ST_BADARG;
        port_out(width, port, a);
        return HWL_ST_OK;

    case HWL_OP_INS:
    case HWL_OP_OUTS:
        if (!width_ok(width))
            return HWL_ST_BADARG;
        if (a == 0)
            return HWL_ST_OK;
        if (!range_ok(b, (u64)a * width))
            return HWL_ST_BADARG;
        if (code == HWL_OP_INS)
            rep_ins(width, port, b, a);
        else
            rep_outs(width, port, b, a);
        return HWL_ST_OK;

    case HWL_OP_WAIT:
        if (!width_ok(width))
            return HWL_ST_BADARG;
        dl = deadline_us(c);
        for (;;) {
            v = port_in(width, port);
            if ((v & a) == b) {
                op->c = v;
                return HWL_ST_OK;
            }
            if (c == 0 || expired(dl)) {
                op->c = v;
                return HWL_ST_TIMEOUT;
            }
        }

    case HWL_OP_MMIO_RD:
        if (!mmio_ok(a, width))
            return HWL_ST_BADARG;
        op->c = mmio_read(width, a);
        return HWL_ST_OK;

    case HWL_OP_MMIO_WR:
        if (!mmio_ok(a, width))
            return HWL_ST_BADARG;
        mmio_write(width, a, b);
        return HWL_ST_OK;

    case HWL_OP_MMIO_WAIT:
        if (!mmio_ok(a, width))
            return HWL_ST_BADARG;
        dl = deadline_us((u32)port * HWL_MMIO_WAIT_UNIT_US);
        for (;;) {
            v = mmio_read(width, a);
            if ((v & b) == c) {
                op->c = v;
                return HWL_ST_OK;
            }
            if (port == 0 || expired(dl)) {
                op->c = v;
                return HWL_ST_TIMEOUT;
            }
        }

    case HWL_OP_DELAY:
        delay_us(a);
        return HWL_ST_OK;

    case HWL_OP_IRQ_UNMASK:
    case HWL_OP_IRQ_MASK:
        if (!line_ok(a))
            return HWL_ST_BADARG;
        f = irq_save();
        if (code == HWL_OP_IRQ_MASK)
            pic_mask_line(a);
        else if (!irq_unclaim(a))   /* ends a claim; one left fired stays masked, posted */
            pic_unmask_line(a);
        irq_restore(f);
        return HWL_ST_OK;

    case HWL_OP_IRQ_WAIT:
        if (!line_ok(a))
            return HWL_ST_BADARG;
        op->c = (u32)irq_wait(a, c);
        return op->c ? HWL_ST_OK : HWL_ST_TIMEOUT;

    case HWL_OP_NATIVE_PIO:
    case HWL_OP_NATIVE_DMA:
    case HWL_OP_NATIVE_RAND:
    case HWL_OP_NATIVE_DMA_WRITE:
        if (!range_ok(b, sizeof(struct hwl_native))) {
            op->c = HWL_ST_BADARG;
            return HWL_ST_BADARG;
        }
        if (code == HWL_OP_NATIVE_PIO)
            st = native_pio((volatile struct hwl_native *)b);
        else if (code == HWL_OP_NATIVE_DMA)
            st = native_dma((volatile struct hwl_native *)b);
        else if (code == HWL_OP_NATIVE_DMA_WRITE)
            st = native_dma_write((volatile struct hwl_native *)b);
        else
            st = native_rand((volatile struct hwl_native *)b);
        op->c = st;
        return st;

    case HWL_OP_NATIVE_NIC_TX:
        if (!range_ok(b, sizeof(struct hwl_nic_native))) {
            op->c = HWL_ST_BADARG;
            return HWL_ST_BADARG;
        }
        st = native_nic_tx((volatile struct hwl_nic_native *)b);
        op->c = st;
        return st;

    default:
        return HWL_ST_BADOP;
    }
}

void run_slot(volatile struct hwl_slot *s)
{
    u32 n = s->nops, i, st = HWL_ST_OK, fail = 0;

    if (n == 0 || n > HWL_MAX_OPS) {
        st = HWL_ST_BADARG;
    } else {
        for (i = 0; i < n; i++)     /* claimed before any op can make them fire */
            if (s->ops[i].code == HWL_OP_IRQ_WAIT && line_ok(s->ops[i].a))
                irq_claim(s->ops[i].a);
        for (i = 0; i < n; i++) {
            st = run_op(&s->ops[i]);
            if (st != HWL_ST_OK) {
                fail = i;
                break;
            }
        }
    }
    s->fail_index = fail;
    barrier();
    s->status = st;
}

/* Watched doorbells (abi.h, struct hwl_watch): the gen each entry was last seen
 * armed with and the word's value the stub last acted on. */
static u32 watch_gen[HWL_NWATCH];
static u32 watch_seen[HWL_NWATCH];
static struct hwl_frames frames_copy[HWL_NWATCH]; /* taken at take-up: the kernel's */

static int is_byte_patch(u32 patch)
{
    return patch >= HWL_PATCH_BYTE0 && patch < HWL_PATCH_BYTE0 + HWL_PATCH_BYTES;
}

/* One staged frame's op, patched with its length and slot (abi.h, HWL_PATCH_*). */
static void patch_op(struct hwl_op *op, u32 patch, u32 len, u32 addr)
{
    u32 len4 = (len + 3) & ~3u;

    if (is_byte_patch(patch)) {     /* frames_run checked the frame holds the byte */
        op->a = *(volatile const u8 *)(addr + (patch - HWL_PATCH_BYTE0));
        return;
    }
    switch (patch) {
    case HWL_PATCH_LEN_LO: op->a = len & 0xff; break;
    case HWL_PATCH_LEN_HI: op->a = len >> 8; break;
    case HWL_PATCH_LEN4_LO: op->a = len4 & 0xff; break;
    case HWL_PATCH_LEN4_HI: op->a = len4 >> 8; break;
    case HWL_PATCH_SLOT:
        op->a = op->width ? len4 / op->width : 0;
        op->b = addr;
        break;
    default: break;
    }
}

/* The shortest frame the template's byte patches can take (0: no byte patch). */
static u32 bytes_needed(const struct hwl_frames *f)
{
    u32 j, need = 0;

    for (j = 0; j < f->nops; j++)
        if (is_byte_patch(f->patch[j]) && f->patch[j] - HWL_PATCH_BYTE0 + 1 > need)
            need = f->patch[j] - HWL_PATCH_BYTE0 + 1;
    return need;
}

/* Run the template of watch k for frames from..to-1 (the word's old and new
 * counts), storing the counts at f->done after each; stops early if the watch
 * is re-armed or ended meanwhile. A jump of more than a ring is refused whole. */
static void frames_run(u32 k, volatile struct hwl_watch *w, u32 gen, u32 from, u32 to)
{
    const struct hwl_frames *f = &frames_copy[k];
    volatile u32 *done = (volatile u32 *)f->done;
    volatile const u16 *lens = (volatile const u16 *)f->table;
    u32 i, j, need = bytes_needed(f);

    if (f->nops == 0 || f->nops > HWL_FRAME_OPS || f->slots == 0 || (f->done & 3) ||
        (f->table & 1) || !range_ok(f->done, 8) || !range_ok(f->table, 2ull * f->slots))
        return;                         /* the kernel checked it: never here */
    if (to - from > f->slots) {
        done[1] += to - from;
        done[0] = to;
        return;
    }
    for (i = from; i != to && w->gen == gen; i++) {
        u32 slot = i % f->slots, len = lens[slot];

        if (len == 0 || len > f->max_len || len < need) {
            done[1]++;
        } else {
            for (j = 0; j < f->nops; j++) {
                struct hwl_op op = f->ops[j];

                patch_op(&op, f->patch[j], len, f->base + slot * f->stride);
                if (run_op(&op) != HWL_ST_OK) {
                    done[1]++;
                    break;
                }
            }
        }
        barrier();
        done[0] = i + 1;
    }
}

static int watch_words_ok(volatile struct hwl_watch *w)
{
    return (w->word & 3) == 0 && (w->sleep & 3) == 0 && range_ok(w->word, 4) &&
           (w->sleep == 0 || range_ok(w->sleep, 4));
}

/* Make the write of every watch whose word changed; returns how many rang. */
u32 watch_ring(void)
{
    u32 k, rang = 0;

    for (k = 0; k < HWL_NWATCH; k++) {
        volatile struct hwl_watch *w = &hwl_ctl.watch[k];
        struct hwl_op op;
        u32 gen = w->gen, word, v;

        if (gen == 0) {
            watch_gen[k] = 0;
            continue;
        }
        barrier();
        word = w->word;
        if (!watch_words_ok(w))
            continue;
        if (gen != watch_gen[k]) {      /* armed anew: start from the kernel's value */
            watch_seen[k] = w->base;
            if (w->flags & HWL_WATCH_FRAMES)
                frames_copy[k] = *(const struct hwl_frames *)&hwl_ctl.frames[k];
            barrier();
            if (w->gen != gen)
                continue;               /* re-armed meanwhile: next round */
            watch_gen[k] = gen;
            if (w->sleep)               /* the kernel armed it showing 1: awake now */
                *(volatile u32 *)w->sleep = 0;
        }
        v = *(volatile u32 *)word;
        if (v == watch_seen[k])
            continue;
        if (w->flags & HWL_WATCH_FRAMES) {
            frames_run(k, w, gen, watch_seen[k], v);
            watch_seen[k] = v;
            rang++;
            continue;
        }
        op.code = w->op.code;
        op.width = w->op.width;
        op.port = w->op.port;
        op.a = w->op.a;
        op.b = w->op.b;
        op.c = 0;
        barrier();
        if (w->gen != gen)
            continue;                   /* disarmed or re-armed while read */
        watch_seen[k] = v;
        if (w->flags & HWL_WATCH_VALUE) {
            u32 mask = op.width == 4 ? 0xffffffffu : (1u << (8 * op.width)) - 1u;
            if (op.code == HWL_OP_OUT)
                op.a = v & mask;
            else
                op.b = v & mask;
        }
        if (op.code == HWL_OP_OUT || op.code == HWL_OP_MMIO_WR)
            run_op(&op);
        rang++;
    }
    return rang;
}

/* Store `v` into the sleep word of every armed watch (1 before a halt, 0 after). */
void watch_sleep(u32 v)
{
    u32 k;

    for (k = 0; k < HWL_NWATCH; k++) {
        volatile struct hwl_watch *w = &hwl_ctl.watch[k];

        if (w->gen != 0 && w->sleep != 0 && watch_words_ok(w))
            *(volatile u32 *)w->sleep = v;
    }
}

/* 1 if a watch would ring now (checked after the sleep words are set). */
int watch_due(void)
{
    u32 k;

    for (k = 0; k < HWL_NWATCH; k++) {
        volatile struct hwl_watch *w = &hwl_ctl.watch[k];
        u32 gen = w->gen;

        if (gen == 0 || !watch_words_ok(w))
            continue;
        if (gen != watch_gen[k] || *(volatile u32 *)w->word != watch_seen[k])
            return 1;
    }
    return 0;
}
