/* A wedged guest (vmk only, not differential): mtvec points at unmapped memory, so the first
 * trap faults again at the handler address forever. vmk must report this (Exit::Fatal or the
 * harness's instruction cap), not hang. */
#include "bm.h"

int main(void)
{
    printf("wedging\n");
    write_csr(mtvec, 0x90000000UL);
    asm volatile(".word 0xffffffff");
    printf("not reached\n");
    return 1;
}
