#!/usr/bin/env bash
# Benchmark: `abkit install` into an offline disk image, for system images of
# 512 MiB and 2 GiB (issue 5):
#   - from a local bundle, against `dd bs=4M conv=fsync` of the raw system
#     image into the same slot offset (the floor: writing the slot once);
#   - from an HTTP server on 127.0.0.1 (python3 -m http.server), against
#     `curl -o /dev/null` of the bundle and the dd (streaming should overlap
#     the download and the write, so the goal is against the slower one).
# Prints a table: median wall time of RUNS runs, MB/s of system image, peak
# RSS (from /usr/bin/time -v) and the ratios.
# Goals: local <= 1.15 x dd; HTTP <= 1.15 x max(curl, dd); peak RSS < 32 MiB.
#
# Usage: bench/install.sh                      (SIZES_MIB="512 2048" RUNS=3)
#        SIZES_MIB=256 RUNS=1 bench/install.sh
# Needs about 4.5 x the largest size of free space in $TMPDIR, curl and python3.
# The page cache is warm for the inputs; every writer flushes to disk at the end.
# The machine is noisy (other builds): compare within one run, not across.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES_MIB=${SIZES_MIB:-512 2048}
RUNS=${RUNS:-3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release -q -p abkit
ABKIT=$CARGO_TARGET_DIR/release/abkit
for tool in curl python3 dd /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench: needs $tool" >&2; exit 1; }
done
# The real interpreter (python3 may be a wrapper script), so that killing the
# server's pid stops it.
PYTHON=$(python3 -c 'import sys; print(sys.executable)')

WORK=$(mktemp -d "${TMPDIR:-/tmp}/abkit-bench-install.XXXXXX")
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# A tiny PE/COFF EFI application as the bundle's loader.
python3 - "$WORK/boot.efi" <<'PY'
import sys
img = bytearray(0x200)
img[0:2] = b"MZ"; img[0x3c:0x40] = (0x40).to_bytes(4, "little"); img[0x40:0x44] = b"PE\0\0"
img[0x44:0x46] = (0x8664).to_bytes(2, "little"); img[0x54:0x56] = (240).to_bytes(2, "little")
img[0x58:0x5a] = (0x20b).to_bytes(2, "little"); img[0x58 + 68:0x58 + 70] = (10).to_bytes(2, "little")
open(sys.argv[1], "wb").write(bytes(img))
PY
"$ABKIT" keygen --out "$WORK/rel" >/dev/null
mkdir "$WORK/ring" && cp "$WORK/rel.pub" "$WORK/ring/"

# A free port for the HTTP server.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$PYTHON" -m http.server --bind 127.0.0.1 --directory "$WORK" "$PORT" >/dev/null 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do
  curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break
  sleep 0.1
done

# run KEY CMD...: time CMD RUNS times (settled disk before each run);
# records the median wall seconds and the max peak RSS (KiB).
declare -A WALL RSS
run() {
  local key=$1; shift
  local walls=() rss=0 i w r
  for ((i = 0; i < RUNS; i++)); do
    sync
    /usr/bin/time -v -o "$WORK/time.txt" "$@" >/dev/null 2>"$WORK/stderr.txt" || {
      cat "$WORK/stderr.txt" >&2; echo "bench: $key failed: $*" >&2; exit 1; }
    w=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$WORK/time.txt")
    r=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/time.txt")
    walls+=("$w"); ((r > rss)) && rss=$r
  done
  WALL[$key]=$(printf '%s\n' "${walls[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  RSS[$key]=$rss
}

for SIZE in $SIZES_MIB; do
  echo "bench: ${SIZE} MiB system image in $WORK, $RUNS run(s) per step" >&2
  rm -f "$WORK"/system.img "$WORK"/bundle.abb "$WORK"/disk.img "$WORK"/vars.fd
  # Three quarters random, one quarter zeros: like a real file system image.
  head -c $((SIZE * 3 / 4))M /dev/urandom >"$WORK/system.img"
  head -c $((SIZE - SIZE * 3 / 4))M /dev/zero >>"$WORK/system.img"
  "$ABKIT" bundle create --efi "$WORK/boot.efi" --system "$WORK/system.img" \
    --version 1.0.0 --compatible bench --key "$WORK/rel.key" -o "$WORK/bundle.abb" >/dev/null
  cp /usr/share/OVMF/OVMF_VARS_4M.fd "$WORK/vars.fd"
  "$ABKIT" image build --loader "$WORK/boot.efi" --system "$WORK/system.img" \
    --system-size $((SIZE + 64))M --ovmf-vars "$WORK/vars.fd" -o "$WORK/disk.img" \
    --json >"$WORK/layout.json" 2>/dev/null
  SLOT_B=$(python3 -c 'import json,sys; print(next(p["start"] for p in json.load(open(sys.argv[1]))["partitions"] if p["role"] == "slot-b"))' "$WORK/layout.json")
  cat "$WORK/system.img" "$WORK/bundle.abb" >/dev/null   # warm the page cache
  MACHINE=(--disk "$WORK/disk.img" --ovmf-vars "$WORK/vars.fd" --booted-slot a --keyring "$WORK/ring" --no-reboot --json)

  run "dd/$SIZE" dd if="$WORK/system.img" of="$WORK/disk.img" bs=4M seek="$SLOT_B" \
    oflag=seek_bytes conv=fsync,notrunc status=none
  run "local/$SIZE" "$ABKIT" install "${MACHINE[@]}" "$WORK/bundle.abb"
  run "curl/$SIZE" curl -sS --fail -o /dev/null "http://127.0.0.1:$PORT/bundle.abb"
  # A build whose engine does not download yet says so: then skip that leg.
  PROBE=$("$ABKIT" install "${MACHINE[@]}" "http://127.0.0.1:$PORT/missing.abb" 2>&1 || true)
  if [[ $PROBE == *"not available in this build"* ]]; then
    echo "bench: this abkit cannot install from http(s) yet: HTTP leg skipped" >&2
  else
    run "http/$SIZE" "$ABKIT" install "${MACHINE[@]}" "http://127.0.0.1:$PORT/bundle.abb"
  fi
  # The result must be the image itself in slot B.
  cmp -n "$(stat -c %s "$WORK/system.img")" "$WORK/system.img" \
    <(tail -c +$((SLOT_B + 1)) "$WORK/disk.img") || { echo "bench: slot B differs" >&2; exit 1; }
done

echo
echo "abkit install benchmark: offline disk image, system image 3/4 random, warm input cache, median of $RUNS"
echo
printf '| %-8s | %-28s | %8s | %8s | %9s | %-34s |\n' size step "wall s" "MB/s" "RSS MiB" "ratio"
printf '|%s|%s|%s|%s|%s|%s|\n' ---------- ------------------------------ ---------- ---------- ----------- ------------------------------------
row() { # size, key, label, reference seconds, reference name
  awk -v s="$1 MiB" -v l="$3" -v w="${WALL[$2]}" -v r="${RSS[$2]}" -v mb="$(($1 * 1048576))" \
      -v ref="$4" -v rn="$5" 'BEGIN {
    ratio = (ref > 0) ? sprintf("%.2fx %s", w / ref, rn) : "";
    printf "| %-8s | %-28s | %8.2f | %8.0f | %9.1f | %-34s |\n", s, l, w, mb / 1e6 / w, r / 1024, ratio }'
}
for SIZE in $SIZES_MIB; do
  DD=${WALL[dd/$SIZE]}
  CURL=${WALL[curl/$SIZE]}
  SLOWER=$(awk -v a="$DD" -v b="$CURL" 'BEGIN {print (a > b) ? a : b}')
  SUM=$(awk -v a="$DD" -v b="$CURL" 'BEGIN {print a + b}')
  row "$SIZE" "dd/$SIZE" "dd bs=4M conv=fsync" 0 ""
  row "$SIZE" "local/$SIZE" "abkit install FILE" "$DD" "dd (goal <= 1.15)"
  row "$SIZE" "curl/$SIZE" "curl -o /dev/null" 0 ""
  if [ -n "${WALL[http/$SIZE]:-}" ]; then
    row "$SIZE" "http/$SIZE" "abkit install http://" "$SLOWER" "max(curl,dd) (goal<=1.15)"
    awk -v s="$SIZE MiB" -v w="${WALL[http/$SIZE]}" -v sum="$SUM" 'BEGIN {
      printf "| %-8s | %-28s | %8s | %8s | %9s | %-34s |\n", s, "  (http vs curl + dd)", "", "", "", sprintf("%.2fx curl+dd", w / sum) }'
  else
    printf '| %-8s | %-28s | %8s | %8s | %9s | %-34s |\n' "$SIZE MiB" "abkit install http://" n/a n/a n/a "not wired into this build"
  fi
done
echo
echo "peak RSS goal: abkit install < 32 MiB"
