#!/usr/bin/env python3
"""Interleaved A/B timing of whole commands: each round runs every command once, in turn,
so that drift in the host's load hits all of them alike (hyperfine runs one command's
batch after the other's). Prints each command's median wall time.

Usage: scripts/ab-interleave.py ROUNDS PAUSE_S 'CMD A' 'CMD B' [...]
Times include starting the command from Python (the same for every command), so compare
differences, not absolute values. Five warm-up rounds are not counted.
"""
import os
import shlex
import statistics
import sys
import time


def main() -> None:
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    rounds, pause = int(sys.argv[1]), float(sys.argv[2])
    commands = [shlex.split(c) for c in sys.argv[3:]]
    times = [[] for _ in commands]
    devnull = os.open(os.devnull, os.O_WRONLY)
    for round_ in range(rounds + 5):
        for index, argv in enumerate(commands):
            time.sleep(pause)
            started = time.perf_counter()
            pid = os.posix_spawnp(argv[0], argv, os.environ,
                                  file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 1)])
            _, status = os.waitpid(pid, 0)
            elapsed = (time.perf_counter() - started) * 1000
            if status != 0:
                sys.exit(f"{sys.argv[3 + index]} failed (wait status {status})")
            if round_ >= 5:
                times[index].append(elapsed)
    for index, command in enumerate(sys.argv[3:]):
        print(f"{statistics.median(times[index]):8.3f} ms  {command}")


if __name__ == "__main__":
    main()
