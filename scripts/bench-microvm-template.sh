#!/usr/bin/env bash
# One-shot microVMs (QEMU, no network) restored from a template against booted, in one
# run:
#
# 1. Cold runs side by side in one hyperfine run: `run --backend microvm --no-network --
#    true` restoring a copy of the template's memory (the default) and booting
#    (`[microvm] restore_one_shot = false`). The template is made before the runs.
# 2. Warm-pool refill: a daemon per mode serves N back-to-back pooled runs; `daemon
#    status` reports the pool's moving average of the time to build a spare (refill_ms)
#    and its hits. Refill by restore against refill by boot.
# 3. Memory of the pool's spares, once it is idle: the sum of Pss and Rss
#    (/proc/PID/smaps_rollup) of its QEMU processes. Restored spares map the template's
#    memory file copy-on-write and share the pages none of them wrote.
#
# Writes benchmark-results/microvm_template_<time>/.
#
#   cargo build --release -p agentkernel     (or AK=path/to/agentkernel)
#   scripts/bench-microvm-template.sh [--runs N]
#
# Needs what `agentkernel setup` builds. Run as root.
set -euo pipefail

runs=5
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
AK="${AK:-$PWD/target/x86_64-unknown-linux-gnu/release/agentkernel}"
[ -x "$AK" ] || { echo "build it first: cargo build --release -p agentkernel (or set AK)" >&2; exit 1; }
command -v hyperfine >/dev/null || { echo "hyperfine is needed (apt-get install hyperfine)" >&2; exit 1; }
out="benchmark-results/microvm_template_$(date +%Y%m%d_%H%M%S)"
mkdir -p "$out"
work=$(mktemp -d)
trap 'for s in "$work"/state-*; do AGENTKERNEL_REGISTRY="$s/registry.db" "$AK" daemon stop >/dev/null 2>&1 || true; done; rm -rf "$work"' EXIT
printf '[microvm]\nrestore_one_shot = false\n' > "$work/boot.toml"
printf '[microvm]\nrestore_one_shot = true\n' > "$work/restore.toml"
run="$AK run --backend microvm --no-network -- true"
# The template, made once (its cost is a boot and a save, paid by the first run only).
AGENTKERNEL_CONFIG="$work/restore.toml" $run

hyperfine --warmup 1 --runs "$runs" --export-json "$out/cold.json" \
    -n restore "AGENTKERNEL_CONFIG=$work/restore.toml $run" \
    -n boot "AGENTKERNEL_CONFIG=$work/boot.toml $run" | tee "$out/cold.txt"

for mode in restore boot; do
    state="$work/state-$mode"
    mkdir -p "$state"
    export AGENTKERNEL_REGISTRY="$state/registry.db" AGENTKERNEL_CONFIG="$work/$mode.toml"
    "$AK" daemon start >/dev/null
    for i in $(seq 1 $((runs * 2))); do
        "$AK" run -F --backend microvm --no-network -- true
    done
    "$AK" daemon status --json > "$out/pool-$mode.json"
    # The spares' memory once the pool has refilled and settled.
    sleep 10
    python3 - "$mode" <<'PY' | tee -a "$out/pss.txt"
import os, sys
mode = sys.argv[1]
total = {"Pss": 0, "Rss": 0}
vms = 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        if not cmdline[0].endswith(b"qemu-system-x86_64"):
            continue
        # Every QEMU of the host: run this where no other VM runs.
        rollup = open(f"/proc/{pid}/smaps_rollup").read()
    except OSError:
        continue
    vms += 1
    for line in rollup.splitlines():
        key, _, value = line.partition(":")
        if key in total:
            total[key] += int(value.split()[0])
print(f"{mode:8} {vms} VMs: Pss {total['Pss'] / 1024:.0f} MiB, Rss {total['Rss'] / 1024:.0f} MiB"
      f" ({total['Pss'] / 1024 / max(vms, 1):.0f} / {total['Rss'] / 1024 / max(vms, 1):.0f} MiB each)")
PY
    "$AK" daemon stop >/dev/null
    unset AGENTKERNEL_REGISTRY AGENTKERNEL_CONFIG
    python3 - "$out/pool-$mode.json" "$mode" <<'PY' | tee -a "$out/pool.txt"
import json, sys
status = json.load(open(sys.argv[1]))
pool = next(p for p in status["pools"] if p["pool"].startswith("microvm/"))
print(f"{sys.argv[2]:8} refill {pool.get('refill_ms') or 0:8.1f} ms over {pool['refills']} refills; "
      f"hits {pool['hits']} joined {pool['joined']} misses {pool['misses']}; "
      f"hand-out {pool['average_handout_ms']:.1f} ms")
PY
done
python3 - "$out/cold.json" <<'PY' | tee "$out/ratio.txt"
import json, sys
results = {r["command"]: r["mean"] for r in json.load(open(sys.argv[1]))["results"]}
print(f"cold run: restore {results['restore']*1000:.0f} ms, boot {results['boot']*1000:.0f} ms, "
      f"restore/boot {results['restore']/results['boot']:.2f}x")
PY
echo "results in $out"
