#!/usr/bin/env bash
# Benchmark: `abkit bundle create` and `abkit bundle verify` on a system image
# (default 1 GiB), against `sha256sum` and `veritysetup format` of the same
# file in the same run. Prints a table: median wall time of RUNS runs, MB/s
# and peak RSS (from /usr/bin/time -v). The page cache is warm for every
# step (the image is read once before timing); the goal ratios are
# verify <= 1.2 x sha256sum, create <= 2 x (sha256sum + veritysetup format).
#
# Usage: bench/bundle.sh            (SIZE_MIB=1024 RUNS=3 by default)
#        SIZE_MIB=256 RUNS=1 bench/bundle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${SIZE_MIB:-1024}
RUNS=${RUNS:-3}
. bench/lib.sh
build_abkit

bench_workdir bundle
echo "bench: ${SIZE_MIB} MiB image in $WORK, $RUNS run(s) per step" >&2
# Half random, half zeros: like a real filesystem image, and gives zstd work.
head -c $((SIZE_MIB / 2))M /dev/urandom >"$WORK/system.img"
head -c $((SIZE_MIB - SIZE_MIB / 2))M /dev/zero >>"$WORK/system.img"
head -c 20M /dev/urandom >"$WORK/boot.efi"
"$ABKIT" keygen --out "$WORK/rel" >/dev/null
mkdir "$WORK/ring" && cp "$WORK/rel.pub" "$WORK/ring/"
cat "$WORK/system.img" "$WORK/boot.efi" >/dev/null   # warm the page cache

# run NAME CMD...: times CMD RUNS times; records median wall and max RSS.
declare -A WALL RSS
run() {
  local name=$1; shift
  local walls=() rss=0 i
  for ((i = 0; i < RUNS; i++)); do
    rm -f "$WORK/hash.img" "$WORK/out.abb" "$WORK/out-zstd.abb.tmp"
    /usr/bin/time -v -o "$WORK/time.txt" "$@" >/dev/null 2>"$WORK/stderr.txt" || {
      cat "$WORK/stderr.txt" >&2; echo "bench: $name failed" >&2; exit 1; }
    local w r
    w=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$WORK/time.txt")
    r=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/time.txt")
    walls+=("$w"); ((r > rss)) && rss=$r
  done
  WALL[$name]=$(printf '%s\n' "${walls[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  RSS[$name]=$rss
}

run sha256sum sha256sum "$WORK/system.img"
run veritysetup veritysetup format "$WORK/system.img" "$WORK/hash.img"
run create "$ABKIT" bundle create --efi "$WORK/boot.efi" --system "$WORK/system.img" \
  --version 1.0.0 --compatible bench --key "$WORK/rel.key" -o "$WORK/out.abb"
# Keep one plain bundle for verify (run() deletes out.abb before each run).
"$ABKIT" bundle create --efi "$WORK/boot.efi" --system "$WORK/system.img" \
  --version 1.0.0 --compatible bench --key "$WORK/rel.key" -o "$WORK/plain.abb" >/dev/null
run create_zstd "$ABKIT" bundle create --zstd --efi "$WORK/boot.efi" --system "$WORK/system.img" \
  --version 1.0.0 --compatible bench --key "$WORK/rel.key" -o "$WORK/zstd.abb"
cat "$WORK/plain.abb" "$WORK/zstd.abb" >/dev/null
run sha256sum_bundle sha256sum "$WORK/plain.abb"
# A stronger reference than coreutils (which has no SHA-NI code): OpenSSL.
HAVE_OPENSSL=0
if command -v openssl >/dev/null; then
  HAVE_OPENSSL=1
  run openssl_bundle openssl dgst -sha256 "$WORK/plain.abb"
fi
run verify "$ABKIT" bundle verify "$WORK/plain.abb" --keyring "$WORK/ring"
run verify_zstd "$ABKIT" bundle verify "$WORK/zstd.abb" --keyring "$WORK/ring"
run verify_stdin sh -c "cat '$WORK/plain.abb' | '$ABKIT' bundle verify - --keyring '$WORK/ring'"

BUNDLE_MB=$(stat -c %s "$WORK/plain.abb" | awk '{printf "%.0f", $1/1e6}')
ZSTD_MB=$(stat -c %s "$WORK/zstd.abb" | awk '{printf "%.0f", $1/1e6}')
IMG_MB=$(stat -c %s "$WORK/system.img" | awk '{printf "%.0f", $1/1e6}')
REF_CREATE=$(awk -v a="${WALL[sha256sum]}" -v b="${WALL[veritysetup]}" 'BEGIN {print a+b}')

row() { # name, MB processed, reference seconds, reference name
  awk -v n="$1" -v w="${WALL[$1]}" -v r="${RSS[$1]}" -v mb="$2" -v ref="$3" -v rn="$4" 'BEGIN {
    ratio = (ref > 0) ? sprintf("%.2fx %s", w / ref, rn) : "";
    printf "| %-17s | %7.2f | %7.0f | %8.1f | %-28s |\n", n, w, mb / w, r / 1024, ratio }'
}
echo
echo "abkit bundle benchmark: ${SIZE_MIB} MiB image (half random), warm cache, median of $RUNS"
echo "| step              | wall s  |  MB/s   | RSS MiB  | ratio                        |"
echo "| ----------------- | ------- | ------- | -------- | ---------------------------- |"
row sha256sum "$IMG_MB" 0 ""
row veritysetup "$IMG_MB" 0 ""
row create "$IMG_MB" "$REF_CREATE" "(sha256sum+veritysetup)"
row create_zstd "$IMG_MB" "$REF_CREATE" "(sha256sum+veritysetup)"
row sha256sum_bundle "$BUNDLE_MB" 0 ""
[ "$HAVE_OPENSSL" = 1 ] && row openssl_bundle "$BUNDLE_MB" 0 ""
row verify "$BUNDLE_MB" "${WALL[sha256sum_bundle]}" "sha256sum of the bundle"
row verify_zstd "$IMG_MB" "${WALL[sha256sum_bundle]}" "sha256sum of the bundle"
row verify_stdin "$BUNDLE_MB" "${WALL[sha256sum_bundle]}" "sha256sum of the bundle"
echo "bundle sizes: plain ${BUNDLE_MB} MB, zstd ${ZSTD_MB} MB; goals: verify <= 1.2x, create <= 2x, verify RSS < 32 MiB"
