/* Interrupts: CLINT machine timer and software interrupts, delegated supervisor software and
 * timer interrupts, priority among several pending interrupts, global enables (mstatus.MIE,
 * sstatus.SIE) and WFI waking up with interrupts globally disabled. */
#include "bm.h"

#define FAR (~0UL)

static volatile unsigned long seq[16];
static volatile int nseq;
static volatile unsigned long irq_status; /* mstatus/sstatus seen by the last handler */
static volatile unsigned long irq_epc;

static void note(unsigned long cause)
{
    if (nseq < 16)
        seq[nseq] = cause;
    nseq++;
}

static void reset_seq(void) { nseq = 0; }

static int m_irq(struct frame *f)
{
    if (!(f->cause & INTR_BIT))
        return 0;
    unsigned long c = f->cause & ~INTR_BIT;
    note(f->cause);
    irq_status = f->status;
    irq_epc = f->epc;
    switch (c) {
    case IRQ_M_TIMER: mmio_write64(CLINT_MTIMECMP(0), FAR); break;
    case IRQ_M_SOFT: mmio_write32(CLINT_MSIP(0), 0); break;
    case IRQ_S_SOFT: clear_csr(mip, 1UL << IRQ_S_SOFT); break;
    case IRQ_S_TIMER: clear_csr(mip, 1UL << IRQ_S_TIMER); break;
    default: printf("unexpected interrupt %lx\n", f->cause); exit(3);
    }
    return 1;
}

static int s_irq(struct frame *f)
{
    if (!(f->cause & INTR_BIT))
        return 0;
    unsigned long c = f->cause & ~INTR_BIT;
    note(f->cause | (1UL << 62)); /* bit 62 marks "taken in S" */
    irq_status = f->status;
    switch (c) {
    case IRQ_S_SOFT: clear_csr(sip, 1UL << IRQ_S_SOFT); break;
    case IRQ_S_TIMER: clear_csr(sie, 1UL << IRQ_S_TIMER); break; /* STIP is M's to clear */
    default: printf("unexpected S interrupt %lx\n", f->cause); exit(4);
    }
    return 1;
}

static void print_seq(const char *what)
{
    printf("%s: %d taken:", what, nseq);
    for (int i = 0; i < nseq && i < 16; i++)
        printf(" %s%ld", (seq[i] >> 62) & 1 ? "S" : "M", seq[i] & 0xff);
    printf("\n");
}

static void spin(int n)
{
    for (volatile int i = 0; i < n; i++)
        ;
}

static void machine_timer(void)
{
    reset_seq();
    uint64_t now = mmio_read64(CLINT_MTIME);
    mmio_write64(CLINT_MTIMECMP(0), now + 500);
    set_csr(mie, 1UL << IRQ_M_TIMER);
    set_csr(mstatus, MSTATUS_MIE);
    int loops = 0;
    while (nseq == 0 && loops < 1000) {
        asm volatile("wfi");
        loops++;
    }
    clear_csr(mstatus, MSTATUS_MIE);
    clear_csr(mie, 1UL << IRQ_M_TIMER);
    print_seq("machine timer");
    CHECK_EQ(nseq, 1);
    CHECK_EQ(seq[0], INTR_BIT | IRQ_M_TIMER);
    CHECK(mmio_read64(CLINT_MTIME) >= now + 500);
    CHECK_EQ((irq_status >> 11) & 3, PRV_M); /* MPP */
    CHECK_EQ((irq_status >> 7) & 1, 1);      /* MPIE = old MIE */
    CHECK_EQ(read_csr(mip) & (1UL << IRQ_M_TIMER), 0);
}

static void machine_soft(void)
{
    reset_seq();
    set_csr(mie, 1UL << IRQ_M_SOFT);
    mmio_write32(CLINT_MSIP(0), 1);
    /* pending but masked by mstatus.MIE = 0 */
    spin(100);
    unsigned long mip = read_csr(mip);
    printf("msip pending while MIE=0: mip.MSIP=%ld taken=%d\n", (mip >> 3) & 1, nseq);
    CHECK_EQ(nseq, 0);
    CHECK_EQ((mip >> 3) & 1, 1);
    CHECK_EQ(mmio_read32(CLINT_MSIP(0)), 1);
    set_csr(mstatus, MSTATUS_MIE);
    asm volatile("nop");
    clear_csr(mstatus, MSTATUS_MIE);
    print_seq("machine soft");
    CHECK_EQ(nseq, 1);
    CHECK_EQ(seq[0], INTR_BIT | IRQ_M_SOFT);
    CHECK_EQ(mmio_read32(CLINT_MSIP(0)), 0);
    clear_csr(mie, 1UL << IRQ_M_SOFT);
}

static long s_enable_ssi(long arg)
{
    set_csr(sie, 1UL << IRQ_S_SOFT);
    int before = nseq;
    set_csr(sstatus, MSTATUS_SIE);
    asm volatile("nop");
    clear_csr(sstatus, MSTATUS_SIE);
    /* S can raise its own software interrupt through sip */
    set_csr(sip, 1UL << IRQ_S_SOFT);
    int mid = nseq;
    set_csr(sstatus, MSTATUS_SIE);
    asm volatile("nop");
    clear_csr(sstatus, MSTATUS_SIE);
    return before * 100 + mid * 10 + nseq;
}

