#!/usr/bin/env bash
# Benchmark (issue 15): delta install against a full install and casync.
# A 512 MiB system image X (random bytes, so compression helps nobody) is
# installed in slot A of an offline disk image; Y is X with
#   scattered: 5% of its 4 KiB blocks changed, at random places;
#   run:       5% changed as one run in the middle;
#   same:      nothing changed (a new signature over the same image).
# Bundles keep one dm-verity salt across releases (--verity-salt), so the
# hash tree changes only where the image does.
# For each Y, from lighttpd on 127.0.0.1 (honours Range):
#   abkit delta:  `abkit install URL` (delta by default; slot B wiped first);
#   abkit full:   `abkit install URL --no-delta`;
#   casync:       `casync extract --seed=X` of Y's index from a chunk store
#                 on the same server (Debian `casync`, default chunking and
#                 compression; `casync make` is not timed).
# Bytes fetched: what the server sent (lighttpd's access log, %b: body
# bytes of every request, head and index included), also as % of the
# image; for abkit it equals `bytes_fetched` of its install report (the
# bench checks). Wall time and peak RSS from /usr/bin/time -v: for abkit the
# median of RUNS runs, delta and full alternating (the machine is shared:
# single runs vary by 50%); casync once (it takes minutes).
# The last column is the ratio of wall times delta / full (abkit rows) and
# casync / abkit full (casync rows), from the same run; the load average
# (`uptime`) is printed before each case, since the machine is shared.
# Goals: abkit delta fetches <= 8% (scattered), <= 6% (run), <= 1% (same)
# of the image, and is never slower than the full install (ratio <= 1).
#
# Usage: bench/delta.sh                 (SIZE_MIB=512)
#        SIZE_MIB=64 bench/delta.sh     (a quick look)
#        CASYNC=0 bench/delta.sh        (abkit only: casync takes minutes)
# Needs about 5 x SIZE_MIB of free space in $TMPDIR, lighttpd, casync,
# python3, /usr/bin/time (scripts/deps.sh). Warm page cache; the machine is
# noisy (other builds): compare within one run.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${SIZE_MIB:-512}
CASYNC=${CASYNC:-1}
RUNS=${RUNS:-5}
. bench/lib.sh
need_tools lighttpd casync python3 /usr/bin/time fallocate
build_abkit

bench_workdir delta
mkdir -p "$WORK/www"

# A tiny PE/COFF EFI application as the bundles' loader.
tiny_efi "$WORK/boot.efi"
"$ABKIT" keygen --out "$WORK/rel" >/dev/null
mkdir "$WORK/ring" && cp "$WORK/rel.pub" "$WORK/ring/"

