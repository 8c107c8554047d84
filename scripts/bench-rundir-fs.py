#!/usr/bin/env python3
"""What the filesystem under the native backend's runtime directories costs each sandbox:
the same steps as `RunDir::create` and `RunDir::remove` (a hidden directory, a lock file
taken with flock, the rename into place, the `root` mount point, then their removal),
timed in turns on two directories. Prints each one's median.

Usage: scripts/bench-rundir-fs.py [ROUNDS] [DIR_A] [DIR_B]
Defaults: 300 rounds, /run (where root's runtime directories go) against /dev/shm (a tmpfs).
Works in a fresh subdirectory of each, removed at the end.
"""
import fcntl
import os
import statistics
import subprocess
import sys
import time
import uuid


def one(base):
    name = uuid.uuid4().hex
    building, path = os.path.join(base, "." + name), os.path.join(base, name)
    started = time.perf_counter()
    os.mkdir(building, 0o711)
    lock = os.open(os.path.join(building, "lock"), os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.rename(building, path)
    os.mkdir(os.path.join(path, "root"))
    os.unlink(os.path.join(path, "lock"))
    os.rmdir(os.path.join(path, "root"))
    os.rmdir(path)
    os.close(lock)
    return time.perf_counter() - started


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    parents = sys.argv[2:4] or ["/run", "/dev/shm"]
    bases = [os.path.join(p, f"ak-bench-rundir-{os.getpid()}") for p in parents]
    for base in bases:
        os.mkdir(base, 0o700)
    times = {base: [] for base in bases}
    try:
        for _ in range(rounds):
            for base in bases:
                times[base].append(one(base))
    finally:
        for base in bases:
            os.rmdir(base)
    for parent, base in zip(parents, bases):
        fstype = subprocess.run(["stat", "-f", "-c", "%T", parent], capture_output=True,
                                text=True).stdout.strip()
        print(f"{statistics.median(times[base]) * 1e6:8.1f} us  {parent} ({fstype})")


if __name__ == "__main__":
    main()
