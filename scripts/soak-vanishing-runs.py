#!/usr/bin/env python3
"""Soaks `agentkernel serve` with one-shot runs that finish and clients that hang up while
theirs is being set up, and prints what the server and the host hold after each round.

    AGENTKERNEL_API_KEY=T agentkernel serve --port 18877 &
    scripts/soak-vanishing-runs.py --url http://127.0.0.1:18877 --token T --pid $!

Each round sends --finished runs (`echo hi; sleep 0.2`, answer checked) and --vanished
ones whose client closes its connection 0-9 ms after sending the request, both through
--clients threads, then waits --settle seconds and samples the server's descriptors, RSS
and threads with the host's agents, sandbox cgroups and mounts. A sandbox built for a
client that went away must be released like any other (a one-shot sandbox never outlives
its request); nothing may grow from round to round. Python standard library only.
"""

import argparse
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request


def host_state(pid):
    """What the server process and the host hold now."""
    def count(path):
        try:
            return len(os.listdir(path))
        except OSError:
            return None

    rss_kb = None
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss_kb = int(line.split()[1])
    except OSError:
        pass
    cgroups = 0
    # /sys/fs/cgroup/HIERARCHY/agentkernel/SANDBOX (v1; on v2 HIERARCHY is absent).
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        if "/agentkernel/" in root + "/" and os.path.basename(root) != "agentkernel":
            cgroups += 1
        if root.count("/") >= 6:
            dirs[:] = []
    agents = subprocess.run(["pgrep", "-c", "ak-agent"], capture_output=True, text=True)
    # Less the tmpfs that root's first native sandbox mounts on its runtime base for good.
    with open("/proc/self/mountinfo") as mounts:
        mount_count = sum(1 for line in mounts if line.split()[4] != "/run/agentkernel")
    return {
        "fds": count(f"/proc/{pid}/fd"),
        "rss_kb": rss_kb,
        "threads": count(f"/proc/{pid}/task"),
        "agents": int(agents.stdout.strip() or 0),
        "sandbox_cgroups": cgroups,
        "mounts": mount_count,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--pid", type=int, required=True, help="the server's process id")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--finished", type=int, default=200)
    parser.add_argument("--vanished", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--settle", type=float, default=8.0)
    args = parser.parse_args()

    url = urllib.parse.urlparse(args.url)
    body = json.dumps({"command": ["sh", "-c", "echo hi; sleep 0.2"]}).encode()
    headers = {"Authorization": f"Bearer {args.token}", "Content-Type": "application/json"}
    raw = (
        f"POST /run HTTP/1.1\r\nHost: soak\r\nAuthorization: Bearer {args.token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    def finished(_):
        request = urllib.request.Request(args.url + "/run", data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return json.load(answer)["data"]["output"] == "hi\n"
        except Exception as error:  # any failure is counted, not fatal
            print(f"run failed: {error}", file=sys.stderr)
            return False

    def vanished(i):
        with socket.create_connection((url.hostname, url.port)) as connection:
            connection.sendall(raw)
            time.sleep((i % 10) / 1000)
        return True

    rounds = [{"round": 0, **host_state(args.pid)}]
    errors = 0
    with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
        for number in range(1, args.rounds + 1):
            ok = sum(pool.map(finished, range(args.finished)))
            errors += args.finished - ok
            sum(pool.map(vanished, range(args.vanished)))
            time.sleep(args.settle)
            rounds.append({"round": number, **host_state(args.pid)})
    print(json.dumps({"errors": errors, "rounds": rounds}, indent=1))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
