#!/usr/bin/env bash
# Builds a small stock Debian root with systemd from Debian's packages
# (mmdebstrap, variant minbase), for the `debian-systemd` VM scenario, as a
# tarball in CACHE_DIR, and prints the tarball's path. Cached: the file name
# carries a hash of this script (its suite, package list and options), so a
# second run finds it and downloads nothing. The suite is the host's release;
# the mirrors are the host's apt sources for it (read from
# /etc/apt/sources.list*, never hard-coded). Needs root (mmdebstrap's root
# mode; CI runs as root) and `make deps` (mmdebstrap, zstd).
#
# Usage: bash scripts/debian-root.sh CACHE_DIR
# The tree holds Debian's packages only; what makes it an abkit release
# (the abkit binary, units, agent.toml, kernel modules) is added per release
# by crates/abkit-vmtest/src/debian_scenarios.rs.
set -euo pipefail

cache=${1:?usage: debian-root.sh CACHE_DIR}
# systemd as PID 1 from Debian's packages; udev for /dev; kmod to load
# modules after switch_root. No dbus: systemctl talks to PID 1 directly.
packages=systemd,systemd-sysv,udev,kmod

suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$suite" ] || { echo "debian-root: no VERSION_CODENAME in /etc/os-release" >&2; exit 1; }
key=$( (echo "$suite"; cat "$0") | sha256sum | cut -c1-16)
out="$cache/debian-$suite-$key.tar.zst"
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [ -s "$out" ]; then
  echo "$out"
  exit 0
fi
command -v mmdebstrap >/dev/null || { echo "debian-root: mmdebstrap missing (make deps)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The host's sources for this suite (and its -updates and -security
# suites): deb822 stanzas from *.sources, one-line entries from *.list.
shopt -s nullglob
for f in /etc/apt/sources.list.d/*.sources; do
  awk -v suite="$suite" 'BEGIN { RS = ""; ORS = "\n\n" }
    /(^|\n)Enabled: *no/ { next }
    { if (match($0, /(^|\n)Suites:[^\n]*/)) {
        line = substr($0, RSTART, RLENGTH)
        if (line ~ ("[ :]" suite "([ -]|$)")) print } }' "$f"
done >"$tmp/host.sources"
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
  [ -f "$f" ] && grep -E "^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?[^[:space:]]+[[:space:]]+$suite(-[a-z]+)?[[:space:]]" "$f" || true
done >"$tmp/host.list"
mirrors=()
[ -s "$tmp/host.sources" ] && mirrors+=("$tmp/host.sources")
[ -s "$tmp/host.list" ] && mirrors+=("$tmp/host.list")
[ ${#mirrors[@]} -gt 0 ] || { echo "debian-root: the host's apt sources name no $suite suite" >&2; exit 1; }

echo "debian-root: building $out with mmdebstrap ($suite, minbase + $packages)" >&2
start=$(date +%s)
# Documentation, manual pages and translations are left out (a smaller
# erofs image, a faster verity read at boot); copyright files stay.
# A second try after a pause: a mirror's passing failure should not fail
# a test run.
build() {
  mmdebstrap --quiet --variant=minbase --include="$packages" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='echo debian-abkit >"$1/etc/hostname"' \
    --customize-hook=': >"$1/etc/resolv.conf"' \
    "$suite" "$tmp/root.tar.zst" "${mirrors[@]}" >&2
}
if ! build; then
  echo "debian-root: mmdebstrap failed; trying once more in 10 s" >&2
  sleep 10
  rm -f "$tmp/root.tar.zst"
  build
fi
mv "$tmp/root.tar.zst" "$out.new"
mv "$out.new" "$out"
# Trees of an older recipe are not used again.
for old in "$cache"/debian-"$suite"-*.tar.zst; do
  [ "$old" = "$out" ] || rm -f "$old"
done
echo "debian-root: built in $(($(date +%s) - start)) s ($(du -h "$out" | cut -f1))" >&2
echo "$out"
