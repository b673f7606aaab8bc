#!/usr/bin/env bash
# VM test of the abkit EFI loader on real firmware (OVMF under QEMU, TCG).
#
# Builds one loader (`abkit uki build`: stub + Debian kernel + test OS initrd,
# command line with SYSTEM-X), puts it on a GPT disk's ESP as
# \EFI\abkit\boot-a.efi, \EFI\abkit\boot-b.efi and \EFI\BOOT\BOOTX64.EFI, and
# boots each path once (the file name decides). A second disk carries
# stamped copies (`abkit uki stamp`): a B-stamped BOOTX64.EFI must boot B and
# an A-stamped boot-b.efi must boot A (the stamp beats the file name). The
# test OS init prints /proc/cmdline and the loader's EFI variables; for each
# boot we check the loader's line (slot and source), the slot in the command
# line, the booted-slot variable, LoaderImageIdentifier and that
# LoaderDevicePartUUID is the ESP's partition GUID.
#
# Needs: build/abkit-stub.efi (make stub), build/kernel (make deps), and the
# tools make deps installs (qemu, ovmf, sgdisk, mtools, dosfstools, binutils,
# virt-fw-vars). Run through `make vm-loader`.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
target=${CARGO_TARGET_DIR:-$root/target}
work=$root/build/vm-loader
stub=$root/build/abkit-stub.efi
ovmf_code=/usr/share/OVMF/OVMF_CODE_4M.fd
ovmf_vars=/usr/share/OVMF/OVMF_VARS_4M.fd
boot_timeout=${ABKIT_VM_TIMEOUT:-60}
export MTOOLS_SKIP_CHECK=1

now_ms() { echo $(($(date +%s%N) / 1000000)); }
started=$(now_ms)
elapsed() { local ms=$(($(now_ms) - $1)); printf '%4d.%d s' $((ms / 1000)) $((ms % 1000 / 100)); }
say() { echo "vm-loader: $*" >&2; }
fail() { echo "vm-loader: FAIL: $*" >&2; exit 1; }

[ -f "$stub" ] || fail "no $stub: run 'make stub'"
kernel=$(ls "$root"/build/kernel/boot/vmlinuz-* 2>/dev/null | head -n1 || true)
[ -n "$kernel" ] || fail "no kernel in build/kernel: run 'make deps'"
kver=${kernel##*/vmlinuz-}
for tool in qemu-system-x86_64 sgdisk mkfs.vfat fsck.vfat mcopy objdump virt-fw-vars python3; do
  command -v "$tool" >/dev/null || fail "$tool is missing: run 'make deps'"
done

rm -rf "$work"
mkdir -p "$work"

# --- Build the pieces: abkit and testos-initrd for the host, a static init.
t=$(now_ms)
cargo build -q -p abkit -p testos
RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols" \
  cargo build -q --release -p testos --bin testos-init --target x86_64-unknown-linux-gnu
abkit=$target/debug/abkit
init=$target/x86_64-unknown-linux-gnu/release/testos-init
say "built abkit, testos-init (static) in $(elapsed "$t")"

# efivarfs is a module in Debian's kernel; it may ship compressed.
ko=$(find "$root/build/kernel/lib/modules/$kver" -name 'efivarfs.ko*' | head -n1)
[ -n "$ko" ] || fail "efivarfs module not found in build/kernel"
case "$ko" in
  *.ko) cp "$ko" "$work/efivarfs.ko" ;;
  *.ko.xz) xz -dc "$ko" >"$work/efivarfs.ko" ;;
  *.ko.zst) zstd -qdc "$ko" >"$work/efivarfs.ko" ;;
  *) fail "unknown module compression: $ko" ;;
esac
"$target/debug/testos-initrd" --init "$init" --module "$work/efivarfs.ko" -o "$work/initrd.cpio"

