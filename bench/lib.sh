# Shared by the bench/*.sh scripts (sourced, not run): the release build of
# abkit and the tiny loader every bundle needs.

# Builds the release abkit (with $CARGO_TARGET_DIR, default the project's
# target/) and sets ABKIT to it; ABKIT_BIN=PATH uses that binary instead
# (e.g. the static device build of bench/size.sh) and builds nothing.
build_abkit() {
  if [ -n "${ABKIT_BIN:-}" ]; then
    ABKIT=$ABKIT_BIN
    return
  fi
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
  cargo build --release -q -p abkit --manifest-path "$root/Cargo.toml"
  ABKIT=$CARGO_TARGET_DIR/release/abkit
}

# Fails with the package hint unless every named tool is on PATH.
need_tools() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "bench: needs $tool (make deps)" >&2; exit 1; }
  done
}

# Writes a minimal PE32+ EFI application (512 bytes, x86-64, subsystem 10)
# to $1: enough for a bundle's efi payload and the loader check.
tiny_efi() {
  python3 - "$1" <<'PY'
import sys
img = bytearray(0x200)
img[0:2] = b"MZ"; img[0x3c:0x40] = (0x40).to_bytes(4, "little"); img[0x40:0x44] = b"PE\0\0"
img[0x44:0x46] = (0x8664).to_bytes(2, "little"); img[0x54:0x56] = (240).to_bytes(2, "little")
img[0x58:0x5a] = (0x20b).to_bytes(2, "little"); img[0x58 + 68:0x58 + 70] = (10).to_bytes(2, "little")
# 16 data directories (all empty): mark-good stamps the loader's certificate
# table slot when it repoints the fallback path.
img[0x58 + 108:0x58 + 112] = (16).to_bytes(4, "little")
open(sys.argv[1], "wb").write(bytes(img))
PY
}

# Makes the run's scratch folder: `bench_workdir NAME` sets $WORK
# (${TMPDIR:-/tmp}/abkit-bench-NAME.XXXXXX) and, on exit, kills every
# process whose pid the script added to $BENCH_PIDS, then removes $WORK.
bench_workdir() {
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/abkit-bench-$1.XXXXXX")
  BENCH_PIDS=
  trap bench_cleanup EXIT
}

bench_cleanup() {
  local pid
  for pid in $BENCH_PIDS; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
