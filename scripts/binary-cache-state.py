#!/usr/bin/env python3
"""Puts the page cache of a build's binaries into a known state before a benchmark, since
that state alone moves a cold `run` by ~1.2 ms (15-20 %) on this project's VMs
(docs/benchmarks.md, "A binary's page cache").

Why: a file written or read with read() lands in the page cache in large folios; a file
first read by executing it (page faults; after a reboot, or after its pages were evicted)
lands in 4 KiB ones. Every later process mapping its text then pays per small folio: more
of them for the kernel to map on each fault (fault-around) and to unmap at exit. A binary
copied a minute ago is in the first state, an installed one after a reboot in the second,
and a copy left alone for an hour while builds press on memory drifts towards the second:
builds compared side by side must be in the same state.

Usage: scripts/binary-cache-state.py read|exec DIR [DIR...]
  read  evict the binaries of each DIR, then read them back with read() (large folios:
        as a fresh copy or install)
  exec  evict them; the next run faults them in from disk (small folios: as after a reboot)
Eviction (POSIX_FADV_DONTNEED) drops only pages nobody maps: stop daemons of these builds
first. Prints, for each binary, how much of it is in the page cache afterwards.
"""
import os
import subprocess
import sys

BINARIES = ("agentkernel", "ak-server", "ak-agent", "ak-agent-musl", "ak-egress")


def resident(path: str) -> str:
    """How much of `path` is in the page cache, as util-linux's `fincore` reports it."""
    result = subprocess.run(
        ["fincore", "--noheadings", "--output", "RES,SIZE", path],
        capture_output=True,
        text=True,
        check=False,
    )
    fields = result.stdout.split()
    return "/".join(fields) if fields else result.stderr.strip()


def evict(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_back(path: str) -> None:
    with open(path, "rb", buffering=0) as file:
        while file.read(1 << 21):
            pass


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] not in ("read", "exec"):
        sys.exit(__doc__)
    mode, dirs = sys.argv[1], sys.argv[2:]
    for directory in dirs:
        for name in BINARIES:
            path = os.path.join(directory, name)
            if not os.path.isfile(path):
                continue
            evict(path)
            if mode == "read":
                read_back(path)
            print(f"{path}: {mode}: {resident(path)} cached")


if __name__ == "__main__":
    main()