# --- The loader.
printf 'ID=abkit-testos\nPRETTY_NAME="abkit test OS"\n' >"$work/os-release"
cmdline="console=ttyS0 root=PARTLABEL=ABKIT-SYSTEM-X ro panic=-1 quiet"
"$abkit" uki build --stub "$stub" --kernel "$kernel" --initrd "$work/initrd.cpio" \
  --osrel "$work/os-release" --cmdline "$cmdline" -o "$work/boot.efi" 2>/dev/null

# objdump (binutils) must see our sections, in ukify's order, after the stub's.
objdump -h "$work/boot.efi" >"$work/objdump.txt"
sections=$(awk '$1 ~ /^[0-9]+$/ {printf "%s ", $2}' "$work/objdump.txt")
[[ "$sections" == *".abkit .reloc .osrel .cmdline .initrd .linux " ]] ||
  fail "objdump -h shows sections '$sections'"
"$abkit" uki inspect --json "$work/boot.efi" >"$work/inspect.json"
python3 - "$work/inspect.json" "$cmdline" "$(stat -c %s "$work/initrd.cpio")" "$(stat -c %s "$kernel")" <<'EOF' ||
import json, sys
info = json.load(open(sys.argv[1]))
assert info["cmdline"] == sys.argv[2], info["cmdline"]
assert info["initrd_size"] == int(sys.argv[3]), info["initrd_size"]
assert info["linux_size"] == int(sys.argv[4]), info["linux_size"]
assert info["stub"].startswith("abkit-stub "), info["stub"]
assert info["os_pretty_name"] == "abkit test OS", info["os_pretty_name"]
assert info["checksum_stored"] == info["checksum_computed"] != 0
EOF
  fail "abkit uki inspect disagrees with what was built"
# Our checksum agrees with the one Debian's signing tools stored in the kernel.
"$abkit" uki inspect --json "$kernel" |
  python3 -c 'import json,sys; i=json.load(sys.stdin); sys.exit(i["checksum_stored"] != i["checksum_computed"])' ||
  fail "PE checksum of $kernel differs from the stored one"
say "loader built: $(stat -c %s "$work/boot.efi") bytes; objdump and inspect agree"

# --- Stamped copies: same Authenticode digest, the stamp shows in inspect.
"$abkit" uki stamp --slot B "$work/boot.efi" -o "$work/stamped-b.efi" 2>/dev/null
cp "$work/boot.efi" "$work/stamped-a.efi"
"$abkit" uki stamp --slot A "$work/stamped-a.efi" -o "$work/stamped-a.efi" 2>/dev/null
for f in boot stamped-a stamped-b; do
  "$abkit" uki inspect --json "$work/$f.efi" >"$work/inspect-$f.json"
done
python3 - "$work" <<'EOF' ||
import json, sys
i = {f: json.load(open(f"{sys.argv[1]}/inspect-{f}.json")) for f in ("boot", "stamped-a", "stamped-b")}
assert i["boot"]["slot_stamp"] is None, i["boot"]["slot_stamp"]
assert i["stamped-a"]["slot_stamp"] == "A" and i["stamped-b"]["slot_stamp"] == "B"
digests = {f: v["authenticode_sha256"] for f, v in i.items()}
assert len(set(digests.values())) == 1 and None not in digests.values(), digests
for v in i.values():
    assert v["checksum_stored"] == v["checksum_computed"]
EOF
  fail "stamped copies: inspect disagrees (stamp, digest or checksum)"
objdump -h "$work/stamped-b.efi" >/dev/null || fail "objdump cannot read the stamped loader"
say "stamped copies A and B share the Authenticode digest"

