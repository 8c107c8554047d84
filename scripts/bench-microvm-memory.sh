#!/usr/bin/env bash
# microVMs (QEMU) saved with their memory, side by side in one hyperfine run: a boot of a
# fresh VM (create + start: until the agent answers), a `pause --save` of a running VM
# (QMP stop, migrate to a file, QEMU ends), a `resume` of the saved VM (a QEMU started
# with -incoming, then the guest's clock set and its RNG reseeded through the agent: the
# VM answers when it returns) and a `fork` of a running VM from its memory (save a copy,
# copy the layer disk, restore the copy as a new VM). Also the size of the memory file.
# Writes benchmark-results/microvm_memory_<time>/.
#
#   cargo build --release -p agentkernel     (or AK=path/to/agentkernel)
#   scripts/bench-microvm-memory.sh [--runs N] [--memory 256M]
#
# Needs what `agentkernel setup` builds. Run as root; the state directory is a private
# temporary one.
set -euo pipefail

runs=5
memory=256M
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --memory) memory="$2"; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

root="$(cd "$(dirname "$0")/.." && pwd)"
ak="${AK:-$root/target/x86_64-unknown-linux-gnu/release/agentkernel}"
[ -x "$ak" ] || { echo "build first: cargo build --release -p agentkernel" >&2; exit 1; }
command -v hyperfine >/dev/null || { echo "hyperfine is needed (apt install hyperfine)" >&2; exit 1; }

stamp="$(date -u +%Y%m%d_%H%M%S)"
out="$root/benchmark-results/microvm_memory_$stamp"
mkdir -p "$out"
state="$(mktemp -d /var/tmp/ak-bench-vmem.XXXXXX)"
cleanup() {
    for s in $("$ak" list --json 2>/dev/null | python3 -c 'import json,sys; [print(r["name"]) for r in json.load(sys.stdin)]' 2>/dev/null); do
        "$ak" remove "$s" --force >/dev/null 2>&1 || true
    done
    rm -rf "$state"
}
trap cleanup EXIT
export AGENTKERNEL_CONFIG=/dev/null AGENTKERNEL_BACKEND=microvm
export AGENTKERNEL_REGISTRY="$state/registry.db"
flags="--no-network --memory $memory"

"$ak" create src $flags >/dev/null
"$ak" start src >/dev/null
hyperfine --runs "$runs" --export-json "$out/memory.json" \
    -n "boot: create + start of a fresh VM" \
    --prepare "'$ak' remove plain --force >/dev/null 2>&1; true" \
    "'$ak' create plain $flags && '$ak' start plain" \
    -n "pause --save of a running VM" \
    --prepare "'$ak' resume src >/dev/null 2>&1; true" \
    "'$ak' pause src --save" \
    -n "restore: resume of the saved VM" \
    --prepare "'$ak' pause src --save >/dev/null 2>&1; true" \
    "'$ak' resume src" \
    -n "fork of a running VM from its memory" \
    --prepare "'$ak' resume src >/dev/null 2>&1; '$ak' remove f --force >/dev/null 2>&1; true" \
    "'$ak' fork src f"
"$ak" resume src >/dev/null 2>&1 || true
"$ak" pause src --save >/dev/null
ls -l "$state"/sandboxes/*/memory.state | tee "$out/memory-file.txt"
echo "results in $out"
