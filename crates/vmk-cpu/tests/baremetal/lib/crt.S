/* Start-up code and trap entry points shared by all bare-metal test programs.
 *
 * Every hart enters _start in M-mode. Hart 0 clears .bss and calls main(); the value main
 * returns is reported through the test finisher. Other harts wait for hart 0 to finish the
 * start-up and call secondary_main(hartid) (weak default: park in a WFI loop).
 */
#include "bm_asm.h"

    .section .text.init, "ax"
    .globl _start
_start:
    .option push
    .option norelax
    csrr    t0, mhartid
    li      t1, STACK_SIZE
    mul     t1, t1, t0
    la      sp, __stack_top
    sub     sp, sp, t1
    li      t1, TRAP_STACK_SIZE
    mul     t1, t1, t0
    la      t2, __trap_stack_top
    sub     t2, t2, t1
    csrw    mscratch, t2
    la      t1, m_trap_entry
    csrw    mtvec, t1
    la      t1, s_trap_entry
    csrw    stvec, t1
    la      t1, __strap_stack_top
    csrw    sscratch, t1
    /* PMP: one NAPOT entry covering everything, RWX, so S/U may access memory (QEMU
       enforces PMP; vmk accepts and ignores it). */
    li      t1, -1
    csrw    pmpaddr0, t1
    li      t1, 0x1f
    csrw    pmpcfg0, t1
    /* FPU on (mstatus.FS = Initial) */
    li      t1, (1 << 13)
    csrs    mstatus, t1
    csrwi   fcsr, 0
    bnez    t0, 2f

    /* hart 0: clear bss, release the others, run main, report */
    la      t1, __bss_start
    la      t2, __bss_end
1:  bgeu    t1, t2, 1f
    sd      zero, 0(t1)
    addi    t1, t1, 8
    j       1b
1:  fence
    la      t1, boot_done
    li      t2, 1
    sw      t2, 0(t1)
    fence
    call    main
    call    exit
3:  j       3b

    /* other harts: wait for hart 0, then secondary_main(hartid) */
2:  la      t1, boot_done
4:  lw      t2, 0(t1)
    beqz    t2, 4b
    fence
    mv      a0, t0
    call    secondary_main
5:  wfi
    j       5b
    .option pop

    .weak secondary_main
secondary_main:
6:  wfi
    j       6b

    .data
    .align 3
boot_done:
    .word 0
    .word 0

/* ---- M-mode trap entry: full register frame on the per-hart trap stack (mscratch) ---- */
    .text
    .align 6
    .globl m_trap_entry
m_trap_entry:
    csrrw   sp, mscratch, sp
    addi    sp, sp, -FRAME_SIZE
    SAVE_REGS
    csrr    t0, mscratch
    sd      t0, 2*8(sp)
    csrr    t0, mepc
    sd      t0, FRAME_EPC(sp)
    csrr    t0, mcause
    sd      t0, FRAME_CAUSE(sp)
    csrr    t0, mtval
    sd      t0, FRAME_TVAL(sp)
    csrr    t0, mstatus
    sd      t0, FRAME_STATUS(sp)
    mv      a0, sp
    call    m_trap_handler
    ld      t0, FRAME_EPC(sp)
    csrw    mepc, t0
    ld      t0, FRAME_STATUS(sp)
    csrw    mstatus, t0
    addi    t0, sp, FRAME_SIZE
    csrw    mscratch, t0
    RESTORE_REGS
    mret

/* ---- S-mode trap entry (sscratch holds the S trap stack) ---- */
    .align 6
    .globl s_trap_entry
s_trap_entry:
    csrrw   sp, sscratch, sp
    addi    sp, sp, -FRAME_SIZE
    SAVE_REGS
    csrr    t0, sscratch
    sd      t0, 2*8(sp)
    csrr    t0, sepc
    sd      t0, FRAME_EPC(sp)
    csrr    t0, scause
    sd      t0, FRAME_CAUSE(sp)
    csrr    t0, stval
    sd      t0, FRAME_TVAL(sp)
    csrr    t0, sstatus
    sd      t0, FRAME_STATUS(sp)
    mv      a0, sp
    call    s_trap_handler
    ld      t0, FRAME_EPC(sp)
    csrw    sepc, t0
    ld      t0, FRAME_STATUS(sp)
    csrw    sstatus, t0
    addi    t0, sp, FRAME_SIZE
    csrw    sscratch, t0
    RESTORE_REGS
    sret

/* ---- M-mode vectored table: entry n records n in last_vector, then the common entry ---- */
    .align 8
    .globl m_vector_table
m_vector_table:
    .option push
    .option norvc
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    j       vec_\n
    .endr
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
vec_\n:
    addi    sp, sp, -16
    sd      t0, 0(sp)
    sd      t1, 8(sp)
    li      t0, \n
    la      t1, last_vector
    sd      t0, 0(t1)
    ld      t1, 8(sp)
    ld      t0, 0(sp)
    addi    sp, sp, 16
    j       m_trap_entry
    .endr
    .option pop

/* long run_in_mode(long mode, long (*fn)(long), long arg)
 * Runs fn(arg) in privilege `mode` (0 = U, 1 = S) on the lower-mode stack. When fn returns
 * it executes `ecall` with a7 = MAGIC_RETURN; the M handler resumes here with fn's result. */
    .globl run_in_mode
run_in_mode:
    la      t0, m_ctx
    sd      ra, 0(t0)
    sd      sp, 8(t0)
    sd      gp, 16(t0)
    sd      tp, 24(t0)
    sd      s0, 32(t0)
    sd      s1, 40(t0)
    sd      s2, 48(t0)
    sd      s3, 56(t0)
    sd      s4, 64(t0)
    sd      s5, 72(t0)
    sd      s6, 80(t0)
    sd      s7, 88(t0)
    sd      s8, 96(t0)
    sd      s9, 104(t0)
    sd      s10, 112(t0)
    sd      s11, 120(t0)
    li      t1, (3 << 11)
    csrc    mstatus, t1
    andi    a0, a0, 3
    slli    t1, a0, 11
    csrs    mstatus, t1
    csrw    mepc, a1
    mv      a0, a2
    la      ra, lower_return
    la      sp, __lower_stack_top
    mret
    .globl lower_return
lower_return:
    li      a7, MAGIC_RETURN
    ecall
7:  j       7b