# --- GPT disks: the loader three times (file names decide), and stamped
# copies (the stamp decides). make_disk DISK GUID SRC:DEST...
make_disk() {
  local disk=$1 guid=$2 esp=$1.esp
  shift 2
  truncate -s 80M "$disk"
  # (No -q: with it, this sgdisk silently writes no partition.)
  sgdisk -o -n 1:2048:+64M -t 1:ef00 -c 1:ESP -u "1:$guid" "$disk" >/dev/null
  sgdisk -i 1 "$disk" | grep -qi "unique GUID: $guid" || fail "sgdisk did not create the ESP"
  truncate -s 64M "$esp"
  mkfs.vfat -F 32 -S 512 -s 1 -n ESP "$esp" >/dev/null
  mmd -i "$esp" ::/EFI ::/EFI/abkit ::/EFI/BOOT
  local pair
  for pair in "$@"; do
    mcopy -i "$esp" "${pair%%:*}" "::${pair#*:}"
  done
  dd if="$esp" of="$disk" bs=512 seek=2048 conv=notrunc status=none
  sgdisk -v "$disk" | grep -q "No problems found" || fail "sgdisk -v finds problems in $disk"
  fsck.vfat -n "$esp" >/dev/null || fail "fsck.vfat finds problems in $esp"
  rm -f "$esp"
}
new_guid() { tr '[:lower:]' '[:upper:]' </proc/sys/kernel/random/uuid; }
plain_guid=$(new_guid)
make_disk "$work/disk.img" "$plain_guid" "$work/boot.efi:/EFI/abkit/boot-a.efi" \
  "$work/boot.efi:/EFI/abkit/boot-b.efi" "$work/boot.efi:/EFI/BOOT/BOOTX64.EFI"
stamped_guid=$(new_guid)
make_disk "$work/stamped-disk.img" "$stamped_guid" "$work/stamped-b.efi:/EFI/BOOT/BOOTX64.EFI" \
  "$work/stamped-a.efi:/EFI/abkit/boot-b.efi"

# --- Firmware variables: a boot entry for the path plus BootNext to it; the
# fallback path boots from a fresh store (no entries: OVMF tries BOOTX64.EFI).
cat >"$work/bootnext.json" <<'EOF'
{ "version": 2, "variables": [
  { "name": "BootNext", "guid": "8be4df61-93ca-11d2-aa0d-00e098032b8c", "attr": 7, "data": "0000" } ] }
EOF
vars_for() {
  local vars=$work/vars-$1.fd
  cp "$ovmf_vars" "$vars"
  if [ -n "$2" ]; then
    virt-fw-vars --inplace "$vars" --append-boot-filepath "$2" --set-json "$work/bootnext.json" 2>/dev/null
    virt-fw-vars -i "$vars" -p 2>/dev/null | grep "^Boot0000 " | grep -qF "devpath=FilePath($2)" ||
      fail "virt-fw-vars did not create Boot0000 for $2"
  fi
  echo "$vars"
}

# --- Boot each path and check what the test OS reports.
check_boot() {
  local name=$1 path=$2 slot=$3 entry=$4 source=$5 disk=$6 esp_guid=$7
  local vars log t
  vars=$(vars_for "$name" "$entry")
  log=$work/serial-$name.log
  t=$(now_ms)
  timeout "$boot_timeout" qemu-system-x86_64 -machine q35 -accel tcg -smp 1 -m 1024 \
    -nographic -nodefaults -serial stdio -no-reboot \
    -drive "if=pflash,format=raw,unit=0,readonly=on,file=$ovmf_code" \
    -drive "if=pflash,format=raw,unit=1,file=$vars" \
    -drive "if=virtio,format=raw,file=$disk" </dev/null >"$log" 2>&1 ||
    { tail -n 30 "$log" >&2; fail "$name: QEMU failed or timed out after ${boot_timeout}s (log: $log)"; }
  local took
  took=$(elapsed "$t")
  tr -d '\r' <"$log" >"$log.txt"
  expect() {
    grep -qxF -- "$1" "$log.txt" || { tail -n 30 "$log.txt" >&2; fail "$name: no line '$1' (log: $log.txt)"; }
  }
  expect "abkit: booting slot $slot ($source)"
  grep -q "^testos: cmdline=.*root=PARTLABEL=ABKIT-SYSTEM-$slot ro panic=-1 quiet" "$log.txt" ||
    fail "$name: command line lacks SYSTEM-$slot: $(grep '^testos: cmdline' "$log.txt" || echo none)"
  ! grep -q "^testos: cmdline=.*SYSTEM-X" "$log.txt" || fail "$name: SYSTEM-X left in the command line"
  expect "testos: AbkitBootedSlot=$slot"
  expect "testos: LoaderImageIdentifier=$path"
  expect "testos: LoaderDevicePartUUID=$esp_guid"
  expect "testos: done, powering off"
  say "$(printf '%-16s' "$name") slot $slot by $source, $path, ESP $esp_guid: ok in $took"
}

