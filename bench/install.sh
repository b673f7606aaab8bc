#!/usr/bin/env bash
# Benchmark (issue 14): `abkit install` into an offline disk image, for
# system images of 512 MiB and 2 GiB, with a cold page cache (dropped before
# every step; needs root, else only warm is run) and a warm one:
#   - from a local bundle, against `dd bs=4M conv=fsync` of the raw system
#     image into the same slot offset (the floor: writing the slot once);
#   - from an HTTP server on 127.0.0.1 (python3 -m http.server), against
#     `curl -o /dev/null` of the bundle and the dd (streaming should overlap
#     the download and the write, so the goal is against the slower one);
#   - RAUC 1.8 (Debian `rauc`), in the same run: a plain bundle installed by
#     `rauc service` (private D-Bus session bus, custom bootloader backend
#     script, raw slots in plain files); over HTTP, curl to a file + install
#     (this kernel has no NBD, so RAUC cannot stream). Its peak RSS is the
#     service's.
#   - `abkit mark-good` on slot B's trial boot: the check of the written
#     data the install leaves to the commit (issue 14: the whole slot read
#     from the media against the signed verity root hash); the ESP and the
#     VARS file are put back to "B installed, trial pending" before each run.
# Prints a table: median wall time of RUNS runs, MB/s of system image, peak
# RSS (from /usr/bin/time -v) and the ratios.
# ABKIT_BEFORE=PATH times a second abkit (e.g. main's build, before a
# change) in the same run, installing a bundle made by itself: its rows
# say "(before)" and the ratio after/before is printed.
# ABKIT_BIN=PATH times that abkit instead of building one (bench/lib.sh).
# Goals: local <= 1.15 x dd; HTTP <= 1.15 x max(curl, dd); peak RSS <= 16 MiB.
#
# Usage: bench/install.sh              (SIZES_MIB="512 2048" RUNS=3 CACHES="cold warm")
#        SIZES_MIB=256 RUNS=1 CACHES=warm RAUC=0 bench/install.sh
#        ABKIT_BEFORE=old/abkit ABKIT_BIN=new/abkit SIZES_MIB=512 bench/install.sh
# Needs about 6 x the largest size of free space in $TMPDIR, curl, python3,
# and for RAUC rauc, mksquashfs, openssl, dbus-daemon (scripts/deps.sh).
# Every writer flushes to disk at the end.
# The machine is noisy (other builds): compare within one run, not across.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES_MIB=${SIZES_MIB:-512 2048}
RUNS=${RUNS:-3}
CACHES=${CACHES:-cold warm}
RAUC=${RAUC:-1}
if [[ $CACHES == *cold* ]] && [ "$(id -u)" != 0 ]; then
  echo "bench: dropping the page cache needs root: cold runs skipped" >&2
  CACHES=warm
fi
if [ "$RAUC" = 1 ]; then
  for tool in rauc mksquashfs openssl dbus-daemon; do
    command -v "$tool" >/dev/null || { echo "bench: RAUC skipped: $tool missing (bash scripts/deps.sh)" >&2; RAUC=0; }
  done
fi
. bench/lib.sh
build_abkit
need_tools curl python3 dd /usr/bin/time
# The real interpreter (python3 may be a wrapper script), so that killing the
# server's pid stops it.
PYTHON=$(python3 -c 'import sys; print(sys.executable)')

bench_workdir install

# A tiny PE/COFF EFI application as the bundle's loader.
tiny_efi "$WORK/boot.efi"
"$ABKIT" keygen --out "$WORK/rel" >/dev/null
mkdir "$WORK/ring" && cp "$WORK/rel.pub" "$WORK/ring/"

# A free port for the HTTP server.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$PYTHON" -m http.server --bind 127.0.0.1 --directory "$WORK" "$PORT" >/dev/null 2>&1 &
BENCH_PIDS="$BENCH_PIDS $!"
for _ in $(seq 100); do
  curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break
  sleep 0.1
done

