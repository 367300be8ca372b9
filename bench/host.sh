#!/bin/sh
# Host benchmark: memory overhead per idle VM (host RSS minus the guest memory actually
# touched, minus the host process alone) for 1 and 10 VMs in one `vmk host`, and the time
# from `vm start` to `vmk-guest: ready`, next to as many QEMU TCG processes booting the same
# kernel + initrd (their RSS minus their guest-RAM mapping's RSS). Details: bench/host.py.
#   bench/host.sh [--counts 1,10] [--memory MIB] [--settle S] [--wait-idle S]
set -eu
cd "$(dirname "$0")/.."
cargo build --release -p vmk
exec python3 bench/host.py "$@"
