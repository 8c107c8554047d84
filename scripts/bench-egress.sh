#!/usr/bin/env bash
# The allowlist network against the open one and none, side by side in one run (root):
#  1. cold `run -- true` with --no-network, the default open network, and an allowlist;
#  2. download throughput of 64 MiB from a fake internet (a network namespace joined by a
#     veth pair, crates/agentkernel/tests/cli/egress/fake_internet.py), open vs allowlist;
#  3. TCP connection set-up latency (p50/p99 of 300 connects to an echo service);
#  4. with a docker engine and the tests' busybox image (agentkernel-test:busybox): cold
#     `run -- true` on docker with no network and with an allowlist, and a live change of
#     a running sandbox's allowlist (`network set`) against `inspect` of the same sandbox.
#  5. HTTPS request latency (p50/p99 of 200 requests, each on a new connection): TLS end to
#     end through the allowlist against a secret's host, where the helper intercepts.
# Usage: scripts/bench-egress.sh [BIN_DIR]   (default target/x86_64-unknown-linux-gnu/release)
#        BENCH_ONLY=secrets scripts/bench-egress.sh ...   runs section 5 alone.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/target/x86_64-unknown-linux-gnu/release}
ak=$bin/agentkernel
ns=akbench$$ hif=akbh$$ iif=akbi$$
address=198.18.250.2
state=$(mktemp -d)
config=$state/config.toml
# The fake internet's HTTPS server needs a certificate: a throwaway CA that the egress
# helper trusts for secret hosts (upstream_ca).
certs=$state/certs
mkdir "$certs"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=bench-ca -keyout "$certs/ca.key" -out "$certs/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=api.test \
  -keyout "$certs/key.pem" -out "$certs/req.csr" 2>/dev/null
openssl x509 -req -in "$certs/req.csr" -CA "$certs/ca.pem" -CAkey "$certs/ca.key" \
  -CAcreateserial -days 2 -out "$certs/cert.pem" 2>/dev/null \
  -extfile <(printf 'subjectAltName=DNS:api.test,DNS:other.test,DNS:allowed.test\n')
printf '[network]\nupstream_dns = "%s:53"\nupstream_ca = "%s"\n' "$address" "$certs/ca.pem" > "$config"
cleanup() {
  kill "$services" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  ip link del "$hif" 2>/dev/null || true
  rm -rf "$state"
}
trap cleanup EXIT
ip netns add "$ns"
ip link add "$hif" type veth peer name "$iif"
ip link set "$iif" netns "$ns"
ip addr add 198.18.250.1/30 dev "$hif" && ip link set "$hif" up
ip -n "$ns" addr add "$address/30" dev "$iif" && ip -n "$ns" link set "$iif" up && ip -n "$ns" link set lo up
ip netns exec "$ns" python3 "$root/crates/agentkernel/tests/cli/egress/fake_internet.py" "$address" "$certs" > "$state/ready" &
services=$!
while ! grep -q ready "$state/ready" 2>/dev/null; do sleep 0.1; done

export AGENTKERNEL_CONFIG=$config AGENTKERNEL_REGISTRY=$state/registry.db AGENTKERNEL_AGENT=$bin/ak-agent AGENTKERNEL_EGRESS=$bin/ak-egress
allow=(--allow-host allowed.test)

if [ "${BENCH_ONLY:-}" != secrets ]; then
echo "== cold run -- true"
hyperfine -N --warmup 5 --runs 60 \
  "$ak run --no-network -- true" \
  "$ak run -- true" \
  "$ak run ${allow[*]} -- true"

echo "== download 64 MiB (MB/s), three each, alternating"
for i in 1 2 3; do
  open=$("$ak" run -- curl -s -o /dev/null -w '%{speed_download}' "http://$address/big")
  policy=$("$ak" run "${allow[@]}" -- curl -s -o /dev/null -w '%{speed_download}' "http://allowed.test/big")
  echo "open $(( ${open%.*} / 1000000 )) allowlist $(( ${policy%.*} / 1000000 ))"
done

echo "== connect latency, 300 connects (ms)"
probe='
import socket, sys, time
target = sys.argv[1]
socket.getaddrinfo(target, 7)
times = []
for _ in range(300):
    start = time.perf_counter()
    s = socket.create_connection((target, 7)); s.sendall(b"x"); s.recv(1); s.close()
    times.append((time.perf_counter() - start) * 1000)
times.sort()
print("p50 %.3f p99 %.3f" % (times[149], times[296]))
'
echo "open      $("$ak" run -- python3 -c "$probe" "$address")"
echo "allowlist $("$ak" run "${allow[@]}" -- python3 -c "$probe" allowed.test)"

if docker image inspect agentkernel-test:busybox >/dev/null 2>&1; then
  image=(--backend docker --image agentkernel-test:busybox)
  echo "== docker: cold run -- true"
  hyperfine -N --warmup 3 --runs 20 \
    "$ak run ${image[*]} --no-network -- true" \
    "$ak run ${image[*]} ${allow[*]} -- true"
  echo "== a live change of a running sandbox's allowlist, against inspect"
  "$ak" create live-bench "${image[@]}" "${allow[@]}" >/dev/null
  "$ak" start live-bench >/dev/null
  hyperfine -N --warmup 3 --runs 40 \
    "$ak inspect live-bench" \
    "$ak network set live-bench --allow-host allowed.test"
  "$ak" remove --force live-bench >/dev/null
fi
fi

echo "== HTTPS request on a new connection, 200 each (ms): TLS end to end vs intercepted"
https='
import os, socket, ssl, sys, time
host = sys.argv[1]
# Unverified on both sides of the comparison alike: the sandbox does not hold the test CA.
context = ssl._create_unverified_context()
request = ("GET /echo HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nConnection: close\r\n\r\n"
           % (host, os.environ["AK_BENCH_TOKEN"])).encode()
socket.getaddrinfo(host, 443)
times = []
for _ in range(200):
    start = time.perf_counter()
    tls = context.wrap_socket(socket.create_connection((host, 443)), server_hostname=host)
    tls.sendall(request)
    # To the end of the body: Content-Length where the server sent one (end to end), else
    # the close (the interception path ends bodies by closing).
    data = b""
    while b"\r\n\r\n" not in data:
        data += tls.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
    while (len(body) < length[0]) if length else (chunk := tls.recv(65536)):
        body += tls.recv(65536) if length else chunk
    tls.close()
    times.append((time.perf_counter() - start) * 1000)
times.sort()
print("p50 %.3f p99 %.3f" % (times[99], times[197]))
'
for i in 1 2; do
  echo "allowlist    $("$ak" run --allow-host other.test -e AK_BENCH_TOKEN=plain -- python3 -c "$https" other.test)"
  echo "intercepted  $("$ak" run --secret AK_BENCH_TOKEN=bench-value:api.test -- python3 -c "$https" api.test)"
done
