#!/usr/bin/env bash
# make demo: the A/B story on real UEFI firmware (OVMF under QEMU). Builds a
# disk image with the test OS X 1.0.0 on slot A, installs Y 1.1.0 (trial boot
# on slot B, healthy, committed), installs a broken Z 1.2.0 (trial boot fails
# its health check) and watches the machine come back to Y by itself. Each
# boot prints slot, version and result, where its root came from (the slot's
# erofs through dm-verity, with the root hash from the UKI's command line,
# read-only) and the note X 1.0.0 wrote to /data on the first boot; the image and VARS file stay in
# build/demo with the QEMU command to boot them by hand.
#
# `make demo` builds what this needs first (static abkit, test OS init, the
# loader stub, the Debian kernel from `make deps`): the first run takes a few
# minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${E2E_BIN:-${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release}
for f in "$bin/abkit" "$bin/testos-init" "$bin/abkit-vmtest" build/abkit-stub.efi; do
  [ -x "$f" ] || [ -f "$f" ] || { echo "demo: $f is missing: run 'make demo'" >&2; exit 1; }
done
exec "$bin/abkit-vmtest" --abkit "$bin/abkit" --init "$bin/testos-init" demo "$@"
