# Shared by the bench/*.sh scripts (sourced, not run): the release build of
# abkit and the tiny loader every bundle needs.

# Builds the release abkit (with $CARGO_TARGET_DIR, default the project's
# target/) and sets ABKIT to it.
build_abkit() {
  # ABKIT=/path/to/abkit: time that binary (another build, for a before/after
  # in one session) instead of building this tree's.
  if [ -n "${ABKIT:-}" ]; then return 0; fi
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
