#!/usr/bin/env python3
"""The native runtime base on disk against a tmpfs, for the same command: in each round,
mount a tmpfs on /run/agentkernel (or unmount it) and run the command K times 5 ms apart,
the order of the two settings alternating by round. Prints each setting's wall time and
the CPU of the command and all it reaped (wait4), medians and means.

Usage (root, with /run/agentkernel empty and on disk): scripts/ab-mount.py ROUNDS K CMD...
The command must not mount the base itself (use a build from before ak_native::rundir's
keep_in_memory). Leaves the base unmounted.
"""
import os
import statistics
import subprocess
import sys
import time

BASE = "/run/agentkernel"


def mounted():
    with open("/proc/self/mountinfo") as mounts:
        return any(line.split()[4] == BASE for line in mounts)


def set_in_memory(in_memory):
    if in_memory and not mounted():
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0711,nosuid,nodev,noexec",
                        "agentkernel", BASE], check=True)
    while not in_memory and mounted():
        subprocess.run(["umount", BASE], check=True)
    if os.listdir(BASE):
        sys.exit(f"{BASE} is not empty: {os.listdir(BASE)}")


def main():
    rounds, per_block, command = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    wall = {False: [], True: []}
    cpu = {False: [], True: []}
    for round_ in range(rounds):
        for in_memory in ([False, True] if round_ % 2 == 0 else [True, False]):
            set_in_memory(in_memory)
            for _ in range(per_block):
                time.sleep(0.005)
                started = time.perf_counter()
                child = subprocess.Popen(command, stdout=subprocess.DEVNULL)
                _, _, usage = os.wait4(child.pid, 0)
                wall[in_memory].append(time.perf_counter() - started)
                cpu[in_memory].append(usage.ru_utime + usage.ru_stime)
    set_in_memory(False)
    for in_memory in (False, True):
        w, c = wall[in_memory], cpu[in_memory]
        print(f"{'tmpfs' if in_memory else 'disk '}: wall median {statistics.median(w) * 1000:.3f}"
              f" mean {statistics.mean(w) * 1000:.3f} p90 {sorted(w)[int(len(w) * .9)] * 1000:.3f} ms;"
              f" cpu median {statistics.median(c) * 1000:.3f} mean {statistics.mean(c) * 1000:.3f} ms")


if __name__ == "__main__":
    main()
