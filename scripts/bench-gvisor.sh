#!/usr/bin/env bash
# The gvisor backend against runsc itself and the native backend, side by side in one run
# (hyperfine, 30 runs each, as root, release build):
#   1. cold `run --no-network -- /bin/echo hello`: gvisor, `runsc --network=none do`
#      (runsc's own quickest path: no bundle of ours, no agent), native;
#   2. exec into a running named sandbox: gvisor against native;
#   3. pooled `run -F` through a daemon (150 ms apart: the pool refills), gvisor and native;
#   4. idle memory of a warm sandbox: the proportional set size (Pss) of its host processes
#      (gvisor: runsc-sandbox and runsc-gofer; native: the agent).
#
# Usage: scripts/bench-gvisor.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-30}
AK=$PWD/target/x86_64-unknown-linux-gnu/release/agentkernel
state=$(mktemp -d)
chmod 711 "$state"
export AGENTKERNEL_REGISTRY=$state/registry.db AGENTKERNEL_CONFIG=/dev/null
cleanup() {
  "$AK" remove --force bench-gvisor >/dev/null 2>&1 || true
  "$AK" remove --force bench-native >/dev/null 2>&1 || true
  "$AK" daemon stop >/dev/null 2>&1 || true
  rm -rf "$state"
}
trap cleanup EXIT

echo "== cold run --no-network -- /bin/echo hello"
hyperfine -N --warmup 3 --runs "$RUNS" \
  "$AK run --backend gvisor --no-network -- /bin/echo hello" \
  "runsc --network=none do /bin/echo hello" \
  "$AK run --backend native --no-network -- /bin/echo hello"

echo "== exec into a running sandbox"
for backend in gvisor native; do
  "$AK" create "bench-$backend" --backend "$backend" --no-network >/dev/null
  "$AK" start "bench-$backend" >/dev/null
done
hyperfine -N --warmup 3 --runs "$RUNS" \
  "$AK exec bench-gvisor -- /bin/echo hello" \
  "$AK exec bench-native -- /bin/echo hello"

echo "== idle memory of a warm sandbox (Pss of its host processes, KiB)"
pss() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup"; }
gvisor_id=$("$AK" inspect bench-gvisor --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["uuid"])')
total=0
for pid in $(pgrep -f "runsc-(sandbox|gofer) .*$gvisor_id"); do total=$((total + $(pss "$pid"))); done
echo "gvisor: $total KiB (runsc-sandbox + runsc-gofer)"
native_id=$("$AK" inspect bench-native --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["uuid"])')
native_pid=$("$AK" inspect bench-native --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.loads(json.loads(d["handle"])["data"])["pid"])')
echo "native: $(pss "$native_pid") KiB (the agent, sandbox $native_id)"
"$AK" remove --force bench-gvisor >/dev/null
"$AK" remove --force bench-native >/dev/null

echo "== pooled run -F (150 ms apart)"
"$AK" daemon start >/dev/null
# One run each first, so both pools exist and are full when timing starts.
"$AK" run --backend gvisor --no-network -- /bin/true
"$AK" run --backend native --no-network -- /bin/true
sleep 3
hyperfine -N --warmup 3 --runs "$RUNS" --prepare "sleep 0.15" \
  "$AK run -F --backend gvisor --no-network -- /bin/echo hello" \
  "$AK run -F --backend native --no-network -- /bin/echo hello" \
  "/bin/echo hello"
