/* Hostile guest code must end in guest-visible traps, never in a host error or a hang:
 * jumps into unmapped memory, fetches running off the end of RAM, page-table loops and
 * garbage PTEs, reserved instruction encodings, and self-modifying code (FENCE.I). */
#include "bm.h"

#define RAM_END 0x88000000UL

static void jump_to(const char *what, unsigned long target, unsigned long expect_epc)
{
    trap_reset();
    asm volatile("jalr ra, 0(%0)" ::"r"(target)
                 : "ra", "t0", "t1", "t2", "t3", "t4", "t5", "t6", "a0", "a1", "a2", "a3", "a4",
                   "a5", "a6", "a7", "memory");
    printf("%s: n=%ld cause=%lx epc=%lx\n", what, mtrap.count, mtrap.cause, mtrap.epc);
    CHECK_EQ(mtrap.count, 1);
    CHECK_EQ(mtrap.cause, CAUSE_FETCH_ACCESS);
    CHECK_EQ(mtrap.epc, expect_epc);
}

static void bad_jumps(void)
{
    jump_to("jump to 0", 0, 0);
    jump_to("jump past RAM", RAM_END, RAM_END);
    jump_to("jump to 0x9000_0000", 0x90000000UL, 0x90000000UL);
    jump_to("jump to high address", 0xfffffffffffff000UL, 0xfffffffffffff000UL);
    /* c.nop in the last halfword of RAM: execution runs off the end */
    *(volatile uint16_t *)(RAM_END - 2) = 0x0001;
    asm volatile("fence.i" ::: "memory");
    jump_to("run off the end of RAM", RAM_END - 2, RAM_END);
    /* (a 32-bit instruction whose second half lies beyond RAM is not tested here: QEMU 7.2
     * aborts on it, translator.c "phys_page != -1") */
    /* executing zeroed memory: c.illegal */
    static uint32_t zeros[2] __attribute__((aligned(16))) = {0, 0x00008067 /* ret */};
    asm volatile("fence.i" ::: "memory");
    trap_reset();
    asm volatile("jalr ra, 0(%0)" ::"r"(zeros) : "ra", "memory");
    printf("execute zeros: n=%ld cause=%lx tval=%lx epc_ok=%d\n", mtrap.count, mtrap.cause,
           mtrap.tval, mtrap.epc == (unsigned long)zeros);
    /* the handler skips 2 bytes at a time: two c.illegal, then ret */
    CHECK_EQ(mtrap.count, 2);
    CHECK_EQ(mtrap.cause, CAUSE_ILLEGAL);
}

/* ---- reserved encodings ---- */
static void reserved(void)
{
    static const struct {
        const char *name;
        uint32_t bits;
    } r[] = {
        {"all ones", 0xffffffff},
        {"fadd.d rm=5", 0x0220d053},
        {"fadd.d rm=6", 0x0220e053},
        {"fmadd.s rm=5", 0x1020d043},
        {"amo funct5=00101", 0x2801302f},
        {"lr.d rs2!=0", 0x1011302f},
        {"load funct3=7", 0x00017003},
        {"store funct3=4", 0x00014023},
        {"sll with bit30", 0x40001033},
        {"OP-32 M funct3=1", 0x0200103b},
        {"slli imm[11:6]=1", 0x04001013},
        {"slliw shamt[5]", 0x0200101b},
        {"fclass.d funct3=2", 0xe2002053},
        {"fsqrt.d rs2=1", 0x5a100053},
        {"fcvt.?.d rs2=4", 0xc2400053},
        {"ecall rd=1", 0x000000f3},
        {"uret", 0x00200073},
        {"csr dcsr", 0x7b002573},
        {"opcode 0x57 (V)", 0x00000057},
        {"branch funct3=2", 0x00002063},
        {"jalr funct3=1", 0x00001067},
    };
    for (unsigned i = 0; i < sizeof r / sizeof r[0]; i++) {
        static uint32_t code[2] __attribute__((aligned(8)));
        code[0] = r[i].bits;
        code[1] = 0x00008067; /* ret */
        asm volatile("fence.i" ::: "memory");
        trap_reset();
        asm volatile("jalr ra, 0(%0)" ::"r"(code)
                     : "ra", "t0", "t1", "t2", "t3", "t4", "t5", "t6", "a0", "a1", "a2", "a3",
                       "a4", "a5", "a6", "a7", "memory");
        printf("%s (%08x): n=%ld cause=%lx tval=%lx\n", r[i].name, r[i].bits, mtrap.count,
               mtrap.cause, mtrap.tval);
        EXPECT_MTRAP(CAUSE_ILLEGAL, r[i].bits);
    }
    /* FENCE ignores its reserved fields */
    trap_reset();
    asm volatile(".word 0x0ff5050f\n .word 0x8330000f" ::: "memory");
    printf("fence with reserved fields: n=%ld\n", mtrap.count);
    CHECK_EQ(mtrap.count, 0);
}

