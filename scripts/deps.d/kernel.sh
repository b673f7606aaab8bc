#!/usr/bin/env bash
# Fetches the test kernel for the VM tests: the linux-image-*-amd64 package that
# Debian's linux-image-amd64 metapackage currently names, downloaded with
# `apt-get download` and unpacked with `dpkg -x` into build/kernel/ (never
# installed, never committed). Idempotent: does nothing when that exact package
# is already unpacked there.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dest="$root/build/kernel"
stamp="$dest/.package"

# The concrete kernel package behind the metapackage, e.g. linux-image-6.1.0-56-amd64.
pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$pkg" ]; then
  # A fresh machine may not have package lists yet.
  apt-get update -qq
  pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
[ -n "$pkg" ] || { echo "deps: cannot tell which kernel linux-image-amd64 names" >&2; exit 1; }

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$pkg" ] && ls "$dest"/boot/vmlinuz-* >/dev/null 2>&1; then
  exit 0
fi

echo "deps: fetching test kernel $pkg into build/kernel"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# apt-get download writes into the current directory; as root it warns about
# the _apt sandbox, which is harmless here.
(cd "$tmp" && apt-get download -q "$pkg" 2>&1 | grep -v "^W: Download is performed unsandboxed" || true)
deb=$(ls "$tmp"/*.deb 2>/dev/null | head -n1)
[ -n "$deb" ] || { echo "deps: apt-get download $pkg produced no .deb" >&2; exit 1; }
rm -rf "$dest.new"
mkdir -p "$dest.new"
dpkg -x "$deb" "$dest.new"
echo "$pkg" >"$dest.new/.package"
rm -rf "$dest"
mv "$dest.new" "$dest"
