/* native_ata.c - the native ATA benchmark loops (PIO READ MULTIPLE, READ / WRITE DMA EXT,
 * random READ DMA). */
#include "hw.h"

/* ATA status bits */
#define ST_BSY 0x80
#define ST_DRDY 0x40
#define ST_DF 0x20
#define ST_DRQ 0x08
#define ST_ERR 0x01

/* ATA commands */
#define CMD_READ_MULTIPLE 0xc4
#define CMD_SET_MULTIPLE 0xc6
#define CMD_READ_DMA 0xc8
#define CMD_READ_DMA_EXT 0x25
#define CMD_WRITE_DMA 0xca
#define CMD_WRITE_DMA_EXT 0x35

/* PIIX bus master */
#define BM_CMD 0
#define BM_STATUS 2
#define BM_PRD 4
#define BM_START 0x01
#define BM_READ 0x08                /* direction: device -> memory (clear: memory -> device) */
#define BM_ST_ACTIVE 0x01
#define BM_ST_ERR 0x02
#define BM_ST_INT 0x04

#define WAIT_US 2000000u            /* 2 s per wait */
#define PRD_EOT 0x80000000u

struct chan {
    u16 cmd, ctl, bm;
    u8 drv;                         /* drive << 4 */
    u8 st;                          /* last ATA status read */
};

/* Wait until BSY clears; with need_drq also until DRQ, ERR or DF is set.
 * Then ERR/DF give HWL_ST_DEVERR. */
static u32 ata_wait(struct chan *ch, int need_drq)
{
    u64 dl = deadline_us(WAIT_US);

    for (;;) {
        u8 st = inb(ch->cmd + 7);
        ch->st = st;
        if (!(st & ST_BSY) && (!need_drq || (st & (ST_DRQ | ST_ERR | ST_DF))))
            return (st & (ST_ERR | ST_DF)) ? HWL_ST_DEVERR : HWL_ST_OK;
        if (expired(dl))
            return HWL_ST_TIMEOUT;
    }
}

/* Before a command: wait until the drive is not busy. ERR may still be set
 * from the previous command; the new command clears it. */
static u32 ata_wait_idle(struct chan *ch)
{
    u32 st = ata_wait(ch, 0);

    return st == HWL_ST_DEVERR ? HWL_ST_OK : st;
}

static void chan_load(struct chan *ch, volatile struct hwl_native *n)
{
    ch->cmd = n->cmd_base;
    ch->ctl = n->ctl_base;
    ch->bm = n->bm_base;
    ch->drv = (u8)((n->drive & 1) << 4);
    ch->st = 0;
}

static u32 finish(volatile struct hwl_native *n, struct chan *ch, u32 st, u32 done, u64 t0)
{
    u64 el = rdtsc() - t0;

    n->ata_status = ch->st | ((u32)inb(ch->cmd + 1) << 8);
    n->done = done;
    n->tsc_elapsed = el;
    barrier();
    n->status = st;
    return st;
}

/* One bus-master command. lba48: READ / WRITE DMA EXT, else READ / WRITE DMA
 * (LBA28); write: memory -> device. nsect 65536 (LBA48) / 256 (LBA28) is
 * written as 0. */
static u32 dma_cmd(struct chan *ch, u32 prd, int lba48, int write, u64 lba, u32 nsect)
{
    u8 dir = write ? 0 : BM_READ;
    u64 dl;
    u8 bs;
    u32 st;

    outb(ch->bm + BM_CMD, dir);                     /* stop */
    bs = inb(ch->bm + BM_STATUS);
    outb(ch->bm + BM_STATUS, (u8)((bs & 0x60) | BM_ST_ERR | BM_ST_INT));
    outl(ch->bm + BM_PRD, prd);

    if (lba48) {
        outb(ch->cmd + 6, (u8)(0x40 | ch->drv));
        st = ata_wait_idle(ch);
        if (st != HWL_ST_OK)
            return st;
        outb(ch->cmd + 2, (u8)(nsect >> 8));
        outb(ch->cmd + 3, (u8)(lba >> 24));
        outb(ch->cmd + 4, (u8)(lba >> 32));
        outb(ch->cmd + 5, (u8)(lba >> 40));
        outb(ch->cmd + 2, (u8)nsect);
        outb(ch->cmd + 3, (u8)lba);
        outb(ch->cmd + 4, (u8)(lba >> 8));
        outb(ch->cmd + 5, (u8)(lba >> 16));
        outb(ch->cmd + 7, write ? CMD_WRITE_DMA_EXT : CMD_READ_DMA_EXT);
    } else {
        outb(ch->cmd + 6, (u8)(0xe0 | ch->drv | ((u32)(lba >> 24) & 0x0f)));
        st = ata_wait_idle(ch);
        if (st != HWL_ST_OK)
            return st;
        outb(ch->cmd + 2, (u8)nsect);
        outb(ch->cmd + 3, (u8)lba);
        outb(ch->cmd + 4, (u8)(lba >> 8));
        outb(ch->cmd + 5, (u8)(lba >> 16));
        outb(ch->cmd + 7, write ? CMD_WRITE_DMA : CMD_READ_DMA);
    }
    outb(ch->bm + BM_CMD, (u8)(dir | BM_START));

    dl = deadline_us(WAIT_US);
    for (;;) {
        bs = inb(ch->bm + BM_STATUS);
        if (bs & (BM_ST_INT | BM_ST_ERR))
            break;
        if (expired(dl)) {
            outb(ch->bm + BM_CMD, dir);
            ch->st = inb(ch->cmd + 7);
            return HWL_ST_TIMEOUT;
        }
    }
    outb(ch->bm + BM_CMD, dir);                     /* stop */
    ch->st = inb(ch->cmd + 7);                      /* also clears INTRQ */
    if ((ch->st & (ST_ERR | ST_DF)) || (bs & BM_ST_ERR))
        return HWL_ST_DEVERR;
    return HWL_ST_OK;
}