/* ---- self-modifying code ---- */
static void smc(void)
{
    static uint32_t code[4] __attribute__((aligned(16)));
    long (*f)(void) = (long (*)(void))(unsigned long)code;
    code[0] = 0x02a00513; /* li a0, 42 */
    code[1] = 0x00008067; /* ret */
    asm volatile("fence.i" ::: "memory");
    long a = f();
    code[0] = 0x06300513; /* li a0, 99 */
    asm volatile("fence.i" ::: "memory");
    long b = f();
    /* a store to the code page from a different virtual... from S-mode, then fence.i */
    code[0] = 0xfff00513; /* li a0, -1 */
    asm volatile("fence.i" ::: "memory");
    long c = f();
    printf("self-modifying code: %ld %ld %ld\n", a, b, c);
    CHECK_EQ(a, 42);
    CHECK_EQ(b, 99);
    CHECK_EQ(c, -1);
}

/* ---- page-table loops and garbage ---- */
static uint64_t root[512] __attribute__((aligned(4096)));
static uint64_t junk[4][512] __attribute__((aligned(4096)));
static uint64_t datapage[512] __attribute__((aligned(4096)));

static long s_load(long va) { return (long)*(volatile uint64_t *)va; }
static long s_store(long va)
{
    *(volatile uint64_t *)va = 0x1234;
    return 0;
}

static long s_fetch(long va)
{
    asm volatile("jalr ra, 0(%0)" ::"r"(va)
                 : "ra", "t0", "t1", "t2", "t3", "t4", "t5", "t6", "a0", "a1", "a2", "a3", "a4",
                   "a5", "a6", "a7", "memory");
    return 0;
}

static uint64_t rng = 0x2545f4914f6cdd1dUL;
static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Random PTEs. Level-1 table (junk[0]): mostly pointers to the level-0 tables, some random. Level-0 tables:
 * random leaf flags (V mostly set) over the data page or unmapped memory. Reserved bits
 * 63:54 stay zero and non-leaf PTEs keep A/D/U clear. */
static uint64_t garbage_pte(int level)
{
    uint64_t x = next();
    unsigned long pa;
    uint64_t flags = (x >> 32) & 0xff;
    unsigned sel = (unsigned)(x % 10);
    if (level == 1) {
        if (sel < 8) {
            pa = (unsigned long)junk[1 + (x >> 8) % 3];
            flags = 1;
        } else {
            pa = (unsigned long)datapage;
        }
    } else {
        pa = sel < 8 ? (unsigned long)datapage : 0x90000000UL + ((x >> 16) & 0xff000);
        if (sel < 8)
            flags |= 1;
    }
    if (!(flags & 0xe))
        flags &= ~(uint64_t)0xd0; /* non-leaf: A, D, U clear */
    return ((pa >> 12) << 10) | flags;
}

