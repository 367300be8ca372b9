/* Freestanding runtime: console, finisher, memory helpers and default trap handlers. */
#include "bm.h"

volatile struct trap_rec mtrap, strap;
volatile unsigned long last_vector;
int (*m_hook)(struct frame *f);
int (*s_hook)(struct frame *f);
int failures;
/* Callee-saved context of the run_in_mode caller: ra, sp, gp, tp, s0..s11. */
unsigned long m_ctx[16];

void putchar_(char c)
{
    volatile uint8_t *uart = (volatile uint8_t *)UART_BASE;
    while (!(uart[5] & 0x20))
        ;
    uart[0] = (uint8_t)c;
}

void puts_(const char *s)
{
    while (*s)
        putchar_(*s++);
    putchar_('\n');
}

static void put_num(unsigned long v, int base, int width, char pad, int neg)
{
    char buf[32];
    int n = 0;
    do {
        unsigned long d = v % base;
        buf[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
        v /= base;
    } while (v);
    if (neg)
        buf[n++] = '-';
    while (n < width)
        buf[n++] = pad;
    while (n)
        putchar_(buf[--n]);
}

/* printf subset: %d %i %u %x %lx %ld %lu %s %c %p %%, with an optional 0 flag and width. */
void printf_(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            putchar_(*fmt);
            continue;
        }
        fmt++;
        char pad = ' ';
        int width = 0, lng = 0;
        if (*fmt == '0') {
            pad = '0';
            fmt++;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l') {
            lng = 1;
            fmt++;
        }
        switch (*fmt) {
        case 'd':
        case 'i': {
            long v = lng ? va_arg(ap, long) : va_arg(ap, int);
            put_num(v < 0 ? -(unsigned long)v : (unsigned long)v, 10, width, pad, v < 0);
            break;
        }
        case 'u':
            put_num(lng ? va_arg(ap, unsigned long) : va_arg(ap, unsigned int), 10, width, pad, 0);
            break;
        case 'x':
            put_num(lng ? va_arg(ap, unsigned long) : va_arg(ap, unsigned int), 16, width, pad, 0);
            break;
        case 'p':
            putchar_('0');
            putchar_('x');
            put_num((unsigned long)va_arg(ap, void *), 16, width, pad, 0);
            break;
        case 's': {
            const char *s = va_arg(ap, const char *);
            while (*s)
                putchar_(*s++);
            break;
        }
        case 'c':
            putchar_((char)va_arg(ap, int));
            break;
        case '%':
            putchar_('%');
            break;
        default:
            putchar_('?');
            break;
        }
    }
    va_end(ap);
}

void exit(int code)
{
    if (code == 0) {
        puts_("PASS");
        mmio_write32(FINISHER_BASE, 0x5555);
    } else {
        printf_("FAIL (%d)\n", code);
        mmio_write32(FINISHER_BASE, ((uint32_t)(code & 0xffff) << 16) | 0x3333);
    }
    for (;;)
        asm volatile("wfi");
}

void spec_check(int ok, int line, const char *what, unsigned long a, unsigned long b)
{
    if (ok)
        printf_("#spec ok line %d: %s\n", line, what);
    else
        printf_("#spec FAIL line %d: %s = 0x%lx, expected 0x%lx\n", line, what, a, b);
}

void check_failed(int line, const char *what)
{
    printf_("FAIL line %d: %s\n", line, what);
    failures++;
}

void *memset(void *d, int c, size_t n)
{
    unsigned char *p = d;
    while (n--)
        *p++ = (unsigned char)c;
    return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
    unsigned char *p = d;
    const unsigned char *q = s;
    while (n--)
        *p++ = *q++;
    return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *p = a, *q = b;
    for (; n; n--, p++, q++)
        if (*p != *q)
            return *p - *q;
    return 0;
}

void trap_reset(void)
{
    mtrap.count = 0;
    mtrap.cause = mtrap.epc = mtrap.tval = mtrap.status = ~0UL;
    strap.count = 0;
    strap.cause = strap.epc = strap.tval = strap.status = ~0UL;
    asm volatile("" ::: "memory");
}

unsigned long insn_len_at(unsigned long pc)
{
    return (*(volatile uint16_t *)pc & 3) == 3 ? 4 : 2;
}

/* Resume the run_in_mode caller in M-mode with result a0 (see lib/crt.S). */
void resume_m_caller(struct frame *f, long v)
{
    extern unsigned long m_ctx[16];
    f->x[1] = m_ctx[0];
    f->x[2] = m_ctx[1];
    f->x[3] = m_ctx[2];
    f->x[4] = m_ctx[3];
    f->x[8] = m_ctx[4];
    f->x[9] = m_ctx[5];
    for (int i = 0; i < 10; i++)
        f->x[18 + i] = m_ctx[6 + i];
    f->x[10] = (unsigned long)v;
    f->epc = m_ctx[0];
    f->status |= MSTATUS_MPP;
}

static void skip_or_recover(struct frame *f)
{
    unsigned long c = f->cause;
    /* A faulting fetch cannot be skipped: resume at the return address of the jump. */
    if (c == CAUSE_FETCH_ACCESS || c == CAUSE_FETCH_PAGE || c == CAUSE_MISALIGNED_FETCH)
        f->epc = f->x[1];
    else
        f->epc += insn_len_at(f->epc);
}

void m_trap_handler(struct frame *f)
{
    if ((f->cause == CAUSE_ECALL_U || f->cause == CAUSE_ECALL_S) && f->x[17] == MAGIC_RETURN) {
        resume_m_caller(f, (long)f->x[10]);
        return;
    }
    if (!(f->cause & INTR_BIT)) {
        mtrap.count++;
        mtrap.cause = f->cause;
        mtrap.epc = f->epc;
        mtrap.tval = f->tval;
        mtrap.status = f->status;
    }
    if (m_hook && m_hook(f))
        return;
    if (f->cause & INTR_BIT) {
        printf_("unexpected M interrupt %lx at %lx\n", f->cause, f->epc);
        exit(90);
    }
    skip_or_recover(f);
}

void s_trap_handler(struct frame *f)
{
    if (f->cause == CAUSE_ECALL_U && f->x[17] == MAGIC_RETURN) {
        /* U-mode return with ecalls delegated to S: forward to M. */
        register long a0 asm("a0") = (long)f->x[10];
        register long a7 asm("a7") = MAGIC_RETURN;
        asm volatile("ecall" : : "r"(a0), "r"(a7) : "memory");
        for (;;)
            ;
    }
    if (!(f->cause & INTR_BIT)) {
        strap.count++;
        strap.cause = f->cause;
        strap.epc = f->epc;
        strap.tval = f->tval;
        strap.status = f->status;
    }
    if (s_hook && s_hook(f))
        return;
    if (f->cause & INTR_BIT) {
        printf_("unexpected S interrupt %lx at %lx\n", f->cause, f->epc);
        exit(91);
    }
    skip_or_recover(f);
}

void lower_exit(long v)
{
    register long a0 asm("a0") = v;
    register long a7 asm("a7") = MAGIC_RETURN;
    asm volatile("ecall" : : "r"(a0), "r"(a7) : "memory");
    for (;;)
        ;
}
