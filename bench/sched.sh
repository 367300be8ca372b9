#!/bin/sh
# CPU scheduler benchmark: vmk's scheduler against the thread-per-vCPU baseline with Linux
# cgroups set from the same shares and limits, in one run: fairness error for 2:1 and 4:2:1
# shares, limit accuracy, guest MIPS of 4 busy VMs on 2 CPUs, guest timer wake-up lateness
# next to a busy VM, and the host's CPU for 100 idle VMs. Needs root (cgroups). Run on an
# otherwise idle host.
#   bench/sched.sh [--secs S] [--wait-idle S] [--idle-vms N]
set -eu
cd "$(dirname "$0")/.."
cargo build --release -p vmk
exec python3 bench/sched.py "$@"
