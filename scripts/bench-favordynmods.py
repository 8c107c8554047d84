#!/usr/bin/env python3
"""Whether cgroup2's `favordynmods` mount option changes a command's time: each round
remounts the cgroup2 hierarchy without the option, runs every command once, remounts it
with the option and runs them again, so that load drift hits both alike. Prints each
command's median per setting. At the end the mount gets its original options back.

Usage (root; it changes a host mount option while it runs, so not on a machine whose
other users would mind): scripts/bench-favordynmods.py ROUNDS 'CMD' ['CMD' ...]
Three warm-up rounds are not counted.
"""
import ctypes
import os
import shlex
import statistics
import subprocess
import sys
import time

MS_REMOUNT = 32
MS_RELATIME = 1 << 21
libc = ctypes.CDLL(None, use_errno=True)


def cgroup2_mount():
    """The first cgroup2 mount point and its superblock options."""
    for line in open("/proc/self/mountinfo"):
        before, after = line.split(" - ", 1)
        fstype, _source, options = after.split()[:3]
        if fstype == "cgroup2":
            return before.split()[4], [o for o in options.split(",") if o not in ("rw", "ro")]
    sys.exit("no cgroup2 hierarchy is mounted")


def remount(point, options):
    data = ",".join(options).encode()
    if libc.mount(b"cgroup2", point.encode(), b"cgroup2", MS_REMOUNT | MS_RELATIME, data) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"remount {point} with '{data.decode()}': {os.strerror(errno)}")


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    rounds = int(sys.argv[1])
    commands = sys.argv[2:]
    point, original = cgroup2_mount()
    without = [o for o in original if o != "favordynmods"]
    settings = {"off": without, "on": without + ["favordynmods"]}
    times = {(c, s): [] for c in commands for s in settings}
    devnull = open(os.devnull, "w")
    try:
        for round_ in range(rounds + 3):
            for setting, options in settings.items():
                remount(point, options)
                for command in commands:
                    time.sleep(0.005)
                    started = time.perf_counter()
                    subprocess.run(shlex.split(command), stdout=devnull, check=True)
                    if round_ >= 3:
                        times[(command, setting)].append(time.perf_counter() - started)
    finally:
        remount(point, original)
    for (command, setting), values in times.items():
        print(f"{statistics.median(values) * 1000:8.3f} ms  favordynmods {setting:3}  {command}")


if __name__ == "__main__":
    main()