# prepare: before each timed run, settle the disk and, for a cold run,
# drop the page cache (a warm run reads the inputs once first).
CACHE=warm
prepare() {
  sync
  if [ "$CACHE" = cold ]; then
    echo 3 >/proc/sys/vm/drop_caches
  else
    cat "$@" >/dev/null 2>&1 || true
  fi
}

# run KEY WARM_FILES CMD...: time CMD RUNS times; records the median wall
# seconds and the max peak RSS (KiB).
declare -A WALL RSS
record() { # key, walls..., then RSS in KiB as the last argument
  local key=$1; shift
  local rss=${*: -1}
  local walls=("${@:1:$#-1}")
  WALL[$key]=$(printf '%s\n' "${walls[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  RSS[$key]=$rss
}
wall_of() { awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$1"; }
rss_of() { awk -F': ' '/Maximum resident set size/ {print $2}' "$1"; }
run() {
  local key=$1 warm=$2; shift 2
  local walls=() rss=0 i r
  for ((i = 0; i < RUNS; i++)); do
    [ -z "${BEFORE_EACH:-}" ] || $BEFORE_EACH
    prepare $warm
    /usr/bin/time -v -o "$WORK/time.txt" "$@" >/dev/null 2>"$WORK/stderr.txt" || {
      cat "$WORK/stderr.txt" >&2; echo "bench: $key failed: $*" >&2; exit 1; }
    walls+=("$(wall_of "$WORK/time.txt")")
    r=$(rss_of "$WORK/time.txt"); ((r > rss)) && rss=$r
  done
  record "$key" "${walls[@]}" "$rss"
}

# The ESP's bytes and the VARS file: the machine's state apart from its
# slots, saved after an install and put back before each timed mark-good.
save_esp() {
  dd if="$WORK/disk.img" of="$WORK/esp.saved" bs=1M iflag=skip_bytes,count_bytes \
    skip="${ESP[0]}" count="${ESP[1]}" status=none
  cp "$WORK/vars.fd" "$WORK/vars.saved"
}
restore_esp() {
  dd if="$WORK/esp.saved" of="$WORK/disk.img" bs=1M oflag=seek_bytes seek="${ESP[0]}" \
    conv=notrunc status=none
  cp "$WORK/vars.saved" "$WORK/vars.fd"
}

# RAUC: keys, system.conf with two raw slots in plain files and a custom
# bootloader backend, and a private session bus for its service.
if [ "$RAUC" = 1 ]; then
  R=$WORK/rauc
  mkdir -p "$R/mnt" "$R/data"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$R/ca.key" -out "$R/ca.pem" -days 30 \
    -subj /CN=bench-ca -addext basicConstraints=critical,CA:TRUE -addext keyUsage=keyCertSign 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout "$R/sign.key" -out "$R/sign.csr" -subj /CN=bench-sign 2>/dev/null
  printf 'keyUsage=digitalSignature\nbasicConstraints=CA:FALSE\n' >"$R/ext"
  openssl x509 -req -in "$R/sign.csr" -CA "$R/ca.pem" -CAkey "$R/ca.key" -CAcreateserial \
    -out "$R/sign.pem" -days 30 -extfile "$R/ext" 2>/dev/null
  cat >"$R/boot.sh" <<'SH'
#!/bin/sh
# RAUC custom bootloader backend: A is primary and good, whatever is set.
case "$1" in
  get-primary|get-current) echo A ;;
  get-state) echo good ;;
  *) ;;
esac
SH
  chmod +x "$R/boot.sh"
  cat >"$R/system.conf" <<CONF
[system]
compatible=bench
bootloader=custom
data-directory=$R/data
[keyring]
path=$R/ca.pem
[handlers]
bootloader-custom-backend=$R/boot.sh
[slot.rootfs.0]
device=$R/slot-a.img
type=raw
bootname=A
[slot.rootfs.1]
device=$R/slot-b.img
type=raw
bootname=B
CONF
  export DBUS_SESSION_BUS_ADDRESS=unix:path=$R/bus DBUS_STARTER_BUS_TYPE=session
  dbus-daemon --session --address="$DBUS_SESSION_BUS_ADDRESS" --nofork --nopidfile >/dev/null 2>&1 &
  BENCH_PIDS="$BENCH_PIDS $!"
  for _ in $(seq 50); do [ -S "$R/bus" ] && break; sleep 0.1; done
