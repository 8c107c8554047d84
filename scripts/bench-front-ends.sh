#!/usr/bin/env bash
# The service surface's cost, side by side in one run (interleaved, scripts/ab-interleave.py):
#   1. cold `run --no-network -- /bin/echo hello`: the previous build (OLD) against this one;
#   2. pooled `run` through each build's own daemon (private state directories);
#   3. exec into a running named sandbox through the daemon: the CLI over the daemon's
#      socket (the Action + a file descriptor to the agent) against the same exec as an HTTP
#      request on the daemon's api.sock (curl), the transport the design notes proposed.
#
# Usage: scripts/bench-front-ends.sh OLD_AGENTKERNEL [ROUNDS]
# (needs a release build of this tree, python3 and curl; run as root.)
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$1
ROUNDS=${2:-100}
NEW=$PWD/target/x86_64-unknown-linux-gnu/release/agentkernel
AB=scripts/ab-interleave.py
old_state=$(mktemp -d) new_state=$(mktemp -d)
chmod 711 "$old_state" "$new_state"
OLD_ENV="env AGENTKERNEL_REGISTRY=$old_state/registry.db"
NEW_ENV="env AGENTKERNEL_REGISTRY=$new_state/registry.db"
cleanup() {
  $NEW_ENV "$NEW" remove --force bench-box >/dev/null 2>&1 || true
  $OLD_ENV "$OLD" daemon stop >/dev/null 2>&1 || true
  $NEW_ENV "$NEW" daemon stop >/dev/null 2>&1 || true
  rm -rf "$old_state" "$new_state"
}
trap cleanup EXIT

echo "== cold run --no-network (no daemon)"
python3 "$AB" "$ROUNDS" 0.05 \
  "$OLD_ENV $OLD run --no-network -- /bin/echo hello" \
  "$NEW_ENV $NEW run --no-network -- /bin/echo hello"

echo "== pooled run through each build's daemon (150 ms apart: the pool refills)"
$OLD_ENV "$OLD" daemon start >/dev/null
$NEW_ENV "$NEW" daemon start >/dev/null
python3 "$AB" "$ROUNDS" 0.15 \
  "$OLD_ENV $OLD run --no-network -- /bin/echo hello" \
  "$NEW_ENV $NEW run --no-network -- /bin/echo hello"

echo "== exec in a running named sandbox, through the daemon: fd transport vs HTTP on api.sock"
$NEW_ENV "$NEW" create bench-box --no-network >/dev/null
$NEW_ENV "$NEW" start bench-box >/dev/null
python3 "$AB" "$ROUNDS" 0.02 \
  "$NEW_ENV $NEW exec bench-box -- /bin/echo hello" \
  "curl -sf --unix-socket $new_state/api.sock -X POST -H content-type:application/json -d '{\"command\":[\"/bin/echo\",\"hello\"]}' http://localhost/sandboxes/bench-box/exec"
