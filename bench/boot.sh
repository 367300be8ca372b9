#!/bin/sh
# Boot benchmark: the same Debian riscv64 kernel + initrd booted alternately under vmk
# (`vmk run`) and QEMU TCG (qemu-system-riscv64 -machine virt, default OpenSBI), N times each.
# Host timestamps (monotonic, from process start) of console lines give, per run: time to the
# kernel banner, to `vmk-guest: ready` (and banner to ready: kernel init + /init), the length
# of an in-guest workload (`dd if=/dev/zero bs=1M count=32 | sha256sum`, between two markers
# printed by the image's init script; the sha256 printed is checked) and the time until the VM
# process has exited.
# Prints medians (min-max) for vmk and QEMU, the vmk/QEMU ratio and the host load average.
# Before each run it waits (up to --wait-idle S, default 120) for other processes to go quiet,
# and reports the CPU they used during each run.
# The image is built once with `vmk image build --init-script` into $VMK_CACHE (or the
# default cache)/bench/ and reused. Run on an otherwise idle machine. Details: bench/boot.py.
#   bench/boot.sh [--runs N] [--cpus N] [--vmk-only | --qemu-only] [--timeout S] [--rebuild]
#                [--wait-idle S] [--fail-fast] [--log-dir DIR]
# Exits 1 if any run failed (timeout, wrong sha256, missing marker, non-zero exit).
set -eu
cd "$(dirname "$0")/.."
cargo build --release -p vmk
exec python3 bench/boot.py "$@"
