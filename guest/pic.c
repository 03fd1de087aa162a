/* pic.c - 8259A pair: remap to 0x20/0x28, shadow mask mirrored into hwl_ctl.irq_mask. */
#include "hw.h"

#define PIC1_CMD 0x20
#define PIC1_DATA 0x21
#define PIC2_CMD 0xa0
#define PIC2_DATA 0xa1

static u16 shadow_mask = 0xffff;

static void pic_write_mask(void)
{
    outb(PIC1_DATA, (u8)shadow_mask);
    outb(PIC2_DATA, (u8)(shadow_mask >> 8));
    hwl_ctl.irq_mask = shadow_mask;
}

void pic_init(void)
{
    outb(PIC1_DATA, 0xff);          /* mask everything while reprogramming */
    outb(PIC2_DATA, 0xff);

    outb(PIC1_CMD, 0x11);           /* ICW1: edge, cascade, ICW4 follows */
    outb(PIC2_CMD, 0x11);
    outb(PIC1_DATA, 0x20);          /* ICW2: vector base */
    outb(PIC2_DATA, 0x28);
    outb(PIC1_DATA, 0x04);          /* ICW3: slave on IRQ2 */
    outb(PIC2_DATA, 0x02);          /* ICW3: slave identity */
    outb(PIC1_DATA, 0x01);          /* ICW4: 8086 mode, normal EOI */
    outb(PIC2_DATA, 0x01);

    shadow_mask = (u16)~((1u << 2) | (1u << 3));  /* cascade + COM2 doorbell */
    pic_write_mask();
}

void pic_mask_line(u32 line)
{
    shadow_mask |= (u16)(1u << line);
    pic_write_mask();
}

void pic_unmask_line(u32 line)
{
    shadow_mask &= (u16)~(1u << line);
    if (line >= 8)
        shadow_mask &= (u16)~(1u << 2);
    pic_write_mask();
}

void pic_eoi(u32 line)
{
    if (line >= 8)
        outb(PIC2_CMD, 0x20);
    outb(PIC1_CMD, 0x20);
}

u16 pic_in_service(void)
{
    u16 isr;

    outb(PIC1_CMD, 0x0b);           /* OCW3: read ISR */
    outb(PIC2_CMD, 0x0b);
    isr = (u16)(inb(PIC1_CMD) | (inb(PIC2_CMD) << 8));
    outb(PIC1_CMD, 0x0a);           /* back to IRR reads */
    outb(PIC2_CMD, 0x0a);
    return isr;
}
