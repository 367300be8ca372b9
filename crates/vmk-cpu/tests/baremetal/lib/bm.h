/* Tiny freestanding runtime for the vmk bare-metal test programs. */
#ifndef BM_H
#define BM_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "bm_asm.h"

#define UART_BASE 0x10000000UL
#define FINISHER_BASE 0x100000UL
#define CLINT_BASE 0x2000000UL
#define CLINT_MSIP(h) (CLINT_BASE + 4 * (h))
#define CLINT_MTIMECMP(h) (CLINT_BASE + 0x4000 + 8 * (h))
#define CLINT_MTIME (CLINT_BASE + 0xbff8)

#define PRV_U 0
#define PRV_S 1
#define PRV_M 3

#define MSTATUS_SIE (1UL << 1)
#define MSTATUS_MIE (1UL << 3)
#define MSTATUS_SPIE (1UL << 5)
#define MSTATUS_MPIE (1UL << 7)
#define MSTATUS_SPP (1UL << 8)
#define MSTATUS_MPP (3UL << 11)
#define MSTATUS_FS (3UL << 13)
#define MSTATUS_MPRV (1UL << 17)
#define MSTATUS_SUM (1UL << 18)
#define MSTATUS_MXR (1UL << 19)
#define MSTATUS_TVM (1UL << 20)
#define MSTATUS_TW (1UL << 21)
#define MSTATUS_TSR (1UL << 22)

#define IRQ_S_SOFT 1
#define IRQ_M_SOFT 3
#define IRQ_S_TIMER 5
#define IRQ_M_TIMER 7
#define IRQ_S_EXT 9
#define IRQ_M_EXT 11
#define INTR_BIT (1UL << 63)

#define CAUSE_MISALIGNED_FETCH 0
#define CAUSE_FETCH_ACCESS 1
#define CAUSE_ILLEGAL 2
#define CAUSE_BREAKPOINT 3
#define CAUSE_MISALIGNED_LOAD 4
#define CAUSE_LOAD_ACCESS 5
#define CAUSE_MISALIGNED_STORE 6
#define CAUSE_STORE_ACCESS 7
#define CAUSE_ECALL_U 8
#define CAUSE_ECALL_S 9
#define CAUSE_ECALL_M 11
#define CAUSE_FETCH_PAGE 12
#define CAUSE_LOAD_PAGE 13
#define CAUSE_STORE_PAGE 15

#define STR(x) #x
#define XSTR(x) STR(x)
#define read_csr(reg)                                                    \
    ({                                                                   \
        unsigned long __v;                                               \
        asm volatile("csrr %0, " #reg : "=r"(__v)::"memory");            \
        __v;                                                             \
    })
#define write_csr(reg, val) asm volatile("csrw " #reg ", %0" ::"rK"(val) : "memory")
#define set_csr(reg, bits) asm volatile("csrs " #reg ", %0" ::"rK"(bits) : "memory")
#define clear_csr(reg, bits) asm volatile("csrc " #reg ", %0" ::"rK"(bits) : "memory")

static inline void mmio_write32(unsigned long addr, uint32_t v) { *(volatile uint32_t *)addr = v; }
static inline uint32_t mmio_read32(unsigned long addr) { return *(volatile uint32_t *)addr; }
static inline void mmio_write64(unsigned long addr, uint64_t v) { *(volatile uint64_t *)addr = v; }
static inline uint64_t mmio_read64(unsigned long addr) { return *(volatile uint64_t *)addr; }

/* Register frame built by the trap entry code (lib/crt.S). x[2] is the interrupted sp. */
struct frame {
    unsigned long x[32];
    unsigned long epc, cause, tval, status;
};

/* What the default handlers recorded about the last trap they took. */
struct trap_rec {
    unsigned long count, cause, epc, tval, status;
};
extern volatile struct trap_rec mtrap, strap;
extern volatile unsigned long last_vector;

/* Per-program hooks: return nonzero when the trap was fully handled. */
extern int (*m_hook)(struct frame *f);
extern int (*s_hook)(struct frame *f);

void m_trap_handler(struct frame *f);
void s_trap_handler(struct frame *f);
void m_trap_entry(void);
void s_trap_entry(void);
void m_vector_table(void);
long run_in_mode(long mode, long (*fn)(long), long arg);
/* From S or U: go back to M (the run_in_mode caller) immediately with value v. */
void __attribute__((noreturn)) lower_exit(long v);

/* From the M trap handler: make the trap return to the run_in_mode caller with value v. */
void resume_m_caller(struct frame *f, long v);
void trap_reset(void);

/* Address of the instruction(s) `insn`, which are executed right after. */
#define AT(insn)                                                              \
    ({                                                                        \
        unsigned long __pc;                                                   \
        asm volatile("lla %0, 1f\n1: " insn "\n" : "=&r"(__pc)::"memory");     \
        __pc;                                                                 \
    })
unsigned long insn_len_at(unsigned long pc);

void putchar_(char c);
void puts_(const char *s);
void printf_(const char *fmt, ...);
#define printf printf_
#define puts puts_
void __attribute__((noreturn)) exit(int code);

void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);

extern int failures;
void check_failed(int line, const char *what);
#define CHECK(c)                                   \
    do {                                           \
        if (!(c))                                  \
            check_failed(__LINE__, #c);            \
    } while (0)
#define CHECK_EQ(a, b)                                                         \
    do {                                                                       \
        unsigned long __a = (unsigned long)(a), __b = (unsigned long)(b);      \
        if (__a != __b) {                                                      \
            printf("FAIL line %d: %s = 0x%lx, expected 0x%lx\n", __LINE__, #a, \
                   __a, __b);                                                  \
            failures++;                                                        \
        }                                                                      \
    } while (0)

/* Checks where QEMU 7.2 (the differential reference) is known to deviate from the RISC-V spec.
 * They print a line starting with '#': the harness leaves such lines out of the QEMU/vmk
 * comparison and fails the test if vmk prints "#spec FAIL". They do not count as failures. */
void spec_check(int ok, int line, const char *what, unsigned long a, unsigned long b);
#define SPEC_CHECK_EQ(a, b)                                                    \
    do {                                                                       \
        unsigned long __a = (unsigned long)(a), __b = (unsigned long)(b);      \
        spec_check(__a == __b, __LINE__, #a, __a, __b);                        \
    } while (0)

/* Expect exactly one trap to M with the given cause and tval since the last trap_reset(). */
#define EXPECT_MTRAP(cause_, tval_)                  \
    do {                                             \
        CHECK_EQ(mtrap.count, 1);                    \
        CHECK_EQ(mtrap.cause, (cause_));             \
        CHECK_EQ(mtrap.tval, (tval_));               \
    } while (0)
#define EXPECT_NO_TRAP()                             \
    do {                                             \
        CHECK_EQ(mtrap.count, 0);                    \
        CHECK_EQ(strap.count, 0);                    \
    } while (0)

#endif
