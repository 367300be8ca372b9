#!/bin/sh
# Guest MIPS of the vmk interpreter (sha256 and a CoreMark-like mix), compared with QEMU TCG
# when qemu-system-riscv64 is installed. Needs riscv64-unknown-elf-gcc.
#   VMK_BENCH_SECS=2 bench/cpu.sh      length of one vmk run (default 1 s)
#   VMK_BENCH_VERBOSE=1 bench/cpu.sh   show the QEMU timings
set -eu
cd "$(dirname "$0")/.."
exec cargo bench -p vmk-cpu --bench mips "$@"
