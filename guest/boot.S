/* boot.S - multiboot entry, GDT, .bss zeroing and the 48 interrupt entry stubs. */

#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00000003         /* page-align modules | memory info; ELF, no a.out kludge */

    .section .multiboot, "a"
    .align 4
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)

    .section .text
    .globl _start
    .type _start, @function
_start:
    cli
    cld
    movl %eax, %esi                 /* multiboot magic */
    movl %ebx, %edi                 /* multiboot info (physical address) */

    lgdt gdt_desc
    ljmp $0x08, $1f
1:  movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %fs
    movw %ax, %gs
    movw %ax, %ss
    movl $stack_top, %esp

    /* Zero .bss (includes the stack, nothing is on it yet, and hwl_ctl/hwl_slots). */
    movl %edi, %ebx
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    shrl $2, %ecx
    xorl %eax, %eax
    rep stosl

    pushl $0
    popfl                           /* clean EFLAGS: IF = 0, DF = 0 */
    pushl %ebx                      /* mbinfo */
    pushl %esi                      /* magic */
    call stub_main
2:  cli
    hlt
    jmp 2b
    .size _start, . - _start

/* ---- interrupt entry stubs ---------------------------------------------
 * Each pushes a dummy error code (unless the CPU pushed one) and its vector,
 * then jumps to the common path which saves registers and calls
 * trap_handler(struct trap_frame *). */

#define ISR_NOERR(n) \
    .align 8; isr_##n: pushl $0; pushl $n; jmp isr_common
#define ISR_ERR(n) \
    .align 8; isr_##n: pushl $n; jmp isr_common

    .align 16
isr_common:
    pushal
    cld
    movl %esp, %eax
    pushl %eax
    call trap_handler
    addl $4, %esp
    popal
    addl $8, %esp                   /* vector and error code */
    iret

ISR_NOERR(0)
ISR_NOERR(1)
ISR_NOERR(2)
ISR_NOERR(3)
ISR_NOERR(4)
ISR_NOERR(5)
ISR_NOERR(6)
ISR_NOERR(7)
ISR_ERR(8)
ISR_NOERR(9)
ISR_ERR(10)
ISR_ERR(11)
ISR_ERR(12)
ISR_ERR(13)
ISR_ERR(14)
ISR_NOERR(15)
ISR_NOERR(16)
ISR_ERR(17)
ISR_NOERR(18)
ISR_NOERR(19)
ISR_NOERR(20)
ISR_ERR(21)
ISR_NOERR(22)
ISR_NOERR(23)
ISR_NOERR(24)
ISR_NOERR(25)
ISR_NOERR(26)
ISR_NOERR(27)
ISR_NOERR(28)
ISR_ERR(29)
ISR_ERR(30)
ISR_NOERR(31)
ISR_NOERR(32)
ISR_NOERR(33)
ISR_NOERR(34)
ISR_NOERR(35)
ISR_NOERR(36)
ISR_NOERR(37)
ISR_NOERR(38)
ISR_NOERR(39)
ISR_NOERR(40)
ISR_NOERR(41)
ISR_NOERR(42)
ISR_NOERR(43)
ISR_NOERR(44)
ISR_NOERR(45)
ISR_NOERR(46)
ISR_NOERR(47)

    .section .rodata
    .align 4
    .globl isr_stub_table
isr_stub_table:
    .long isr_0, isr_1, isr_2, isr_3, isr_4, isr_5, isr_6, isr_7
    .long isr_8, isr_9, isr_10, isr_11, isr_12, isr_13, isr_14, isr_15
    .long isr_16, isr_17, isr_18, isr_19, isr_20, isr_21, isr_22, isr_23
    .long isr_24, isr_25, isr_26, isr_27, isr_28, isr_29, isr_30, isr_31
    .long isr_32, isr_33, isr_34, isr_35, isr_36, isr_37, isr_38, isr_39
    .long isr_40, isr_41, isr_42, isr_43, isr_44, isr_45, isr_46, isr_47

    .align 8
gdt:
    .quad 0x0000000000000000        /* null */
    .quad 0x00CF9B000000FFFF        /* 0x08: flat 32-bit code, ring 0 */
    .quad 0x00CF93000000FFFF        /* 0x10: flat 32-bit data, ring 0 */
gdt_end:
gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt

    .section .bss
    .align 16
    .globl stack_bottom
stack_bottom:
    .skip 16384
stack_top:

    .section .note.GNU-stack, "", @progbits
