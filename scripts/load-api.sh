#!/usr/bin/env bash
# Load test of the HTTP API on loopback: starts a release `agentkernel serve` with a private
# state directory, runs scripts/load-api.py (CONCURRENCY clients doing `run` for SECONDS),
# stops the server, and checks that nothing leaked (agents, runtime directories, cgroups).
# Usage: scripts/load-api.sh [CONCURRENCY] [SECONDS]   (as root; cargo build --release first)
# LOAD_TARGET=daemon loads the daemon's API socket (api.sock) instead of `serve`.
set -euo pipefail
concurrency=${1:-64}
seconds=${2:-30}
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/x86_64-unknown-linux-gnu/release/agentkernel"
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
state=$(mktemp -d)
trap 'rm -rf "$state"' EXIT
export AGENTKERNEL_API_KEY="load-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
count_leaks() {
  local agents dirs cgroups
  agents=$(pgrep -c -f "$root/target/x86_64-unknown-linux-gnu/release/ak-agent" || true)
  dirs=$(find /run/agentkernel -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  cgroups=$(find /sys/fs/cgroup/memory/agentkernel -mindepth 1 -maxdepth 1 -type d 2>/dev/null | wc -l)
  echo "agents $agents, runtime dirs $dirs, memory cgroups $cgroups"
}
echo "before: $(count_leaks)"
cd /tmp
export AGENTKERNEL_REGISTRY="$state/registry.db" AGENTKERNEL_CONFIG=/dev/null
status=0
if [ "${LOAD_TARGET:-serve}" = daemon ]; then
  "$bin" daemon start >/dev/null
  server=$(pgrep -n -f "$bin daemon start --foreground")
  python3 "$root/scripts/load-api.py" "$state/api.sock" "$concurrency" "$seconds" || status=$?
  echo "daemon RSS at the end: $(grep VmRSS /proc/$server/status | awk '{print $2, $3}')"
  "$bin" daemon stop >/dev/null
  cp "$state/daemon.log" "$state/serve.err"
else
  "$bin" serve --port 0 >"$state/serve.out" 2>"$state/serve.err" &
  server=$!
  for _ in $(seq 100); do grep -q listening "$state/serve.out" 2>/dev/null && break; sleep 0.05; done
  url=$(sed -n 's/^agentkernel API listening on //p' "$state/serve.out")
  python3 "$root/scripts/load-api.py" "$url" "$concurrency" "$seconds" || status=$?
  echo "server RSS at the end: $(grep VmRSS /proc/$server/status | awk '{print $2, $3}')"
  kill -TERM "$server"
  wait "$server" || true
fi
echo "after it stopped: $(count_leaks)"
grep -iE 'error|panic' "$state/serve.err" && status=1
exit $status
