/* hw.h - port I/O, CPU helpers and the stub's internal interfaces. */
#ifndef HWL_HW_H
#define HWL_HW_H

#include "abi.h"

/* ---- CPU primitives ---------------------------------------------------- */

static inline void outb(u16 port, u8 v) { asm volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { asm volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { asm volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }

static inline u8 inb(u16 port)
{
    u8 v;
    asm volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline u16 inw(u16 port)
{
    u16 v;
    asm volatile("inw %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline u32 inl(u16 port)
{
    u32 v;
    asm volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline u64 rdtsc(void)
{
    u64 v;
    asm volatile("rdtsc" : "=A"(v));
    return v;
}

/* Compiler barrier: keeps the compiler from moving memory accesses across it.
 * x86 keeps stores ordered with stores and loads with loads on its own. */
static inline void barrier(void) { asm volatile("" ::: "memory"); }

/* Full barrier (store -> load ordering) against the host's CPU, where the
 * accelerator keeps it: QEMU 7.2's TCG with one vCPU emits no host fence for a
 * guest fence and makes a locked instruction a plain load and store (the
 * ordering matters there only between vCPUs), so the host may see this side's
 * store after its later load. Callers whose host side polls on a timeout use it;
 * where a lost wake-up would last, use host_fence(). */
static inline void full_barrier(void) { asm volatile("lock; addl $0, (%%esp)" ::: "memory", "cc"); }

/* A store -> load fence that holds under TCG too: a write to the POST port
 * (0x80, a device that ignores it in QEMU's pc machine) runs in a helper that
 * takes QEMU's global lock, a locked instruction on the host, which drains this
 * vCPU's earlier stores before its later loads. About a microsecond: for the
 * halt path, not for each request. */
static inline void host_fence(void) { outb(0x80, 0); }

static inline void cli(void) { asm volatile("cli" ::: "memory"); }
static inline void sti(void) { asm volatile("sti" ::: "memory"); }

/* Disable interrupts and return the previous EFLAGS for irq_restore(). */
static inline u32 irq_save(void)
{
    u32 f;
    asm volatile("pushfl; popl %0; cli" : "=r"(f) : : "memory");
    return f;
}

static inline void irq_restore(u32 f)
{
    if (f & 0x200)
        sti();
}

static inline void halt_forever(void)
{
    for (;;)
        asm volatile("cli; hlt" ::: "memory");
}

/* ---- shared state (stub.c) --------------------------------------------- */

extern volatile struct hwl_ctl hwl_ctl;
extern volatile struct hwl_slot hwl_slots[HWL_NSLOTS];
extern u32 stub_free_base;   /* authoritative copies of what ctl advertises */
extern u32 stub_ram_bytes;

/* 1 if [addr, addr + len) lies inside [free_base, ram_bytes). */
int range_ok(u32 addr, u64 len);

/* ---- serial.c ---------------------------------------------------------- */

void serial_init(void);
void log_putc(char c);
void log_puts(const char *s);
void log_dec(u32 v);
void log_hex(u32 v);
void bell_send(u8 byte);     /* call with interrupts disabled */
void com2_drain(void);

/* ---- pic.c ------------------------------------------------------------- */

void pic_init(void);
void pic_mask_line(u32 line);     /* call with interrupts disabled */
void pic_unmask_line(u32 line);   /* call with interrupts disabled */
void pic_eoi(u32 line);
u16 pic_in_service(void);         /* master ISR in bits 0..7, slave in 8..15 */

/* ---- irq.c ----------------------------------------------------- */

struct trap_frame {
    u32 edi, esi, ebp, esp, ebx, edx, ecx, eax;  /* pushal */
    u32 vector, error;
    u32 eip, cs, eflags;
};

void idt_init(void);
void trap_handler(struct trap_frame *f);
void irq_dispatch(u32 line);
void irq_claim(u32 line);               /* the running slot takes the line's interrupts */
int irq_wait(u32 line, u32 timeout_us); /* 1 once a claimed line fired, 0 on timeout */
int irq_unclaim(u32 line);              /* later interrupts go to the host again */
void irq_post_unclaimed(void);          /* the slot ended: hand what it left to the host */

/* ---- tsc.c ------------------------------------------------------------- */

extern u32 tsc_khz;
extern u32 tsc_per_us;

void tsc_calibrate(void);
u64 deadline_us(u32 us);                /* rdtsc() + us microseconds */
static inline int expired(u64 deadline) { return rdtsc() >= deadline; }
void delay_us(u32 us);

/* ---- ops.c / native_ata.c ---------------------------------------------- */

void run_slot(volatile struct hwl_slot *s);
u32 watch_ring(void);
void watch_sleep(u32 v);
int watch_due(void);
u32 native_pio(volatile struct hwl_native *n);
u32 native_dma(volatile struct hwl_native *n);
u32 native_dma_write(volatile struct hwl_native *n);
u32 native_rand(volatile struct hwl_native *n);

/* ---- native_nic.c ------------------------------------------------------ */

u32 native_nic_tx(volatile struct hwl_nic_native *n);

#endif
