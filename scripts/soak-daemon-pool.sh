#!/bin/bash
# Soaks the daemon's own socket: ROUNDS rounds (default 12) of 400 pooled `run -F`s at
# concurrency 8, then 500 clients that connect and vanish, 200 that send half a request
# and vanish, 200 that send garbage; after each round (6 s to settle) prints the daemon's
# descriptors, RSS, threads and memory mappings (each sandbox's child runs on a stack the
# daemon maps for it) and the running agents. Stops the daemon at the end and
# says whether anything is left. Uses a private state directory; needs root.
#   AK=target/x86_64-unknown-linux-gnu/release/agentkernel scripts/soak-daemon-pool.sh [ROUNDS]
set -euo pipefail
AK=${AK:-$(dirname "$0")/../target/x86_64-unknown-linux-gnu/release/agentkernel}
ROUNDS=${1:-12}
STATE=$(mktemp -d /tmp/ak-soak-daemon.XXXXXX)
export AGENTKERNEL_REGISTRY=$STATE/registry.db AGENTKERNEL_CONFIG=/dev/null
SOCK=$STATE/daemon.sock
daemon_pid() { "$AK" daemon status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])'; }
sample() {
  local pid; pid=$(daemon_pid)
  echo "$1: fds=$(ls "/proc/$pid/fd" | wc -l) rss_kb=$(awk '/VmRSS/{print $2}' "/proc/$pid/status") threads=$(ls "/proc/$pid/task" | wc -l) maps=$(wc -l < "/proc/$pid/maps") agents=$(pgrep -c ak-agent || true)"
}
"$AK" daemon start >/dev/null
"$AK" run -F --no-network -- true >/dev/null
sleep 1
sample start
for round in $(seq "$ROUNDS"); do
  seq 400 | xargs -P 8 -I{} "$AK" run -F --no-network -- /bin/echo hello | grep -c hello >/dev/null
  python3 - "$SOCK" <<'PY'
import socket, sys
path = sys.argv[1]
def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s
for _ in range(500):
    connect().close()
for _ in range(200):
    s = connect(); s.send(b'{"acquire":{"spec":'); s.close()
for _ in range(200):
    s = connect(); s.sendall(b'not json\n'); s.recv(4096); s.close()
PY
  sleep 6
  sample "round $round"
done
pid=$(daemon_pid)
"$AK" daemon stop >/dev/null
sleep 3
echo "stopped: daemon $(kill -0 "$pid" 2>/dev/null && echo alive || echo gone), agents $(pgrep -c ak-agent || true)"
rm -rf "$STATE"
