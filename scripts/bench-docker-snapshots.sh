#!/usr/bin/env bash
# Snapshot and restore time of docker sandboxes against the size of their writable state,
# side by side in one hyperfine run per size: the same amount of random data in the
# container's root layer (saved by an engine commit) and in the workdir (copied into the
# snapshot store), and a restore (create --from-snapshot + start) against a plain
# create + start of the image. Writes benchmark-results/docker_snapshots_<time>/*.json.
#
#   cargo build --release -p agentkernel
#   scripts/bench-docker-snapshots.sh [--runs N] [--sizes "1 100 1024"]
#
# Needs a running Docker engine with the tests' image (agentkernel-test:busybox: run the
# docker CLI tests once, or `docker import` a static busybox). Run as root; the state
# directory is a private temporary one.
set -euo pipefail

runs=5
sizes="1 100 1024"
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --sizes) sizes="$2"; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

root="$(cd "$(dirname "$0")/.." && pwd)"
ak="$root/target/x86_64-unknown-linux-gnu/release/agentkernel"
[ -x "$ak" ] || { echo "build first: cargo build --release -p agentkernel" >&2; exit 1; }
command -v hyperfine >/dev/null || { echo "hyperfine is needed (apt install hyperfine)" >&2; exit 1; }
image=agentkernel-test:busybox
docker image inspect "$image" >/dev/null || { echo "the image $image is missing" >&2; exit 1; }

stamp="$(date -u +%Y%m%d_%H%M%S)"
out="$root/benchmark-results/docker_snapshots_$stamp"
mkdir -p "$out"
state="$(mktemp -d /var/tmp/ak-bench-dsnap.XXXXXX)"
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
export AGENTKERNEL_CONFIG=/dev/null AGENTKERNEL_BACKEND=docker
export AGENTKERNEL_REGISTRY="$state/registry.db"

for size in $sizes; do
    for where in root work; do
        "$ak" create "$where-$size" --image "$image" --no-network >/dev/null
        "$ak" start "$where-$size" >/dev/null
    done
    # Random data: nothing for a file system, the engine or the store to make smaller.
    "$ak" exec "root-$size" -- dd if=/dev/urandom of=/data bs=1M count="$size" 2>/dev/null
    "$ak" exec "work-$size" -- dd if=/dev/urandom of=/workspace/data bs=1M count="$size" 2>/dev/null
    "$ak" snapshot create "root-$size" --name "keep-$size" >/dev/null
    hyperfine --runs "$runs" --export-json "$out/size_${size}M.json" \
        -n "snapshot ${size} MiB in the root layer (engine commit)" \
        --prepare "'$ak' snapshot remove sr-$size >/dev/null 2>&1; true" \
        "'$ak' snapshot create root-$size --name sr-$size" \
        -n "snapshot ${size} MiB in the workdir (store, new data)" \
        --prepare "'$ak' snapshot remove sw-$size >/dev/null 2>&1; true" \
        "'$ak' snapshot create work-$size --name sw-$size" \
        -n "restore ${size} MiB root layer (create --from-snapshot + start)" \
        --prepare "'$ak' remove r-$size --force >/dev/null 2>&1; true" \
        "'$ak' create r-$size --from-snapshot keep-$size && '$ak' start r-$size" \
        -n "create + start of the image (no snapshot)" \
        --prepare "'$ak' remove plain-$size --force >/dev/null 2>&1; true" \
        "'$ak' create plain-$size --image $image --no-network && '$ak' start plain-$size"
    for s in "r-$size" "plain-$size" "root-$size" "work-$size"; do "$ak" remove "$s" --force >/dev/null 2>&1 || true; done
    for s in "sr-$size" "sw-$size" "keep-$size"; do "$ak" snapshot remove "$s" >/dev/null 2>&1 || true; done
done
echo "results in $out"
