#!/usr/bin/env bash
# Size of the shipped abkit binary against issue 14's budget (8 MiB): the
# static device build (x86_64-unknown-linux-gnu, crt-static, stripped: the
# same flags as the VM tests' `make e2e-bins`) and the ordinary release
# build (dynamically linked to glibc, stripped by the release profile).
# Prints a table; exits 1 when a binary is over the budget.
#
# Usage: bench/size.sh   (builds with $CARGO_TARGET_DIR, default target/)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
BUDGET=$((8 << 20))
TARGET=x86_64-unknown-linux-gnu
build_abkit
RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols" \
  cargo build --release -q --target "$TARGET" -p abkit
STATIC=$CARGO_TARGET_DIR/$TARGET/release/abkit

over=0
printf '| %-28s | %12s | %8s | %s |\n' binary bytes MiB "of the 8 MiB budget"
printf '|%s|%s|%s|%s|\n' "------------------------------" "--------------" "----------" "------------------------"
row() {
  local name=$1 file=$2 bytes verdict
  bytes=$(stat -c %s "$file")
  if [ "$bytes" -le "$BUDGET" ]; then verdict=ok; else verdict=OVER; over=1; fi
  awk -v n="$name" -v b="$bytes" -v max="$BUDGET" -v v="$verdict" \
    'BEGIN { printf "| %-28s | %12d | %8.2f | %5.1f%% %s |\n", n, b, b / 1048576, 100 * b / max, v }'
}
row "static (crt-static, device)" "$STATIC"
row "release (glibc, dynamic)" "$ABKIT"
file "$STATIC" | grep -Eq 'statically linked|static-pie linked' || { echo "bench: $STATIC is not static" >&2; exit 1; }
exit $over
