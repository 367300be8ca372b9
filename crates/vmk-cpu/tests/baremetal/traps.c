/* Synchronous traps: illegal instructions (mtval = instruction bits), ecall from M/S/U with
 * and without delegation, ebreak, vectored mtvec, CSR privilege checks, MRET/SRET stacking,
 * access faults on unmapped physical addresses. */
#include "bm.h"

#define UNMAPPED 0x90000000UL /* past the end of the 128 MiB of RAM */
#define REPORT_STATUS 0x1234  /* a7 value: M hook returns mstatus to the run_in_mode caller */

static int hook(struct frame *f)
{
    if ((f->cause == CAUSE_ECALL_U || f->cause == CAUSE_ECALL_S) && f->x[17] == REPORT_STATUS) {
        resume_m_caller(f, (long)f->status);
        return 1;
    }
    return 0;
}

static void report(const char *what, volatile struct trap_rec *t, unsigned long pc)
{
    printf("%s: n=%ld cause=%lx tval=%lx epc_ok=%d\n", what, t->count, t->cause, t->tval,
           t->epc == pc);
}

/* ---- illegal instructions executed in M ---- */
static void illegal_m(void)
{
    unsigned long pc;
#define ILL(name, insn, bits)                                                  \
    trap_reset();                                                              \
    pc = AT(insn);                                                             \
    report("illegal " name, &mtrap, pc);                                       \
    EXPECT_MTRAP(CAUSE_ILLEGAL, bits);                                         \
    CHECK_EQ(mtrap.epc, pc);
    ILL("all-ones", ".word 0xffffffff", 0xffffffffUL);
    ILL("c.zero", ".2byte 0x0000", 0);
    ILL("c.addi4spn-0", ".2byte 0x0004", 0x0004);
    ILL("c.lwsp-rd0", ".2byte 0x4002", 0x4002);
    ILL("c.ldsp-rd0", ".2byte 0x6002", 0x6002);
    ILL("c.lui-0", ".2byte 0x6081", 0x6081);
    ILL("c.addi16sp-0", ".2byte 0x6101", 0x6101);
    ILL("c.jr-x0", ".2byte 0x8002", 0x8002);
    ILL("opcode-0x0b", ".word 0x0000000b", 0x0000000bUL);
    ILL("csrw-cycle", "csrw cycle, x0", 0xc0001073UL);
    ILL("csrw-mvendorid", "csrw mvendorid, x1", 0xf1109073UL);
    ILL("csr-0x0ff", ".word 0x0ff02573", 0x0ff02573UL); /* csrr a0, 0x0ff */
    ILL("sfence-rs2-bad-funct7", ".word 0x1a000073", 0x1a000073UL);
#undef ILL
    /* the instruction after an illegal one still runs */
    long x = 1;
    trap_reset();
    asm volatile(".word 0xffffffff\n addi %0, %0, 41" : "+r"(x));
    CHECK_EQ(x, 42);
    /* FP instructions and fcsr are illegal with mstatus.FS = Off */
    clear_csr(mstatus, MSTATUS_FS);
    trap_reset();
    pc = AT("fadd.d f0, f1, f2");
    report("fp-with-FS-off", &mtrap, pc);
    EXPECT_MTRAP(CAUSE_ILLEGAL, 0x0220f053UL);
    trap_reset();
    pc = AT("csrr a0, fcsr");
    report("fcsr-with-FS-off", &mtrap, pc);
    EXPECT_MTRAP(CAUSE_ILLEGAL, 0x00302573UL);
    set_csr(mstatus, 1UL << 13);
}

/* ---- ecall / ebreak ---- */
static long ecall_lower(long arg)
{
    asm volatile("li a7, 0\n ecall" ::: "a7", "memory");
    return arg + 1;
}

static long ebreak_lower(long arg)
{
    asm volatile("ebreak\n c.ebreak" ::: "memory");
    return arg;
}

