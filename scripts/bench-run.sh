#!/usr/bin/env bash
# Side-by-side benchmark of `agentkernel run -- /bin/echo hello` against a bare
# `/bin/echo hello`, measured in the same hyperfine run (ratios, since machines are noisy),
# plus the sandbox's peak memory. Usage: scripts/bench-run.sh [RUNS] [extra run flags…]
# Needs hyperfine (apt install hyperfine) and a release build (cargo build --release).
# When bubblewrap and util-linux's unshare are installed, the same run also times them as
# reference points: what bare namespaces cost on this machine, with no agent, cgroups,
# seccomp or hidden host paths.
set -euo pipefail
runs=${1:-300}
shift || true
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/x86_64-unknown-linux-gnu/release/agentkernel"
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v hyperfine >/dev/null || { echo "needs hyperfine: apt install hyperfine" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

references=()
if command -v unshare >/dev/null; then
  references+=('unshare -Urn /bin/echo hello')
fi
if command -v bwrap >/dev/null; then
  references+=('bwrap --ro-bind / / --dev /dev --proc /proc --tmpfs /tmp --unshare-all --die-with-parent /bin/echo hello')
fi

cd /tmp
hyperfine -N --warmup 20 --runs "$runs" --export-json "$out/run.json" \
  '/bin/echo hello' \
  "$bin run --no-network $* -- /bin/echo hello" \
  "${references[@]}" >/dev/null

python3 - "$out/run.json" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))["results"]
bare = results[0]
def ms(r, key): return r[key] * 1000
print(f"{'command':60} {'median ms':>10} {'mean ms':>9} {'p95 ms':>8} {'ratio':>6}")
for r in results:
    times = sorted(r["times"])
    p95 = times[int(len(times) * 0.95)] * 1000
    ratio = r["median"] / bare["median"]
    print(f"{r['command'][-60:]:60} {ms(r, 'median'):10.2f} {ms(r, 'mean'):9.2f} {p95:8.2f} {ratio:5.2f}x")
PY

peak=$("$bin" -v run --no-network "$@" -- /bin/echo hello 2>&1 >/dev/null | sed -n 's/.*sandbox peak memory: \([0-9]*\) KiB.*/\1/p')
echo "sandbox peak memory (cgroup, agent + command): ${peak:-unknown} KiB"