echo "bench: making a $SIZE_MIB MiB image and its three changed versions" >&2
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$WORK/x.img"
python3 - "$WORK" "$SIZE_MIB" <<'PY'
import os, random, sys
work, size = sys.argv[1], int(sys.argv[2]) << 20
x = open(f"{work}/x.img", "rb").read()
blocks = size // 4096
rng = random.Random(15)
y = bytearray(x)
for b in rng.sample(range(blocks), blocks // 20):
    y[b * 4096:(b + 1) * 4096] = os.urandom(4096)
open(f"{work}/scattered.img", "wb").write(y)
y = bytearray(x)
start = (blocks // 2) * 4096
y[start:start + (blocks // 20) * 4096] = os.urandom((blocks // 20) * 4096)
open(f"{work}/run.img", "wb").write(y)
PY
cp "$WORK/x.img" "$WORK/same.img"

# One verity salt for all releases of the product (--verity-salt): the
# hash tree then changes only where the image does.
SALT=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
bundle() { # image version out
  "$ABKIT" bundle create --efi "$WORK/boot.efi" --system "$1" --version "$2" \
    --compatible demo-os --key "$WORK/rel.key" --verity-salt "$SALT" -o "$3" >/dev/null 2>&1
}
bundle "$WORK/x.img" 1.0.0 "$WORK/x.abb"
SLOT_MIB=$((SIZE_MIB + SIZE_MIB / 64 + 8))
cp /usr/share/OVMF/OVMF_VARS_4M.fd "$WORK/vars.fd"
"$ABKIT" image build --bundle "$WORK/x.abb" --keyring "$WORK/ring" -o "$WORK/disk.img" \
  --ovmf-vars "$WORK/vars.fd" --esp-size 33M --system-size "${SLOT_MIB}M" --data-size 1M >/dev/null 2>&1
DISK=(--disk "$WORK/disk.img" --ovmf-vars "$WORK/vars.fd" --booted-slot a)
"$ABKIT" mark-good "${DISK[@]}" >/dev/null 2>&1
read -r B_START B_SIZE < <("$ABKIT" image inspect "$WORK/disk.img" --json 2>/dev/null |
  python3 -c 'import json,sys; p=[p for p in json.load(sys.stdin)["partitions"] if p["role"]=="slot-b"][0]; print(p["start"], p["size"])')
for c in scattered run same; do
  bundle "$WORK/$c.img" 1.1.0 "$WORK/www/$c.abb"
  if [ "$CASYNC" = 1 ]; then
    casync make --store="$WORK/www/store" "$WORK/www/$c.caibx" "$WORK/$c.img" >/dev/null
  fi
done

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$WORK/lighttpd.conf" <<EOF
server.document-root = "$WORK/www"
server.port = $PORT
server.bind = "127.0.0.1"
server.errorlog = "$WORK/lighttpd-error.log"
server.modules += ("mod_accesslog")
accesslog.filename = "$WORK/access.log"
accesslog.format = "%b %U"
EOF
# lighttpd buffers its access log: it is stopped after every measured run
# (which writes the log out) and started again before the next.
start_server() {
  lighttpd -D -f "$WORK/lighttpd.conf" &
  SERVER_PID=$!
  BENCH_PIDS=$SERVER_PID
  for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT))" 2>/dev/null && break
    sleep 0.1
  done
}
stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
  BENCH_PIDS=
}
URL=http://127.0.0.1:$PORT

wall_of() { awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$1"; }
rss_of() { awk -F': ' '/Maximum resident set size/ {print $2}' "$1"; }
served() { awk '{ if ($1 != "-") s += $1 } END { printf "%.0f\n", s }' "$WORK/access.log"; }

# reported: bytes_fetched of the last install's report.
reported() { grep '"event":"done"' "$WORK/out.txt" | python3 -c 'import json,sys; print(json.load(sys.stdin)["report"]["bytes_fetched"])'; }

# median WALLS...: the middle value.
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# measure NAME CMD...: one timed run; prints "bytes wall rss_kib".
measure() {
  local name=$1 before
  shift
  sync
  touch "$WORK/access.log"
  before=$(served)
  start_server
  /usr/bin/time -v -o "$WORK/time.txt" "$@" >"$WORK/out.txt" 2>"$WORK/err.txt" || {
    cat "$WORK/err.txt" >&2; echo "bench: $name failed: $*" >&2; exit 1; }
  stop_server
  echo "$(($(served) - before)) $(wall_of "$WORK/time.txt") $(rss_of "$WORK/time.txt")"
}

# Slot B as a machine would have it before the update: not the new image
# (zeros here; its old version would only help the delta).
wipe_b() { fallocate --punch-hole --keep-size --offset "$B_START" --length "$B_SIZE" "$WORK/disk.img"; }

IMAGE=$((SIZE_MIB << 20))
printf '| case | tool | bytes fetched | %% of image | wall s | peak RSS MiB | / full |\n'
printf '| --- | --- | --- | --- | --- | --- | --- |\n'
row() { # case tool "bytes wall rss" [full_wall]
  read -r bytes wall rss <<<"$3"
  awk -v c="$1" -v t="$2" -v b="$bytes" -v w="$wall" -v r="$rss" -v i="$IMAGE" -v f="${4:-}" \
    'BEGIN { ratio = (f > 0) ? sprintf("%.2f", w / f) : "1.00";
             printf "| %s | %s | %d | %.2f | %.2f | %.1f | %s |\n", c, t, b, 100 * b / i, w, r / 1024, ratio }'
}
for c in scattered run same; do
  echo "bench: $c: $(uptime)" >&2
  dw=() fw=() drss=0 frss=0
  for ((i = 0; i < RUNS; i++)); do
    wipe_b
    read -r sbytes w r <<<"$(measure delta "$ABKIT" install "$URL/$c.abb" --keyring "$WORK/ring" --json "${DISK[@]}")"
    grep -q '"delta":true' "$WORK/out.txt" || { echo "bench: $c was not installed as a delta" >&2; exit 1; }
    dbytes=$(reported)
    [ "$dbytes" = "$sbytes" ] || echo "bench: warning: abkit counted $dbytes bytes, the server sent $sbytes" >&2
    dw+=("$w"); ((r > drss)) && drss=$r
    wipe_b
    read -r _ w r <<<"$(measure full "$ABKIT" install "$URL/$c.abb" --keyring "$WORK/ring" --json --no-delta "${DISK[@]}")"
    fbytes=$(reported)
    fw+=("$w"); ((r > frss)) && frss=$r
  done
  full=$(median "${fw[@]}")
  row "$c" "abkit delta" "$dbytes $(median "${dw[@]}") $drss" "$full"
  row "$c" "abkit full" "$fbytes $full $frss"
  [ "$CASYNC" = 1 ] || continue
  rm -f "$WORK/out.img"
  row "$c" "casync" "$(measure casync casync extract --store="$URL/store" --seed="$WORK/x.img" "$URL/$c.caibx" "$WORK/out.img")" "$full"
  cmp -s "$WORK/out.img" "$WORK/$c.img" || { echo "bench: casync extracted the wrong image" >&2; exit 1; }
done
