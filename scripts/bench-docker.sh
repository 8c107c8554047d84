#!/usr/bin/env bash
# The docker backend against the docker CLI doing the same thing, side by side in one
# hyperfine run each (ratios, since machines are noisy):
#   agentkernel run --backend docker   vs  docker run --rm
#   agentkernel exec (running sandbox) vs  docker exec (running container)
#   agentkernel run -F (daemon's pool) vs  docker run --rm
# Usage: scripts/bench-docker.sh [IMAGE] [RUNS]   (a local image; default agentkernel-test:busybox,
# which the docker tests build). Needs hyperfine, a release build and a Docker engine.
set -euo pipefail
image=${1:-agentkernel-test:busybox}
runs=${2:-40}
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/x86_64-unknown-linux-gnu/release/agentkernel"
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v hyperfine >/dev/null || { echo "needs hyperfine: apt install hyperfine" >&2; exit 1; }
docker image inspect "$image" >/dev/null || { echo "no local image $image" >&2; exit 1; }
out=$(mktemp -d)
export AGENTKERNEL_REGISTRY="$out/registry.db" AGENTKERNEL_CONFIG=/dev/null
cleanup() {
  "$bin" daemon stop >/dev/null 2>&1 || true
  "$bin" remove -f ak-bench-docker >/dev/null 2>&1 || true
  docker rm -f ak-bench-plain >/dev/null 2>&1 || true
  rm -rf "$out"
}
trap cleanup EXIT
cd /tmp

hyperfine -N -w 3 -r "$runs" --export-json "$out/run.json" \
  "docker run --rm --network none $image echo hello" \
  "$bin run --backend docker --image $image --no-network -- echo hello" >/dev/null

"$bin" create ak-bench-docker --backend docker --image "$image" --no-network >/dev/null
"$bin" start ak-bench-docker >/dev/null
docker run -d --name ak-bench-plain --network none "$image" sleep 3600 >/dev/null
hyperfine -N -w 5 -r "$((runs * 2))" --export-json "$out/exec.json" \
  "docker exec ak-bench-plain echo hello" \
  "$bin exec ak-bench-docker -- echo hello" >/dev/null

"$bin" daemon start >/dev/null
sleep 2
# The pause lets the daemon refill its pool between runs, as between an agent's commands.
hyperfine -N -w 3 -r "$runs" --prepare 'sleep 0.3' --export-json "$out/pool.json" \
  "docker run --rm --network none $image echo hello" \
  "$bin run -F --backend docker --image $image --no-network -- echo hello" >/dev/null

python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
print(f"{'comparison':58} {'docker ms':>10} {'agentkernel ms':>15} {'ratio':>7}")
for name, label in [("run", "run (cold) vs docker run --rm"),
                    ("exec", "exec into a running sandbox vs docker exec"),
                    ("pool", "run -F (daemon's pool) vs docker run --rm")]:
    docker, ours = json.load(open(f"{out}/{name}.json"))["results"]
    print(f"{label:58} {docker['median']*1000:10.1f} {ours['median']*1000:15.1f} "
          f"{ours['median']/docker['median']:6.3f}x")
PY
