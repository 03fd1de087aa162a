/* native_nic.c - the native NIC transmit loop: `count` copies of one frame through
 * ne2k_pci, rtl8139 (C+ descriptors) or e1000, polled, the device's interrupts
 * masked. It is the physical limit `hwl bench nic` divides the driver's rate by.
 *
 * Each kind is set up from scratch with only what TX needs, so the loop can run
 * on a NIC in any state a driver left it in. TX is synchronous in QEMU's three
 * models (the frame has left when the triggering write returns), so every wait
 * below is satisfied at its first check; the waits are there to catch a device
 * that did not send (bus mastering off, a wrong base), which ends the loop with
 * HWL_ST_DEVERR or HWL_ST_TIMEOUT instead of a rate for frames never sent. */
#include "hw.h"

#define WAIT_US 2000000u            /* 2 s per wait */
#define RING_DESCS 64u              /* descriptors in the ring block (1 KiB) */

/* ---- ne2k_pci (DP8390 core, hw/net/ne2000.c) ---------------------------- */
#define NE_CR 0x00
#define NE_PSTART 0x01
#define NE_PSTOP 0x02
#define NE_BNRY 0x03
#define NE_TPSR 0x04
#define NE_TBCR0 0x05
#define NE_TBCR1 0x06
#define NE_ISR 0x07
#define NE_RSAR0 0x08
#define NE_RSAR1 0x09
#define NE_RBCR0 0x0a
#define NE_RBCR1 0x0b
#define NE_RCR 0x0c
#define NE_TCR 0x0d
#define NE_DCR 0x0e
#define NE_IMR 0x0f
#define NE_DATA 0x10
#define NE_RESET 0x1f

#define NE_CR_STOP 0x01
#define NE_CR_START 0x02
#define NE_CR_TRANS 0x04
#define NE_CR_RWRITE 0x10
#define NE_CR_NODMA 0x20
#define NE_CR_PAGE1 0x40
#define NE_CURR 0x07                /* page 1 */
#define NE_ISR_PTX 0x02
#define NE_ISR_RDC 0x40
#define NE_DCR_WTS_LS_FT1 0x49      /* word transfers, normal mode, FIFO threshold 8 */
#define NE_TX_PAGE 0x40             /* NIC memory starts at page 0x40; a 1514-byte frame
                                       takes 6 pages, the RX ring starts after them */
#define NE_RX_START 0x46
#define NE_RX_STOP 0x80

/* ---- rtl8139 C+ (hw/net/rtl8139.c) ------------------------------------- */
#define RTL_TXADDR0 0x20            /* C+: TX ring address, low then high dword */
#define RTL_CR 0x37
#define RTL_IMR 0x3c
#define RTL_ISR 0x3e
#define RTL_TXPOLL 0xd9
#define RTL_CPCMD 0xe0

#define RTL_CR_RST 0x10
#define RTL_CR_TE 0x04
#define RTL_CPCMD_TXENB 0x0001
#define RTL_TXPOLL_NPQ 0x40         /* normal priority queue: send every owned descriptor */
#define RTL_OWN 0x80000000u
#define RTL_EOR 0x40000000u
#define RTL_FS 0x20000000u
#define RTL_LS 0x10000000u

/* ---- e1000 (82540EM, hw/net/e1000.c; BAR0 MMIO, 32-bit accesses) ------- */
#define E1K_ICR 0x00c0
#define E1K_IMC 0x00d8
#define E1K_TCTL 0x0400
#define E1K_TDBAL 0x3800
#define E1K_TDBAH 0x3804
#define E1K_TDLEN 0x3808
#define E1K_TDH 0x3810
#define E1K_TDT 0x3818
#define E1K_MMIO_SPAN 0x4000u       /* registers this loop touches lie below this offset */

#define E1K_TCTL_EN 0x00000002u
#define E1K_TCTL_PSP 0x00000008u
#define E1K_CMD_EOP 0x01u
#define E1K_CMD_IFCS 0x02u
#define E1K_CMD_RS 0x08u
#define E1K_STA_DD 0x01u

struct loop {
    volatile struct hwl_nic_native *n;
    u32 io, mmio, frame, len, ring, count, batch;
    u64 t0;
};

static u32 finish(struct loop *l, u32 st, u32 done)
{
    u64 el = l->t0 ? rdtsc() - l->t0 : 0;

    l->n->done = done;
    l->n->tsc_elapsed = el;
    barrier();
    l->n->status = st;
    return st;
}

/* Exactly one 32-bit access: e1000 registers take no other width. */
static inline u32 e1k_rd(u32 base, u32 reg) { return *(volatile u32 *)(base + reg); }
static inline void e1k_wr(u32 base, u32 reg, u32 v) { *(volatile u32 *)(base + reg) = v; }

