#!/usr/bin/env bash
# microVMs (QEMU) saved with their memory, measured in one run:
#
# 1. Side by side in one hyperfine run: a boot of a stopped VM (`start`: a new QEMU boots
#    the kernel until the agent answers), the same with the VM's creation (`create` +
#    `start`), a `pause --save` of a running VM (QMP stop, migrate to a file, QEMU ends), a
#    restore (`resume` of the saved VM: a QEMU started with -incoming, then the agent's
#    sync, which sets the guest's clock and reseeds its RNG: the VM answers when it
#    returns) and a `fork` of a running VM from its memory (save a copy, copy the layer
#    disk, restore the copy as a new VM). Boot and restore use the same kernel, image and
#    memory size; both commands end when the agent answered. Their ratio is written to
#    ratio.txt.
# 2. Where one restore's time goes: the phases the backend logs (AGENTKERNEL_LOG=debug).
# 3. Memory: N VMs forked from one running VM against N VMs booted, all running at once:
#    the sum of the PSS (/proc/PID/smaps_rollup) of their QEMU processes, and of the RSS.
#    The forks map one memory file copy-on-write; the time of that `fork` is written too.
#
# 4. The start of a restore's QEMU until it can take a state (scripts/qemu-incoming-start.py):
#    what a pool of QEMUs pre-started with `-incoming defer` would save.
#
# Also the size of the memory file. Writes benchmark-results/microvm_memory_<time>/.
#
#   cargo build --release -p agentkernel     (or AK=path/to/agentkernel)
#   scripts/bench-microvm-memory.sh [--runs N] [--memory 256M] [--vms N]
#
# Needs what `agentkernel setup` builds. Run as root; the state directory is a private
# temporary one.
set -euo pipefail

runs=5
memory=256M
vms=4
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --memory) memory="$2"; shift 2 ;;
        --vms) vms="$2"; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

root="$(cd "$(dirname "$0")/.." && pwd)"
ak="${AK:-$root/target/x86_64-unknown-linux-gnu/release/agentkernel}"
[ -x "$ak" ] || { echo "build first: cargo build --release -p agentkernel" >&2; exit 1; }
command -v hyperfine >/dev/null || { echo "hyperfine is needed (apt install hyperfine)" >&2; exit 1; }

stamp="$(date -u +%Y%m%d_%H%M%S)"
out="$root/benchmark-results/microvm_memory_$stamp"
mkdir -p "$out"
state="$(mktemp -d /var/tmp/ak-bench-vmem.XXXXXX)"
names() {
    "$ak" list --json 2>/dev/null | python3 -c 'import json,sys; [print(r["name"]) for r in json.load(sys.stdin)]' 2>/dev/null
}
cleanup() {
    for s in $(names); do
        "$ak" remove "$s" --force >/dev/null 2>&1 || true
    done
    rm -rf "$state"
}
trap cleanup EXIT
export AGENTKERNEL_CONFIG=/dev/null AGENTKERNEL_BACKEND=microvm
export AGENTKERNEL_REGISTRY="$state/registry.db"
flags="--no-network --memory $memory"

echo "== 1. side by side (load: $(cut -d' ' -f1-3 /proc/loadavg))" | tee "$out/load.txt"
"$ak" create src $flags >/dev/null
"$ak" start src >/dev/null
"$ak" create plain $flags >/dev/null
hyperfine --runs "$runs" --export-json "$out/memory.json" \
    -n "boot: start of a stopped VM" \
    --prepare "'$ak' stop plain >/dev/null 2>&1; true" \
    "'$ak' start plain" \
    -n "boot: create + start of a fresh VM" \
    --prepare "'$ak' remove fresh --force >/dev/null 2>&1; true" \
    "'$ak' create fresh $flags && '$ak' start fresh" \
    -n "pause --save of a running VM" \
    --prepare "'$ak' resume src >/dev/null 2>&1; true" \
    "'$ak' pause src --save" \
    -n "restore: resume of the saved VM" \
    --prepare "'$ak' pause src --save >/dev/null 2>&1; true" \
    "'$ak' resume src" \
    -n "fork of a running VM from its memory" \
    --prepare "'$ak' resume src >/dev/null 2>&1; '$ak' remove f --force >/dev/null 2>&1; true" \
    "'$ak' fork src f"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/load.txt"
