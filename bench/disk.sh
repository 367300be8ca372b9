#!/bin/sh
# Disk benchmarks (GitHub issue 4), vmk against QEMU, alternating runs, medians (min-max) and
# ratios from one invocation. Details: bench/disk.py.
#
#   bench/disk.sh convert [--runs N] ...
#       Host side, no guest: a 2 GiB monolithicSparse VMDK holding 512 MiB of random data in
#       scattered 1 MiB chunks is converted by `vmk disk convert` and by `qemu-img convert`,
#       to monolithicSparse and to raw, N times each (default 5). Every output is checked
#       with `qemu-img compare` against the source. Goal: vmk no slower than qemu-img.
#
#   bench/disk.sh fio [--runs N] ...
#       fio inside a Debian guest on a 1 GiB raw disk (/dev/vda): sequential 1 MiB write and
#       read, random 4 KiB write and read (psync, iodepth 1, O_DIRECT), booted alternately in
#       `vmk run` and qemu-system-riscv64 -machine virt (TCG), N times each (default 3). The
#       image (with the fio package) is built once into $VMK_CACHE (or the default cache)/bench/
#       and reused.
#
# Before each timed run both wait (up to --wait-idle S, default 120) for other processes to go
# quiet, and report the CPU other processes used during each run and the load average.
# Logs go to target/bench-disk/<date-time>/. `bench/disk.sh convert --help` for all options.
# Exits 1 if any run failed (timeout, non-zero exit, output differing from the source, ...).
set -eu
cd "$(dirname "$0")/.."
cargo build --release -p vmk
exec python3 bench/disk.py "$@"
