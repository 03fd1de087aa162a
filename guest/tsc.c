/* tsc.c - TSC calibration against PIT channel 2, microsecond delays and deadlines. */
#include "hw.h"

#define PIT_CH2 0x42
#define PIT_CMD 0x43
#define PORT_B 0x61

#define CAL_LATCH 11932u            /* 1193182 Hz * 10 ms */
#define CAL_MS 10u

u32 tsc_khz;
u32 tsc_per_us;                     /* ceil(tsc_khz / 1000): deadlines never come early */

static u64 measure_10ms(void)
{
    u64 t0, t1;

    outb(PORT_B, (u8)((inb(PORT_B) & ~0x02) | 0x01));   /* gate on, speaker off */
    outb(PIT_CMD, 0xb0);            /* channel 2, lo/hi byte, mode 0, binary */
    outb(PIT_CH2, CAL_LATCH & 0xff);
    outb(PIT_CH2, CAL_LATCH >> 8);
    t0 = rdtsc();
    while (!(inb(PORT_B) & 0x20))
        ;
    t1 = rdtsc();
    return t1 - t0;
}

void tsc_calibrate(void)
{
    u64 ticks, best = ~0ull;
    int i;

    /* Take the shortest of three runs: an emulator hiccup only makes one longer. */
    for (i = 0; i < 3; i++) {
        ticks = measure_10ms();
        if (ticks < best)
            best = ticks;
    }
    if (best >> 32) {
        log_puts("hwl-stub: TSC calibration out of range\n");
        halt_forever();
    }
    tsc_khz = (u32)best / CAL_MS;
    if (tsc_khz == 0)
        tsc_khz = 1;
    tsc_per_us = (tsc_khz + 999u) / 1000u;
}

u64 deadline_us(u32 us)
{
    return rdtsc() + (u64)us * tsc_per_us;
}

void delay_us(u32 us)
{
    u64 dl = deadline_us(us);

    while (!expired(dl))
        ;
}