u32 native_pio(volatile struct hwl_native *n)
{
    struct chan ch;
    u32 lba = n->lba, count = n->count, buf = n->buf, mult = n->multiple;
    u32 done = 0, st;
    u64 t0 = rdtsc();

    chan_load(&ch, n);
    if (mult == 0 || (u64)lba + count > (1ull << 28) ||
        (count && !range_ok(buf, (u64)(count < 256 ? count : 256) * 512)))
        return finish(n, &ch, HWL_ST_BADARG, 0, t0);

    outb(ch.ctl, 0x00);                             /* nIEN clear */
    outb(ch.cmd + 6, (u8)(0xe0 | ch.drv));
    st = ata_wait_idle(&ch);
    if (st != HWL_ST_OK)
        return finish(n, &ch, st, 0, t0);
    outb(ch.cmd + 2, (u8)mult);
    outb(ch.cmd + 7, CMD_SET_MULTIPLE);
    st = ata_wait(&ch, 0);
    if (st != HWL_ST_OK)
        return finish(n, &ch, st, 0, t0);

    while (done < count) {
        u32 k = count - done < 256 ? count - done : 256;
        u32 l = lba + done, left = k, dst = buf;

        outb(ch.cmd + 6, (u8)(0xe0 | ch.drv | ((l >> 24) & 0x0f)));
        outb(ch.cmd + 2, (u8)k);
        outb(ch.cmd + 3, (u8)l);
        outb(ch.cmd + 4, (u8)(l >> 8));
        outb(ch.cmd + 5, (u8)(l >> 16));
        outb(ch.cmd + 7, CMD_READ_MULTIPLE);
        while (left) {
            u32 b = left < mult ? left : mult;
            u32 dwords = b * 128;
            void *p = (void *)dst;

            st = ata_wait(&ch, 1);
            if (st == HWL_ST_OK && !(ch.st & ST_DRQ))
                st = HWL_ST_DEVERR;
            if (st != HWL_ST_OK)
                return finish(n, &ch, st, done, t0);
            asm volatile("rep insl" : "+D"(p), "+c"(dwords) : "d"(ch.cmd) : "memory");
            dst += b * 512;
            left -= b;
        }
        st = ata_wait(&ch, 0);
        if (st != HWL_ST_OK)
            return finish(n, &ch, st, done, t0);
        done += k;
    }
    return finish(n, &ch, HWL_ST_OK, done, t0);
}

/* `count` sequential DMA commands of `sectors` sectors from lba, into buf (write: from buf). */
static u32 dma_loop(volatile struct hwl_native *n, int write)
{
    struct chan ch;
    u32 lba = n->lba, count = n->count, sectors = n->sectors;
    u32 buf = n->buf, prd = n->prd;
    u32 bytes, nprd, i, done = 0, st;
    volatile u32 *t = (volatile u32 *)prd;
    u64 t0 = rdtsc();

    chan_load(&ch, n);
    if (sectors == 0 || sectors > 65536)
        return finish(n, &ch, HWL_ST_BADARG, 0, t0);
    bytes = sectors * 512;
    nprd = (bytes + 0xffff) >> 16;
    if ((buf & 0xffff) || (prd & 0xfff) || !range_ok(buf, bytes) ||
        !range_ok(prd, (u64)nprd * 8) ||
        (u64)lba + (u64)count * sectors > (1ull << 48))
        return finish(n, &ch, HWL_ST_BADARG, 0, t0);

    for (i = 0; i < nprd; i++) {
        u32 len = bytes - (i << 16);
        t[2 * i] = buf + (i << 16);
        t[2 * i + 1] = (len >= 0x10000 ? 0 : len) | (i == nprd - 1 ? PRD_EOT : 0);
    }
    barrier();

    outb(ch.ctl, 0x00);                             /* nIEN clear, else no BM interrupt bit */
    for (done = 0; done < count; done++) {
        st = dma_cmd(&ch, prd, 1, write, (u64)lba + (u64)done * sectors, sectors);
        if (st != HWL_ST_OK)
            return finish(n, &ch, st, done, t0);
    }
    return finish(n, &ch, HWL_ST_OK, done, t0);
}

u32 native_dma(volatile struct hwl_native *n)
{
    return dma_loop(n, 0);
}

u32 native_dma_write(volatile struct hwl_native *n)
{
    return dma_loop(n, 1);
}

u32 native_rand(volatile struct hwl_native *n)
{
    struct chan ch;
    u32 lba = n->lba, count = n->count, span = n->span, r = n->seed;
    u32 buf = n->buf, prd = n->prd;
    u32 done, st;
    volatile u32 *t = (volatile u32 *)prd;
    u64 t0 = rdtsc();

    chan_load(&ch, n);
    if (span == 0 || (buf & 1) || (buf & 0xffff) + 4096 > 0x10000 ||
        (prd & 0xfff) || !range_ok(buf, 4096) || !range_ok(prd, 8) ||
        (u64)lba + 8 * (u64)span > (1ull << 28))
        return finish(n, &ch, HWL_ST_BADARG, 0, t0);

    t[0] = buf;
    t[1] = 4096 | PRD_EOT;
    barrier();

    outb(ch.ctl, 0x00);
    for (done = 0; done < count; done++) {
        r = r * 1664525u + 1013904223u;
        st = dma_cmd(&ch, prd, 0, 0, lba + 8 * ((r >> 8) % span), 8);
        if (st != HWL_ST_OK)
            return finish(n, &ch, st, done, t0);
    }
    return finish(n, &ch, HWL_ST_OK, done, t0);
}
