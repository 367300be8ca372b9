/* Misaligned loads and stores (the vCPU performs them, no trap): every width and offset,
 * within a page, across a page boundary of physical memory, and across a virtual page
 * boundary whose two pages are not physically adjacent. Misaligned AMO/LR/SC trap. */
#include "bm.h"

static uint8_t buf[3 * 4096] __attribute__((aligned(4096)));
static uint64_t root[512] __attribute__((aligned(4096)));
static uint64_t l1[512] __attribute__((aligned(4096)));
static uint64_t l0[512] __attribute__((aligned(4096)));

static uint64_t sig;
static void mix(uint64_t v) { sig = (sig ^ v) * 0x100000001b3UL; }

static uint64_t expect_le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static void fill(uint8_t *p, unsigned n, unsigned seed)
{
    for (unsigned i = 0; i < n; i++)
        p[i] = (uint8_t)(i * 37 + seed * 11 + 1);
}

/* Loads of every width at p (physical or virtual address; `ref` is the same bytes as seen
 * from M through the identity mapping). */
static long loads_at(long arg)
{
    uint8_t *p = (uint8_t *)arg;
    uint64_t lh, lhu, lw, lwu, ld;
    asm volatile("lh %0, 0(%5)\n lhu %1, 0(%5)\n lw %2, 0(%5)\n lwu %3, 0(%5)\n ld %4, 0(%5)"
                 : "=&r"(lh), "=&r"(lhu), "=&r"(lw), "=&r"(lwu), "=&r"(ld)
                 : "r"(p)
                 : "memory");
    uint64_t fw, fd;
    asm volatile("flw ft0, 0(%2)\n fmv.x.w %0, ft0\n fld ft1, 0(%2)\n fmv.x.d %1, ft1"
                 : "=&r"(fw), "=&r"(fd)
                 : "r"(p)
                 : "ft0", "ft1", "memory");
    mix(lh);
    mix(lhu);
    mix(lw);
    mix(lwu);
    mix(ld);
    mix(fw);
    mix(fd);
    uint64_t e8 = expect_le(p, 8); /* p readable through the same mapping */
    int ok = lh == (uint64_t)(int64_t)(int16_t)e8 && lhu == (e8 & 0xffff) &&
             lw == (uint64_t)(int64_t)(int32_t)e8 && lwu == (e8 & 0xffffffffUL) && ld == e8 &&
             fw == (uint64_t)(int64_t)(int32_t)e8 && fd == e8;
    return ok;
}

static long stores_at(long arg)
{
    uint8_t *p = (uint8_t *)arg;
    int ok = 1;
    for (int w = 2; w <= 8; w *= 2) {
        memset(p - 8, 0xee, 24);
        uint64_t v = 0x8877665544332211UL;
        switch (w) {
        case 2: asm volatile("sh %0, 0(%1)" ::"r"(v), "r"(p) : "memory"); break;
        case 4: asm volatile("sw %0, 0(%1)" ::"r"(v), "r"(p) : "memory"); break;
        case 8: asm volatile("sd %0, 0(%1)" ::"r"(v), "r"(p) : "memory"); break;
        }
        for (int i = -8; i < 16; i++) {
            uint8_t e = (i >= 0 && i < w) ? (uint8_t)(v >> (8 * i)) : 0xee;
            if (p[i] != e)
                ok = 0;
        }
        mix(expect_le(p - 4, 8));
        mix(expect_le(p + 4, 8));
    }
    /* FP stores */
    memset(p - 8, 0xee, 24);
    uint64_t d = 0x0123456789abcdefUL;
    asm volatile("fmv.d.x ft0, %0\n fsw ft0, 0(%1)\n fsd ft0, 4(%1)" ::"r"(d), "r"(p) : "ft0", "memory");
    if (expect_le(p, 4) != (d & 0xffffffffUL) || expect_le(p + 4, 8) != d)
        ok = 0;
    mix(expect_le(p, 8));
    return ok;
}

static void run_all(const char *what, long mode, uint8_t *base, const int *offs, int noffs)
{
    int bad = 0;
    for (int k = 0; k < noffs; k++) {
        long a = (long)(base + offs[k]);
        long ok1 = mode == PRV_M ? loads_at(a) : run_in_mode(mode, loads_at, a);
        long ok2 = mode == PRV_M ? stores_at(a) : run_in_mode(mode, stores_at, a);
        if (!ok1 || !ok2) {
            printf("  %s offset %d: loads %s stores %s\n", what, offs[k], ok1 ? "ok" : "WRONG",
                   ok2 ? "ok" : "WRONG");
            bad++;
        }
    }
    printf("%s: %d offsets, %d wrong, sig=%lx\n", what, noffs, bad, sig);
    CHECK_EQ(bad, 0);
    CHECK_EQ(mtrap.count, 0);
}

