#!/usr/bin/env bash
# Forwarding rate of vmk's vSwitch between two vNIC ports on the host (no guests), next to
# the Linux bridge with veth pairs measured in the same run, for 64- and 1500-byte frames.
#
#   bench/vswitch.sh [--secs N] [--runs N]
#
# vmk: one thread sends frames from port A to port B's MAC, another drains B; the rate is
# the frames that reached B. Linux: an AF_PACKET socket sends the same frames into veth
# end `va` in a private network namespace; `va`'s peer and `vb`'s peer are ports of bridge
# br0; the rate is what arrived at `vb` (its rx_packets). "64-byte" frames are 60 bytes
# plus the 4-byte FCS that software never sees; "1500" frames carry 1500 bytes of payload
# (1514 bytes). Needs root (network namespace, veth, bridge). Medians of --runs runs.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=3
RUNS=3
while [ $# -gt 0 ]; do
    case "$1" in
        --secs) SECS="$2"; shift 2 ;;
        --runs) RUNS="$2"; shift 2 ;;
        *) echo "usage: $0 [--secs N] [--runs N]" >&2; exit 2 ;;
    esac
done

cargo build --quiet --release -p vmk-vswitch --example vswitch_bench
BIN="${CARGO_TARGET_DIR:-target}/release/examples/vswitch_bench"

NS="vmk-bench-$$"
cleanup() { ip netns del "$NS" 2>/dev/null || true; }
trap cleanup EXIT
ip netns add "$NS"
ip netns exec "$NS" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
ip netns exec "$NS" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
ip -n "$NS" link add br0 type bridge
ip -n "$NS" link set br0 up
for x in a b; do
    ip -n "$NS" link add "v$x" type veth peer name "v${x}br"
    ip -n "$NS" link set "v${x}br" master br0
    ip -n "$NS" link set "v${x}br" up
    ip -n "$NS" link set "v$x" up
done

rate() { sed -n 's/.*frames_per_sec=\([0-9]*\).*/\1/p'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf "%-12s %16s %16s %10s\n" "frame" "vmk frames/s" "bridge frames/s" "vmk/bridge"
for size in 60 1514; do
    v=(); l=()
    for _ in $(seq "$RUNS"); do
        v+=("$("$BIN" vmk --size "$size" --secs "$SECS" | rate)")
        l+=("$(ip netns exec "$NS" "$BIN" af-packet --size "$size" --secs "$SECS" --tx va --rx vb | rate)")
    done
    vm=$(printf "%s\n" "${v[@]}" | median)
    lm=$(printf "%s\n" "${l[@]}" | median)
    label=$([ "$size" = 60 ] && echo "64 B" || echo "1500 B")
    printf "%-12s %16s %16s %10s\n" "$label" "$vm" "$lm" "$(awk -v a="$vm" -v b="$lm" 'BEGIN {printf "%.2f", a / b}')"
done