static void ecall_ebreak(void)
{
    unsigned long pc;
    trap_reset();
    pc = AT("ecall");
    report("ecall-M", &mtrap, pc);
    EXPECT_MTRAP(CAUSE_ECALL_M, 0);
    CHECK_EQ((mtrap.status >> 11) & 3, PRV_M);

    trap_reset();
    pc = AT("ebreak");
    printf("ebreak-M: n=%ld cause=%lx epc_ok=%d\n", mtrap.count, mtrap.cause, mtrap.epc == pc);
    CHECK(mtrap.tval == 0 || mtrap.tval == pc); /* either is allowed */
    trap_reset();
    pc = AT("c.ebreak");
    printf("c.ebreak-M: n=%ld cause=%lx epc_ok=%d\n", mtrap.count, mtrap.cause, mtrap.epc == pc);

    for (int mode = 0; mode <= 1; mode++) {
        trap_reset();
        long r = run_in_mode(mode, ecall_lower, 10);
        printf("ecall-%c: r=%ld n=%ld cause=%lx tval=%lx mpp=%ld\n", mode ? 'S' : 'U', r,
               mtrap.count, mtrap.cause, mtrap.tval, (mtrap.status >> 11) & 3);
        EXPECT_MTRAP(mode ? CAUSE_ECALL_S : CAUSE_ECALL_U, 0);
        CHECK_EQ(r, 11);
        CHECK_EQ((mtrap.status >> 11) & 3, mode);
        trap_reset();
        run_in_mode(mode, ebreak_lower, 0);
        printf("ebreak-%c: n=%ld cause=%lx mpp=%ld\n", mode ? 'S' : 'U', mtrap.count, mtrap.cause,
               (mtrap.status >> 11) & 3);
        CHECK_EQ(mtrap.count, 2);
    }
}

/* ---- delegation to S ---- */
static unsigned long u_pc_ecall, u_pc_ill;
static long deleg_user(long arg)
{
    u_pc_ecall = AT("li a7, 7\n ecall");
    u_pc_ill = AT(".word 0xffffffff");
    return arg * 2;
}

static unsigned long s_pc_ebreak;
static long deleg_super(long arg)
{
    s_pc_ebreak = AT("ebreak");
    unsigned long st = strap.status;
    return (long)st;
}

static int s_seen[16];
static int s_record(struct frame *f)
{
    if (f->cause < 16)
        s_seen[f->cause]++;
    return 0;
}

static void delegation(void)
{
    write_csr(medeleg, ~0UL);
    /* (whether medeleg[11] is writable differs: QEMU 7.2 lets it be set) */
    write_csr(medeleg, (1UL << CAUSE_ECALL_U) | (1UL << CAUSE_ILLEGAL) | (1UL << CAUSE_BREAKPOINT));
    s_hook = s_record;

    trap_reset();
    long r = run_in_mode(PRV_U, deleg_user, 21);
    printf("deleg U: r=%ld mtraps=%ld straps=%ld last scause=%lx stval=%lx spp=%ld ecall=%d ill=%d\n",
           r, mtrap.count, strap.count, strap.cause, strap.tval, (strap.status >> 8) & 1,
           s_seen[CAUSE_ECALL_U], s_seen[CAUSE_ILLEGAL]);
    CHECK_EQ(r, 42);
    CHECK_EQ(mtrap.count, 0);
    CHECK_EQ(strap.count, 2);
    CHECK_EQ(strap.cause, CAUSE_ILLEGAL);
    CHECK_EQ(strap.tval, 0xffffffffUL);
    CHECK_EQ(strap.epc, u_pc_ill);
    CHECK_EQ(s_seen[CAUSE_ECALL_U], 1);

    trap_reset();
    r = run_in_mode(PRV_S, deleg_super, 0);
    printf("deleg S ebreak: mtraps=%ld straps=%ld scause=%lx spp=%ld epc_ok=%d\n", mtrap.count,
           strap.count, strap.cause, ((unsigned long)r >> 8) & 1, strap.epc == s_pc_ebreak);
    CHECK_EQ(strap.count, 1);
    CHECK_EQ(strap.cause, CAUSE_BREAKPOINT);
    CHECK_EQ(((unsigned long)r >> 8) & 1, 1);

    /* exceptions in M are never delegated */
    trap_reset();
    asm volatile(".word 0xffffffff");
    printf("deleg M illegal: mtraps=%ld straps=%ld\n", mtrap.count, strap.count);
    CHECK_EQ(mtrap.count, 1);
    CHECK_EQ(strap.count, 0);
    write_csr(medeleg, 0);
    s_hook = 0;
}

