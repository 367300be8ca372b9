#!/bin/sh
# Sequential write and read of a file on a vmk datastore vs the same on the underlying file
# system directly, in one run. Not a timed test: run it on an idle host.
#   bench/vmfs.sh [SIZE_MIB (default 4096)] [DIR (default: a temporary dir under /var/tmp)]
set -e
size=${1:-4096}
dir=${2:-$(mktemp -d /var/tmp/vmfs-bench.XXXXXX)}
cd "$(dirname "$0")/.."
cargo build --release -q -p vmk-vmfs --example vmfs_seqbench
"${CARGO_TARGET_DIR:-target}/release/examples/vmfs_seqbench" "$dir" "$size"
[ -n "$2" ] || rm -rf "$dir"
