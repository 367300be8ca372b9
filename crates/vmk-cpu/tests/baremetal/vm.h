/* Paging test shared by vm_sv39.c (LEVELS 3) and vm_sv48.c (LEVELS 4).
 *
 * M-mode builds page tables, S-mode code (run_in_mode) accesses memory through them. Page
 * faults go to M (or to S where medeleg delegates them); the handlers record cause and tval.
 * RAM (gigapage 0x8000_0000) and the devices (gigapage 0) are identity mapped for S. */
#include "bm.h"

#if LEVELS == 3
#define SATP_MODE 8UL
#define NONCANON 0x0000004000000000UL /* bit 38 set, not sign extended */
#define HIGH_VA 0xffffffc000000000UL  /* first gigapage of the upper half */
#else
#define SATP_MODE 9UL
#define NONCANON 0x0000800000000000UL /* bit 47 set, not sign extended */
#define HIGH_VA 0xffff800000000000UL
#endif

#define PTE_V (1UL << 0)
#define PTE_R (1UL << 1)
#define PTE_W (1UL << 2)
#define PTE_X (1UL << 3)
#define PTE_U (1UL << 4)
#define PTE_G (1UL << 5)
#define PTE_A (1UL << 6)
#define PTE_D (1UL << 7)
#define RWAD (PTE_V | PTE_R | PTE_W | PTE_A | PTE_D)

#define TW 0x40000000UL       /* test window: 1 GiB slot 1 */
#define MEGA_PA 0x80400000UL  /* 2 MiB aligned RAM beyond the program */
#define GIGA_VA 0xc0000000UL  /* gigapage -> 0x8000_0000 */
#define BADGIGA_VA 0x100000000UL

typedef uint64_t pte_t;
static pte_t root[512] __attribute__((aligned(4096)));
static pte_t pool[16][512] __attribute__((aligned(4096)));
static int pool_used;
static uint8_t pages[8][4096] __attribute__((aligned(4096)));

__attribute__((section(".text.codepage"), aligned(4096), noinline)) long code_page_fn(void)
{
    return 0x42;
}

static unsigned long vpn(unsigned long va, int level) { return (va >> (12 + 9 * level)) & 511; }

/* The PTE for `va` at `level` (0 = 4 KiB leaf), creating intermediate tables. */
static pte_t *pte_at(unsigned long va, int level)
{
    pte_t *t = root;
    for (int l = LEVELS - 1; l > level; l--) {
        pte_t *e = &t[vpn(va, l)];
        if (!(*e & PTE_V)) {
            pte_t *n = pool[pool_used++];
            *e = (((unsigned long)n >> 12) << 10) | PTE_V;
        }
        t = (pte_t *)((*e >> 10) << 12);
    }
    return &t[vpn(va, level)];
}

static void map(unsigned long va, unsigned long pa, int level, unsigned long flags)
{
    *pte_at(va, level) = ((pa >> 12) << 10) | flags;
    asm volatile("sfence.vma" ::: "memory");
}

/* ---- S-mode accessors (argument: a virtual address) ---- */
static long s_load64(long va) { return (long)*(volatile uint64_t *)va; }
static long s_load8(long va) { return *(volatile uint8_t *)va; }
static long s_store64(long va)
{
    *(volatile uint64_t *)va = 0x5a5a5a5a00000000UL | (unsigned long)va;
    return 0;
}
static long s_amo(long va)
{
    long old;
    asm volatile("amoadd.d %0, %1, (%2)" : "=r"(old) : "r"(1L), "r"(va) : "memory");
    return old;
}
static long s_fetch(long va)
{
    register long a0 asm("a0") = 0;
    asm volatile("jalr ra, 0(%1)"
                 : "+r"(a0)
                 : "r"(va)
                 : "ra", "t0", "t1", "t2", "t3", "t4", "t5", "t6", "a1", "a2", "a3", "a4", "a5",
                   "a6", "a7", "memory");
    return a0;
}

static const char *acc_name(long (*fn)(long))
{
    if (fn == s_load64 || fn == s_load8)
        return "load";
    if (fn == s_store64)
        return "store";
    if (fn == s_amo)
        return "amo";
    if (fn == s_fetch)
        return "fetch";
    return "access";
}

/* Runs fn(va) in S-mode; expect_cause < 0: no trap. Returns fn's result. */
static long try_access(const char *what, long (*fn)(long), unsigned long va, long expect_cause)
{
    trap_reset();
    long r = run_in_mode(PRV_S, fn, (long)va);
    if (mtrap.count)
        printf("%s %s %lx: trap cause=%lx tval=%lx\n", what, acc_name(fn), va, mtrap.cause,
               mtrap.tval);
    else
        printf("%s %s %lx: ok r=%lx\n", what, acc_name(fn), va, r);
    if (expect_cause < 0) {
        CHECK_EQ(mtrap.count, 0);
    } else {
        EXPECT_MTRAP(expect_cause, va);
    }
    return r;
}

