#!/usr/bin/env python3
"""Soak the agentkernel HTTP API: many mixed requests from concurrent clients, and what the
server process holds (open descriptors, resident memory) before and after.

Each client (a thread with one kept-alive connection) owns one sandbox, recreated every
--recreate-every of its requests, and cycles through: exec, write a file, read it back,
a one-shot run. Descriptors and RSS are sampled after a warm-up (so that pools, caches
and connections exist in both samples) and again at the end, both while every client
still holds its sandbox and its connection; the sandboxes are removed afterwards.

  scripts/soak.py --url http://127.0.0.1:18888 --token "$(cat ~/.local/state/agentkernel/api-token)" --pid PID
  scripts/soak.py --socket ~/.local/state/agentkernel/api.sock --pid PID

Prints one JSON object; exits 1 when any request failed (0 otherwise). Standard library only.
"""

import argparse
import http.client
import json
import os
import socket
import sys
import threading
import time


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket (the daemon's API socket, `serve --socket`)."""

    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def sample(pid):
    """Open descriptors and resident memory (KiB) of process `pid`."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss_kib = None
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss_kib = int(line.split()[1])
    return fds, rss_kib


class Budget:
    """The requests left to make, shared by the clients; none once `stop()` says so."""

    def __init__(self, count, stop=lambda: False):
        self.left = count
        self.stop = stop
        self.lock = threading.Lock()

    def take(self):
        with self.lock:
            if self.left <= 0 or self.stop():
                return False
            self.left -= 1
            return True


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.errors = 0
        self.by_kind = {}
        self.samples = []
        self.reconnects = 0

    def count_reconnect(self):
        with self.lock:
            self.reconnects += 1

    def record(self, kind, ok, detail):
        with self.lock:
            self.requests += 1
            counts = self.by_kind.setdefault(kind, {"ok": 0, "errors": 0})
            if ok:
                counts["ok"] += 1
            else:
                counts["errors"] += 1
                self.errors += 1
                if len(self.samples) < 10:
                    self.samples.append(f"{kind}: {detail}")


class Client:
    """One connection and one sandbox, kept across phases."""

    def __init__(self, index, args, stats):
        self.index = index
        self.args = args
        self.stats = stats
        self.connection = None
        self.generation = 0
        self.sandbox = None
        self.since_created = 0
        self.step = 0
        self.written = None

    def connect(self):
        if self.args.socket:
            return UnixHTTPConnection(self.args.socket, self.args.timeout)
        url = self.args.url.removeprefix("http://").rstrip("/")
        host, _, port = url.rpartition(":")
        return http.client.HTTPConnection(host, int(port), timeout=self.args.timeout)

    def call(self, method, path, body=None):
        """(status, parsed JSON or None); a broken connection is opened again once."""
        headers = {"Content-Type": "application/json"}
        if self.args.token:
            headers["Authorization"] = f"Bearer {self.args.token}"
        data = None if body is None else json.dumps(body).encode()
        for attempt in (1, 2):
            if self.connection is None:
                self.connection = self.connect()
            try:
                self.connection.request(method, path, body=data, headers=headers)
                response = self.connection.getresponse()
                raw = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.connection.close()
                    self.connection = None
                try:
                    value = json.loads(raw) if raw else None
                except ValueError:
                    value = None
                return response.status, value
            except (OSError, http.client.HTTPException) as error:
                self.connection.close()
                self.connection = None
                # A kept-alive connection the server closed between requests: once more,
                # on a new one (counted: the server should not do that under load).
                self.stats.count_reconnect()
                if attempt == 2 or not isinstance(
                    error, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
                ):
                    return None, {"error": repr(error)}
        return None, None

    def check(self, kind, status, value, want_status, predicate=None):
        ok = status == want_status
        if ok and predicate is not None:
            try:
                ok = bool(predicate(value))
            except (KeyError, TypeError):
                ok = False
        detail = None if ok else f"status {status}: {json.dumps(value)[:300]}"
        self.stats.record(kind, ok, detail)
        return ok

    def create(self, budget):
        if not budget.take():
            return False
        self.generation += 1
        name = f"soak-{os.getpid()}-{self.index}-{self.generation}"
        status, value = self.call(
            "POST", "/sandboxes", {"name": name, "profile": self.args.profile}
        )
        if self.check("create", status, value, 201):
            self.sandbox = name
            self.since_created = 0
        return True

    def remove(self, budget=None):
        if self.sandbox is None or (budget is not None and not budget.take()):
            return False
        status, value = self.call("DELETE", f"/sandboxes/{self.sandbox}")
        self.check("delete", status, value, 200)
        self.sandbox = None
        return True

    def one(self, budget):
        """Makes the client's next request; False when the budget is spent."""
        if self.sandbox is None:
            return self.create(budget)
        if self.since_created >= self.args.recreate_every:
            return self.remove(budget)
        if not budget.take():
            return False
        self.since_created += 1
        self.step += 1
        base = f"/sandboxes/{self.sandbox}"
        kind = ("exec", "write", "read", "run")[self.step % 4]
        if kind == "exec":
            status, value = self.call("POST", f"{base}/exec", {"command": ["echo", "hi"]})
            self.check(kind, status, value, 200, lambda v: v["data"]["output"] == "hi\n")
        elif kind == "write":
            content = f"client {self.index} step {self.step}\n"
            self.written = content
            status, value = self.call("PUT", f"{base}/files/workspace/x.txt", {"content": content})
            self.check(kind, status, value, 200)
        elif kind == "read":
            want = self.written
            status, value = self.call("GET", f"{base}/files/workspace/x.txt")
            self.check(
                kind, status, value, 200, lambda v: want is None or v["data"]["content"] == want
            )
        else:
            status, value = self.call(
                "POST", "/run", {"command": ["echo", "hi"], "profile": self.args.profile}
            )
            self.check(kind, status, value, 200, lambda v: v["data"]["output"] == "hi\n")
        return True


def phase(clients, count, stop):
    """`count` requests spread over the clients, each in its own thread; seconds taken."""
    budget = Budget(count, stop)

    def drive(client):
        try:
            while client.one(budget):
                pass
        except Exception as error:  # a bug here must show as an error, not a hang
            client.stats.record("client", False, repr(error))

    threads = [threading.Thread(target=drive, args=(c,)) for c in clients]
    begun = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - begun


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="http://HOST:PORT")
    where.add_argument("--socket", help="the API's Unix socket")
    parser.add_argument("--token", default=os.environ.get("AGENTKERNEL_API_KEY"))
    parser.add_argument("--pid", type=int, help="the server's process (for fds and RSS)")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--recreate-every", type=int, default=20)
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds to wait before each sample (pool refills, reaping)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds a request may take")
    parser.add_argument("--max-errors", type=int, default=0,
                        help="stop making requests after this many errors (0: never)")
    parser.add_argument("--profile", default="restrictive",
                        help="of the sandboxes (restrictive: no network, so no network helper)")
    args = parser.parse_args()

    stats = Stats()
    clients = [Client(i, args, stats) for i in range(args.clients)]
    # A server that has begun failing would only make the rest of the run slow (requests
    # waiting out their timeouts): stop early, the numbers so far say enough.
    def stop():
        return args.max_errors > 0 and stats.errors >= args.max_errors

    phase(clients, args.warmup, stop)
    # Every client holds a sandbox at both samples, so that they compare like with like.
    for client in clients:
        if client.sandbox is None:
            client.create(Budget(1))
    warm_errors = stats.errors
    time.sleep(args.settle)
    before = sample(args.pid) if args.pid else (None, None)
    measured_from = stats.requests
    seconds = phase(clients, args.requests, stop)
    measured = stats.requests - measured_from
    for client in clients:
        if client.sandbox is None:
            client.create(Budget(1))
    time.sleep(args.settle)
    after = sample(args.pid) if args.pid else (None, None)
    for client in clients:
        client.remove()
        if client.connection is not None:
            client.connection.close()

    summary = {
        "target": args.socket or args.url,
        "clients": args.clients,
        "requests": stats.requests,
        "measured_requests": measured,
        "errors": stats.errors,
        "stopped_early": stop(),
        "warmup_errors": warm_errors,
        "reconnects": stats.reconnects,
        "req_per_s": round(measured / seconds, 1) if seconds > 0 else None,
        "seconds": round(seconds, 2),
        "fds_before": before[0],
        "fds_after": after[0],
        "rss_kib_before": before[1],
        "rss_kib_after": after[1],
        "by_kind": stats.by_kind,
        "error_samples": stats.samples,
    }
    print(json.dumps(summary, indent=2))
    return 1 if stats.errors else 0


if __name__ == "__main__":
    sys.exit(main())