/* ---- CSR privilege ---- */
static long csr_from_s(long which)
{
    unsigned long v = 0;
    switch (which) {
    case 0: asm volatile("csrr %0, mstatus" : "=r"(v)); break;
    case 1: asm volatile("csrr %0, mhartid" : "=r"(v)); break;
    case 2: asm volatile("csrw mscratch, %0" ::"r"(v)); break;
    case 3: asm volatile("csrr %0, sstatus" : "=r"(v)); break; /* legal */
    case 4: asm volatile("csrr %0, sscratch" : "=r"(v)); break; /* legal */
    case 5: asm volatile("csrw cycle, %0" ::"r"(v)); break;
    }
    return 0;
}

static long csr_from_u(long which)
{
    unsigned long v = 0;
    switch (which) {
    case 0: asm volatile("csrr %0, sstatus" : "=r"(v)); break;
    case 1: asm volatile("csrr %0, satp" : "=r"(v)); break;
    case 2: asm volatile("csrr %0, mstatus" : "=r"(v)); break;
    case 3: asm volatile("sret"); break;
    case 4: asm volatile("mret"); break;
    case 5: asm volatile("sfence.vma"); break;
    }
    return 0;
}

static long priv_insn_s(long which)
{
    switch (which) {
    case 0: asm volatile("mret"); break;
    case 1: asm volatile("csrr a0, satp" ::: "a0"); break; /* TVM=1 */
    case 2: asm volatile("sfence.vma" ::: "memory"); break; /* TVM=1 */
    case 3: asm volatile("wfi"); break;                     /* TW=1 */
    case 4: asm volatile("sret"); break;                    /* TSR=1 */
    }
    return 0;
}

static void csr_privilege(void)
{
    static const char *sn[] = {"S csrr mstatus", "S csrr mhartid", "S csrw mscratch",
                               "S csrr sstatus", "S csrr sscratch", "S csrw cycle"};
    static const int s_illegal[] = {1, 1, 1, 0, 0, 1};
    for (int i = 0; i < 6; i++) {
        trap_reset();
        run_in_mode(PRV_S, csr_from_s, i);
        printf("%s: n=%ld cause=%lx tval=%lx\n", sn[i], mtrap.count, mtrap.cause, mtrap.tval);
        CHECK_EQ(mtrap.count, s_illegal[i]);
        if (s_illegal[i])
            CHECK_EQ(mtrap.cause, CAUSE_ILLEGAL);
    }
    static const char *un[] = {"U csrr sstatus", "U csrr satp", "U csrr mstatus",
                               "U sret",         "U mret",      "U sfence.vma"};
    for (int i = 0; i < 6; i++) {
        trap_reset();
        run_in_mode(PRV_U, csr_from_u, i);
        printf("%s: n=%ld cause=%lx tval=%lx\n", un[i], mtrap.count, mtrap.cause, mtrap.tval);
        EXPECT_MTRAP(CAUSE_ILLEGAL, mtrap.tval);
        CHECK(mtrap.tval != 0);
    }
    static const char *pn[] = {"S mret", "S csrr satp (TVM)", "S sfence.vma (TVM)", "S wfi (TW)",
                               "S sret (TSR)"};
    for (int i = 0; i < 5; i++) {
        set_csr(mstatus, MSTATUS_TVM | MSTATUS_TW | MSTATUS_TSR);
        trap_reset();
        run_in_mode(PRV_S, priv_insn_s, i);
        clear_csr(mstatus, MSTATUS_TVM | MSTATUS_TW | MSTATUS_TSR);
        printf("%s: n=%ld cause=%lx tval=%lx\n", pn[i], mtrap.count, mtrap.cause, mtrap.tval);
        EXPECT_MTRAP(CAUSE_ILLEGAL, mtrap.tval);
    }
    /* without TVM, satp and sfence.vma are fine in S */
    trap_reset();
    run_in_mode(PRV_S, priv_insn_s, 1);
    run_in_mode(PRV_S, priv_insn_s, 2);
    printf("S satp/sfence without TVM: n=%ld\n", mtrap.count);
    CHECK_EQ(mtrap.count, 0);
}