static void setup(void)
{
    /* identity: devices and RAM */
    map(0, 0, 2, RWAD);
    map(0x80000000UL, 0x80000000UL, 2, RWAD | PTE_X);
    map(TW + 0x0000, (unsigned long)pages[0], 0, RWAD);
    map(TW + 0x1000, (unsigned long)pages[1], 0, PTE_V | PTE_R | PTE_W); /* A=D=0 */
    map(TW + 0x2000, (unsigned long)pages[0], 0, RWAD);                  /* alias of +0 */
    map(TW + 0x3000, (unsigned long)pages[2], 0, PTE_V | PTE_R | PTE_A);  /* read-only */
    map(TW + 0x4000, (unsigned long)pages[3], 0, PTE_V | PTE_X | PTE_A);  /* execute-only */
    map(TW + 0x5000, (unsigned long)pages[4], 0, RWAD | PTE_U);           /* user page */
    map(TW + 0x6000, (unsigned long)pages[5], 0, RWAD & ~PTE_V);          /* invalid */
    map(TW + 0x7000, (unsigned long)pages[5], 0, PTE_V | PTE_W | PTE_A | PTE_D); /* W no R */
    unsigned long cp = (unsigned long)code_page_fn;
    map(TW + 0x8000, cp, 0, PTE_V | PTE_R | PTE_A);                      /* code, no X */
    map(TW + 0x9000, cp, 0, PTE_V | PTE_R | PTE_X | PTE_A);              /* code, X */
    map(TW + 0xa000, cp, 0, PTE_V | PTE_R | PTE_X | PTE_A | PTE_U);      /* user code */
    map(TW + 0xb000, (unsigned long)pages[6], 0, RWAD);                  /* remapped later */
    map(TW + 0xc000, (unsigned long)pages[6], 0, PTE_V);                 /* non-leaf at level 0 */
    map(TW + 0xd000, (unsigned long)pages[6], 0, RWAD | (1UL << 8));     /* RSW bit: ignored */
    map(TW + 0x200000, MEGA_PA, 1, PTE_V | PTE_R | PTE_W);               /* megapage, A=D=0 */
    map(TW + 0x400000, MEGA_PA + 0x1000, 1, RWAD);                       /* misaligned megapage */
    map(GIGA_VA, 0x80000000UL, 2, RWAD);                                 /* gigapage */
    map(BADGIGA_VA, 0x80001000UL, 2, RWAD);                              /* misaligned gigapage */
    map(HIGH_VA, 0x80000000UL, 2, RWAD);                                 /* upper half */
#if LEVELS == 4
    map(0x8000000000UL, 0, 3, RWAD);             /* terapage VA 512G -> PA 0 */
    map(0x10000000000UL, 0x40000000UL, 3, RWAD); /* misaligned terapage */
#endif
    for (int p = 0; p < 8; p++)
        for (int i = 0; i < 512; i++)
            ((uint64_t *)pages[p])[i] = ((uint64_t)p << 56) | ((uint64_t)i << 3);
    for (int i = 0; i < 1024; i++)
        ((uint64_t *)MEGA_PA)[i] = 0xabc0000000000000UL | ((uint64_t)i << 3);
    write_csr(satp, (SATP_MODE << 60) | ((unsigned long)root >> 12));
    asm volatile("sfence.vma" ::: "memory");
}

static volatile uint64_t marker = 0x1234567890abcdefUL;

static void basic(void)
{
    long r = try_access("4k", s_load64, TW + 0x18, -1);
    CHECK_EQ(r, (0UL << 56) | 0x18);
    try_access("4k", s_store64, TW + 0x20, -1);
    CHECK_EQ(((uint64_t *)pages[0])[4], 0x5a5a5a5a00000000UL | (TW + 0x20));
    r = try_access("alias", s_load64, TW + 0x2020, -1);
    CHECK_EQ(r, 0x5a5a5a5a00000000UL | (TW + 0x20));
    r = try_access("amo", s_amo, TW + 0x2020, -1);
    CHECK_EQ(((uint64_t *)pages[0])[4], 0x5a5a5a5a00000001UL | (TW + 0x20));
    r = try_access("mega", s_load64, TW + 0x200000 + 0x1ff8, -1);
    CHECK_EQ(r, 0xabc0000000000000UL | 0x1ff8);
    unsigned long off = (unsigned long)&marker - 0x80000000UL;
    r = try_access("giga", s_load64, GIGA_VA + off, -1);
    CHECK_EQ(r, marker);
    r = try_access("high-half", s_load64, HIGH_VA + off, -1);
    CHECK_EQ(r, marker);
#if LEVELS == 4
    r = try_access("tera", s_load64, 0x8000000000UL + (unsigned long)&marker, -1);
    CHECK_EQ(r, marker);
    try_access("misaligned tera", s_load64, 0x10000000000UL + 0x80, CAUSE_LOAD_PAGE);
#endif
    r = try_access("rsw", s_load64, TW + 0xd008, -1);
    CHECK_EQ(r, (6UL << 56) | 8);
    r = try_access("code X", s_fetch, TW + 0x9000 + ((unsigned long)code_page_fn & 0xfff), -1);
    CHECK_EQ(r, 0x42);
}

