#!/usr/bin/env bash
# Snapshot and restore of microVM sandboxes (QEMU) against the size of the data in their
# root's layer disk, side by side in one hyperfine run per size: a snapshot of a running
# VM (flush, QMP stop, copy of the layer disk and the workdir), a restore (create
# --from-snapshot + start: a copy of the disk, then a boot) and, as the baseline, a
# create + start of a fresh VM (a boot). Writes benchmark-results/microvm_snapshots_<time>/.
#
#   cargo build --release -p agentkernel     (or AK=path/to/agentkernel)
#   scripts/bench-microvm-snapshots.sh [--runs N] [--sizes "1 100"]
#
# Needs what `agentkernel setup` builds. Run as root; the state directory is a private
# temporary one.
set -euo pipefail

runs=3
sizes="1 100"
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --sizes) sizes="$2"; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

root="$(cd "$(dirname "$0")/.." && pwd)"
ak="${AK:-$root/target/x86_64-unknown-linux-gnu/release/agentkernel}"
[ -x "$ak" ] || { echo "build first: cargo build --release -p agentkernel" >&2; exit 1; }
command -v hyperfine >/dev/null || { echo "hyperfine is needed (apt install hyperfine)" >&2; exit 1; }

stamp="$(date -u +%Y%m%d_%H%M%S)"
out="$root/benchmark-results/microvm_snapshots_$stamp"
mkdir -p "$out"
state="$(mktemp -d /var/tmp/ak-bench-vsnap.XXXXXX)"
cleanup() {
    for s in $("$ak" list --json 2>/dev/null | python3 -c 'import json,sys; [print(r["name"]) for r in json.load(sys.stdin)]' 2>/dev/null); do
        "$ak" remove "$s" --force >/dev/null 2>&1 || true
    done
    for s in $("$ak" snapshot list --json 2>/dev/null | python3 -c 'import json,sys; [print(r["name"]) for r in json.load(sys.stdin)]' 2>/dev/null); do
        "$ak" snapshot remove "$s" >/dev/null 2>&1 || true
    done
    rm -rf "$state"
}
trap cleanup EXIT
export AGENTKERNEL_CONFIG=/dev/null AGENTKERNEL_BACKEND=microvm
export AGENTKERNEL_REGISTRY="$state/registry.db"
flags="--no-network --memory 384M"

for size in $sizes; do
    "$ak" create "src-$size" $flags >/dev/null
    "$ak" start "src-$size" >/dev/null
    "$ak" exec "src-$size" -- sh -c "mkdir -p /app && head -c ${size}M /dev/urandom > /app/data"
    "$ak" snapshot create "src-$size" --name "keep-$size" >/dev/null
    hyperfine --runs "$runs" --export-json "$out/size_${size}M.json" \
        -n "snapshot of a running VM, ${size} MiB in its layer disk" \
        --prepare "'$ak' snapshot remove s-$size >/dev/null 2>&1; true" \
        "'$ak' snapshot create src-$size --name s-$size" \
        -n "restore (create --from-snapshot + start), ${size} MiB" \
        --prepare "'$ak' remove r-$size --force >/dev/null 2>&1; true" \
        "'$ak' create r-$size --from-snapshot keep-$size && '$ak' start r-$size" \
        -n "create + start of a fresh VM (boot)" \
        --prepare "'$ak' remove plain-$size --force >/dev/null 2>&1; true" \
        "'$ak' create plain-$size $flags && '$ak' start plain-$size"
    for s in "r-$size" "plain-$size" "src-$size"; do "$ak" remove "$s" --force >/dev/null 2>&1 || true; done
    for s in "s-$size" "keep-$size"; do "$ak" snapshot remove "$s" >/dev/null 2>&1 || true; done
done
echo "results in $out"
