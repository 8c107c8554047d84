#!/usr/bin/env bash
# Pooled throughput of two or more builds, alternating: for each round and each build, start
# that build's daemon in a private state directory, let its pool learn the spec, time
# BURSTS bursts of 400 `run --no-network -- /bin/echo hello` at concurrency 8 (3 s apart),
# stop the daemon. One line per burst: build, runs that printed hello, runs/s. Alternating
# whole daemons round by round spreads this VM's drift over every build
# (bench-native-speed.py measures one build's bursts in a row).
#
# Usage: scripts/ab-pooled-throughput.sh ROUNDS BURSTS DIR_A DIR_B [DIR…]
#   (each DIR holds one build's agentkernel, ak-server and ak-agent). Needs root.
set -euo pipefail
[[ $# -ge 4 ]] || { sed -n 2,10p "$0"; exit 2; }
rounds=$1 bursts=$2
shift 2
burst() {
  local dir=$1 state
  state=$(mktemp -d /tmp/ak-ab-throughput.XXXXXX)
  export AGENTKERNEL_REGISTRY=$state/registry.db
  "$dir/agentkernel" daemon start >/dev/null
  "$dir/agentkernel" run -F --no-network -- true  # the pool learns the spec
  sleep 1
  for _ in $(seq "$bursts"); do
    local started ended ok
    started=$(date +%s.%N)
    ok=$(seq 400 | xargs -P 8 -I{} "$dir/agentkernel" run --no-network -- /bin/echo hello \
      2>/dev/null | grep -c '^hello$' || true)
    ended=$(date +%s.%N)
    python3 -c "print('$dir', $ok, round($ok / ($ended - $started), 1))"
    sleep 3
  done
  "$dir/agentkernel" daemon stop >/dev/null
  rm -rf "$state"
}
# Every build from the same page cache state (scripts/binary-cache-state.py).
"$(dirname "$0")/binary-cache-state.py" read "$@" >/dev/null
for _ in $(seq "$rounds"); do
  for dir in "$@"; do burst "$dir"; done
done
