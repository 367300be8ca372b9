/* Self-checking RV64IMAFDC program: computes results of many instruction forms over tricky
 * operands and prints per-instruction signatures (FNV hashes over results and fflags), plus
 * spot checks of values the spec defines (division by zero, overflow, fcvt saturation, NaN
 * boxing, LR/SC). The compressed section executes every RVC instruction form explicitly. */
#include "bm.h"
#include "isa_fp.h"

static uint64_t h;
static void hinit(void) { h = 0xcbf29ce484222325UL; }
static void hmix(uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        h ^= (v >> (8 * i)) & 0xff;
        h *= 0x100000001b3UL;
    }
}

static const uint64_t ivals[] = {
    0, 1, 2, 3, 0x1f, 0x20, 0x3f, 0x40, -1UL, -2UL, 0x7fffffffffffffffUL, 0x8000000000000000UL,
    0x7fffffffUL, 0x80000000UL, 0xffffffffUL, 0xffffffff80000000UL, 0x123456789abcdef0UL,
    0xfedcba9876543210UL, 0x00000000deadbeefUL, 0x5555555555555555UL, -31UL, 100,
};
#define NIV (sizeof ivals / sizeof ivals[0])

/* ---- integer register-register and register-immediate ops ---- */
#define RR(name, insn)                                                                     \
    static uint64_t name(uint64_t a, uint64_t b)                                           \
    {                                                                                      \
        uint64_t r;                                                                        \
        asm volatile(insn " %0, %1, %2" : "=r"(r) : "r"(a), "r"(b));                       \
        return r;                                                                          \
    }
RR(op_add, "add") RR(op_sub, "sub") RR(op_sll, "sll") RR(op_slt, "slt") RR(op_sltu, "sltu")
RR(op_xor, "xor") RR(op_srl, "srl") RR(op_sra, "sra") RR(op_or, "or") RR(op_and, "and")
RR(op_addw, "addw") RR(op_subw, "subw") RR(op_sllw, "sllw") RR(op_srlw, "srlw")
RR(op_sraw, "sraw") RR(op_mul, "mul") RR(op_mulh, "mulh") RR(op_mulhsu, "mulhsu")
RR(op_mulhu, "mulhu") RR(op_mulw, "mulw") RR(op_div, "div") RR(op_divu, "divu")
RR(op_rem, "rem") RR(op_remu, "remu") RR(op_divw, "divw") RR(op_divuw, "divuw")
RR(op_remw, "remw") RR(op_remuw, "remuw")