static long u_spin(long arg)
{
    for (volatile int i = 0; i < 50; i++)
        ;
    return nseq;
}

static long s_enable_sti(long arg)
{
    set_csr(sie, 1UL << IRQ_S_TIMER);
    set_csr(sstatus, MSTATUS_SIE);
    asm volatile("nop");
    clear_csr(sstatus, MSTATUS_SIE);
    return nseq;
}

static long s_spin_mie0(long arg)
{
    mmio_write32(CLINT_MSIP(0), 1); /* devices are identity mapped for S (bare) */
    for (volatile int i = 0; i < 50 && nseq == 0; i++)
        ;
    return nseq;
}

static void supervisor(void)
{
    write_csr(mideleg, (1UL << IRQ_S_SOFT) | (1UL << IRQ_S_TIMER));
    unsigned long md = read_csr(mideleg);
    CHECK_EQ(md & 0x22, 0x22);
    /* SSIP set by M before entering S, taken in S once sstatus.SIE = 1 */
    reset_seq();
    set_csr(mip, 1UL << IRQ_S_SOFT);
    long r = run_in_mode(PRV_S, s_enable_ssi, 0);
    print_seq("delegated SSI");
    printf("  counts before/mid/after = %ld\n", r);
    CHECK_EQ(r, 12);
    CHECK_EQ(seq[0], (1UL << 62) | INTR_BIT | IRQ_S_SOFT);
    CHECK_EQ((irq_status >> 8) & 1, 1); /* SPP = S */
    CHECK_EQ((irq_status >> 5) & 1, 1); /* SPIE = old SIE */
    /* in U, a pending enabled S interrupt is taken even with sstatus.SIE = 0 */
    reset_seq();
    set_csr(sie, 1UL << IRQ_S_SOFT);
    clear_csr(mstatus, MSTATUS_SIE);
    set_csr(mip, 1UL << IRQ_S_SOFT);
    r = run_in_mode(PRV_U, u_spin, 0);
    print_seq("SSI from U with SIE=0");
    CHECK_EQ(nseq, 1);
    CHECK_EQ((irq_status >> 8) & 1, 0); /* SPP = U */
    /* ... but not in M (delegated interrupts are never taken in M) */
    reset_seq();
    set_csr(mip, 1UL << IRQ_S_SOFT);
    set_csr(mstatus, MSTATUS_MIE | MSTATUS_SIE);
    spin(50);
    clear_csr(mstatus, MSTATUS_MIE | MSTATUS_SIE);
    print_seq("delegated SSI pending in M");
    CHECK_EQ(nseq, 0);
    clear_csr(mip, 1UL << IRQ_S_SOFT);
    clear_csr(sie, 1UL << IRQ_S_SOFT);
    /* STIP written by M, delegated: taken in S */
    reset_seq();
    set_csr(mip, 1UL << IRQ_S_TIMER);
    CHECK_EQ((read_csr(sip) >> IRQ_S_TIMER) & 1, 1);
    r = run_in_mode(PRV_S, s_enable_sti, 0);
    clear_csr(mip, 1UL << IRQ_S_TIMER);
    print_seq("delegated STI");
    CHECK_EQ(r, 1);
    CHECK_EQ(seq[0], (1UL << 62) | INTR_BIT | IRQ_S_TIMER);
    write_csr(mideleg, 0);
    /* M interrupts are taken in S regardless of mstatus.MIE */
    reset_seq();
    clear_csr(mstatus, MSTATUS_MIE);
    set_csr(mie, 1UL << IRQ_M_SOFT);
    r = run_in_mode(PRV_S, s_spin_mie0, 0);
    clear_csr(mie, 1UL << IRQ_M_SOFT);
    print_seq("MSI while in S with MIE=0");
    CHECK_EQ(r, 1);
    CHECK_EQ((irq_status >> 11) & 3, PRV_S);
    /* a non-delegated SSI is taken in M */
    reset_seq();
    set_csr(mie, 1UL << IRQ_S_SOFT);
    set_csr(mip, 1UL << IRQ_S_SOFT);
    set_csr(mstatus, MSTATUS_MIE);
    asm volatile("nop");
    clear_csr(mstatus, MSTATUS_MIE);
    clear_csr(mie, 1UL << IRQ_S_SOFT);
    print_seq("non-delegated SSI");
    CHECK_EQ(nseq, 1);
    CHECK_EQ(seq[0], INTR_BIT | IRQ_S_SOFT);
}