fi

# run_rauc KEY WARM_FILES CMD...: like run, with a fresh `rauc service`
# (started before the timer, under /usr/bin/time for its peak RSS) for
# every run; the wall time is CMD's.
run_rauc() {
  local key=$1 warm=$2; shift 2
  local walls=() rss=0 i r tpid
  for ((i = 0; i < RUNS; i++)); do
    /usr/bin/time -v -o "$WORK/service-time.txt" \
      rauc --conf="$R/system.conf" --mount="$R/mnt" --override-boot-slot=A service \
      >"$WORK/service.log" 2>&1 &
    tpid=$!
    for _ in $(seq 100); do
      rauc status >/dev/null 2>&1 && break
      sleep 0.1
    done
    prepare $warm
    /usr/bin/time -v -o "$WORK/time.txt" "$@" >/dev/null 2>"$WORK/stderr.txt" || {
      cat "$WORK/stderr.txt" "$WORK/service.log" >&2; echo "bench: $key failed: $*" >&2; exit 1; }
    walls+=("$(wall_of "$WORK/time.txt")")
    kill "$(pgrep -P "$tpid")" 2>/dev/null || true
    wait "$tpid" 2>/dev/null || true
    r=$(rss_of "$WORK/service-time.txt"); ((r > rss)) && rss=$r
  done
  record "$key" "${walls[@]}" "$rss"
}

