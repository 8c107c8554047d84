#!/usr/bin/env python3
"""Drives `agentkernel serve` with the request kinds of the allowlist work, as a user would:
one-shot runs with an allowlist (each starts and ends an egress helper), live allowlist
changes of a named sandbox, and reads of it; then compares the server's descriptors and
RSS, the agents and helpers, host mounts and agentkernel cgroups with where they started.

    scripts/soak-allowlist-api.py PORT SERVER_PID ROUNDS   (3 requests per round; root;
    the server started with AGENTKERNEL_API_KEY=soaktoken and an [api] section allowing
    network = "allowlist" with allow_hosts = ["allowed.test", "other.test"])
"""
import json, os, subprocess, sys, time, urllib.request, concurrent.futures as cf
PORT, PID, N = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
H = {"Authorization": "Bearer soaktoken", "Content-Type": "application/json"}
def req(method, path, body=None):
    r = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", method=method, headers=H,
                               data=None if body is None else json.dumps(body).encode())
    with urllib.request.urlopen(r, timeout=60) as resp:
        return resp.status, resp.read()
def snap():
    fds = len(os.listdir(f"/proc/{PID}/fd"))
    rss = int([l for l in open(f"/proc/{PID}/status") if l.startswith("VmRSS")][0].split()[1])
    ps = subprocess.run(["pgrep", "-c", "-f", "ak-egress|ak-agent"], capture_output=True, text=True).stdout.strip()
    # Less the tmpfs that root's first native sandbox mounts on its runtime base for good.
    mounts = sum(1 for line in open("/proc/self/mountinfo") if line.split()[4] != "/run/agentkernel")
    cg = subprocess.run("find /sys/fs/cgroup -maxdepth 3 -type d -name '*agentkernel*' | wc -l", shell=True, capture_output=True, text=True).stdout.strip()
    return dict(fds=fds, rss_kib=rss, helpers_agents=ps, mounts=mounts, cgroup_dirs=cg)
st, _ = req("POST", "/sandboxes", {"name": "soak-live", "network": "allowlist", "allow_hosts": ["allowed.test"]})
def run_allow(i):
    return req("POST", "/run", {"command": ["true"], "network": "allowlist", "allow_hosts": ["allowed.test"]})[0]
def set_net(i):
    hosts = ["allowed.test"] if i % 2 else ["other.test"]
    return req("PUT", "/sandboxes/soak-live/network", {"allow_hosts": hosts})[0]
def get_one(i):
    return req("GET", "/sandboxes/soak-live")[0]
# warm-up
for i in range(20): run_allow(i); set_net(i); get_one(i)
time.sleep(2)
before = snap(); print("before", before, flush=True)
errors = 0
t0 = time.time()
with cf.ThreadPoolExecutor(8) as ex:
    for f in [ex.submit(fn, i) for i in range(N) for fn in (run_allow, set_net, get_one)]:
        try:
            if f.result() >= 400: errors += 1
        except Exception as e:
            errors += 1
print(f"{3*N} requests in {time.time()-t0:.1f}s, errors {errors}", flush=True)
time.sleep(3)
after = snap(); print("after ", after, flush=True)
req("DELETE", "/sandboxes/soak-live")
time.sleep(2)
print("after removing the named sandbox", snap(), flush=True)