static void priority(void)
{
    reset_seq();
    mmio_write32(CLINT_MSIP(0), 1);
    mmio_write64(CLINT_MTIMECMP(0), 0); /* timer pending now */
    set_csr(mip, (1UL << IRQ_S_SOFT) | (1UL << IRQ_S_TIMER));
    set_csr(mie, (1UL << IRQ_M_SOFT) | (1UL << IRQ_M_TIMER) | (1UL << IRQ_S_SOFT) |
                     (1UL << IRQ_S_TIMER));
    spin(20);
    unsigned long mip = read_csr(mip);
    printf("pending: mip=%lx\n", mip & 0xaaa);
    CHECK_EQ(mip & 0xaaa, 0xaa);
    set_csr(mstatus, MSTATUS_MIE);
    asm volatile("nop");
    clear_csr(mstatus, MSTATUS_MIE);
    write_csr(mie, 0);
    /* QEMU 7.2 without AIA takes the lowest-numbered pending interrupt first instead of the
     * spec order MEI, MSI, MTI, SEI, SSI, STI: print the set, check the order as SPEC. */
    unsigned long set = 0;
    for (int i = 0; i < nseq && i < 16; i++)
        set |= 1UL << (seq[i] & 63);
    printf("priority: %d taken, set=%lx\n", nseq, set);
    CHECK_EQ(nseq, 4);
    CHECK_EQ(set, 0xaa);
    SPEC_CHECK_EQ(seq[0], INTR_BIT | IRQ_M_SOFT);
    SPEC_CHECK_EQ(seq[1], INTR_BIT | IRQ_M_TIMER);
    SPEC_CHECK_EQ(seq[2], INTR_BIT | IRQ_S_SOFT);
    SPEC_CHECK_EQ(seq[3], INTR_BIT | IRQ_S_TIMER);
    /* pairs on which QEMU agrees with the spec: MSI before MTI, SSI before STI */
    reset_seq();
    mmio_write32(CLINT_MSIP(0), 1);
    mmio_write64(CLINT_MTIMECMP(0), 0);
    set_csr(mie, (1UL << IRQ_M_SOFT) | (1UL << IRQ_M_TIMER));
    spin(20);
    set_csr(mstatus, MSTATUS_MIE);
    asm volatile("nop");
    clear_csr(mstatus, MSTATUS_MIE);
    write_csr(mie, 0);
    set_csr(mip, (1UL << IRQ_S_SOFT) | (1UL << IRQ_S_TIMER));
    set_csr(mie, (1UL << IRQ_S_SOFT) | (1UL << IRQ_S_TIMER));
    set_csr(mstatus, MSTATUS_MIE);
    asm volatile("nop");
    clear_csr(mstatus, MSTATUS_MIE);
    write_csr(mie, 0);
    print_seq("priority pairs");
    CHECK_EQ(nseq, 4);
    CHECK_EQ(seq[0], INTR_BIT | IRQ_M_SOFT);
    CHECK_EQ(seq[1], INTR_BIT | IRQ_M_TIMER);
    CHECK_EQ(seq[2], INTR_BIT | IRQ_S_SOFT);
    CHECK_EQ(seq[3], INTR_BIT | IRQ_S_TIMER);
}

static void wfi_disabled(void)
{
    reset_seq();
    clear_csr(mstatus, MSTATUS_MIE);
    set_csr(mie, 1UL << IRQ_M_TIMER);
    uint64_t now = mmio_read64(CLINT_MTIME);
    mmio_write64(CLINT_MTIMECMP(0), now + 300);
    int loops = 0;
    while (!(read_csr(mip) & (1UL << IRQ_M_TIMER)) && loops < 1000) {
        asm volatile("wfi");
        loops++;
    }
    unsigned long mip = read_csr(mip);
    printf("wfi with MIE=0: mip.MTIP=%ld taken=%d\n", (mip >> 7) & 1, nseq);
    CHECK_EQ((mip >> 7) & 1, 1);
    CHECK_EQ(nseq, 0);
    mmio_write64(CLINT_MTIMECMP(0), FAR);
    spin(10);
    CHECK_EQ(read_csr(mip) & (1UL << IRQ_M_TIMER), 0);
    clear_csr(mie, 1UL << IRQ_M_TIMER);
    /* the handler's mepc points after the wfi when the interrupt wakes it with MIE=1 */
    reset_seq();
    set_csr(mie, 1UL << IRQ_M_TIMER);
    mmio_write64(CLINT_MTIMECMP(0), mmio_read64(CLINT_MTIME) + 300);
    set_csr(mstatus, MSTATUS_MIE);
    unsigned long pc = 0;
    while (nseq == 0)
        pc = AT("wfi");
    clear_csr(mstatus, MSTATUS_MIE);
    clear_csr(mie, 1UL << IRQ_M_TIMER);
    printf("wfi wake: taken=%d epc_after_wfi=%d\n", nseq, irq_epc == pc + 4);
    CHECK_EQ(irq_epc, pc + 4);
}

int main(void)
{
    m_hook = m_irq;
    s_hook = s_irq;
    mmio_write64(CLINT_MTIMECMP(0), FAR);
    write_csr(mie, 0);
    machine_timer();
    machine_soft();
    supervisor();
    priority();
    wfi_disabled();
    return failures;
}