/* ---- MRET / SRET ---- */
static unsigned long mret_target_status;
static void mret_m_to_m(void)
{
    /* MPP=M, MPIE=1, MIE=0: after mret MIE=1, MPIE=1, MPP=U (least privileged mode) */
    clear_csr(mstatus, MSTATUS_MIE | MSTATUS_MPP);
    set_csr(mstatus, MSTATUS_MPIE | MSTATUS_MPP);
    asm volatile("lla t0, 1f\n csrw mepc, t0\n mret\n 1: csrr %0, mstatus\n csrci mstatus, 8"
                 : "=r"(mret_target_status)::"t0", "memory");
    unsigned long s = mret_target_status;
    printf("mret M->M: mie=%ld mpie=%ld mpp=%ld\n", (s >> 3) & 1, (s >> 7) & 1, (s >> 11) & 3);
    CHECK_EQ((s >> 3) & 1, 1);
    CHECK_EQ((s >> 7) & 1, 1);
    CHECK_EQ((s >> 11) & 3, PRV_U);
    /* MPIE=0: MIE becomes 0 */
    clear_csr(mstatus, MSTATUS_MPIE);
    set_csr(mstatus, MSTATUS_MPP | MSTATUS_MIE);
    asm volatile("lla t0, 1f\n csrw mepc, t0\n mret\n 1: csrr %0, mstatus"
                 : "=r"(mret_target_status)::"t0", "memory");
    s = mret_target_status;
    printf("mret M->M MPIE=0: mie=%ld mpie=%ld\n", (s >> 3) & 1, (s >> 7) & 1);
    CHECK_EQ((s >> 3) & 1, 0);
    CHECK_EQ((s >> 7) & 1, 1);
}

static long report_status(long arg)
{
    register long a7 asm("a7") = REPORT_STATUS;
    register long a0 asm("a0") = arg;
    asm volatile("ecall" : "+r"(a0) : "r"(a7) : "memory");
    return a0;
}

static long user_report(long arg) { return report_status(arg); }

static long sret_to(long spp)
{
    /* In S: SPIE=1, SIE=0, SPP=spp, sepc=target; sret. The target reports mstatus via ecall. */
    clear_csr(sstatus, MSTATUS_SIE | MSTATUS_SPP);
    set_csr(sstatus, MSTATUS_SPIE | (spp ? MSTATUS_SPP : 0));
    write_csr(sepc, (unsigned long)user_report);
    asm volatile("li a0, 0\n sret" ::: "a0", "memory");
    return -1;
}

static void mret_sret(void)
{
    mret_m_to_m();
    /* mret to S with MPRV=1: MPRV is cleared */
    set_csr(mstatus, MSTATUS_MPRV | MSTATUS_MPIE);
    unsigned long s = (unsigned long)run_in_mode(PRV_S, report_status, 0);
    clear_csr(mstatus, MSTATUS_MIE | MSTATUS_MPRV);
    printf("mret M->S: status at ecall: mpp=%ld mpie=%ld mie=%ld\n", (s >> 11) & 3,
           (s >> 7) & 1, (s >> 3) & 1);
    CHECK_EQ((s >> 11) & 3, PRV_S);
    CHECK_EQ((s >> 7) & 1, 1); /* MIE was 1 in S (restored from MPIE) */
    /* priv spec 1.12: an xRET to a mode other than M clears MPRV (QEMU 7.2 does not) */
    SPEC_CHECK_EQ((s >> 17) & 1, 0);
    for (int spp = 0; spp <= 1; spp++) {
        clear_csr(mstatus, MSTATUS_MPIE);
        s = (unsigned long)run_in_mode(PRV_S, sret_to, spp);
        clear_csr(mstatus, MSTATUS_MIE | MSTATUS_SIE);
        printf("sret SPP=%d: mpp=%ld sie=%ld spie=%ld spp=%ld\n", spp, (s >> 11) & 3, (s >> 1) & 1,
               (s >> 5) & 1, (s >> 8) & 1);
        CHECK_EQ((s >> 11) & 3, spp);
        CHECK_EQ((s >> 1) & 1, 1);
        CHECK_EQ((s >> 5) & 1, 1);
        CHECK_EQ((s >> 8) & 1, 0);
    }
}

/* ---- vectored mtvec ---- */
static int vec_hook(struct frame *f)
{
    if (f->cause == (INTR_BIT | IRQ_M_SOFT)) {
        mmio_write32(CLINT_MSIP(0), 0);
        mtrap.cause = f->cause;
        mtrap.count++;
        return 1;
    }
    return hook(f);
}