/* ne2k: wait until ISR shows `bit`, then acknowledge it (ISR is write-1-to-clear). */
static u32 ne_wait_isr(u16 io, u8 bit)
{
    u64 dl = deadline_us(WAIT_US);

    while (!(inb(io + NE_ISR) & bit))
        if (expired(dl))
            return HWL_ST_TIMEOUT;
    outb(io + NE_ISR, bit);
    return HWL_ST_OK;
}

static u32 tx_ne2k(struct loop *l)
{
    u16 io = (u16)l->io;
    u32 len4 = (l->len + 3) & ~3u, done, st;
    void *p = (void *)l->frame;
    u32 dwords = len4 / 4;

    (void)inb(io + NE_RESET);                       /* a read of the reset port resets */
    outb(io + NE_RESET, 0);
    outb(io + NE_CR, NE_CR_STOP | NE_CR_NODMA);     /* page 0, stopped */
    outb(io + NE_DCR, NE_DCR_WTS_LS_FT1);
    outb(io + NE_RBCR0, 0);
    outb(io + NE_RBCR1, 0);
    outb(io + NE_IMR, 0);                           /* polled: no interrupt sources */
    outb(io + NE_ISR, 0xff);
    outb(io + NE_RCR, 0x20);                        /* monitor: accept nothing into the ring */
    outb(io + NE_TCR, 0);                           /* normal, not loopback */
    outb(io + NE_PSTART, NE_RX_START);
    outb(io + NE_PSTOP, NE_RX_STOP);
    outb(io + NE_BNRY, NE_RX_START);
    outb(io + NE_CR, NE_CR_STOP | NE_CR_NODMA | NE_CR_PAGE1);
    outb(io + NE_CURR, NE_RX_START);                /* a stray frame lands in the RX ring, */
    outb(io + NE_CR, NE_CR_START | NE_CR_NODMA);    /* never on the TX page or the PROM */

    l->t0 = rdtsc();
    for (done = 0; done < l->count; done++) {
        /* Each frame goes into NIC memory by remote DMA through the data port
         * (32-bit accesses move 4 bytes whatever DCR says), as a driver must
         * move every new frame: the card has no DMA of its own. */
        p = (void *)l->frame;
        dwords = len4 / 4;
        outb(io + NE_RBCR0, (u8)len4);
        outb(io + NE_RBCR1, (u8)(len4 >> 8));
        outb(io + NE_RSAR0, 0);
        outb(io + NE_RSAR1, NE_TX_PAGE);
        outb(io + NE_CR, NE_CR_RWRITE | NE_CR_START);
        asm volatile("rep outsl" : "+S"(p), "+c"(dwords) : "d"(io + NE_DATA) : "memory");
        st = ne_wait_isr(io, NE_ISR_RDC);
        if (st != HWL_ST_OK)
            return finish(l, st, done);
        outb(io + NE_TPSR, NE_TX_PAGE);
        outb(io + NE_TBCR0, (u8)l->len);
        outb(io + NE_TBCR1, (u8)(l->len >> 8));
        outb(io + NE_CR, NE_CR_TRANS | NE_CR_START | NE_CR_NODMA);
        st = ne_wait_isr(io, NE_ISR_PTX);
        if (st != HWL_ST_OK)
            return finish(l, st, done);
    }
    st = finish(l, HWL_ST_OK, done);
    outb(io + NE_CR, NE_CR_STOP | NE_CR_NODMA);
    return st;
}

static u32 tx_rtl8139(struct loop *l)
{
    u16 io = (u16)l->io;
    volatile u32 *d = (volatile u32 *)l->ring;      /* 16-byte descriptors: 4 dwords */
    u32 done = 0, k, i, st = HWL_ST_OK;
    u64 dl = deadline_us(WAIT_US);

    outb(io + RTL_CR, RTL_CR_RST);                  /* also leaves C+ mode, IMR = 0 */
    while (inb(io + RTL_CR) & RTL_CR_RST)
        if (expired(dl))
            return finish(l, HWL_ST_TIMEOUT, 0);
    outw(io + RTL_IMR, 0);
    outw(io + RTL_CPCMD, RTL_CPCMD_TXENB);          /* latches C+ mode until a reset */
    outl(io + RTL_TXADDR0, l->ring);
    outl(io + RTL_TXADDR0 + 4, 0);
    outb(io + RTL_CR, RTL_CR_TE);                   /* next descriptor: 0 */
    for (i = 0; i < RING_DESCS; i++) {
        d[4 * i] = 0;
        d[4 * i + 1] = 0;
        d[4 * i + 2] = l->frame;
        d[4 * i + 3] = 0;
    }

    /* Each batch fills descriptors 0..k-1, EOR on the last, so the device's next
     * descriptor is 0 again when the batch has gone. */
    l->t0 = rdtsc();
    while (done < l->count) {
        k = l->count - done < l->batch ? l->count - done : l->batch;
        for (i = 0; i < k; i++)
            d[4 * i] = RTL_OWN | RTL_FS | RTL_LS | (i == k - 1 ? RTL_EOR : 0) | l->len;
        full_barrier();
        outb(io + RTL_TXPOLL, RTL_TXPOLL_NPQ);
        barrier();
        for (i = 0; i < k; i++)
            if (d[4 * i] & RTL_OWN)
                break;
        if (i < k) {                                /* the device did not take them */
            st = HWL_ST_DEVERR;
            done += i;
            break;
        }
        done += k;
    }
    finish(l, st, done);
    outw(io + RTL_ISR, 0xffff);
    outb(io + RTL_CR, RTL_CR_RST);                  /* out of C+ mode for the next driver */
    return st;
}