for SIZE in $SIZES_MIB; do
  echo "bench: ${SIZE} MiB system image in $WORK, $RUNS run(s) per step" >&2
  rm -f "$WORK"/system.img "$WORK"/bundle.abb "$WORK"/bundle.raucb "$WORK"/disk.img "$WORK"/vars.fd
  # Three quarters random, one quarter zeros: like a real file system image.
  head -c $((SIZE * 3 / 4))M /dev/urandom >"$WORK/system.img"
  head -c $((SIZE - SIZE * 3 / 4))M /dev/zero >>"$WORK/system.img"
  "$ABKIT" bundle create --efi "$WORK/boot.efi" --system "$WORK/system.img" \
    --version 1.0.0 --compatible bench --key "$WORK/rel.key" -o "$WORK/bundle.abb" >/dev/null
  if [ -n "${ABKIT_BEFORE:-}" ]; then
    "$ABKIT_BEFORE" bundle create --efi "$WORK/boot.efi" --system "$WORK/system.img" \
      --version 1.0.0 --compatible bench --key "$WORK/rel.key" -o "$WORK/before.abb" >/dev/null
  fi
  cp /usr/share/OVMF/OVMF_VARS_4M.fd "$WORK/vars.fd"
  "$ABKIT" image build --loader "$WORK/boot.efi" --system "$WORK/system.img" \
    --system-size $((SIZE + 64))M --ovmf-vars "$WORK/vars.fd" -o "$WORK/disk.img" \
    --json >"$WORK/layout.json" 2>/dev/null
  ESP=($(python3 -c 'import json,sys; print(*next((p["start"], p["size"]) for p in json.load(open(sys.argv[1]))["partitions"] if p["role"] == "esp"))' "$WORK/layout.json"))
  SLOT_B=$(python3 -c 'import json,sys; print(next(p["start"] for p in json.load(open(sys.argv[1]))["partitions"] if p["role"] == "slot-b"))' "$WORK/layout.json")
  MACHINE=(--disk "$WORK/disk.img" --ovmf-vars "$WORK/vars.fd" --booted-slot a --keyring "$WORK/ring" --allow-unrecorded --no-reboot --json)
  ON_B=(--disk "$WORK/disk.img" --ovmf-vars "$WORK/vars.fd" --booted-slot b --json)
  if [ "$RAUC" = 1 ]; then
    rm -rf "$R/bundle" "$R"/*.raucb "$R"/slot-*.img
    mkdir "$R/bundle"
    ln "$WORK/system.img" "$R/bundle/system.img"
    printf '[update]\ncompatible=bench\nversion=1.0.0\n[bundle]\nformat=plain\n[image.rootfs]\nfilename=system.img\n' \
      >"$R/bundle/manifest.raucm"
    rauc bundle --cert="$R/sign.pem" --key="$R/sign.key" "$R/bundle" "$WORK/bundle.raucb" >"$WORK/rauc-bundle.log" 2>&1 ||
      { cat "$WORK/rauc-bundle.log" >&2; echo "bench: rauc bundle failed" >&2; exit 1; }
    truncate -s $((SIZE + 64))M "$R/slot-a.img" "$R/slot-b.img"
  fi
  # A build whose engine does not download yet says so: then skip that leg.
  PROBE=$("$ABKIT" install "${MACHINE[@]}" "http://127.0.0.1:$PORT/missing.abb" 2>&1 || true)
  HTTP=1
  if [[ $PROBE == *"not available in this build"* ]]; then
    echo "bench: this abkit cannot install from http(s) yet: HTTP leg skipped" >&2
    HTTP=0
  fi

  for CACHE in $CACHES; do
    echo "bench: ${SIZE} MiB, $CACHE cache" >&2
    K=$SIZE/$CACHE
    run "dd/$K" "$WORK/system.img" dd if="$WORK/system.img" of="$WORK/disk.img" bs=4M seek="$SLOT_B" \
      oflag=seek_bytes conv=fsync,notrunc status=none
    run "local/$K" "$WORK/bundle.abb" "$ABKIT" install "${MACHINE[@]}" "$WORK/bundle.abb"
    # B is installed, its trial pending: time mark-good's check there,
    # from that same state every run (and leave it so for the next steps); the
    # before binary installs only after that, its record has no such check.
    save_esp
    BEFORE_EACH=restore_esp run "commit/$K" "$WORK/boot.efi" "$ABKIT" mark-good "${ON_B[@]}"
    restore_esp
    if [ -n "${ABKIT_BEFORE:-}" ]; then
      run "blocal/$K" "$WORK/before.abb" "$ABKIT_BEFORE" install "${MACHINE[@]}" "$WORK/before.abb"
    fi
    run "curl/$K" "$WORK/bundle.abb" curl -sS --fail -o /dev/null "http://127.0.0.1:$PORT/bundle.abb"
    if [ "$HTTP" = 1 ]; then
      run "http/$K" "$WORK/bundle.abb" "$ABKIT" install "${MACHINE[@]}" "http://127.0.0.1:$PORT/bundle.abb"
      if [ -n "${ABKIT_BEFORE:-}" ]; then
        run "bhttp/$K" "$WORK/before.abb" "$ABKIT_BEFORE" install "${MACHINE[@]}" "http://127.0.0.1:$PORT/before.abb"
      fi
    fi
    if [ "$RAUC" = 1 ]; then
      run_rauc "rauc/$K" "$WORK/bundle.raucb" rauc install "$WORK/bundle.raucb"
      run_rauc "rauchttp/$K" "$WORK/bundle.raucb" sh -c \
        "curl -sS --fail -o '$R/dl.raucb' 'http://127.0.0.1:$PORT/bundle.raucb' && rauc install '$R/dl.raucb'; rc=\$?; rm -f '$R/dl.raucb'; exit \$rc"
      cmp -n "$(stat -c %s "$WORK/system.img")" "$WORK/system.img" "$R/slot-b.img" ||
        { echo "bench: RAUC's slot B differs" >&2; exit 1; }
    fi
    # The result must be the image itself in slot B.
    cmp -n "$(stat -c %s "$WORK/system.img")" "$WORK/system.img" \
      <(tail -c +$((SLOT_B + 1)) "$WORK/disk.img") || { echo "bench: slot B differs" >&2; exit 1; }
  done
done

echo
echo "abkit install benchmark: offline disk image, system image 3/4 random, median of $RUNS"
echo "($(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), abkit $(stat -c %s "$ABKIT") bytes stripped)"
echo
printf '| %-8s | %-5s | %-30s | %8s | %8s | %9s | %-28s |\n' size cache step "wall s" "MB/s" "RSS MiB" "ratio"
printf '|%s|%s|%s|%s|%s|%s|%s|\n' ---------- ------- -------------------------------- ---------- ---------- ----------- ------------------------------
row() { # size, cache, key, label, reference seconds, reference name
  [ -n "${WALL[$3]:-}" ] || return 0
  awk -v s="$1 MiB" -v c="$2" -v l="$4" -v w="${WALL[$3]}" -v r="${RSS[$3]}" -v mb="$(($1 * 1048576))" \
      -v ref="$5" -v rn="$6" 'BEGIN {
    ratio = (ref > 0) ? sprintf("%.2fx %s", w / ref, rn) : "";
    printf "| %-8s | %-5s | %-30s | %8.2f | %8.0f | %9.1f | %-28s |\n", s, c, l, w, mb / 1e6 / w, r / 1024, ratio }'
}

# A row of abkit's wall time over another tool's, local and over HTTP:
# ratio_row LABEL LOCAL_KEY HTTP_KEY (keys without the /size-cache suffix;
# nothing when the other tool did not run). Uses $SIZE, $CACHE and $K.
ratio_row() {
  local label=$1 other=${WALL[$2/$K]:-} other_http=${WALL[$3/$K]:-0}
  [ -n "$other" ] || return 0
  awk -v s="$SIZE MiB" -v c="$CACHE" -v label="$label" -v a="${WALL[local/$K]}" -v b="$other" \
      -v ah="${WALL[http/$K]:-0}" -v bh="$other_http" 'BEGIN {
    printf "| %-8s | %-5s | %-30s | %8s | %8s | %9s | %-28s |\n", s, c, label, "", "", "",
      sprintf("%.2fx local, %.2fx http", a / b, (bh > 0) ? ah / bh : 0) }'
}
for SIZE in $SIZES_MIB; do
  for CACHE in $CACHES; do
    K=$SIZE/$CACHE
    DD=${WALL[dd/$K]}
    CURL=${WALL[curl/$K]}
    SLOWER=$(awk -v a="$DD" -v b="$CURL" 'BEGIN {print (a > b) ? a : b}')
    row "$SIZE" "$CACHE" "dd/$K" "dd bs=4M conv=fsync" 0 ""
    row "$SIZE" "$CACHE" "curl/$K" "curl -o /dev/null" 0 ""
    row "$SIZE" "$CACHE" "local/$K" "abkit install FILE" "$DD" "dd (goal <= 1.15)"
    row "$SIZE" "$CACHE" "http/$K" "abkit install http://" "$SLOWER" "max(curl,dd) (goal <= 1.15)"
    row "$SIZE" "$CACHE" "blocal/$K" "abkit install FILE (before)" "$DD" "dd"
    row "$SIZE" "$CACHE" "bhttp/$K" "abkit install http:// (before)" "$SLOWER" "max(curl,dd)"
    ratio_row "  after / before" blocal bhttp
    row "$SIZE" "$CACHE" "commit/$K" "abkit mark-good (slot check)" "$DD" "dd (at the trial boot)"
    row "$SIZE" "$CACHE" "rauc/$K" "rauc install FILE" "$DD" "dd"
    row "$SIZE" "$CACHE" "rauchttp/$K" "curl + rauc install" "$SLOWER" "max(curl,dd)"
    ratio_row "  abkit / RAUC" rauc rauchttp
  done
done
echo
echo "peak RSS goal: abkit install <= 16 MiB (RAUC: its service's peak RSS)"
