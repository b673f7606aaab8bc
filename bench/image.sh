#!/usr/bin/env bash
# Benchmark: `abkit image build` of a 4 GiB disk around a 1 GiB system image,
# against `cp --sparse=always` of the same system image (the floor: reading
# and writing the image once), and `abkit image inspect` (which reads and
# hashes slot A) against reading the image with `cat`. Prints a table of medians and the ratios.
#
# Usage: bench/image.sh [SYSTEM_MIB=1024] [RUNS=3]
# Needs a release build (done here) and about 2 x SYSTEM_MIB of free space
# in $TMPDIR. Page cache is dropped before each run when we may (root).
# The machine is noisy (other builds): compare within one run, not across.
set -euo pipefail

SYSTEM_MIB=${1:-1024}
RUNS=${2:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
build_abkit

bench_workdir image

# Inputs: a tiny PE/COFF EFI application and a system image of random data
# with a zero-filled quarter (real images have some).
tiny_efi "$WORK/boot.efi"
DATA_MIB=$((SYSTEM_MIB * 3 / 4))
head -c $((DATA_MIB << 20)) /dev/urandom > "$WORK/system.img"
head -c $(((SYSTEM_MIB - DATA_MIB) << 20)) /dev/zero >> "$WORK/system.img"

# Settle the file system (deleting the previous output is finished only
# after a journal commit) and drop the page cache when we may (root).
settle() {
  sync
  sleep 2
  sync
  echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
}

# run NAME OUTPUT COMMAND...: time one run (including the final sync),
# print seconds.
run() {
  local out=$1; shift
  [ "$out" = /dev/null ] || rm -f "$out"
  settle
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >/dev/null 2>&1
  sync
  t1=$(date +%s.%N)
  awk -v a="$t1" -v b="$t0" 'BEGIN { print a - b }' 
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

cp_times=(); abkit_times=(); sha_times=(); inspect_times=()
for _ in $(seq "$RUNS"); do
  cp_times+=("$(run "$WORK/copy.img" cp --sparse=always "$WORK/system.img" "$WORK/copy.img")")
  abkit_times+=("$(run "$WORK/disk.img" "$ABKIT" image build --loader "$WORK/boot.efi" \
      --system "$WORK/system.img" -o "$WORK/disk.img" --esp-size 128M \
      --system-size "${SYSTEM_MIB}M" --disk-size $((SYSTEM_MIB * 4))M)")
  sha_times+=("$(run /dev/null cat "$WORK/system.img")")
  inspect_times+=("$(run /dev/null "$ABKIT" image inspect "$WORK/disk.img")")
done
sha_med=$(printf '%s\n' "${sha_times[@]}" | median)
inspect_med=$(printf '%s\n' "${inspect_times[@]}" | median)
cp_med=$(printf '%s\n' "${cp_times[@]}" | median)
abkit_med=$(printf '%s\n' "${abkit_times[@]}" | median)
cp_alloc=$(( $(stat -c %b "$WORK/copy.img") * 512 >> 20 ))
abkit_alloc=$(( $(stat -c %b "$WORK/disk.img") * 512 >> 20 ))
disk_mib=$(( $(stat -c %s "$WORK/disk.img") >> 20 ))

echo
echo "system image: ${SYSTEM_MIB} MiB (${DATA_MIB} MiB random, rest zeros); disk: ${disk_mib} MiB; runs: $RUNS (median)"
printf '| %-50s | %8s | %14s | %8s |\n' "method" "wall s" "allocated MiB" "ratio"
printf '| %-50s | %8s | %14s | %8s |\n' "---" "---" "---" "---"
printf '| %-50s | %8.2f | %14d | %8.2f |\n' "cp --sparse=always system.img (floor)" "$cp_med" "$cp_alloc" 1
printf '| %-50s | %8.2f | %14d | %8.2f |\n' "abkit image build (${disk_mib} MiB disk)" "$abkit_med" "$abkit_alloc" \
  "$(awk -v a="$abkit_med" -v b="$cp_med" 'BEGIN { print a / b }')"
printf '| %-50s | %8.2f | %14s | %8.2f |\n' "cat system.img > /dev/null (read floor)" "$sha_med" "-" 1
printf '| %-50s | %8.2f | %14s | %8.2f |\n' "abkit image inspect (hashes slot A's used part)" "$inspect_med" "-" \
  "$(awk -v a="$inspect_med" -v b="$sha_med" 'BEGIN { print a / b }')"
