#!/usr/bin/env python3
"""Interleaved A/B timing of whole commands: each round runs every command once, in turn,
so that drift in the host's load hits all of them alike (hyperfine runs one command's
batch after the other's). Prints, for each command, the median wall time and the median
CPU time (user + system, of the command and every descendant it waited for, from
wait4's rusage), and both as ratios to the first command.

Usage: scripts/ab-interleave.py ROUNDS PAUSE_S 'CMD A' 'CMD B' [...]
Times include starting the command from Python (the same for every command), so compare
differences, not absolute values. Put the compared builds' binaries in the same page cache
state first (scripts/binary-cache-state.py read DIR...): that state alone moves a cold run
by up to ~1.2 ms. CPU time misses work the kernel does later in its own
threads (a network namespace's teardown) and processes nobody waited for. Five warm-up
rounds are not counted.
"""
import os
import shlex
import statistics
import sys
import time


def interleave(commands: list[list[str]], rounds: int, pause: float,
               warmup: int = 5) -> list[dict]:
    """Runs every command once per round, in turn, `pause` seconds before each, output to
    /dev/null; returns each command's median wall and CPU time (ms) over `rounds` rounds,
    after `warmup` rounds not counted. Exits if a command fails."""
    walls = [[] for _ in commands]
    cpus = [[] for _ in commands]
    devnull = os.open(os.devnull, os.O_WRONLY)
    for round_ in range(rounds + warmup):
        for index, argv in enumerate(commands):
            time.sleep(pause)
            started = time.perf_counter()
            pid = os.posix_spawnp(argv[0], argv, os.environ,
                                  file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 1)])
            _, status, usage = os.wait4(pid, 0)
            elapsed = (time.perf_counter() - started) * 1000
            if status != 0:
                sys.exit(f"{shlex.join(argv)} failed (wait status {status})")
            if round_ >= warmup:
                walls[index].append(elapsed)
                cpus[index].append((usage.ru_utime + usage.ru_stime) * 1000)
    os.close(devnull)
    return [{"command": shlex.join(argv), "median_ms": statistics.median(wall),
             "cpu_ms": statistics.median(cpu), "rounds": rounds}
            for argv, wall, cpu in zip(commands, walls, cpus)]


def main() -> None:
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    rounds, pause = int(sys.argv[1]), float(sys.argv[2])
    lines = interleave([shlex.split(c) for c in sys.argv[3:]], rounds, pause)
    first = lines[0]
    print(f"{'wall ms':>8} {'cpu ms':>8} {'wall x':>7} {'cpu x':>7}  command "
          f"(medians of {rounds} rounds; ratios to the first)")
    for line, command in zip(lines, sys.argv[3:]):
        print(f"{line['median_ms']:8.3f} {line['cpu_ms']:8.3f} "
              f"{line['median_ms'] / first['median_ms']:7.2f} "
              f"{line['cpu_ms'] / first['cpu_ms']:7.2f}  {command}")


if __name__ == "__main__":
    main()