static void page_tables(void)
{
    root[0] = 0xcf;                                  /* 0..1G identity (devices) RWXAD */
    root[2] = ((0x80000000UL >> 12) << 10) | 0xcf; /* RAM identity */
    /* a loop: root[1] points to root itself. VA with vpn2 = vpn1 = vpn0 = 1 ends in a
     * pointer PTE at level 0 */
    root[1] = (((unsigned long)root >> 12) << 10) | 1;
    write_csr(satp, (8UL << 60) | ((unsigned long)root >> 12));
    asm volatile("sfence.vma" ::: "memory");
    unsigned long va = (1UL << 30) | (1UL << 21) | (1UL << 12);
    trap_reset();
    run_in_mode(PRV_S, s_load, (long)va);
    printf("page-table loop: n=%ld cause=%lx tval=%lx\n", mtrap.count, mtrap.cause, mtrap.tval);
    EXPECT_MTRAP(CAUSE_LOAD_PAGE, va);
    /* the loop used as a recursive mapping: VA (1,1,2) -> root[2] is a leaf at level 0?  No:
     * root[2] is a gigapage leaf, seen at level 0 it maps the page at PA 0x8000_0000 */
    va = (1UL << 30) | (1UL << 21) | (2UL << 12);
    trap_reset();
    long v = run_in_mode(PRV_S, s_load, (long)va);
    printf("recursive leaf: n=%ld value_ok=%d\n", mtrap.count,
           v == (long)*(volatile uint64_t *)0x80000000UL);
    /* a gigapage PTE reached at level 0 maps just one 4K page: not misaligned */
    CHECK_EQ(mtrap.count, 0);

    /* a page table in unmapped physical memory: the walk itself faults. Priv spec 4.3.2
     * step 2: an access fault of the original access type (QEMU 7.2 raises a page fault). */
    root[4] = ((0x90000000UL >> 12) << 10) | 1;
    asm volatile("sfence.vma" ::: "memory");
    static const struct {
        long (*fn)(long);
        unsigned long cause;
    } pt[] = {{s_load, CAUSE_LOAD_ACCESS}, {s_store, CAUSE_STORE_ACCESS}, {s_fetch, CAUSE_FETCH_ACCESS}};
    for (int i = 0; i < 3; i++) {
        va = 0x100000000UL + 0x1000UL * (unsigned long)i;
        trap_reset();
        run_in_mode(PRV_S, pt[i].fn, (long)va);
        printf("page table in unmapped memory (%d): n=%ld tval=%lx\n", i, mtrap.count, mtrap.tval);
        CHECK_EQ(mtrap.count, 1);
        CHECK_EQ(mtrap.tval, va);
        SPEC_CHECK_EQ(mtrap.cause, pt[i].cause);
    }

    /* garbage: root[3] -> junk[0]; every junk table full of random PTEs */
    for (int t = 0; t < 4; t++)
        for (int i = 0; i < 512; i++)
            junk[t][i] = garbage_pte(t == 0 ? 1 : 0);
    for (int i = 0; i < 512; i++)
        datapage[i] = 0xda7a0000UL | (uint64_t)i;
    root[3] = (((unsigned long)junk[0] >> 12) << 10) | 1;
    asm volatile("sfence.vma" ::: "memory");
    uint64_t h = 0xcbf29ce484222325UL;
    int counts[16] = {0};
    for (int k = 0; k < 200; k++) {
        unsigned long gva = 0xc0000000UL | (next() & 0x3ffffff8UL);
        if (k & 2) /* also the first 2 MiB: walks through junk[0][0] */
            gva &= ~0x3fe00000UL;
        int store = k & 1;
        trap_reset();
        long r = run_in_mode(PRV_S, store ? s_store : s_load, (long)gva);
        unsigned long cause = mtrap.count ? mtrap.cause : 15 + 0 * r;
        if (mtrap.count) {
            counts[mtrap.cause & 15]++;
            h = (h ^ (mtrap.cause * 1000 + (mtrap.tval == gva))) * 0x100000001b3UL;
            CHECK_EQ(mtrap.tval, gva);
        } else {
            counts[store ? 14 : 10]++; /* 10: load ok, 14: store ok */
            h = (h ^ (unsigned long)r) * 0x100000001b3UL;
        }
        (void)cause;
    }
    printf("garbage walks: load-ok=%d store-ok=%d load-access=%d store-access=%d load-page=%d "
           "store-page=%d sig=%lx\n",
           counts[10], counts[14], counts[CAUSE_LOAD_ACCESS], counts[CAUSE_STORE_ACCESS],
           counts[CAUSE_LOAD_PAGE], counts[CAUSE_STORE_PAGE], h);
    CHECK_EQ(counts[10] + counts[14] + counts[5] + counts[7] + counts[13] + counts[15], 200);
    CHECK(counts[10] > 0 && counts[14] > 0 && counts[5] > 0 && counts[7] > 0 && counts[13] > 0);
    /* A/D updates on garbage leaves are deterministic too */
    uint64_t jh = 0;
    for (int t = 0; t < 4; t++)
        for (int i = 0; i < 512; i++)
            jh = (jh ^ junk[t][i]) * 0x100000001b3UL;
    printf("junk tables after walks: %lx\n", jh);
    write_csr(satp, 0);
    asm volatile("sfence.vma" ::: "memory");
}

int main(void)
{
    bad_jumps();
    reserved();
    smc();
    page_tables();
    return failures;
}
