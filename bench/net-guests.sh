#!/bin/sh
# Guest-to-guest TCP throughput (iperf3): two vmk VMs on one vSwitch port group in one
# `vmk host`, next to two QEMU TCG guests (same kernel, initrd and command line) with
# virtio-net-device on TAPs bridged by a Linux bridge, measured in the same run. Prints
# both rates and vmk/QEMU. Needs root (network namespace, TAPs, bridge) and
# qemu-system-riscv64. Details: bench/net-guests.py.
#   bench/net-guests.sh [--secs N] [--runs N] [--memory MIB]
set -eu
cd "$(dirname "$0")/.."
cargo build --release -p vmk
exec python3 bench/net-guests.py "$@"
