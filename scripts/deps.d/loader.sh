#!/usr/bin/env bash
# Tools the loader's tests use beyond scripts/deps.sh: objdump (binutils)
# cross-checks the sections `abkit uki build` writes. Idempotent.
set -euo pipefail
if ! command -v objdump >/dev/null 2>&1; then
  echo "deps: installing binutils (objdump)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends binutils >/dev/null
fi
