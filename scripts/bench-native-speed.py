#!/usr/bin/env python3
"""The native backend's speed targets (issue 18), each measured side by side with its
baseline, as ratios (these machines are noisy): the commands run in turn, round after round
(scripts/ab-interleave.py), except the back-to-back runs, which one hyperfine batch makes:

- cold `run --no-network -- /bin/echo hello` against bubblewrap with every namespace
  (target: at most 1.0x), and cold `run` with the default outbound network (at most 1.3x);
- through the daemon's warm pool: 40 back-to-back runs against a bare `/bin/echo hello`
  (target: median at most 4x), and 40 runs 150 ms apart (at most 2.5x);
- pooled runs at concurrency 8 (target: at least 300 runs/s, no errors);
- the pool's hit rate and refill time from `daemon status --json`;
- whether each build's hot functions are laid out by this tree's lists
  (`scripts/symbol-order.py --check`).

Usage: scripts/bench-native-speed.py [--runs N] [--build AGENTKERNEL] [--baseline OLD_AGENTKERNEL]
With --baseline (another build's agentkernel, its ak-agent beside it), the same
measurements are made for it too: the cold lines in the same interleaved rounds, the daemon
lines right after. Each build's binaries are first put in the same page cache state
(--binary-cache, scripts/binary-cache-state.py): a binary faulted in from disk by its first
exec (after a reboot, or an eviction) starts up to ~1.2 ms slower per cold run than the same
file freshly written or read, which is more than most changes gain. Put each build in a
directory of its own (agentkernel, ak-server, ak-agent, ak-egress, and ak-agent-musl where
scripts/build-musl-agent.sh DIR installed it) and stop its daemons first.
Needs root (or delegated cgroups), hyperfine, bubblewrap, slirp4netns and
a release build. Uses private state directories. Writes
benchmark-results/native_speed_<time>.json.
"""
import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/release/agentkernel")
ECHO = "/bin/echo hello"
BWRAP = ("bwrap --ro-bind / / --dev /dev --proc /proc --tmpfs /tmp --unshare-all "
         "--die-with-parent /bin/echo hello")
POOLED_RUNS = 40
THROUGHPUT_RUNS = 400
CONCURRENCY = 8