python3 - "$out/memory.json" <<'PY' | tee "$out/ratio.txt"
import json, sys
results = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
boot = results["boot: start of a stopped VM"]
restore = results["restore: resume of the saved VM"]
for name, r in (("boot (start)", boot), ("restore (resume)", restore)):
    print(f"{name}: mean {r['mean'] * 1000:.0f} ms ± {r['stddev'] * 1000:.0f}, "
          f"median {r['median'] * 1000:.0f} ms")
print(f"restore / boot: {restore['mean'] / boot['mean']:.2f}x (means), "
      f"{restore['median'] / boot['median']:.2f}x (medians)")
PY
"$ak" remove f --force >/dev/null 2>&1 || true
"$ak" remove fresh --force >/dev/null 2>&1 || true
"$ak" stop plain >/dev/null 2>&1 || true

echo "== 2. where a restore's time goes"
"$ak" resume src >/dev/null 2>&1 || true
"$ak" pause src --save >/dev/null
ls -l "$state"/sandboxes/*/memory.state | tee "$out/memory-file.txt"
started=$(date +%s%N)
AGENTKERNEL_LOG=ak_microvm=debug,ak_service=debug "$ak" resume src 2>"$out/resume-phases.log" >/dev/null
echo "resume: $(( ($(date +%s%N) - started) / 1000000 )) ms in all" | tee -a "$out/resume-phases.log"
grep -E "microVM started" "$out/resume-phases.log" || true

echo "== 3. memory of $vms forked VMs against $vms booted ones"
forks=() booted=()
for i in $(seq 1 "$vms"); do forks+=("f$i"); booted+=("b$i"); done
# Two or more forks share the state's memory (made shareable first: one more restore).
started=$(date +%s%N)
"$ak" fork src "${forks[@]}" >/dev/null
echo "fork into $vms: $(( ($(date +%s%N) - started) / 1000000 )) ms" | tee "$out/fork-n.txt"
for b in "${booted[@]}"; do
    "$ak" create "$b" $flags >/dev/null
    "$ak" start "$b" >/dev/null
done
# Let the last ones settle as the first did (a guest's boot goes on a moment after its
# agent answers).
sleep 5
"$ak" list --json >"$out/list.json"
python3 - "$out/list.json" "${forks[*]}" "${booted[*]}" <<'PY' | tee "$out/pss.txt"
import json, os, sys
uuid = {r["name"]: r["uuid"] for r in json.load(open(sys.argv[1]))}

def qemu_of(sandbox_uuid):
    # The VM's QEMU is the process whose QMP socket is in the VM's runtime directory.
    mark = f"/{sandbox_uuid}/qmp.sock".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        if b"qemu-system" in cmdline and mark in cmdline:
            return int(pid)
    raise SystemExit(f"no QEMU for {sandbox_uuid}")

def rollup(pid):
    fields = {}
    for line in open(f"/proc/{pid}/smaps_rollup"):
        parts = line.split()
        if len(parts) >= 3 and parts[-1] == "kB":
            fields[parts[0].rstrip(":")] = int(parts[1])
    return fields

for label, names in (("forked", sys.argv[2].split()), ("booted", sys.argv[3].split())):
    rows = [rollup(qemu_of(uuid[n])) for n in names]
    pss = sum(r["Pss"] for r in rows)
    rss = sum(r["Rss"] for r in rows)
    each = ", ".join(f"{r['Pss'] // 1024}" for r in rows)
    print(f"{label}: {len(rows)} QEMUs, PSS {pss / 1024:.0f} MiB in all (each: {each} MiB), "
          f"RSS {rss / 1024:.0f} MiB in all")
open(sys.argv[1] + ".fork-pid", "w").write(str(qemu_of(uuid[sys.argv[2].split()[0]])))
PY

echo "== 4. what a QEMU pre-started with -incoming defer would save a restore"
"$root/scripts/qemu-incoming-start.py" "$(cat "$out/list.json.fork-pid")" 10 | tee "$out/incoming-start.txt"
rm -f "$out/list.json.fork-pid"
echo "results in $out"
