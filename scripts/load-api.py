#!/usr/bin/env python3
"""Load generator for the HTTP API: N concurrent clients doing `POST /run` for D seconds.

Usage: scripts/load-api.py BASE_URL|SOCKET [CONCURRENCY] [SECONDS]
(token from AGENTKERNEL_API_KEY; a path is a Unix socket, e.g. the daemon's api.sock)
Prints throughput, latency percentiles and every error; exits 1 if any request failed.
Needs httpx (installed with `pip install agentkernel-sdk`). Loopback only: it refuses other
hosts, so that it cannot be pointed at someone else's server by mistake.
"""

import asyncio
import os
import sys
import time
from urllib.parse import urlparse

import httpx

BODY = {
    "command": ["/bin/echo", "hello"],
    "profile": "restrictive",
    # LOAD_FAST=0 makes every run build its own sandbox instead of taking a warm one.
    "fast": os.environ.get("LOAD_FAST", "1") != "0",
}


async def client(http, deadline, latencies, errors):
    while time.monotonic() < deadline:
        begun = time.monotonic()
        try:
            response = await http.post("/run", json=BODY)
            data = response.json()
            if response.status_code != 200 or data["data"]["output"] != "hello\n":
                errors.append(f"{response.status_code}: {response.text[:200]}")
                continue
        except Exception as error:  # every failure is counted and shown, none is retried
            errors.append(repr(error))
            continue
        latencies.append(time.monotonic() - begun)


async def main():
    base = sys.argv[1]
    concurrency = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 30
    transport = None
    if base.startswith("/"):
        transport = httpx.AsyncHTTPTransport(uds=base)
        base = "http://localhost"
    host = urlparse(base).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit(f"refusing to load {host}: loopback only")
    headers = {}
    if os.environ.get("AGENTKERNEL_API_KEY"):
        headers["Authorization"] = f"Bearer {os.environ['AGENTKERNEL_API_KEY']}"
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies, errors = [], []
    if transport is not None:
        transport = httpx.AsyncHTTPTransport(uds=sys.argv[1], limits=limits)
    async with httpx.AsyncClient(
        base_url=base, headers=headers, limits=limits, timeout=60, transport=transport
    ) as http:
        begun = time.monotonic()
        deadline = begun + seconds
        await asyncio.gather(*(client(http, deadline, latencies, errors) for _ in range(concurrency)))
        elapsed = time.monotonic() - begun
    latencies.sort()

    def pct(p):
        return latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000 if latencies else float("nan")

    print(f"clients {concurrency}, {elapsed:.1f} s: {len(latencies)} runs, {len(errors)} errors")
    print(f"throughput {len(latencies) / elapsed:.1f} runs/s")
    print(f"latency ms: p50 {pct(0.50):.1f}  p90 {pct(0.90):.1f}  p99 {pct(0.99):.1f}  max {latencies[-1] * 1000 if latencies else float('nan'):.1f}")
    for error in errors[:20]:
        print("error:", error)
    return 1 if errors else 0


sys.exit(asyncio.run(main()))