static void accessed_dirty(void)
{
    pte_t *p4k = pte_at(TW + 0x1000, 0), *pm = pte_at(TW + 0x200000, 1);
    printf("A/D before: 4k=%lx mega=%lx\n", *p4k & 0xff, *pm & 0xff);
    try_access("A/D", s_load64, TW + 0x1008, -1);
    try_access("A/D", s_load64, TW + 0x200008, -1);
    printf("A/D after load: 4k=%lx mega=%lx\n", *p4k & 0xff, *pm & 0xff);
    CHECK_EQ(*p4k & (PTE_A | PTE_D), PTE_A);
    CHECK_EQ(*pm & (PTE_A | PTE_D), PTE_A);
    try_access("A/D", s_store64, TW + 0x1010, -1);
    try_access("A/D", s_store64, TW + 0x200010, -1);
    printf("A/D after store: 4k=%lx mega=%lx\n", *p4k & 0xff, *pm & 0xff);
    CHECK_EQ(*p4k & (PTE_A | PTE_D), PTE_A | PTE_D);
    CHECK_EQ(*pm & (PTE_A | PTE_D), PTE_A | PTE_D);
    /* store to a fresh page sets A and D together; PPN and other bits are untouched */
    *p4k = ((unsigned long)pages[1] >> 12) << 10 | PTE_V | PTE_R | PTE_W | PTE_G;
    asm volatile("sfence.vma" ::: "memory");
    try_access("A/D", s_store64, TW + 0x1018, -1);
    printf("A/D store first: %lx ppn_ok=%d\n", *p4k & 0xff, (*p4k >> 10) == ((unsigned long)pages[1] >> 12));
    CHECK_EQ(*p4k & 0xff, PTE_V | PTE_R | PTE_W | PTE_G | PTE_A | PTE_D);
}

static void permissions(void)
{
    try_access("read-only", s_load64, TW + 0x3008, -1);
    try_access("read-only", s_store64, TW + 0x3008, CAUSE_STORE_PAGE);
    try_access("read-only", s_amo, TW + 0x3010, CAUSE_STORE_PAGE);
    try_access("exec-only", s_load64, TW + 0x4008, CAUSE_LOAD_PAGE);
    set_csr(mstatus, MSTATUS_MXR);
    long r = try_access("exec-only+MXR", s_load64, TW + 0x4008, -1);
    CHECK_EQ(r, (3UL << 56) | 8);
    clear_csr(mstatus, MSTATUS_MXR);
    try_access("user page", s_load64, TW + 0x5008, CAUSE_LOAD_PAGE);
    try_access("user page", s_store64, TW + 0x5008, CAUSE_STORE_PAGE);
    set_csr(mstatus, MSTATUS_SUM);
    r = try_access("user page+SUM", s_load64, TW + 0x5010, -1);
    CHECK_EQ(r, (4UL << 56) | 0x10);
    try_access("user page+SUM", s_store64, TW + 0x5010, -1);
    /* SUM never allows S to execute user pages */
    unsigned long fo = (unsigned long)code_page_fn & 0xfff;
    try_access("user code+SUM", s_fetch, TW + 0xa000 + fo, CAUSE_FETCH_PAGE);
    clear_csr(mstatus, MSTATUS_SUM);
    try_access("user code", s_fetch, TW + 0xa000 + fo, CAUSE_FETCH_PAGE);
    try_access("no-X code", s_fetch, TW + 0x8000 + fo, CAUSE_FETCH_PAGE);
    try_access("data page", s_fetch, TW + 0x0000, CAUSE_FETCH_PAGE);
    try_access("invalid", s_load64, TW + 0x6000, CAUSE_LOAD_PAGE);
    try_access("invalid", s_store64, TW + 0x6008, CAUSE_STORE_PAGE);
    try_access("invalid", s_fetch, TW + 0x6000, CAUSE_FETCH_PAGE);
    try_access("W-without-R", s_load64, TW + 0x7000, CAUSE_LOAD_PAGE);
    try_access("W-without-R", s_store64, TW + 0x7000, CAUSE_STORE_PAGE);
    try_access("level0-pointer", s_load64, TW + 0xc000, CAUSE_LOAD_PAGE);
    try_access("misaligned mega", s_load64, TW + 0x400000, CAUSE_LOAD_PAGE);
    try_access("misaligned giga", s_load8, BADGIGA_VA + 3, CAUSE_LOAD_PAGE);
    try_access("unmapped", s_load64, TW + 0x800000, CAUSE_LOAD_PAGE);
    try_access("non-canonical", s_load64, NONCANON, CAUSE_LOAD_PAGE);
    try_access("non-canonical", s_store64, NONCANON | 0x10, CAUSE_STORE_PAGE);
    /* M-mode ignores satp (MPRV=0) */
    trap_reset();
    long v = (long)*(volatile uint64_t *)pages[2];
    CHECK_EQ(v, 2UL << 56);
    CHECK_EQ(mtrap.count, 0);
}

