#!/usr/bin/env bash
# Pull throughput of the image store against skopeo, in the same run, from a registry on
# loopback (Debian's docker-registry, plain HTTP). The image: layers made from /usr/lib
# (a few hundred MB compressed). Each round pulls into an empty store / directory.
#
#   scripts/bench-image-pull.sh [ROUNDS]      (as root; needs docker-registry and skopeo)
#
# agentkernel: `image pull` (download and digest check into the store's blobs; the first
# use unpacks), and `image pull --unpack` (unpacked into layer directories as it downloads).
# skopeo: `copy docker://… dir:…` (download and digest check only: it unpacks nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
AK=${AK:-target/x86_64-unknown-linux-gnu/release/agentkernel}
[ -x "$AK" ] || { echo "build it first: cargo build --release -p agentkernel" >&2; exit 1; }
for tool in docker-registry skopeo; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install -y $tool)" >&2; exit 1; }
done

WORK=$(mktemp -d)
REG_PID=
cleanup() { [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$WORK/registry.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/registry
http:
  addr: 127.0.0.1:$PORT
YML
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
REG_PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/v2/" >/dev/null && break; sleep 0.1; done

# An OCI layout with one gzip layer per top-level part of /usr/lib.
OCI=$WORK/oci
mkdir -p "$OCI/blobs/sha256"
layers=()
diff_ids=()
for part in /usr/lib/gcc /usr/lib/python3* /usr/libexec; do
  [ -e "$part" ] || continue
  tar -C / -cf "$WORK/layer.tar" "${part#/}" 2>/dev/null || true
  diff_ids+=("sha256:$(sha256sum "$WORK/layer.tar" | cut -d' ' -f1)")
  gzip -1 -c "$WORK/layer.tar" >"$WORK/layer.tgz"
  d=$(sha256sum "$WORK/layer.tgz" | cut -d' ' -f1)
  mv "$WORK/layer.tgz" "$OCI/blobs/sha256/$d"
  layers+=("{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$d\",\"size\":$(stat -c %s "$OCI/blobs/sha256/$d")}")
done
rm -f "$WORK/layer.tar"
ids=$(printf '"%s",' "${diff_ids[@]}")
printf '{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[%s]}}' "${ids%,}" >"$WORK/config.json"
cd_=$(sha256sum "$WORK/config.json" | cut -d' ' -f1)
cp "$WORK/config.json" "$OCI/blobs/sha256/$cd_"
ls_=$(IFS=,; echo "${layers[*]}")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' \
  "$cd_" "$(stat -c %s "$WORK/config.json")" "$ls_" >"$WORK/manifest.json"
md=$(sha256sum "$WORK/manifest.json" | cut -d' ' -f1)
cp "$WORK/manifest.json" "$OCI/blobs/sha256/$md"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"bench"}}]}' \
  "$md" "$(stat -c %s "$WORK/manifest.json")" >"$OCI/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$OCI/oci-layout"
: >"$WORK/none.toml"
IMAGE=127.0.0.1:$PORT/bench:1
skopeo copy -q --dest-tls-verify=false "oci:$OCI:bench" "docker://$IMAGE"
BYTES=$(du -cb "$OCI"/blobs/sha256/* | tail -1 | cut -f1)
rm -rf "$OCI"
echo "image: ${#layers[@]} layers, $((BYTES / 1000000)) MB compressed"

now() { date +%s.%N; }
mbps() { python3 -c "print(f'{$BYTES/1e6/($2-$1):.0f}')"; }
pull() { # STATE [ARGS...]
  local state=$1; shift
  AGENTKERNEL_REGISTRY=$state/registry.db AGENTKERNEL_CONFIG=$WORK/none.toml HOME=$state \
    "$AK" image pull "$@" "$IMAGE" >/dev/null
}
printf '%-6s %10s %10s %10s %10s %8s %14s\n' round "ak s" "ak MB/s" "skopeo s" "sk MB/s" ratio "ak --unpack s"
for round in $(seq "$ROUNDS"); do
  sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  mkdir -p "$WORK/state-$round" "$WORK/unpack-$round"
  t0=$(now)
  pull "$WORK/state-$round"
  t1=$(now)
  skopeo copy -q --src-tls-verify=false "docker://$IMAGE" "dir:$WORK/skopeo-$round"
  t2=$(now)
  pull "$WORK/unpack-$round" --unpack
  t3=$(now)
  s() { python3 -c "print(f'{$2-$1:.2f}')"; }
  printf '%-6s %10s %10s %10s %10s %8s %14s\n' "$round" "$(s "$t0" "$t1")" "$(mbps "$t0" "$t1")" \
    "$(s "$t1" "$t2")" "$(mbps "$t1" "$t2")" \
    "$(python3 -c "print(f'{($t2-$t1)/($t1-$t0):.2f}x')")" "$(s "$t2" "$t3")"
  rm -rf "$WORK/state-$round" "$WORK/unpack-$round" "$WORK/skopeo-$round"
done
echo "ratio: agentkernel's pull throughput / skopeo's (above 1: agentkernel faster)."
echo "ak --unpack: the same pull unpacking every layer as it downloads (what a pull without"
echo "it leaves to the image's first use)."
