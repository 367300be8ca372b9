/* Multi-hart atomicity: every hart (run with 4) hammers amoadd.w / amoadd.d on shared
 * counters and increments a third counter with an LR/SC loop, `iterations` times each. Hart 0
 * waits for all, checks the totals and reports. The host test reads the counters too. */
#include "bm.h"

#define NHARTS 4

volatile uint64_t iterations = 20000;
volatile uint32_t counter_w __attribute__((aligned(64)));
volatile uint64_t counter_d __attribute__((aligned(64)));
volatile uint64_t counter_lrsc __attribute__((aligned(64)));
volatile uint32_t harts_done __attribute__((aligned(64)));
volatile uint32_t harts_started __attribute__((aligned(64)));

static void work(void)
{
    uint64_t n = iterations;
    asm volatile("amoadd.w zero, %1, (%0)" ::"r"(&harts_started), "r"(1) : "memory");
    /* wait until everybody runs, so the loops overlap */
    while (harts_started < NHARTS)
        ;
    for (uint64_t i = 0; i < n; i++) {
        asm volatile("amoadd.w zero, %1, (%0)" ::"r"(&counter_w), "r"(1) : "memory");
        asm volatile("amoadd.d zero, %1, (%0)" ::"r"(&counter_d), "r"(1L) : "memory");
        uint64_t tmp, fail;
        asm volatile("1: lr.d %0, (%2)\n addi %0, %0, 1\n sc.d %1, %0, (%2)\n bnez %1, 1b"
                     : "=&r"(tmp), "=&r"(fail)
                     : "r"(&counter_lrsc)
                     : "memory");
    }
    asm volatile("amoadd.w zero, %1, (%0)" ::"r"(&harts_done), "r"(1) : "memory");
}

void secondary_main(unsigned long hartid)
{
    if (hartid < NHARTS)
        work();
    for (;;)
        asm volatile("wfi");
}

int main(void)
{
    work();
    while (harts_done < NHARTS)
        ;
    uint64_t n = iterations;
    printf("smp: %d harts x %ld: amoadd.w=%d amoadd.d=%d lr/sc=%d\n", NHARTS, (long)n,
           counter_w == NHARTS * n, counter_d == NHARTS * n, counter_lrsc == NHARTS * n);
    CHECK_EQ(counter_w, NHARTS * n);
    CHECK_EQ(counter_d, NHARTS * n);
    CHECK_EQ(counter_lrsc, NHARTS * n);
    return failures;
}