#define RI(name, insn, imm)                                                                \
    static uint64_t name(uint64_t a, uint64_t b)                                           \
    {                                                                                      \
        uint64_t r;                                                                        \
        (void)b;                                                                           \
        asm volatile(insn " %0, %1, " #imm : "=r"(r) : "r"(a));                            \
        return r;                                                                          \
    }
RI(op_addi, "addi", -2048) RI(op_slti, "slti", -1) RI(op_sltiu, "sltiu", -1)
RI(op_xori, "xori", -1) RI(op_ori, "ori", 0x555) RI(op_andi, "andi", -16)
RI(op_slli, "slli", 63) RI(op_srli, "srli", 63) RI(op_srai, "srai", 63)
RI(op_slli1, "slli", 31) RI(op_srli1, "srli", 32) RI(op_srai1, "srai", 1)
RI(op_addiw, "addiw", 2047) RI(op_slliw, "slliw", 31) RI(op_srliw, "srliw", 31)
RI(op_sraiw, "sraiw", 31) RI(op_srliw0, "srliw", 0) RI(op_sraiw0, "sraiw", 0)

static const struct {
    const char *name;
    uint64_t (*fn)(uint64_t, uint64_t);
} int_ops[] = {
    {"add", op_add},       {"sub", op_sub},       {"sll", op_sll},     {"slt", op_slt},
    {"sltu", op_sltu},     {"xor", op_xor},       {"srl", op_srl},     {"sra", op_sra},
    {"or", op_or},         {"and", op_and},       {"addw", op_addw},   {"subw", op_subw},
    {"sllw", op_sllw},     {"srlw", op_srlw},     {"sraw", op_sraw},   {"mul", op_mul},
    {"mulh", op_mulh},     {"mulhsu", op_mulhsu}, {"mulhu", op_mulhu}, {"mulw", op_mulw},
    {"div", op_div},       {"divu", op_divu},     {"rem", op_rem},     {"remu", op_remu},
    {"divw", op_divw},     {"divuw", op_divuw},   {"remw", op_remw},   {"remuw", op_remuw},
    {"addi", op_addi},     {"slti", op_slti},     {"sltiu", op_sltiu}, {"xori", op_xori},
    {"ori", op_ori},       {"andi", op_andi},     {"slli63", op_slli}, {"srli63", op_srli},
    {"srai63", op_srai},   {"slli31", op_slli1},  {"srli32", op_srli1}, {"srai1", op_srai1},
    {"addiw", op_addiw},   {"slliw31", op_slliw}, {"srliw31", op_srliw}, {"sraiw31", op_sraiw},
    {"srliw0", op_srliw0}, {"sraiw0", op_sraiw0},
};

static void integer(void)
{
    for (unsigned o = 0; o < sizeof int_ops / sizeof int_ops[0]; o++) {
        hinit();
        for (unsigned i = 0; i < NIV; i++)
            for (unsigned j = 0; j < NIV; j++)
                hmix(int_ops[o].fn(ivals[i], ivals[j]));
        printf("%s %016lx\n", int_ops[o].name, h);
    }
    const uint64_t MIN = 0x8000000000000000UL;
    CHECK_EQ(op_div(5, 0), -1UL);
    CHECK_EQ(op_divu(5, 0), -1UL);
    CHECK_EQ(op_rem(5, 0), 5);
    CHECK_EQ(op_remu(5, 0), 5);
    CHECK_EQ(op_div(MIN, -1UL), MIN);
    CHECK_EQ(op_rem(MIN, -1UL), 0);
    CHECK_EQ(op_divw(5, 0), -1UL);
    CHECK_EQ(op_divuw(5, 0), -1UL);
    CHECK_EQ(op_remw(0xffffffff80000005UL, 0), 0xffffffff80000005UL);
    CHECK_EQ(op_remuw(0x1234567880000005UL, 0), 0xffffffff80000005UL);
    CHECK_EQ(op_divw(0x80000000UL, -1UL), 0xffffffff80000000UL);
    CHECK_EQ(op_remw(0x80000000UL, -1UL), 0);
    CHECK_EQ(op_addw(0x7fffffffUL, 1), 0xffffffff80000000UL);
    CHECK_EQ(op_sllw(1, 31), 0xffffffff80000000UL);
    CHECK_EQ(op_sllw(1, 32), 1); /* shift amount is rs2[4:0] */
    CHECK_EQ(op_sraw(0x80000000UL, 31), -1UL);
    CHECK_EQ(op_srlw(0xffffffff80000000UL, 31), 1);
    CHECK_EQ(op_sll(1, 64 + 63), MIN);
    CHECK_EQ(op_mulh(MIN, MIN), 0x4000000000000000UL);
    CHECK_EQ(op_mulhsu(-1UL, -1UL), -1UL);
    CHECK_EQ(op_mulhu(-1UL, -1UL), -2UL);
    CHECK_EQ(op_mulw(0x10000UL, 0x10000UL), 0);
    CHECK_EQ(op_mulw(0x7fffffffUL, 2), -2UL);
    /* lui / auipc */
    uint64_t lui, pc1, pc2;
    asm volatile("lui %0, 0x80000" : "=r"(lui));
    asm volatile("auipc %0, 0\n auipc %1, 0xfffff" : "=r"(pc1), "=r"(pc2));
    printf("lui 0x80000 = %lx, auipc delta = %lx\n", lui, pc2 - pc1);
    CHECK_EQ(lui, 0xffffffff80000000UL);
    CHECK_EQ(pc2 - pc1, 4 - 0x1000);
}

/* ---- loads, stores, branches, jumps ---- */
static void memory_branches(void)
{
    static volatile uint8_t m[16] __attribute__((aligned(16))) = {
        0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x01, 0x7f, 0xff, 0x00, 0x80, 0, 0, 0};
    uint64_t v[7];
    asm volatile("lb %0, 0(%7)\n lbu %1, 0(%7)\n lh %2, 0(%7)\n lhu %3, 0(%7)\n lw %4, 0(%7)\n"
                 "lwu %5, 0(%7)\n ld %6, 0(%7)"
                 : "=&r"(v[0]), "=&r"(v[1]), "=&r"(v[2]), "=&r"(v[3]), "=&r"(v[4]), "=&r"(v[5]),
                   "=&r"(v[6])
                 : "r"(m)
                 : "memory");
    printf("loads: %lx %lx %lx %lx %lx %lx %lx\n", v[0], v[1], v[2], v[3], v[4], v[5], v[6]);
    CHECK_EQ(v[0], 0xffffffffffffff81UL);
    CHECK_EQ(v[1], 0x81);
    CHECK_EQ(v[4], 0xffffffff84838281UL);
    CHECK_EQ(v[5], 0x84838281UL);
    uint64_t x = 0x1122334455667788UL;
    asm volatile("sb %0, 8(%1)\n sh %0, 10(%1)\n sw %0, 12(%1)" ::"r"(x), "r"(m) : "memory");
    uint64_t hi;
    asm volatile("ld %0, 8(%1)" : "=r"(hi) : "r"(m) : "memory");
    printf("stores: %lx\n", hi);
    CHECK_EQ(hi, 0x5566778877887f88UL);
    /* negative offsets, x0 as base register */
    asm volatile("ld %0, -8(%1)" : "=r"(hi) : "r"(m + 8) : "memory");
    CHECK_EQ(hi, 0x8887868584838281UL);

    hinit();
    for (unsigned i = 0; i < NIV; i++)
        for (unsigned j = 0; j < NIV; j++) {
            uint64_t a = ivals[i], b = ivals[j], bits = 0;
            asm volatile("li %0, 0\n"
                         "beq %1, %2, 1f\n ori %0, %0, 1\n 1:"
                         "bne %1, %2, 1f\n ori %0, %0, 2\n 1:"
                         "blt %1, %2, 1f\n ori %0, %0, 4\n 1:"
                         "bge %1, %2, 1f\n ori %0, %0, 8\n 1:"
                         "bltu %1, %2, 1f\n ori %0, %0, 16\n 1:"
                         "bgeu %1, %2, 1f\n ori %0, %0, 32\n 1:"
                         : "=&r"(bits)
                         : "r"(a), "r"(b));
            hmix(bits);
        }
    printf("branches %016lx\n", h);
    /* jal/jalr link values, jalr clears bit 0 of the target */
    uint64_t link, target, link2;
    asm volatile(".option push\n .option norvc\n"
                 "jal %0, 1f\n nop\n 1: lla %1, 2f\n addi %1, %1, 1\n jalr %2, 0(%1)\n nop\n"
                 "2: .option pop"
                 : "=&r"(link), "=&r"(target), "=&r"(link2));
    printf("jal/jalr: link delta %ld, jalr link delta %ld\n", (long)(target - 1 - link),
           (long)(target - 1 - link2));
    CHECK_EQ(target - 1 - link2, 4);
}

/* ---- atomics ---- */
#define AMO(name, insn)                                                                    \
    static uint64_t name(volatile uint64_t *p, uint64_t v)                                 \
    {                                                                                      \
        uint64_t old;                                                                      \
        asm volatile(insn " %0, %2, (%1)" : "=&r"(old) : "r"(p), "r"(v) : "memory");       \
        return old;                                                                        \
    }
AMO(amoswap_w, "amoswap.w") AMO(amoadd_w, "amoadd.w") AMO(amoxor_w, "amoxor.w")
AMO(amoand_w, "amoand.w") AMO(amoor_w, "amoor.w") AMO(amomin_w, "amomin.w")
AMO(amomax_w, "amomax.w") AMO(amominu_w, "amominu.w") AMO(amomaxu_w, "amomaxu.w")
AMO(amoswap_d, "amoswap.d.aqrl") AMO(amoadd_d, "amoadd.d.aq") AMO(amoxor_d, "amoxor.d.rl")
AMO(amoand_d, "amoand.d") AMO(amoor_d, "amoor.d") AMO(amomin_d, "amomin.d")
AMO(amomax_d, "amomax.d") AMO(amominu_d, "amominu.d") AMO(amomaxu_d, "amomaxu.d")

static const struct {
    const char *name;
    uint64_t (*fn)(volatile uint64_t *, uint64_t);
} amos[] = {
    {"amoswap.w", amoswap_w}, {"amoadd.w", amoadd_w},   {"amoxor.w", amoxor_w},
    {"amoand.w", amoand_w},   {"amoor.w", amoor_w},     {"amomin.w", amomin_w},
    {"amomax.w", amomax_w},   {"amominu.w", amominu_w}, {"amomaxu.w", amomaxu_w},
    {"amoswap.d", amoswap_d}, {"amoadd.d", amoadd_d},   {"amoxor.d", amoxor_d},
    {"amoand.d", amoand_d},   {"amoor.d", amoor_d},     {"amomin.d", amomin_d},
    {"amomax.d", amomax_d},   {"amominu.d", amominu_d}, {"amomaxu.d", amomaxu_d},
};

static void atomics(void)
{
    static volatile uint64_t cell[2] __attribute__((aligned(16)));
    for (unsigned o = 0; o < sizeof amos / sizeof amos[0]; o++) {
        hinit();
        for (unsigned i = 0; i < NIV; i++)
            for (unsigned j = 0; j < NIV; j += 3) {
                cell[0] = ivals[i];
                cell[1] = 0x0badf00d0badf00dUL;
                hmix(amos[o].fn(&cell[0], ivals[j]));
                hmix(cell[0]);
                hmix(cell[1]);
            }
        printf("%s %016lx\n", amos[o].name, h);
    }
    /* .w: old value sign-extended, upper word untouched */
    cell[0] = 0x11111111fffffffeUL;
    uint64_t old = amoadd_w(&cell[0], 3);
    CHECK_EQ(old, -2UL);
    CHECK_EQ(cell[0], 0x1111111100000001UL);
    cell[0] = 0x7fffffff;
    old = amomin_w(&cell[0], 0x80000000UL);
    CHECK_EQ(cell[0], 0x80000000UL);
    /* an AMO with rd = x0 still writes memory */
    cell[0] = 5;
    asm volatile("amoadd.d zero, %1, (%0)" ::"r"(&cell[0]), "r"(7L) : "memory");
    CHECK_EQ(cell[0], 12);

    /* LR/SC */
    uint64_t lr, sc1, sc2, sc3, lrw, scw;
    cell[0] = 100;
    asm volatile("lr.d %0, (%3)\n addi %0, %0, 1\n sc.d %1, %0, (%3)\n sc.d %2, %0, (%3)"
                 : "=&r"(lr), "=&r"(sc1), "=&r"(sc2)
                 : "r"(&cell[0])
                 : "memory");
    printf("lr/sc: value=%ld first sc=%ld second sc (no reservation) fails=%d\n", cell[0], sc1,
           sc2 != 0);
    CHECK_EQ(sc1, 0);
    CHECK(sc2 != 0);
    CHECK_EQ(cell[0], 101);
    /* SC without any LR fails and does not write */
    asm volatile("sc.d %0, %1, (%2)" : "=&r"(sc3) : "r"(7L), "r"(&cell[0]) : "memory");
    CHECK(sc3 != 0);
    CHECK_EQ(cell[0], 101);
    /* lr.w sign-extends; sc.w writes 32 bits */
    cell[0] = 0x22222222f0000000UL;
    asm volatile("lr.w.aq %0, (%2)\n sc.w.rl %1, %3, (%2)"
                 : "=&r"(lrw), "=&r"(scw)
                 : "r"(&cell[0]), "r"(0x123456789UL)
                 : "memory");
    printf("lr.w=%lx sc.w=%ld mem=%lx\n", lrw, scw, cell[0]);
    CHECK_EQ(lrw, 0xfffffffff0000000UL);
    CHECK_EQ(scw, 0);
    CHECK_EQ(cell[0], 0x2222222223456789UL);
    /* an LR/SC loop (what compilers emit for CAS) */
    cell[0] = 0;
    for (int i = 0; i < 50; i++) {
        uint64_t tmp, fail;
        asm volatile("1: lr.d %0, (%2)\n addi %0, %0, 3\n sc.d %1, %0, (%2)\n bnez %1, 1b"
                     : "=&r"(tmp), "=&r"(fail)
                     : "r"(&cell[0])
                     : "memory");
    }
    CHECK_EQ(cell[0], 150);
}

/* ---- floating point ---- */
static const uint64_t dvals[] = {
    0x0000000000000000UL, 0x8000000000000000UL, 0x3ff0000000000000UL, /* 0, -0, 1 */
    0xbff8000000000000UL, 0x4008000000000000UL, 0x7fe1ccf385ebc8a0UL, /* -1.5, 3, 1e308 */
    0xffe1ccf385ebc8a0UL, 0x0000000000000001UL, 0x000fffffffffffffUL, /* -1e308, denormals */
    0x7ff0000000000000UL, 0xfff0000000000000UL, 0x7ff8000000000000UL, /* inf, -inf, qNaN */
    0x7ff0000000000001UL, 0x3fd5555555555555UL, 0x4004000000000000UL, /* sNaN, 1/3, 2.5 */
    0xc004000000000000UL, 0x4415af1d78b58c40UL, 0xc415af1d78b58c40UL, /* -2.5, 1e20, -1e20 */
    0x41f0000000080000UL, 0xbfd999999999999aUL, 0x41dfffffffc00000UL, /* 2^32+.5, -0.4, 2^31-1 */
    0xc1e0000000000000UL, 0x43e0000000000000UL, 0xfff8000000000001UL, /* -2^31, 2^63, -qNaN */
};
static const uint32_t svals[] = {
    0x00000000, 0x80000000, 0x3f800000, 0xbfc00000, 0x40400000, 0x7f7fffff, 0xff7fffff,
    0x00000001, 0x007fffff, 0x7f800000, 0xff800000, 0x7fc00000, 0x7f800001, 0x3eaaaaab,
    0x40200000, 0xc0200000, 0x60ad78ec, 0xe0ad78ec, 0x4f800000, 0xbecccccd, 0x4effffff,
    0xcf000000, 0x5f000000, 0x3f7fffff,
};
#define NDV (sizeof dvals / sizeof dvals[0])
#define NSV (sizeof svals / sizeof svals[0])

static uint64_t operand(int kind, unsigned i)
{
    int k = kind / 10;
    if (k == 1)
        return 0xffffffff00000000UL | svals[i % NSV];
    if (k == 2)
        return ivals[i % NIV];
    return dvals[i % NDV];
}

static unsigned nvals(int kind)
{
    int k = kind / 10;
    return k == 1 ? NSV : k == 2 ? NIV : NDV;
}

/* index of the static rounding mode named at the end of an op name, -1 if none */
static int rm_suffix(const char *nm)
{
    static const char *rms[] = {" rne", " rtz", " rdn", " rup", " rmm", " dyn"};
    unsigned n = 0;
    while (nm[n])
        n++;
    for (int i = 0; i < 6; i++)
        if (n > 4 && memcmp(nm + n - 4, rms[i], 4) == 0)
            return i;
    return -1;
}

static void fp_ops_all(void)
{
    uint64_t static_hash[5] = {0};
    int have = 0; /* bit i: static_hash[i] holds the previous op's rm i */
    for (unsigned o = 0; o < sizeof fp_ops / sizeof fp_ops[0]; o++) {
        int kind = fp_ops[o].kind, arity = kind % 10;
        unsigned n = nvals(kind);
        const char *nm = fp_ops[o].name;
        int rm = rm_suffix(nm), dyn = rm == 5;
        for (int frm = 0; frm < (dyn ? 5 : 1); frm++) {
            uint64_t r, fl;
            write_csr(frm, frm);
            hinit();
            uint64_t flags_or = 0;
            for (unsigned i = 0; i < n; i++) {
                for (unsigned j = 0; j < (arity >= 2 ? n : 1); j++) {
                    for (unsigned k = 0; k < (arity == 3 ? 4 : 1); k++) {
                        fp_ops[o].fn(operand(kind, i), operand(kind, j),
                                     operand(kind, (i * 7 + j * 3 + k * 5) % n), &r, &fl);
                        hmix(r);
                        hmix(fl);
                        flags_or |= fl;
                    }
                }
            }
            if (dyn) {
                printf("%s frm=%d %016lx flags=%lx\n", nm, frm, h, flags_or);
                if (!(have & (1 << frm)) || static_hash[frm] != h) {
                    printf("FAIL %s frm=%d differs from the static rounding mode\n", nm, frm);
                    failures++;
                }
            } else {
                printf("%s %016lx flags=%lx\n", nm, h, flags_or);
                if (rm == 0)
                    have = 0;
                if (rm >= 0) {
                    static_hash[rm] = h;
                    have |= 1 << rm;
                }
            }
        }
        write_csr(frm, 0);
    }
}

static void fp_checks(void)
{
    uint64_t r, fl;
    /* dynamic rounding with frm = RTZ equals static RTZ */
    write_csr(frm, 1);
    uint64_t r1, r2, f1, f2;
    fdiv_d_dyn(0x3ff0000000000000UL, 0x4008000000000000UL, 0, &r1, &f1);
    fdiv_d_rtz(0x3ff0000000000000UL, 0x4008000000000000UL, 0, &r2, &f2);
    CHECK_EQ(r1, r2);
    CHECK_EQ(f1, 0x1); /* NX */
    write_csr(frm, 0);
    /* fcvt saturation */
    fcvt_w_d_rne(0x4415af1d78b58c40UL, 0, 0, &r, &fl); /* 1e20 */
    CHECK_EQ(r, 0x7fffffff);
    CHECK_EQ(fl, 0x10);
    fcvt_w_d_rne(0xc415af1d78b58c40UL, 0, 0, &r, &fl); /* -1e20 */
    CHECK_EQ(r, 0xffffffff80000000UL);
    fcvt_w_d_rne(0x7ff8000000000000UL, 0, 0, &r, &fl); /* NaN */
    CHECK_EQ(r, 0x7fffffff);
    fcvt_wu_d_rne(0xbff0000000000000UL, 0, 0, &r, &fl); /* -1 */
    CHECK_EQ(r, 0);
    CHECK_EQ(fl, 0x10);
    fcvt_wu_d_rne(0x7ff8000000000000UL, 0, 0, &r, &fl);
    CHECK_EQ(r, -1UL); /* 0xffffffff sign-extended */
    fcvt_l_d_rne(0x7ff8000000000000UL, 0, 0, &r, &fl);
    CHECK_EQ(r, 0x7fffffffffffffffUL);
    fcvt_l_d_rne(0xfff0000000000000UL, 0, 0, &r, &fl);
    CHECK_EQ(r, 0x8000000000000000UL);
    fcvt_lu_d_rne(0xc014000000000000UL, 0, 0, &r, &fl); /* -5 */
    CHECK_EQ(r, 0);
    fcvt_wu_d_rtz(0xbfe0000000000000UL, 0, 0, &r, &fl); /* -0.5 rounds to 0: NX, not NV */
    CHECK_EQ(r, 0);
    CHECK_EQ(fl, 0x1);
    /* NaN boxing: an unboxed single operand is the canonical NaN */
    fadd_s_rne(0x000000003f800000UL, 0xffffffff3f800000UL, 0, &r, &fl);
    CHECK_EQ(r, 0xffffffff7fc00000UL);
    fsgnj_s(0x000000003f800000UL, 0xffffffff3f800000UL, 0, &r, &fl);
    CHECK_EQ(r, 0xffffffff7fc00000UL);
    fclass_s(0x000000003f800000UL, 0, 0, &r, &fl);
    CHECK_EQ(r, 1 << 9); /* quiet NaN */
    fmv_x_w(0x12345678abcdef01UL, 0, 0, &r, &fl); /* fmv.x.w ignores boxing */
    CHECK_EQ(r, 0xffffffffabcdef01UL);
    fmv_w_x(0x12345678UL, 0, 0, &r, &fl);
    CHECK_EQ(r, 0xffffffff12345678UL);
    fcvt_s_d_rne(0x3ff0000000000000UL, 0, 0, &r, &fl);
    CHECK_EQ(r, 0xffffffff3f800000UL); /* results are boxed */
    /* fmin/fmax: -0 < +0, one NaN operand returns the other, sNaN sets NV */
    fmin_d(0x0000000000000000UL, 0x8000000000000000UL, 0, &r, &fl);
    CHECK_EQ(r, 0x8000000000000000UL);
    fmax_d(0x7ff0000000000001UL, 0x3ff0000000000000UL, 0, &r, &fl);
    CHECK_EQ(r, 0x3ff0000000000000UL);
    CHECK_EQ(fl, 0x10);
    fmax_d(0x7ff8000000000000UL, 0xfff8000000000001UL, 0, &r, &fl);
    CHECK_EQ(r, 0x7ff8000000000000UL); /* canonical NaN */
    /* flt with a quiet NaN sets NV, feq does not */
    flt_d(0x7ff8000000000000UL, 0, 0, &r, &fl);
    CHECK_EQ(fl, 0x10);
    feq_d(0x7ff8000000000000UL, 0, 0, &r, &fl);
    CHECK_EQ(fl, 0);
    /* fflags accumulate; fcsr = frm << 5 | fflags; upper bits read zero */
    write_csr(fcsr, 0);
    fdiv_d_rne(0x3ff0000000000000UL, 0, 0, &r, &fl); /* DZ */
    uint64_t acc;
    asm volatile("fmv.d.x ft0, %1\n fsqrt.d ft0, ft0\n frflags %0" : "=r"(acc) : "r"(0xbff0000000000000UL) : "ft0");
    CHECK_EQ(acc, 0x18); /* DZ from the division, then NV: flags accumulate */
    write_csr(fflags, 0);
    asm volatile("fmv.d.x ft0, %1\n fdiv.d ft0, ft0, ft0\n fmv.d.x ft1, %2\n fadd.d ft0, ft1, ft1\n frflags %0"
                 : "=r"(acc)
                 : "r"(0UL), "r"(0x3fd5555555555555UL)
                 : "ft0", "ft1");
    CHECK_EQ(acc, 0x10); /* 0/0 = NV; 1/3+1/3 exact */
    write_csr(fcsr, 0xfff);
    uint64_t fcsr = read_csr(fcsr), frm = read_csr(frm), ffl = read_csr(fflags);
    printf("fcsr=%lx frm=%lx fflags=%lx\n", fcsr, frm, ffl);
    CHECK_EQ(fcsr, 0xff);
    CHECK_EQ(frm, 7);
    CHECK_EQ(ffl, 0x1f);
    write_csr(fcsr, 0);
    /* a dynamic-rm instruction with an invalid frm is illegal */
    write_csr(frm, 5);
    trap_reset();
    unsigned long pc = AT("fadd.d ft0, ft1, ft2");
    printf("fadd.d dyn with frm=5: n=%ld cause=%lx tval=%lx epc_ok=%d\n", mtrap.count, mtrap.cause,
           mtrap.tval, mtrap.epc == pc);
    EXPECT_MTRAP(CAUSE_ILLEGAL, 0x0220f053UL);
    write_csr(frm, 0);
    /* mstatus.FS becomes Dirty after an FP register write */
    clear_csr(mstatus, MSTATUS_FS);
    set_csr(mstatus, 1UL << 13); /* Initial */
    asm volatile("fmv.d.x ft0, zero" ::: "ft0");
    unsigned long ms = read_csr(mstatus);
    printf("FS after fp write: %ld SD=%ld\n", (ms >> 13) & 3, ms >> 63);
    CHECK_EQ((ms >> 13) & 3, 3);
    CHECK_EQ(ms >> 63, 1);
}

/* ---- every RVC form, written out explicitly ---- */
void rvc_forms(uint64_t *out, uint64_t *mem);
asm(".text\n"
    ".globl rvc_forms\n"
    ".align 2\n"
    "rvc_forms:\n"
    ".option push\n"
    ".option rvc\n"
    ".set idx, 0\n"
    ".macro OUT r\n sd \\r, idx*8(t5)\n .set idx, idx+1\n .endm\n"
    "    addi sp, sp, -16\n"
    "    sd ra, 0(sp)\n"
    "    mv t6, sp\n"
    "    mv t5, a0\n"
    "    mv sp, a1\n"
    "    c.addi4spn a2, sp, 24\n sub a3, a2, a1\n OUT a3\n"   /* 0 */
    "    c.fld fa0, 8(a1)\n c.fsd fa0, 16(a1)\n ld a3, 16(a1)\n OUT a3\n"
    "    c.lw a2, 4(a1)\n OUT a2\n"
    "    c.ld a3, 24(a1)\n OUT a3\n"
    "    c.sw a3, 32(a1)\n c.sd a3, 40(a1)\n ld a4, 32(a1)\n OUT a4\n ld a4, 40(a1)\n OUT a4\n"
    "    c.nop\n"
    "    li a2, 100\n c.addi a2, -31\n OUT a2\n"
    "    li a2, 0x7fffffff\n c.addiw a2, 1\n OUT a2\n"
    "    c.li a2, -32\n OUT a2\n"
    "    c.addi16sp sp, -64\n sub a3, sp, a1\n OUT a3\n c.addi16sp sp, 496\n sub a3, sp, a1\n OUT a3\n"
    "    c.addi16sp sp, -432\n"
    "    c.lui a2, 0xfffe1\n OUT a2\n c.lui a3, 31\n OUT a3\n"
    "    li a2, -256\n c.srli a2, 60\n OUT a2\n li a3, -256\n c.srai a3, 4\n OUT a3\n"
    "    li a4, -1\n slli a4, a4, 63\n c.srai a4, 63\n OUT a4\n"
    "    li a2, 0x7ff\n c.andi a2, -16\n OUT a2\n c.andi a2, 5\n OUT a2\n"
    "    li a2, 1000\n li a3, 2024\n c.sub a2, a3\n OUT a2\n"
    "    c.xor a2, a3\n OUT a2\n c.or a2, a3\n OUT a2\n c.and a2, a3\n OUT a2\n"
    "    li a2, 0x80000000\n li a3, 1\n c.subw a2, a3\n OUT a2\n c.addw a2, a2\n OUT a2\n"
    "    li a4, 0\n c.j 1f\n li a4, 1\n 1: OUT a4\n"
    "    li a2, 0\n li a4, 0\n c.beqz a2, 1f\n li a4, 1\n 1: c.bnez a2, 1f\n addi a4, a4, 2\n 1: OUT a4\n"
    "    li a2, 5\n li a4, 0\n c.beqz a2, 1f\n addi a4, a4, 4\n 1: c.bnez a2, 1f\n addi a4, a4, 8\n 1: OUT a4\n"
    "    li a2, 3\n c.slli a2, 62\n OUT a2\n"
    "    c.fldsp fa1, 8(sp)\n fmv.x.d a2, fa1\n OUT a2\n"
    "    c.lwsp a2, 0(sp)\n OUT a2\n c.ldsp a3, 24(sp)\n OUT a3\n"
    "    c.fsdsp fa1, 48(sp)\n c.swsp a2, 56(sp)\n c.sdsp a3, 64(sp)\n"
    "    ld a4, 48(sp)\n OUT a4\n ld a4, 56(sp)\n OUT a4\n ld a4, 64(sp)\n OUT a4\n"
    "    li a4, 0\n lla a2, 1f\n c.jr a2\n li a4, 1\n 1: OUT a4\n"
    "    li a3, 12345\n c.mv a2, a3\n OUT a2\n"
    "    c.ebreak\n"
    "    lla a2, 2f\n li a5, 0\n c.jalr a2\n 3: lla a3, 3b\n sub a3, ra, a3\n OUT a3\n OUT a5\n"
    "    li a2, 40\n li a3, 2\n c.add a2, a3\n OUT a2\n"
    /* HINT encodings execute as no-ops: c.addi x0,1; c.li x0,5; c.mv x0,a0; c.add x0,a0;
       c.slli x0,1; c.slli a2,0 (RV64: HINT); c.srli a0,0; c.srai a0,0 */
    "    li a2, 77\n li a0, 88\n"
    "    .2byte 0x0005\n .2byte 0x4015\n .2byte 0x802a\n .2byte 0x902a\n .2byte 0x0006\n"
    "    .2byte 0x0602\n .2byte 0x8101\n .2byte 0x8501\n"
    "    OUT a2\n OUT a0\n"
    /* raw encodings of a few forms: c.addi a2,-1 (0x167d); c.li a3,31 (0x46fd);
       c.slli a3,1 (0x0686); c.mv a4,a3 (0x8736) */
    "    li a2, 10\n .2byte 0x167d\n OUT a2\n .2byte 0x46fd\n .2byte 0x0686\n .2byte 0x8736\n OUT a4\n"
    "    mv sp, t6\n"
    "    ld ra, 0(sp)\n"
    "    addi sp, sp, 16\n"
    "    mv a0, t5\n"
    "    ret\n"
    "2:  li a5, 99\n"
    "    ret\n"
    ".purgem OUT\n"
    ".option pop\n");

static void compressed(void)
{
    static uint64_t out[64];
    static uint64_t mem[128] __attribute__((aligned(16)));
    for (int i = 0; i < 128; i++)
        mem[i] = 0x0101010101010101UL * (uint64_t)(i + 1) ^ 0x8000000080000000UL;
    mem[1] = 0x400921fb54442d18UL; /* pi */
    trap_reset();
    rvc_forms(out, mem);
    printf("rvc ebreak traps: %ld cause=%lx\n", mtrap.count, mtrap.cause);
    CHECK_EQ(mtrap.count, 1);
    CHECK_EQ(mtrap.cause, CAUSE_BREAKPOINT);
    static const char *names[] = {
        "c.addi4spn", "c.fld/c.fsd", "c.lw",      "c.ld",     "c.sw",      "c.sd",
        "c.addi",     "c.addiw",     "c.li",      "c.addi16sp-", "c.addi16sp+", "c.lui-",
        "c.lui+",     "c.srli",      "c.srai",    "c.srai63", "c.andi",    "c.andi2",
        "c.sub",      "c.xor",       "c.or",      "c.and",    "c.subw",    "c.addw",
        "c.j",        "c.beqz/bnez0", "c.beqz/bnez5", "c.slli", "c.fldsp",  "c.lwsp",
        "c.ldsp",     "c.fsdsp",     "c.swsp",    "c.sdsp",   "c.jr",      "c.mv",
        "c.jalr-link", "c.jalr-ran", "c.add",     "hint-a2",  "hint-a0",   "raw c.addi",
        "raw c.li/slli/mv",
    };
    static const uint64_t expect[] = {
        24, 0x400921fb54442d18UL, 0, 0, 0, 0, 69, 0xffffffff80000000UL, -32UL, -64UL, 432,
        0xfffffffffffe1000UL, 0x1f000, 0xf, 0xfffffffffffffff0UL, -1UL, 0x7f0, 0, -1024UL,
        0, 0, 0, 0x7fffffff, 0xfffffffffffffffeUL, 0, 2, 4, 0xc000000000000000UL,
        0x400921fb54442d18UL, 0, 0, 0x400921fb54442d18UL, 0, 0, 0, 12345, 0, 99, 42, 77, 88,
        9, 62,
    };
    /* values that depend on mem[] contents are filled in from mem */
    uint64_t exp[64];
    for (unsigned i = 0; i < sizeof expect / sizeof expect[0]; i++)
        exp[i] = expect[i];
    exp[2] = (uint64_t)(int64_t)(int32_t)(mem[0] >> 32);          /* c.lw 4(a1) */
    exp[3] = mem[3];                                               /* c.ld 24(a1) */
    exp[4] = (mem[3] & 0xffffffffUL) | (mem[4] & 0xffffffff00000000UL);
    exp[5] = mem[3];
    exp[19] = -1024UL ^ 2024;
    exp[20] = exp[19] | 2024;
    exp[21] = exp[20] & 2024;
    uint64_t *spm = mem; /* sp was mem + 0 after c.addi16sp -64 +496 -432 */
    exp[29] = (uint64_t)(int64_t)(int32_t)spm[0];
    exp[30] = mem[3];
    exp[33] = mem[3];
    exp[36] = 0; /* c.jalr: ra = address right after the 2-byte c.jalr */
    unsigned n = sizeof names / sizeof names[0];
    for (unsigned i = 0; i < n; i++) {
        uint64_t e = exp[i];
        if (i == 32)
            e = (mem[7] & 0xffffffff00000000UL) | (spm[0] & 0xffffffffUL);
        printf("%s = %lx\n", names[i], out[i]);
        if (out[i] != e) {
            printf("FAIL %s: got %lx expected %lx\n", names[i], out[i], e);
            failures++;
        }
    }
}

int main(void)
{
    integer();
    memory_branches();
    atomics();
    fp_ops_all();
    fp_checks();
    compressed();
    return failures;
}
