#!/usr/bin/env bash
# Makes a throw-away Secure Boot PKI for tests and VMs: self-signed RSA-2048
# certificates (SHA-256, 10 years) for PK, KEK and db, their keys, and one
# owner GUID. NOT for production: the keys are unencrypted.
#
#   scripts/test-pki.sh DIR [NAME]
#
# writes DIR/{PK,KEK,db}.key (PKCS#8 PEM, mode 0600), DIR/{PK,KEK,db}.crt
# (PEM) and DIR/owner.guid. NAME (default "abkit test") goes into the
# certificates' common names. Sign loaders with db.key/db.crt
# (`abkit uki sign --key DIR/db.key --cert DIR/db.crt`), enrol with
# virt-fw-vars (docs/secure-boot.md).
set -euo pipefail
dir=${1:?usage: scripts/test-pki.sh DIR [NAME]}
name=${2:-abkit test}
mkdir -p "$dir"
umask 077
for role in PK KEK db; do
  openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
    -subj "/CN=$name $role/" \
    -keyout "$dir/$role.key" -out "$dir/$role.crt" 2>/dev/null
  chmod 0644 "$dir/$role.crt"
done
if [ ! -s "$dir/owner.guid" ]; then
  cat /proc/sys/kernel/random/uuid >"$dir/owner.guid"
  chmod 0644 "$dir/owner.guid"
fi
echo "test PKI in $dir: PK, KEK, db (.key, .crt), owner $(cat "$dir/owner.guid")"