/* the same faults delegated to S: stval = VA */
static void delegated(void)
{
    write_csr(medeleg, (1UL << CAUSE_FETCH_PAGE) | (1UL << CAUSE_LOAD_PAGE) | (1UL << CAUSE_STORE_PAGE));
    static const struct {
        long (*fn)(long);
        unsigned long va;
        unsigned long cause;
    } t[] = {
        {s_load64, TW + 0x6010, CAUSE_LOAD_PAGE},
        {s_store64, TW + 0x3018, CAUSE_STORE_PAGE},
        {s_fetch, TW + 0x8000, CAUSE_FETCH_PAGE},
    };
    for (unsigned i = 0; i < sizeof t / sizeof t[0]; i++) {
        trap_reset();
        run_in_mode(PRV_S, t[i].fn, (long)t[i].va);
        printf("delegated %s %lx: mtraps=%ld straps=%ld scause=%lx stval=%lx spp=%ld\n",
               acc_name(t[i].fn), t[i].va, mtrap.count, strap.count, strap.cause, strap.tval,
               (strap.status >> 8) & 1);
        CHECK_EQ(mtrap.count, 0);
        CHECK_EQ(strap.count, 1);
        CHECK_EQ(strap.cause, t[i].cause);
        CHECK_EQ(strap.tval, t[i].va);
    }
    write_csr(medeleg, 0);
}

static long s_remap(long va)
{
    long a = (long)*(volatile uint64_t *)va;
    pte_t *p = pte_at((unsigned long)va, 0); /* page tables are identity mapped */
    *p = (((unsigned long)pages[7] >> 12) << 10) | RWAD;
    asm volatile("sfence.vma %0, zero" ::"r"(va) : "memory");
    long b = (long)*(volatile uint64_t *)va;
    *p = (((unsigned long)pages[6] >> 12) << 10) | RWAD;
    asm volatile("sfence.vma" ::: "memory");
    long c = (long)*(volatile uint64_t *)va;
    return ((a >> 56) << 8) | ((b >> 56) << 4) | (c >> 56);
}

static void sfence(void)
{
    long r = try_access("sfence remap", s_remap, TW + 0xb000, -1);
    printf("remap pages seen: %lx\n", r);
    CHECK_EQ(r, 0x676);
}

static void satp_modes(void)
{
    unsigned long old = read_csr(satp);
    write_csr(satp, (11UL << 60) | 0x1234);  /* reserved mode */
    unsigned long a = read_csr(satp);
    write_csr(satp, (5UL << 60) | 0x1234);  /* reserved mode */
    unsigned long b = read_csr(satp);
    printf("satp reserved modes ignored: %d %d\n", a == old, b == old);
    CHECK_EQ(a, old);
    CHECK_EQ(b, old);
    /* ASID bits are WARL: write all ones, keep mode and PPN */
    write_csr(satp, old | (0xffffUL << 44));
    unsigned long c = read_csr(satp);
    CHECK_EQ(c >> 60, SATP_MODE);
    CHECK_EQ(c & ((1UL << 44) - 1), old & ((1UL << 44) - 1));
    write_csr(satp, old);
    asm volatile("sfence.vma" ::: "memory");
}

int main(void)
{
    setup();
    printf("satp mode=%ld\n", read_csr(satp) >> 60);
    CHECK_EQ(read_csr(satp) >> 60, SATP_MODE);
    accessed_dirty();
    basic();
    permissions();
    delegated();
    sfence();
    satp_modes();
    write_csr(satp, 0);
    return failures;
}
