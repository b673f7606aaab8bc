#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and test abkit.
# Idempotent: every step first checks whether its result is already there.
set -euo pipefail

# Debian packages, keyed by a file each one provides.
declare -A need=(
  [/usr/bin/qemu-system-x86_64]=qemu-system-x86
  [/usr/share/OVMF/OVMF_CODE_4M.fd]=ovmf
  # Secure Boot and measured boot (issue 17): OVMF's secboot build, a software TPM.
  [/usr/share/OVMF/OVMF_CODE_4M.secboot.fd]=ovmf
  [/usr/bin/swtpm]=swtpm
  [/usr/bin/swtpm_setup]=swtpm-tools
  [/usr/bin/tpm2_pcrread]=tpm2-tools
  [/usr/sbin/sgdisk]=gdisk
  [/usr/bin/mdir]=mtools
  [/usr/sbin/fsck.vfat]=dosfstools
  [/usr/sbin/veritysetup]=cryptsetup-bin
  [/usr/bin/cpio]=cpio
  [/usr/sbin/modinfo]=kmod
  [/usr/bin/zstd]=zstd
  [/usr/bin/curl]=curl
  [/usr/bin/osslsigncode]=osslsigncode
  [/usr/bin/openssl]=openssl
  # bench/install.sh compares with RAUC (plain bundles need mksquashfs).
  [/usr/bin/rauc]=rauc
  [/usr/bin/mksquashfs]=squashfs-tools
  [/usr/bin/sbverify]=sbsigntool
  [/usr/bin/mkfs.erofs]=erofs-utils
  [/usr/sbin/mkfs.ext4]=e2fsprogs
  # The OCI tests run a real registry (distribution 2.8) with htpasswd auth.
  [/usr/bin/docker-registry]=docker-registry
  [/usr/bin/htpasswd]=apache2-utils
  # The fleet layer (crates/abkit-fleet): etcd 3.4 for its tests and
  # `make fleet-sim` (abkit talks to its JSON gateway: no protoc needed);
  # the tests wait for a member with etcdctl.
  [/usr/bin/etcd]=etcd-server
  [/usr/bin/etcdctl]=etcd-client
  # Delta installs: tests serve bundles with a real Range-capable server;
  # bench/delta.sh compares with casync.
  [/usr/sbin/lighttpd]=lighttpd
  [/usr/bin/casync]=casync
  # The debian-systemd VM scenario builds a stock Debian root
  # (scripts/debian-root.sh).
  [/usr/bin/mmdebstrap]=mmdebstrap
)
missing=()
for f in "${!need[@]}"; do
  [ -e "$f" ] || missing+=("${need[$f]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian's docker-registry package starts a registry on :5000 (all
  # addresses) under systemd; the tests start their own on 127.0.0.1, so a
  # registry we just installed is not left serving.
  if [[ " ${missing[*]} " == *" docker-registry "* ]] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
  fi
fi

# virt-fw-vars: an independent reader of OVMF VARS files, used to cross-check ours.
if ! command -v virt-fw-vars >/dev/null 2>&1; then
  echo "deps: installing virt-firmware from PyPI"
  python3 -m pip install -q virt-firmware
  command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
fi

# Rust: the toolchain's formatter and linter, and the UEFI target for the loader.
installed=$(rustup component list --installed 2>/dev/null || true)
for c in rustfmt clippy; do
  grep -q "^$c" <<<"$installed" || rustup component add "$c"
done
rustup target list --installed | grep -qx x86_64-unknown-uefi || rustup target add x86_64-unknown-uefi

# Further steps (the test kernel) are added by the pieces that need them.
for step in scripts/deps.d/*.sh; do
  [ -e "$step" ] && bash "$step"
done
exit 0
