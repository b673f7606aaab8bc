#!/usr/bin/env bash
# make demo: abkit reading the firmware's boot variables from real OVMF files.
# (The full A/B story on a VM arrives with the VM end-to-end work.)
set -euo pipefail
cd "$(dirname "$0")/.."
abkit=target/release/abkit

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Debian's pristine OVMF VARS file: a firmware that never booted has no boot entries"
echo "\$ abkit efi list --ovmf-vars /usr/share/OVMF/OVMF_VARS_4M.fd"
$abkit efi list --ovmf-vars /usr/share/OVMF/OVMF_VARS_4M.fd

step "The VARS file after a real OVMF boot (test fixture): OVMF created its own entries"
f=crates/abkit-efi/tests/fixtures/ovmf-vars-2m-after-boot.fd
echo "\$ abkit efi list --ovmf-vars $f"
$abkit efi list --ovmf-vars "$f"

step "Debian's VARS file with Microsoft keys enrolled, as JSON for scripts (first lines)"
echo "\$ abkit efi list --ovmf-vars /usr/share/OVMF/OVMF_VARS_4M.ms.fd --json"
$abkit efi list --ovmf-vars /usr/share/OVMF/OVMF_VARS_4M.ms.fd --json | head -n 20
echo "  ..."