static void amo_at(const char *name, unsigned long addr, unsigned long cause, int which)
{
    unsigned long pc, r = 0;
    trap_reset();
    switch (which) {
    case 0: asm volatile("lla %0, 1f\n1: amoadd.w %1, %1, (%2)" : "=&r"(pc), "+r"(r) : "r"(addr) : "memory"); break;
    case 1: asm volatile("lla %0, 1f\n1: amoswap.d %1, %1, (%2)" : "=&r"(pc), "+r"(r) : "r"(addr) : "memory"); break;
    case 2: asm volatile("lla %0, 1f\n1: lr.w %1, (%2)" : "=&r"(pc), "+r"(r) : "r"(addr) : "memory"); break;
    case 3: asm volatile("lla %0, 1f\n1: lr.d %1, (%2)" : "=&r"(pc), "+r"(r) : "r"(addr) : "memory"); break;
    case 4: asm volatile("lla %0, 1f\n1: sc.d %1, %1, (%2)" : "=&r"(pc), "+r"(r) : "r"(addr) : "memory"); break;
    case 5: asm volatile("lla %0, 1f\n1: amomax.d %1, %1, (%2)" : "=&r"(pc), "+r"(r) : "r"(addr) : "memory"); break;
    }
    if (which == 4) {
        /* QEMU 7.2 fails an SC without reservation before checking alignment */
        SPEC_CHECK_EQ(mtrap.count, 1);
        SPEC_CHECK_EQ(mtrap.cause, cause);
        return;
    }
    printf("misaligned %s: n=%ld tval_off=%lx epc_ok=%d\n", name, mtrap.count,
           mtrap.tval - (unsigned long)buf, mtrap.epc == pc);
    CHECK_EQ(mtrap.count, 1);
    CHECK_EQ(mtrap.tval, addr);
    CHECK_EQ(mtrap.epc, pc);
    if (cause == CAUSE_MISALIGNED_STORE) /* QEMU 7.2 reports AMOs as load-misaligned */
        SPEC_CHECK_EQ(mtrap.cause, cause);
    else
        CHECK_EQ(mtrap.cause, cause);
}

int main(void)
{
    static const int offs_in[] = {1, 2, 3, 4, 5, 6, 7, 9, 13, 2047};
    static const int offs_cross[] = {-7, -6, -5, -4, -3, -2, -1};
    fill(buf, sizeof buf, 1);
    sig = 0xcbf29ce484222325UL;
    run_all("M in-page", PRV_M, buf + 64, offs_in, 10);
    fill(buf, sizeof buf, 2);
    run_all("M cross-page", PRV_M, buf + 4096, offs_cross, 7);
    fill(buf, sizeof buf, 3);
    run_all("S bare cross-page", PRV_S, buf + 8192, offs_cross, 7);

    /* Sv39: VA 0x4000_0000 -> buf page 2, VA 0x4000_1000 -> buf page 0 (not adjacent) */
    root[0] = (0UL >> 12) << 10 | 0xcf;                        /* 0..1G identity, RWXAD */
    root[2] = (0x80000000UL >> 12) << 10 | 0xcf;               /* RAM identity */
    root[1] = ((unsigned long)l1 >> 12) << 10 | 1;
    l1[0] = ((unsigned long)l0 >> 12) << 10 | 1;
    l0[0] = (((unsigned long)buf + 8192) >> 12) << 10 | 0xc7; /* RW AD */
    l0[1] = ((unsigned long)buf >> 12) << 10 | 0xc7;
    write_csr(satp, (8UL << 60) | ((unsigned long)root >> 12));
    asm volatile("sfence.vma" ::: "memory");
    fill(buf, sizeof buf, 4);
    run_all("S sv39 cross-page (split physical)", PRV_S, (uint8_t *)0x40001000UL, offs_cross, 7);
    /* the bytes went to the right physical pages */
    long v = run_in_mode(PRV_S, loads_at, 0x40000ffdL);
    CHECK_EQ(v, 1);
    *(volatile uint64_t *)(buf + 8192 + 4088) = 0x1111111111111111UL;
    *(volatile uint64_t *)buf = 0x2222222222222222UL;
    uint64_t got;
    asm volatile("ld %0, 0(%1)" : "=r"(got) : "r"(buf + 4093)); /* M: physical neighbours */
    uint64_t expect_phys = expect_le(buf + 4093, 8);
    CHECK_EQ(got, expect_phys);
    write_csr(satp, 0);
    asm volatile("sfence.vma" ::: "memory");

    /* misaligned atomics trap (LR: load address misaligned; AMO/SC: store/AMO misaligned) */
    unsigned long a = (unsigned long)buf + 130;
    amo_at("amoadd.w", a, CAUSE_MISALIGNED_STORE, 0);
    amo_at("amoswap.d", a + 4, CAUSE_MISALIGNED_STORE, 1);
    amo_at("amomax.d", a + 1, CAUSE_MISALIGNED_STORE, 5);
    amo_at("lr.w", a, CAUSE_MISALIGNED_LOAD, 2);
    amo_at("lr.d", a + 4, CAUSE_MISALIGNED_LOAD, 3);
    amo_at("sc.d", a + 4, CAUSE_MISALIGNED_STORE, 4);
    printf("signature %lx\n", sig);
    return failures;
}
