#!/usr/bin/env python3
"""The microvm backend (QEMU driver) measured here, side by side in one run:

- our boot -> agent ready (`agentkernel bench`: launch of the vsock daemon and QEMU, kernel
  boot, the agent mounting the image and listening, its ready connection) against a bare
  QEMU boot of the same kernel whose /init only prints a marker (target: at most 1.2x);
- the component breakdown (boot, ready, exec round trip, shutdown);
- `run -- echo hello` cold and through the daemon's warm pool (target: at most 5 ms).

The bare boots and ours alternate one by one (each of ours is one `agentkernel bench
--iterations 1`): on a shared host whose load drifts, all of one then all of the other put
the drift into the ratio.

Usage: scripts/bench-microvm.py [N]   (N runs of each; needs a release build, root,
`agentkernel setup` done, gcc and cpio). Writes benchmark-results/microvm_<time>.json.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/release/agentkernel")
# The same size for every VM measured: one vCPU, 256 MiB.
SIZE = ["--cpus", "1", "--memory", "256M"]
MARKER = b"AK-BARE-MARKER"
# The kernel command line our driver uses (crates/ak-microvm: KERNEL_ARGS + qemu::CMDLINE).
KERNEL_ARGS = ("console=ttyS0 quiet loglevel=4 i8042.nokbd i8042.noaux i8042.nopnp "
               "8250.nr_uarts=1 panic=-1 reboot=t")
MARKER_INIT = r"""
#include <sys/reboot.h>
#include <unistd.h>
int main(void) {
    static const char m[] = "AK-BARE-MARKER\n";
    write(1, m, sizeof m - 1);
    reboot(RB_AUTOBOOT);
    return 0;
}
"""


def stats(samples):
    ordered = sorted(samples)
    def pct(p):
        k = (len(ordered) - 1) * p
        lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)
    return {"n": len(samples), "mean": statistics.fmean(samples), "p50": pct(0.5),
            "p95": pct(0.95), "max": ordered[-1]}


def tsc_khz():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    return None


def agentkernel(*args, env=None, check=True):
    out = subprocess.run([BIN, *args], capture_output=True, env=env)
    if check and out.returncode != 0:
        sys.exit(f"agentkernel {' '.join(args)} failed: {out.stderr.decode()}")
    return out


def kernel_path():
    report = json.loads(agentkernel("status", "--json").stdout)
    microvm = next(b for b in report["backends"] if b["backend"] == "microvm")
    if not microvm["usable"]:
        sys.exit(f"microvm is not usable: {microvm['reason']}")
    return dict(microvm["details"])["kernel"]


def marker_initramfs(work):
    src = os.path.join(work, "init.c")
    with open(src, "w") as f:
        f.write(MARKER_INIT)
    tree = os.path.join(work, "tree")
    os.makedirs(tree)
    subprocess.run(["gcc", "-static", "-O2", "-o", os.path.join(tree, "init"), src], check=True)
    cpio = os.path.join(work, "marker.cpio")
    with open(cpio, "wb") as out:
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], input=b"init\n", cwd=tree,
                       stdout=out, check=True)
    return cpio


def bare_boot(kernel, cpio):
    """One bare boot: launch -> marker, in ms."""
    args = KERNEL_ARGS
    khz = tsc_khz()
    if khz:
        args += f" tsc_early_khz={khz}"
    start = time.perf_counter()
    qemu = subprocess.Popen(
        ["qemu-system-x86_64", "-M", "microvm,acpi=off,auto-kernel-cmdline=off",
         "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "256M", "-nodefaults",
         "-no-user-config", "-display", "none", "-no-reboot", "-kernel", kernel,
         "-initrd", cpio, "-append", args, "-serial", "stdio"],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    seen = b""
    while MARKER not in seen:
        chunk = qemu.stdout.read1(4096)
        if not chunk:
            sys.exit(f"the bare VM ended without its marker: {seen[-500:]!r}")
        seen += chunk
    took = (time.perf_counter() - start) * 1000
    qemu.wait()
    return took


def timed_runs(n, *args, env=None):
    times = []
    for _ in range(n):
        start = time.perf_counter()
        out = agentkernel(*args, env=env)
        times.append((time.perf_counter() - start) * 1000)
        if out.stdout != b"hello\n":
            sys.exit(f"unexpected output {out.stdout!r}")
    return times


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    if not os.access(BIN, os.X_OK):
        sys.exit("build first: cargo build --release")
    for tool in ("gcc", "cpio", "qemu-system-x86_64"):
        if not shutil.which(tool):
            sys.exit(f"needs {tool}")
    kernel = kernel_path()
    work = tempfile.mkdtemp()
    env = dict(os.environ, AGENTKERNEL_REGISTRY=os.path.join(work, "registry.db"),
               AGENTKERNEL_CONFIG="/dev/null")
    try:
        cpio = marker_initramfs(work)
        bare, samples, phase_samples = [], {}, {}
        for _ in range(n):
            bare.append(bare_boot(kernel, cpio))
            # One sandbox through boot, ready, exec and shutdown (and one throughput run,
            # the least `bench` takes): each component's mean is its one sample.
            bench = json.loads(agentkernel("bench", "--backend", "microvm", *SIZE,
                                           "--iterations", "1", "--runs", "1",
                                           "--concurrency", "1", "--json", env=env).stdout)
            measured = bench["backends"][0]
            for name, step in measured["components"].items():
                samples.setdefault(name, []).append(step["mean_ms"])
            for name, step in measured.get("boot_phases", []):
                phase_samples.setdefault(name, []).append(step["mean_ms"])
        components = {name: stats(values) for name, values in samples.items()}
        phases = list((name, stats(values)) for name, values in phase_samples.items())
        cold = timed_runs(n, "run", "--backend", "microvm", *SIZE, "--", "echo", "hello", env=env)
        agentkernel("daemon", "start", env=env)
        try:
            # The first run builds the pool; measure the ones after it.
            timed_runs(2, "run", "-F", "--backend", "microvm", *SIZE, "--", "echo", "hello",
                       env=env)
            pooled = []
            for _ in range(n):
                time.sleep(4)  # a spare boots behind each run (emulated: a few seconds)
                pooled += timed_runs(1, "run", "-F", "--backend", "microvm", *SIZE, "--",
                                     "echo", "hello", env=env)
            status = json.loads(agentkernel("daemon", "status", "--json", env=env).stdout)
        finally:
            agentkernel("daemon", "stop", env=env, check=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ours_ready = [components["boot"]["mean"] + components["ready"]["mean"]]
    result = {
        "machine": bench["machine"],
        "n": n,
        "bare_qemu_boot_to_init_ms": stats(bare),
        "components_ms": components,
        "boot_phases_ms": phases,
        "boot_to_agent_ready_mean_ms": ours_ready[0],
        "boot_ratio_vs_bare": ours_ready[0] / stats(bare)["mean"],
        "run_cold_ms": stats(cold),
        "run_pooled_ms": stats(pooled),
        "pool": status.get("pools"),
    }
    print(f"{'what':<42}{'mean':>10}{'p50':>10}{'p95':>10}  (ms, n={n})")
    rows = [("bare QEMU boot -> /init marker", stats(bare))]
    rows += [("ours: boot", components["boot"])]
    rows += [(f"  {name}", s) for name, s in phases]
    rows += [(f"ours: {name}", components[name]) for name in ("ready", "exec", "shutdown")]
    rows += [("run -- echo hello (cold)", stats(cold)),
             ("run -F -- echo hello (warm pool)", stats(pooled))]
    for name, s in rows:
        print(f"{name:<42}{s['mean']:>10.1f}{s['p50']:>10.1f}{s['p95']:>10.1f}")
    print(f"boot -> agent ready vs bare boot: {result['boot_ratio_vs_bare']:.2f}x")
    os.makedirs(os.path.join(ROOT, "benchmark-results"), exist_ok=True)
    path = os.path.join(ROOT, "benchmark-results",
                        time.strftime("microvm_%Y%m%d_%H%M%S.json", time.gmtime()))
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"written: {path}")


if __name__ == "__main__":
    main()
