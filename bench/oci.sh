#!/usr/bin/env bash
# Benchmark (issue 15, OCI half): a bundle through a registry against the
# same bundle from a file and over plain HTTP. A real registry (Debian's
# docker-registry, distribution 2.8) and python3 -m http.server run on
# 127.0.0.1; steps, each into a fresh copy of one offline disk image:
#   - push: `abkit bundle push` (one PUT), and with --chunk-size 16 MiB;
#   - curl of the registry's blob URL to /dev/null (the transport floor);
#   - install from the local file, from the HTTP server, from oci:// by tag.
# Prints median wall time of RUNS runs, MB/s of bundle and peak RSS.
# Warm page cache only; the machine is noisy: compare within one run.
#
# Usage: bench/oci.sh            (SIZE_MIB=512 RUNS=3)
# Needs about 5 x SIZE_MIB of free space in $TMPDIR, docker-registry, curl,
# python3 (scripts/deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${SIZE_MIB:-512}
RUNS=${RUNS:-3}
. bench/lib.sh
need_tools docker-registry curl python3 /usr/bin/time
build_abkit
PYTHON=$(python3 -c 'import sys; print(sys.executable)')
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

bench_workdir oci

REG=127.0.0.1:$(free_port)
mkdir "$WORK/storage"
cat >"$WORK/registry.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/storage
http:
  addr: $REG
EOF
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
BENCH_PIDS="$BENCH_PIDS $!"
HTTP_PORT=$(free_port)
"$PYTHON" -m http.server --bind 127.0.0.1 --directory "$WORK" "$HTTP_PORT" >/dev/null 2>&1 &
BENCH_PIDS="$BENCH_PIDS $!"
for _ in $(seq 100); do
  curl -s -o /dev/null "http://$REG/v2/" && curl -s -o /dev/null "http://127.0.0.1:$HTTP_PORT/" && break
  sleep 0.1
done

# A tiny PE/COFF EFI application as the bundle's loader.
tiny_efi "$WORK/boot.efi"
"$ABKIT" keygen --out "$WORK/rel" >/dev/null
mkdir "$WORK/ring" && cp "$WORK/rel.pub" "$WORK/ring/"
echo "bench: ${SIZE_MIB} MiB system image in $WORK, $RUNS run(s) per step" >&2
head -c $((SIZE_MIB * 3 / 4))M /dev/urandom >"$WORK/system.img"
head -c $((SIZE_MIB - SIZE_MIB * 3 / 4))M /dev/zero >>"$WORK/system.img"
"$ABKIT" bundle create --efi "$WORK/boot.efi" --system "$WORK/system.img" \
  --version 1.0.0 --compatible bench --key "$WORK/rel.key" -o "$WORK/bundle.abb" >/dev/null
BUNDLE_BYTES=$(stat -c %s "$WORK/bundle.abb")
cp /usr/share/OVMF/OVMF_VARS_4M.fd "$WORK/vars.fd"
"$ABKIT" image build --loader "$WORK/boot.efi" --system "$WORK/system.img" \
  --system-size $((SIZE_MIB + 64))M -o "$WORK/disk.img" --ovmf-vars "$WORK/vars.fd" >/dev/null
cp "$WORK/disk.img" "$WORK/disk0.img"
cp "$WORK/vars.fd" "$WORK/vars0.fd"

declare -A WALL RSS
wall_of() { awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$1"; }
rss_of() { awk -F': ' '/Maximum resident set size/ {print $2}' "$1"; }
# run KEY CMD...: RUNS times, a fresh disk before each; median wall, max RSS.
run() {
  local key=$1 walls=() rss=0 i r; shift
  for ((i = 0; i < RUNS; i++)); do
    cp --reflink=auto "$WORK/disk0.img" "$WORK/disk.img"
    cp "$WORK/vars0.fd" "$WORK/vars.fd"
    cat "$WORK/bundle.abb" >/dev/null
    sync
    /usr/bin/time -v -o "$WORK/time.txt" "$@" >/dev/null 2>"$WORK/stderr.txt" || {
      cat "$WORK/stderr.txt" >&2; echo "bench: $key failed: $*" >&2; exit 1; }
    walls+=("$(wall_of "$WORK/time.txt")")
    r=$(rss_of "$WORK/time.txt"); ((r > rss)) && rss=$r
  done
  WALL[$key]=$(printf '%s\n' "${walls[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  RSS[$key]=$rss
}

TAG=oci://$REG/bench/os:1.0.0
# The first push uploads; later ones find the blob: push to a new
# repository each run so every run uploads.
cat >"$WORK/push.sh" <<EOF
#!/bin/sh
n=\$(( \$(cat "$WORK/pushes" 2>/dev/null || echo 0) + 1 ))
echo \$n >"$WORK/pushes"
exec "$ABKIT" bundle push "$WORK/bundle.abb" "oci://$REG/bench/p\$n:1" --insecure-registry "\$@"
EOF
run push sh "$WORK/push.sh"
run "push --chunk-size 16M" sh "$WORK/push.sh" --chunk-size $((16 << 20))
"$ABKIT" bundle push "$WORK/bundle.abb" "$TAG" --insecure-registry >/dev/null
BLOB=$(curl -s -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$REG/v2/bench/os/manifests/1.0.0" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["layers"][0]["digest"])')
run "curl blob" curl -s -o /dev/null "http://$REG/v2/bench/os/blobs/$BLOB"
MACHINE=(--disk "$WORK/disk.img" --ovmf-vars "$WORK/vars.fd" --booted-slot a --keyring "$WORK/ring" --allow-unrecorded --json)
run "install file" "$ABKIT" install "$WORK/bundle.abb" "${MACHINE[@]}"
run "install http" "$ABKIT" install "http://127.0.0.1:$HTTP_PORT/bundle.abb" "${MACHINE[@]}"
run "install oci" "$ABKIT" install "$TAG" --insecure-registry "${MACHINE[@]}"

printf '\n%-24s %10s %10s %12s\n' step "wall s" "MB/s" "peak RSS MiB"
for key in push "push --chunk-size 16M" "curl blob" "install file" "install http" "install oci"; do
  awk -v k="$key" -v w="${WALL[$key]}" -v r="${RSS[$key]}" -v b="$BUNDLE_BYTES" \
    'BEGIN { printf "%-24s %10.2f %10.1f %12.1f\n", k, w, (w > 0 ? b / w / 1e6 : 0), r / 1024 }'
done
printf '\nbundle: %d bytes; install oci / install http: %s\n' "$BUNDLE_BYTES" \
  "$(awk -v a="${WALL[install oci]}" -v b="${WALL[install http]}" 'BEGIN { printf "%.2f", a / b }')"
