/* serial.c - COM1 polled log output and COM2 doorbells (RX interrupt, TX bells). */
#include "hw.h"

#define COM1 0x3f8
#define COM2 0x2f8

/* UART register offsets */
#define RBR 0   /* receive buffer (read) / transmit holding (write) */
#define IER 1
#define FCR 2
#define LCR 3
#define MCR 4
#define LSR 5
#define MSR 6

#define LSR_DR 0x01
#define LSR_THRE 0x20

static void uart_setup(u16 base, u8 ier, u8 mcr)
{
    outb(base + IER, 0x00);
    outb(base + LCR, 0x80);         /* DLAB */
    outb(base + 0, 1);              /* divisor 1 = 115200 baud */
    outb(base + 1, 0);
    outb(base + LCR, 0x03);         /* 8N1 */
    outb(base + FCR, 0x07);         /* FIFO on, clear both, RX trigger at 1 byte */
    outb(base + MCR, mcr);
    while (inb(base + LSR) & LSR_DR)
        (void)inb(base + RBR);
    (void)inb(base + 2);            /* IIR */
    (void)inb(base + MSR);
    outb(base + IER, ier);
}

void serial_init(void)
{
    uart_setup(COM1, 0x00, 0x03);   /* DTR | RTS, polled */
    uart_setup(COM2, 0x01, 0x0B);   /* RX data interrupt, DTR | RTS | OUT2 */
}

void log_putc(char c)
{
    u32 n = 1000000;                /* bounded: a stuck UART must not hang the stub */

    if (c == '\n')
        log_putc('\r');
    while (!(inb(COM1 + LSR) & LSR_THRE) && --n)
        ;
    outb(COM1 + RBR, (u8)c);
}

void log_puts(const char *s)
{
    while (*s)
        log_putc(*s++);
}

void log_dec(u32 v)
{
    char buf[11];
    int i = 0;

    do {
        buf[i++] = (char)('0' + v % 10u);
        v /= 10u;
    } while (v);
    while (i)
        log_putc(buf[--i]);
}

void log_hex(u32 v)
{
    static const char digits[] = "0123456789abcdef";
    int shift = 28;

    while (shift > 0 && !(v >> shift))
        shift -= 4;
    for (; shift >= 0; shift -= 4)
        log_putc(digits[(v >> shift) & 0xf]);
}

/* Send one doorbell byte on COM2 and count it. Interrupts must be off (the
 * IRQ handler sends bells too). Gives up after ~1 ms if the UART stays busy. */
void bell_send(u8 byte)
{
    u64 dl = deadline_us(1000);

    while (!(inb(COM2 + LSR) & LSR_THRE))
        if (expired(dl))
            return;
    outb(COM2 + RBR, byte);
    hwl_ctl.bells_sent++;
}

/* Read and discard everything the host sent: the byte itself is the doorbell. */
void com2_drain(void)
{
    u32 n = 64;

    while ((inb(COM2 + LSR) & LSR_DR) && n--)
        (void)inb(COM2 + RBR);
}
