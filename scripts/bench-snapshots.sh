#!/usr/bin/env bash
# Snapshot and restore time against the size of a named native sandbox's writable state,
# side by side in one hyperfine run per size, and the cost of a named sandbox's life
# (create, start, exec, remove) with its root on disk against a baseline build whose root
# was a tmpfs. Writes benchmark-results/snapshots_<time>.json (hyperfine's exports).
#
#   cargo build --release -p agentkernel
#   scripts/bench-snapshots.sh [--runs N] [--sizes "1 100 1024"] [--baseline DIR]
#
# --baseline: a directory holding an earlier build's `agentkernel` and `ak-agent`.
# Run as root (the state directory is a private temporary one; nothing else is touched).
set -euo pipefail

runs=5
sizes="1 100 1024"
baseline=""
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --sizes) sizes="$2"; shift 2 ;;
        --baseline) baseline="$2"; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/target/x86_64-unknown-linux-gnu/release/agentkernel"
[ -x "$bin" ] || { echo "build first: cargo build --release -p agentkernel" >&2; exit 1; }
command -v hyperfine >/dev/null || { echo "hyperfine is needed (apt install hyperfine)" >&2; exit 1; }

stamp="$(date -u +%Y%m%d_%H%M%S)"
out="$root/benchmark-results/snapshots_$stamp"
mkdir -p "$out"
state="$(mktemp -d /var/tmp/ak-bench-snap.XXXXXX)"
# The sandboxes' root user (another uid) must pass through to their directories.
chmod 711 "$state"
trap 'rm -rf "$state"' EXIT
export AGENTKERNEL_CONFIG=/dev/null AGENTKERNEL_BACKEND=native
export AGENTKERNEL_REGISTRY="$state/this/registry.db"
mkdir -p "$state/this" "$state/base"
ak="$bin"

for size in $sizes; do
    src="src-$size"
    "$ak" create "$src" --no-network >/dev/null
    "$ak" start "$src" >/dev/null
    # Random data: nothing for a file system or the store to make smaller.
    "$ak" exec "$src" -- dd if=/dev/urandom of=/workspace/data bs=1M count="$size" status=none
    # A snapshot kept throughout, so that `again` finds every blob in the store already.
    "$ak" snapshot create "$src" --name "keep-$size" >/dev/null
    hyperfine --runs "$runs" --export-json "$out/size_${size}M.json" \
        -n "snapshot ${size} MiB, running (new data)" \
        --prepare "'$ak' snapshot remove keep-$size >/dev/null 2>&1; '$ak' snapshot remove s-$size >/dev/null 2>&1; true" \
        "'$ak' snapshot create $src --name s-$size" \
        -n "snapshot ${size} MiB, running (data already stored)" \
        --prepare "'$ak' snapshot create $src --name keep-$size >/dev/null 2>&1; '$ak' snapshot remove s-$size >/dev/null 2>&1; true" \
        "'$ak' snapshot create $src --name s-$size" \
        -n "restore ${size} MiB (create --from-snapshot)" \
        --prepare "'$ak' remove r-$size --force >/dev/null 2>&1; true" \
        "'$ak' create r-$size --from-snapshot s-$size"
    "$ak" remove "r-$size" --force >/dev/null
    "$ak" remove "$src" --force >/dev/null
    for s in "s-$size" "keep-$size"; do "$ak" snapshot remove "$s" >/dev/null 2>&1 || true; done
done

# A named sandbox's life: its root on disk (this build) against a tmpfs (the baseline).
life() {
    echo "'$1' create life --no-network >/dev/null && '$1' start life >/dev/null && '$1' exec life -- true && '$1' remove life --force >/dev/null"
}
if [ -n "$baseline" ]; then
    hyperfine --warmup 3 --runs "$((runs * 6))" --export-json "$out/named_life.json" \
        -n "named create+start+exec+remove, baseline (root on tmpfs)" \
        "export AGENTKERNEL_REGISTRY='$state/base/registry.db'; $(life "$baseline/agentkernel")" \
        -n "named create+start+exec+remove, this build (root on disk)" \
        "$(life "$ak")"
fi
echo "results in $out"
