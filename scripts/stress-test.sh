#!/usr/bin/env bash
# Throughput of `agentkernel run -- echo hello` through the daemon's warm pool, with
# latency percentiles: TOTAL runs, CONCURRENCY at once, native backend (STRESS_BACKEND
# overrides). Usage: scripts/stress-test.sh [TOTAL] [CONCURRENCY]   (defaults 500 and 8)
# Fails on any failed run or leaked host resource; results in benchmark-results/stress_*.json.
set -euo pipefail
total=${1:-500}
concurrency=${2:-8}
cd "$(dirname "$0")/.."
STRESS_VM_COUNT=$total STRESS_MAX_CONCURRENT=$concurrency STRESS_PHASES=pool_run \
  cargo test --release --quiet -p agentkernel --test stress_test -- --ignored --nocapture 2>&1 \
  | grep -v '^\[[0-9/]*\] done$'
