#!/usr/bin/env python3
"""The daemon's numbers (native backend), side by side with the bare command in one run:

- `run -- /bin/echo hello` through the warm pool against `/bin/echo hello` (target: median
  at most 3x), with a pause between runs (the pool refilled, as between an agent's
  commands) and back to back (the refill competes with the next run), plus the cold run
  without a daemon in the same hyperfine run;
- `exec` into a running named sandbox, through the daemon and without one;
- throughput of pooled runs at concurrency 8 (target: 500 commands/s), with the CPU time
  the whole host spent per run (from /proc/stat), which bounds it on this machine;
- memory of an idle warm sandbox: its agent's RSS (target: at most 2 MiB) and PSS.

Usage: scripts/bench-daemon.py [RUNS]  (needs hyperfine and a release build; run as root or
as a user with delegated cgroups). Uses a private state directory, so the user's sandboxes
and daemon are untouched. Writes benchmark-results/daemon_<time>.json.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/release/agentkernel")
ECHO = "/bin/echo hello"
THROUGHPUT_RUNS = 400
CONCURRENCY = 8


def ak(*args, check=True):
    return subprocess.run([BIN, *args], check=check, capture_output=True, text=True)


def hyperfine(commands, runs, prepare=None):
    """Medians (ms) and CPU (ms) of `commands`, measured in one hyperfine run."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = ["hyperfine", "-N", "--warmup", "10", "--runs", str(runs),
               "--export-json", out.name]
        if prepare:
            cmd += ["--prepare", prepare]
        subprocess.run(cmd + commands, check=True, capture_output=True)
        results = json.load(open(out.name))["results"]
    return [{"command": r["command"], "median_ms": r["median"] * 1000,
             "mean_ms": r["mean"] * 1000, "user_ms": r["user"] * 1000,
             "system_ms": r["system"] * 1000} for r in results]


def cpu_ticks():
    """Busy and total clock ticks of the whole host so far."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def throughput():
    busy0, _ = cpu_ticks()
    started = time.monotonic()
    xargs = subprocess.run(
        ["xargs", "-P", str(CONCURRENCY), "-I{}", BIN, "run", "--no-network", "--",
         "/bin/echo", "hello"],
        input="\n".join(str(i) for i in range(THROUGHPUT_RUNS)) + "\n",
        capture_output=True, text=True)
    wall = time.monotonic() - started
    busy1, _ = cpu_ticks()
    hz = os.sysconf("SC_CLK_TCK")
    ok = xargs.stdout.count("hello\n")
    return {"runs": THROUGHPUT_RUNS, "succeeded": ok, "concurrency": CONCURRENCY,
            "wall_s": wall, "runs_per_s": ok / wall,
            "host_cpu_ms_per_run": (busy1 - busy0) * 1000 / hz / max(ok, 1),
            "cpus": os.cpu_count()}


def idle_agent_memory():
    """RSS and PSS (KiB) of each idle spare's agent."""
    spares = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            if not cmdline[0].endswith(b"ak-agent") or b"--fd" not in cmdline:
                continue
            status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
            rollup = dict(line.split(":", 1) for line in open(f"/proc/{pid}/smaps_rollup")
                          if ":" in line and not line[0].isdigit())
        except OSError:
            continue
        kib = lambda text: int(text.split()[0])
        spares.append({"pid": int(pid), "rss_kib": kib(status["VmRSS"]),
                       "rss_anon_kib": kib(status["RssAnon"]),
                       "rss_file_kib": kib(status["RssFile"]), "pss_kib": kib(rollup["Pss"])})
    return spares


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    if not os.access(BIN, os.X_OK):
        sys.exit("build first: cargo build --release")
    state = tempfile.mkdtemp(prefix="ak-bench-daemon-")
    os.environ["AGENTKERNEL_REGISTRY"] = os.path.join(state, "registry.db")
    os.chmod(state, 0o700)
    run_cmd = f"{BIN} run --no-network -- {ECHO}"
    result = {"machine": {"cpus": os.cpu_count(), "kernel": os.uname().release},
              "binary_bytes": os.path.getsize(BIN),
              "agent_bytes": os.path.getsize(os.path.join(os.path.dirname(BIN), "ak-agent"))}

    ak("create", "idle", "--no-network")
    ak("start", "idle")
    exec_cmd = f"{BIN} exec idle -- {ECHO}"
    result["exec_without_daemon"] = hyperfine([ECHO, exec_cmd], runs)
    result["cold_run"] = hyperfine([ECHO, run_cmd], runs)

    ak("daemon", "start")
    try:
        ak("run", "-F", "--no-network", "--", "true")  # the pool learns the spec
        time.sleep(1)
        result["idle_spares"] = idle_agent_memory()
        result["pooled_run_paused"] = hyperfine([ECHO, run_cmd], runs, prepare="sleep 0.05")
        result["pooled_run_back_to_back"] = hyperfine([ECHO, run_cmd], runs)
        result["exec_through_daemon"] = hyperfine([ECHO, exec_cmd], runs)
        result["throughput"] = throughput()
        result["daemon_status"] = json.loads(ak("daemon", "status", "--json").stdout)
    finally:
        ak("daemon", "stop", check=False)
        ak("remove", "--force", "idle", check=False)

    print(f"{'measurement':46} {'bare ms':>8} {'ours ms':>8} {'ratio':>6}")
    for key in ("cold_run", "pooled_run_paused", "pooled_run_back_to_back",
                "exec_without_daemon", "exec_through_daemon"):
        bare, ours = result[key]
        ratio = ours["median_ms"] / bare["median_ms"]
        ours["ratio_to_bare"] = ratio
        print(f"{key:46} {bare['median_ms']:8.2f} {ours['median_ms']:8.2f} {ratio:5.2f}x")
    t = result["throughput"]
    print(f"throughput at concurrency {t['concurrency']}: {t['runs_per_s']:.1f} runs/s "
          f"({t['succeeded']}/{t['runs']} ok), host CPU per run {t['host_cpu_ms_per_run']:.2f} ms "
          f"on {t['cpus']} CPUs")
    for spare in result["idle_spares"]:
        print(f"idle spare agent: RSS {spare['rss_kib']} KiB (anon {spare['rss_anon_kib']}, "
              f"file {spare['rss_file_kib']}), PSS {spare['pss_kib']} KiB")
    os.makedirs(os.path.join(ROOT, "benchmark-results"), exist_ok=True)
    path = os.path.join(ROOT, "benchmark-results",
                        time.strftime("daemon_%Y%m%d_%H%M%S.json", time.gmtime()))
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"written: {path}")


if __name__ == "__main__":
    main()