plain=("$work/disk.img" "$plain_guid")
stamped=("$work/stamped-disk.img" "$stamped_guid")
check_boot boot-a '\EFI\abkit\boot-a.efi' A '\EFI\abkit\boot-a.efi' 'file name' "${plain[@]}"
check_boot boot-b '\EFI\abkit\boot-b.efi' B '\EFI\abkit\boot-b.efi' 'file name' "${plain[@]}"
check_boot fallback '\EFI\BOOT\BOOTX64.EFI' A '' 'file name' "${plain[@]}"
# The stamp beats the file name: a B-stamped fallback boots B, an A-stamped
# boot-b.efi boots A.
check_boot fallback-stamp-b '\EFI\BOOT\BOOTX64.EFI' B '' stamp "${stamped[@]}"
check_boot boot-b-stamp-a '\EFI\abkit\boot-b.efi' A '\EFI\abkit\boot-b.efi' stamp "${stamped[@]}"

# --- A loader that cannot boot must say why and hand control back to the
# firmware, not hang: a bare stub (no .linux) as the only loader. The firmware
# then falls back to its EFI shell, whose startup.nsh powers the VM off.
bare=$work/bare-disk.img
truncate -s 24M "$bare"
sgdisk -o -n 1:2048:0 -t 1:ef00 -c 1:ESP "$bare" >/dev/null
truncate -s 20M "$work/bare-esp.img"
mkfs.vfat -n ESP "$work/bare-esp.img" >/dev/null
mmd -i "$work/bare-esp.img" ::/EFI ::/EFI/BOOT
mcopy -i "$work/bare-esp.img" "$stub" ::/EFI/BOOT/BOOTX64.EFI
printf 'reset -s\r\n' >"$work/startup.nsh"
mcopy -i "$work/bare-esp.img" "$work/startup.nsh" ::/startup.nsh
dd if="$work/bare-esp.img" of="$bare" bs=512 seek=2048 conv=notrunc status=none
cp "$ovmf_vars" "$work/vars-bare.fd"
log=$work/serial-bare.log
t=$(now_ms)
timeout "$boot_timeout" qemu-system-x86_64 -machine q35 -accel tcg -smp 1 -m 1024 \
  -nographic -nodefaults -serial stdio -no-reboot \
  -drive "if=pflash,format=raw,unit=0,readonly=on,file=$ovmf_code" \
  -drive "if=pflash,format=raw,unit=1,file=$work/vars-bare.fd" \
  -drive "if=virtio,format=raw,file=$bare" </dev/null >"$log" 2>&1 ||
  { tail -n 30 "$log" >&2; fail "bare stub: QEMU failed or timed out after ${boot_timeout}s (log: $log)"; }
tr -d '\r' <"$log" >"$log.txt"
grep -qxF "abkit: error: the loader carries no kernel (NOT_FOUND): no .linux section: build a UKI with \`abkit uki build\`" "$log.txt" ||
  { tail -n 30 "$log.txt" >&2; fail "bare stub: no error line (log: $log.txt)"; }
grep -q "^BdsDxe: failed to start .*: Not Found" "$log.txt" ||
  fail "bare stub: the firmware did not see the loader fail (log: $log.txt)"
say "bare stub reports 'the loader carries no kernel' and returns to the firmware: ok in $(elapsed "$t")"

say "all boot paths ok; total $(elapsed "$started")"