static void vectored(void)
{
    unsigned long base = (unsigned long)m_vector_table;
    write_csr(mtvec, base | 1);
    unsigned long rb = read_csr(mtvec);
    printf("mtvec vectored readback ok=%d\n", rb == (base | 1));
    CHECK_EQ(rb, base | 1);
    m_hook = vec_hook;
    /* exceptions use the base address */
    last_vector = 99;
    trap_reset();
    asm volatile(".word 0xffffffff");
    printf("vectored exception: vector=%ld cause=%lx\n", last_vector, mtrap.cause);
    CHECK_EQ(last_vector, 0);
    /* machine software interrupt: base + 4*3 */
    last_vector = 99;
    trap_reset();
    set_csr(mie, 1UL << IRQ_M_SOFT);
    mmio_write32(CLINT_MSIP(0), 1);
    set_csr(mstatus, MSTATUS_MIE);
    for (int i = 0; i < 100 && mtrap.count == 0; i++)
        asm volatile("nop");
    clear_csr(mstatus, MSTATUS_MIE);
    clear_csr(mie, 1UL << IRQ_M_SOFT);
    printf("vectored msi: vector=%ld cause=%lx\n", last_vector, mtrap.cause);
    CHECK_EQ(last_vector, 3);
    CHECK_EQ(mtrap.cause, INTR_BIT | IRQ_M_SOFT);
    write_csr(mtvec, (unsigned long)m_trap_entry);
    m_hook = hook;
}

/* ---- access faults ---- */
static long access_faults(long mode)
{
    unsigned long r = 0x77, pc;
    char m = mode == PRV_M ? 'M' : 'S';
    trap_reset();
    asm volatile("lla %0, 1f\n1: ld %1, 0(%2)" : "=&r"(pc), "+r"(r) : "r"(UNMAPPED) : "memory");
    printf("%c load unmapped: n=%ld cause=%lx tval=%lx epc_ok=%d\n", m, mtrap.count, mtrap.cause,
           mtrap.tval, mtrap.epc == pc);
    EXPECT_MTRAP(CAUSE_LOAD_ACCESS, UNMAPPED);
    CHECK_EQ(r, 0x77); /* rd unchanged */
    trap_reset();
    asm volatile("lla %0, 1f\n1: sw %1, 4(%2)" : "=&r"(pc) : "r"(r), "r"(UNMAPPED) : "memory");
    printf("%c store unmapped: n=%ld cause=%lx tval=%lx epc_ok=%d\n", m, mtrap.count, mtrap.cause,
           mtrap.tval, mtrap.epc == pc);
    EXPECT_MTRAP(CAUSE_STORE_ACCESS, UNMAPPED + 4);
    trap_reset();
    asm volatile("lla %0, 1f\n1: amoadd.w zero, %1, (%2)" : "=&r"(pc) : "r"(r), "r"(UNMAPPED + 8) : "memory");
    printf("%c amo unmapped: n=%ld tval=%lx epc_ok=%d\n", m, mtrap.count, mtrap.tval,
           mtrap.epc == pc);
    CHECK_EQ(mtrap.count, 1);
    CHECK_EQ(mtrap.tval, UNMAPPED + 8);
    /* AMOs raise store/AMO access faults (QEMU 7.2 raises a load access fault) */
    SPEC_CHECK_EQ(mtrap.cause, CAUSE_STORE_ACCESS);
    trap_reset();
    asm volatile("jalr ra, 0(%0)" ::"r"(UNMAPPED + 0x10) : "ra", "memory");
    printf("%c fetch unmapped: n=%ld cause=%lx tval=%lx epc=%lx\n", m, mtrap.count, mtrap.cause,
           mtrap.tval, mtrap.epc);
    EXPECT_MTRAP(CAUSE_FETCH_ACCESS, UNMAPPED + 0x10);
    CHECK_EQ(mtrap.epc, UNMAPPED + 0x10);
    return 0;
}

int main(void)
{
    m_hook = hook;
    illegal_m();
    ecall_ebreak();
    delegation();
    csr_privilege();
    mret_sret();
    vectored();
    access_faults(PRV_M);
    run_in_mode(PRV_S, access_faults, PRV_S);
    return failures;
}
