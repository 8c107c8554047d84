#!/usr/bin/env bash
# Latency of each operation (create, start, exec, stop, remove, and end-to-end `run`, cold
# and through the daemon's pool) on every usable backend, one operation at a time, plus
# each backend's component breakdown (boot, ready, exec, shutdown, throughput) from
# `agentkernel bench`. Usage: scripts/benchmark.sh [N]   (N samples per operation, default 20)
# OCI backends (docker, podman) are measured with BENCH_IMAGE, a local image.
# Results: benchmark-results/benchmark_*.json (schema in docs/benchmarks.md).
set -euo pipefail
n=${1:-20}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release --quiet
bin="$root/target/x86_64-unknown-linux-gnu/release/agentkernel"

backends=$("$bin" status --json | python3 -c '
import json, sys
print(" ".join(b["backend"] for b in json.load(sys.stdin)["backends"] if b["usable"]))')
[ -n "$backends" ] || { echo "no usable backend: see agentkernel status" >&2; exit 1; }

for backend in $backends; do
  image_flags=()
  case $backend in
    docker|podman|microvm)
      if [ -z "${BENCH_IMAGE:-}" ]; then
        echo "== $backend: skipped; set BENCH_IMAGE to a local image to measure it"; continue
      fi
      image_flags=(--image "$BENCH_IMAGE") ;;
  esac
  echo "== $backend: operations through the CLI, one at a time ($n each)"
  BENCH_BACKEND=$backend BENCH_SANDBOXES=1 BENCH_ITERATIONS=$n \
    cargo test --release --quiet -p agentkernel --test benchmark_test -- --ignored --nocapture 2>&1 \
    | sed -n '/^phase /,/^results:/p'
  echo "== $backend: components"
  "$bin" bench --backend "$backend" "${image_flags[@]}" --no-network --iterations "$n"
done
