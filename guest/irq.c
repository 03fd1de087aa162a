/* irq.c - IDT setup and the C side of exceptions and IRQs (doorbell, IRQ events). */
#include "hw.h"

struct idt_gate {
    u16 off_lo;
    u16 sel;
    u8 zero;
    u8 type;
    u16 off_hi;
} __attribute__((packed));

struct idt_ptr {
    u16 limit;
    u32 base;
} __attribute__((packed));

extern const u32 isr_stub_table[48];

static struct idt_gate idt[48] __attribute__((aligned(8)));

void idt_init(void)
{
    struct idt_ptr p;
    u32 i;

    for (i = 0; i < 48; i++) {
        u32 a = isr_stub_table[i];
        idt[i].off_lo = (u16)a;
        idt[i].sel = 0x08;
        idt[i].zero = 0;
        idt[i].type = 0x8e;         /* present, ring 0, 32-bit interrupt gate */
        idt[i].off_hi = (u16)(a >> 16);
    }
    p.limit = sizeof(idt) - 1;
    p.base = (u32)idt;
    asm volatile("lidt %0" : : "m"(p));
}

static void exception(struct trap_frame *f)
{
    log_puts("hwl-stub: exception ");
    log_dec(f->vector);
    log_puts(" eip=0x");
    log_hex(f->eip);
    log_puts(" err=0x");
    log_hex(f->error);
    log_putc('\n');
    halt_forever();
}

/* Lines the running slot has claimed (IRQ_WAIT), and those of them that fired
 * since their last irq_wait: a claimed line's interrupt is the slot's, not the host's. */
static volatile u16 claimed, caught;

static void post(u32 line);

/* Runs with interrupts disabled (interrupt gate). */
void irq_dispatch(u32 line)
{
    volatile struct hwl_ctl *c = &hwl_ctl;

    if (line == 3) {                /* doorbell from the host */
        com2_drain();
        pic_eoi(3);
        return;
    }
    if (line == 7 || line == 15) {  /* possibly spurious */
        if (!(pic_in_service() & (1u << line))) {
            if (line == 15)
                pic_eoi(2);         /* the master did see the cascade */
            return;
        }
    }
    if (line == 2) {                /* cascade never fires by itself */
        pic_eoi(2);
        return;
    }

    /* The line stays masked until the host (or the slot that claimed it) unmasks it. */
    pic_mask_line(line);
    pic_eoi(line);
    c->irq_count[line]++;
    if (claimed & (1u << line)) {
        caught |= (u16)(1u << line);
        return;
    }
    post(line);
}

/* An event for the host. Call with interrupts disabled. */
static void post(u32 line)
{
    volatile struct hwl_ctl *c = &hwl_ctl;
    u32 h;

    h = c->irq_head;
    c->irq_ring[h % HWL_IRQ_RING] = line;
    barrier();
    c->irq_head = h + 1;
    full_barrier();                 /* publish irq_head before reading host_waiting */
    if (c->host_waiting)
        bell_send(HWL_BELL_IRQ);
}

void irq_claim(u32 line)
{
    u32 f = irq_save();

    claimed |= (u16)(1u << line);
    irq_restore(f);
}

/* Unmasks the line unless it fired already, then waits for it (spinning: the
 * slot holds the stub anyway). The handler masks it again when it fires. */
int irq_wait(u32 line, u32 timeout_us)
{
    u16 bit = (u16)(1u << line);
    u64 dl = deadline_us(timeout_us);
    u32 f = irq_save();

    if (!(caught & bit))
        pic_unmask_line(line);
    irq_restore(f);
    for (;;) {
        f = irq_save();
        if (caught & bit) {
            caught &= (u16)~bit;
            irq_restore(f);
            return 1;
        }
        irq_restore(f);
        if (expired(dl))
            return 0;
        asm volatile("pause");
    }
}

/* Call with interrupts disabled. Returns 1 if the line had fired unconsumed:
 * that interrupt is posted to the host now, and the line stays masked for it. */
int irq_unclaim(u32 line)
{
    u16 bit = (u16)(1u << line);

    claimed &= (u16)~bit;
    if (!(caught & bit))
        return 0;
    caught &= (u16)~bit;
    post(line);
    return 1;
}

void irq_post_unclaimed(void)
{
    u32 line, f;

    if (!claimed)
        return;
    f = irq_save();
    for (line = 0; line < 16; line++)
        if (claimed & (1u << line))
            irq_unclaim(line);
    irq_restore(f);
}

void trap_handler(struct trap_frame *f)
{
    if (f->vector < 32)
        exception(f);
    else if (f->vector < 48)
        irq_dispatch(f->vector - 32);
}
