#!/usr/bin/env bash
# A cold native `run` from a pulled OCI image against a cold native `run` of the host image,
# in the same hyperfine run (and the pooled path, with a daemon, for both). The image:
# Debian's static busybox as one layer, pushed to a loopback registry (docker-registry)
# and pulled into a fresh store first, so the runs measure the overlay root, not the pull.
#
#   scripts/bench-image-run.sh [RUNS]      (as root; needs docker-registry, skopeo, hyperfine)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-200}
AK=${AK:-target/x86_64-unknown-linux-gnu/release/agentkernel}
[ -x "$AK" ] || { echo "build it first: cargo build --release -p agentkernel" >&2; exit 1; }
for tool in docker-registry skopeo hyperfine; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install -y $tool)" >&2; exit 1; }
done

WORK=$(mktemp -d)
chmod 755 "$WORK"
REG_PID=
cleanup() {
  [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null
  AGENTKERNEL_REGISTRY=$WORK/state/registry.db "$AK" daemon stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$WORK/registry.yml" <<YML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $WORK/registry
http:
  addr: 127.0.0.1:$PORT
YML
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
REG_PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/v2/" >/dev/null && break; sleep 0.1; done

# The image: busybox and its applets' links, as a one-layer OCI layout.
ROOT=$WORK/rootfs
mkdir -p "$ROOT/bin" "$ROOT/etc" "$ROOT/tmp"
cp /bin/busybox "$ROOT/bin/"
for applet in sh true echo ls cat; do ln -s busybox "$ROOT/bin/$applet"; done
echo 'root:x:0:0:root:/root:/bin/sh' >"$ROOT/etc/passwd"
OCI=$WORK/oci
mkdir -p "$OCI/blobs/sha256"
tar -C "$ROOT" -cf "$WORK/layer.tar" .
diff_id=$(sha256sum "$WORK/layer.tar" | cut -d' ' -f1)
gzip -1 -c "$WORK/layer.tar" >"$WORK/layer.tgz"
ld=$(sha256sum "$WORK/layer.tgz" | cut -d' ' -f1)
mv "$WORK/layer.tgz" "$OCI/blobs/sha256/$ld"
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$diff_id" >"$WORK/config.json"
cd_=$(sha256sum "$WORK/config.json" | cut -d' ' -f1)
cp "$WORK/config.json" "$OCI/blobs/sha256/$cd_"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
  "$cd_" "$(stat -c %s "$WORK/config.json")" "$ld" "$(stat -c %s "$OCI/blobs/sha256/$ld")" >"$WORK/manifest.json"
md=$(sha256sum "$WORK/manifest.json" | cut -d' ' -f1)
cp "$WORK/manifest.json" "$OCI/blobs/sha256/$md"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"bench"}}]}' \
  "$md" "$(stat -c %s "$WORK/manifest.json")" >"$OCI/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$OCI/oci-layout"
IMAGE=127.0.0.1:$PORT/busybox-bench:1
skopeo copy -q --dest-tls-verify=false "oci:$OCI:bench" "docker://$IMAGE"

: >"$WORK/none.toml"
export AGENTKERNEL_REGISTRY=$WORK/state/registry.db AGENTKERNEL_CONFIG=$WORK/none.toml HOME=$WORK/state
mkdir -p "$WORK/state"
"$AK" image pull "$IMAGE" >/dev/null

RUN="$AK run --backend native --no-network"
RESULTS=benchmark-results/image_run_$(date -u +%Y%m%d_%H%M%S)
mkdir -p benchmark-results
# Medians and their ratio from a hyperfine export (means hide a loaded machine's outliers).
medians() {
  python3 - "$1" <<'PY'
import json, statistics, sys
r = json.load(open(sys.argv[1]))["results"]
m = [statistics.median(x["times"]) * 1000 for x in r]
print(f"medians: {r[0]['command']} {m[0]:.2f} ms, {r[1]['command']} {m[1]:.2f} ms: ratio {m[1]/m[0]:.2f}x")
PY
}
echo "== cold runs (no daemon)"
hyperfine -N --warmup 20 --runs "$RUNS" --export-json "${RESULTS}_cold.json" \
  -n host "$RUN -- /bin/true" \
  -n image "$RUN --image $IMAGE --pull never -- /bin/true"
medians "${RESULTS}_cold.json"

# The pooled path: a daemon in the same private state, each spec taught to its pool by a
# few runs first; runs 150 ms apart so that a spare is ready for each (as a user's runs
# are), then the pools' hit counts, so a miss cannot hide in the mean.
echo "== pooled runs (daemon, 150 ms apart)"
"$AK" daemon start >/dev/null
for _ in 1 2 3; do
  $RUN -- /bin/true
  $RUN --image "$IMAGE" --pull never -- /bin/true
done
sleep 1
hyperfine -N --warmup 10 --runs "$RUNS" --prepare 'sleep 0.15' --export-json "${RESULTS}_pooled.json" \
  -n host-pooled "$RUN -- /bin/true" \
  -n image-pooled "$RUN --image $IMAGE --pull never -- /bin/true"
medians "${RESULTS}_pooled.json"
"$AK" daemon status --json | python3 -c '
import json, sys
for pool in json.load(sys.stdin).get("pools", []):
    print({k: pool.get(k) for k in ("pool", "hits", "joined", "misses")})'