def load_ab_interleave():
    """scripts/ab-interleave.py as a module (its file name is not an importable one)."""
    spec = importlib.util.spec_from_file_location(
        "ab_interleave", os.path.join(ROOT, "scripts", "ab-interleave.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


AB_INTERLEAVE = load_ab_interleave()


def interleaved(commands, rounds, pause):
    """Median wall and CPU time (ms) of each command, the commands run in turn round after
    round (scripts/ab-interleave.py): batches of one command after the other drift on these
    VMs by more than the differences measured."""
    return AB_INTERLEAVE.interleave([shlex.split(c) for c in commands], rounds, pause)


def hyperfine(commands, runs, warmup=10):
    """Median, mean (ms) and CPU (ms) of each command, measured in one hyperfine run."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = ["hyperfine", "-N", "--warmup", str(warmup), "--runs", str(runs),
               "--export-json", out.name]
        subprocess.run(cmd + commands, check=True, capture_output=True, cwd="/tmp")
        results = json.load(open(out.name))["results"]
    return [{"command": r["command"], "median_ms": r["median"] * 1000,
             "mean_ms": r["mean"] * 1000, "user_ms": r["user"] * 1000,
             "system_ms": r["system"] * 1000} for r in results]


def throughput(binary):
    started = time.monotonic()
    xargs = subprocess.run(
        ["xargs", "-P", str(CONCURRENCY), "-I{}", binary, "run", "--no-network", "--",
         "/bin/echo", "hello"],
        input="\n".join(str(i) for i in range(THROUGHPUT_RUNS)) + "\n",
        capture_output=True, text=True)
    wall = time.monotonic() - started
    ok = xargs.stdout.count("hello\n")
    return {"runs": THROUGHPUT_RUNS, "succeeded": ok, "errors": THROUGHPUT_RUNS - ok,
            "concurrency": CONCURRENCY, "wall_s": wall, "runs_per_s": ok / wall,
            "stderr_tail": xargs.stderr[-500:]}


def pooled(binary):
    """The daemon's numbers for one build, in a private state directory."""
    state = tempfile.mkdtemp(prefix="ak-bench-native-")
    os.chmod(state, 0o700)
    env = dict(os.environ, AGENTKERNEL_REGISTRY=os.path.join(state, "registry.db"))
    ak = lambda *args, check=True: subprocess.run(
        [binary, *args], check=check, capture_output=True, text=True, env=env)
    os.environ["AGENTKERNEL_REGISTRY"] = env["AGENTKERNEL_REGISTRY"]
    run = f"{binary} run --no-network -- {ECHO}"
    result = {}
    ak("daemon", "start")
    try:
        ak("run", "-F", "--no-network", "--", "true")  # the pool learns the spec
        time.sleep(1)
        result["back_to_back"] = hyperfine([ECHO, run], POOLED_RUNS, warmup=0)
        time.sleep(6)  # the pool goes idle again
        result["paused_150ms"] = interleaved([ECHO, run], POOLED_RUNS, 0.15)
        time.sleep(6)
        result["throughput"] = throughput(binary)
        result["daemon_status"] = json.loads(ak("daemon", "status", "--json").stdout)
    finally:
        ak("daemon", "stop", check=False)
        del os.environ["AGENTKERNEL_REGISTRY"]
    return result


def ratio(line, base):
    return line["median_ms"] / base["median_ms"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60,
                        help="cold runs per command (interleaved rounds)")
    parser.add_argument("--build", default=BIN, help="the agentkernel to measure")
    parser.add_argument("--baseline", help="another build's agentkernel to compare with")
    parser.add_argument("--binary-cache", choices=("read", "exec", "as-is"), default="read",
                        help="the page cache state to put each build's binaries in first "
                             "(scripts/binary-cache-state.py): read = as freshly installed "
                             "(the default), exec = as after a reboot, as-is = leave it")
    args = parser.parse_args()
    builds = [("this build", os.path.abspath(args.build))]
    if args.baseline:
        builds.append(("baseline", os.path.abspath(args.baseline)))
    for _, binary in builds:
        if not os.access(binary, os.X_OK):
            sys.exit(f"not executable: {binary} (build first: cargo build --release)")

    if args.binary_cache != "as-is":
        # The state of a binary's page cache alone moves a cold run by up to ~1.2 ms here
        # (docs/benchmarks.md): every build starts from the same one.
        subprocess.run([os.path.join(ROOT, "scripts/binary-cache-state.py"), args.binary_cache]
                       + [os.path.dirname(binary) for _, binary in builds], check=True)

    # Whether each build's hot functions are laid out together by this tree's lists
    # (scripts/symbol-order.py): a build without it runs cold ~0.5 ms slower.
    layout = {}
    for name, binary in builds:
        checked = subprocess.run([sys.executable, os.path.join(ROOT, "scripts/symbol-order.py"),
                                  "--check", "--build", os.path.dirname(binary),
                                  # where scripts/build-musl-agent.sh DIR installs it;
                                  # reported as not built when absent
                                  "--musl-agent",
                                  os.path.join(os.path.dirname(binary), "ak-agent-musl")],
                                 capture_output=True, text=True, check=False)
        layout[name] = (checked.stdout or checked.stderr).strip().splitlines()
        for line in layout[name]:
            print(f"{name}: {line}")

    cold_commands = [ECHO, BWRAP]
    for _, binary in builds:
        cold_commands += [f"{binary} run --no-network -- {ECHO}", f"{binary} run -- {ECHO}"]
    cold = interleaved(cold_commands, args.runs, 0.02)
    result = {"machine": {"cpus": os.cpu_count(), "kernel": os.uname().release,
                          "load_before": os.getloadavg()},
              "symbol_order": layout, "cold": cold, "pooled": {}}
    for name, binary in builds:
        result["pooled"][name] = pooled(binary)

    bwrap = cold[1]
    print(f"cold, {args.runs} interleaved rounds (median ms; ratio to bwrap / to echo):")
    for line in cold:
        print(f"  {line['median_ms']:7.2f}  {ratio(line, bwrap):5.2f}x  "
              f"{ratio(line, cold[0]):5.2f}x  {line['command']}")
    for index, (name, _) in enumerate(builds):
        no_net, net = cold[2 + 2 * index], cold[3 + 2 * index]
        print(f"  {name}: no network {ratio(no_net, bwrap):.2f}x bwrap (target <= 1.0), "
              f"outbound network {ratio(net, bwrap):.2f}x bwrap (target <= 1.3)")
    for name, pool in result["pooled"].items():
        print(f"pooled ({name}):")
        for key, target in (("back_to_back", 4.0), ("paused_150ms", 2.5)):
            echo, run = pool[key]
            print(f"  {key:13} {run['median_ms']:6.2f} ms vs echo {echo['median_ms']:5.2f} ms: "
                  f"{ratio(run, echo):.2f}x (target <= {target})")
        t = pool["throughput"]
        print(f"  concurrency {t['concurrency']}: {t['runs_per_s']:.0f} runs/s, "
              f"{t['errors']} errors of {t['runs']} (target >= 300 runs/s, 0 errors)")
        for p in pool["daemon_status"]["pools"]:
            print(f"  pool: hits {p['hits']}, joined {p.get('joined', '-')}, "
                  f"misses {p['misses']}, hit rate {p.get('hit_rate', float('nan')):.2f}, "
                  f"refill {p.get('refill_ms') or float('nan'):.2f} ms, "
                  f"handout {p['average_handout_ms']:.2f} ms")
    os.makedirs(os.path.join(ROOT, "benchmark-results"), exist_ok=True)
    path = os.path.join(ROOT, "benchmark-results",
                        time.strftime("native_speed_%Y%m%d_%H%M%S.json", time.gmtime()))
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"written: {path}")


if __name__ == "__main__":
    main()