static u32 tx_e1000(struct loop *l)
{
    u32 m = l->mmio, done = 0, k, i, tdt = 0, st = HWL_ST_OK;
    volatile u32 *d = (volatile u32 *)l->ring;      /* legacy descriptors: 4 dwords */

    e1k_wr(m, E1K_IMC, 0xffffffffu);
    e1k_wr(m, E1K_TCTL, 0);
    (void)e1k_rd(m, E1K_ICR);                       /* read-to-clear */
    for (i = 0; i < RING_DESCS; i++) {
        d[4 * i] = l->frame;                        /* buffer address, low then high */
        d[4 * i + 1] = 0;
        d[4 * i + 2] = l->len | (E1K_CMD_EOP | E1K_CMD_IFCS | E1K_CMD_RS) << 24;
        d[4 * i + 3] = 0;                           /* status (DD), css, special */
    }
    full_barrier();
    e1k_wr(m, E1K_TDBAL, l->ring);
    e1k_wr(m, E1K_TDBAH, 0);
    e1k_wr(m, E1K_TDLEN, RING_DESCS * 16);
    e1k_wr(m, E1K_TDH, 0);
    e1k_wr(m, E1K_TDT, 0);
    e1k_wr(m, E1K_TCTL, E1K_TCTL_EN | E1K_TCTL_PSP);

    /* Per batch, one TDT write; DD, written back because of RS, shows each went. */
    l->t0 = rdtsc();
    while (done < l->count) {
        k = l->count - done < l->batch ? l->count - done : l->batch;
        for (i = 0; i < k; i++)
            d[4 * ((tdt + i) % RING_DESCS) + 3] = 0;
        full_barrier();
        tdt = (tdt + k) % RING_DESCS;
        e1k_wr(m, E1K_TDT, tdt);
        barrier();
        for (i = 0; i < k; i++)
            if (!(d[4 * ((tdt + RING_DESCS - k + i) % RING_DESCS) + 3] & E1K_STA_DD))
                break;
        if (i < k) {                                /* not sent (bus mastering off?) */
            st = HWL_ST_DEVERR;
            done += i;
            break;
        }
        done += k;
    }
    finish(l, st, done);
    e1k_wr(m, E1K_TCTL, 0);
    (void)e1k_rd(m, E1K_ICR);
    return st;
}

u32 native_nic_tx(volatile struct hwl_nic_native *n)
{
    struct loop l;
    u32 max_batch;

    l.n = n;
    l.io = n->io_base;
    l.mmio = n->mmio_base;
    l.frame = n->frame;
    l.len = n->length;
    l.ring = n->ring;
    l.count = n->count;
    l.batch = n->batch ? n->batch : 1;
    l.t0 = 0;
    n->done = 0;
    n->tsc_elapsed = 0;

    max_batch = n->kind == HWL_NIC_E1000 ? RING_DESCS - 1 : RING_DESCS;
    if (l.len < 60 || l.len > 1514 || !range_ok(l.frame, (l.len + 3) & ~3u) ||
        l.batch > max_batch)
        return finish(&l, HWL_ST_BADARG, 0);
    if (n->kind != HWL_NIC_NE2K &&
        ((l.ring & 0xff) || !range_ok(l.ring, RING_DESCS * 16)))
        return finish(&l, HWL_ST_BADARG, 0);

    switch (n->kind) {
    case HWL_NIC_NE2K:
        if (l.io == 0 || l.io > 0xffff - 0x1f)
            return finish(&l, HWL_ST_BADARG, 0);
        return tx_ne2k(&l);
    case HWL_NIC_RTL8139:
        if (l.io == 0 || l.io > 0xffff - 0xff)
            return finish(&l, HWL_ST_BADARG, 0);
        return tx_rtl8139(&l);
    case HWL_NIC_E1000:
        /* device memory only: never RAM, the stub's own included */
        if (l.mmio < stub_ram_bytes || (l.mmio & 0xfff) ||
            (u64)l.mmio + E1K_MMIO_SPAN > 0x100000000ull)
            return finish(&l, HWL_ST_BADARG, 0);
        return tx_e1000(&l);
    default:
        return finish(&l, HWL_ST_BADARG, 0);
    }
}
