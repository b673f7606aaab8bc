//! `--ovmf-vars`: the two slot entries land in a real OVMF VARS file, as
//! read back by abkit-efi and by the independent virt-fw-vars.

mod common;

use std::path::Path;
use std::process::Command;

use abkit_disk::{DiskError, DiskImage, LOADER_PATH_A, LOADER_PATH_B, build};
use abkit_efi::{BootManager, OvmfVarsFile};
use common::*;

const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

#[test]
fn build_writes_both_entries_and_boot_order_into_ovmf_vars() {
    if !Path::new(OVMF_VARS).exists() {
        eprintln!("SKIPPED: {OVMF_VARS} missing (Debian package ovmf)");
        return;
    }
    let fx = Fixture::new();
    let vars = fx.path("vars.fd");
    std::fs::copy(OVMF_VARS, &vars).unwrap();
    let out = fx.path("disk.img");
    let mut options = fx.options(&out);
    options.ovmf_vars = Some(vars.clone());
    let report = build(&options).unwrap();
    let entries = report.boot_entries.clone().unwrap();
    assert_eq!(entries.boot_order[..2], [entries.slot_a, entries.slot_b]);

    let esp = DiskImage::open_read_only(&out).unwrap().esp_location();
    let mut store = OvmfVarsFile::open(&vars).unwrap();
    let manager = BootManager::new(&mut store);
    assert_eq!(manager.boot_order().unwrap(), entries.boot_order);
    assert_eq!(
        manager
            .find_entries(esp.partition_guid, LOADER_PATH_A)
            .unwrap(),
        [entries.slot_a]
    );
    assert_eq!(
        manager
            .find_entries(esp.partition_guid, LOADER_PATH_B)
            .unwrap(),
        [entries.slot_b]
    );
    let a = manager.entry(entries.slot_a).unwrap().unwrap();
    assert_eq!(a.description, "abkit slot A");
    assert!(a.attributes.is_active());
    let hd = *a.boot_path().unwrap().hard_drive().unwrap();
    assert_eq!(
        (hd.partition_number, hd.partition_start, hd.partition_size),
        (1, 2048, 64 * MIB / 512)
    );
    let b = manager.entry(entries.slot_b).unwrap().unwrap();
    assert_eq!(b.description, "abkit slot B");
    assert!(
        !b.attributes.is_active(),
        "slot B is empty: its entry is inactive"
    );

    // Cross-check with virt-fw-vars, if installed.
    let Ok(out) = Command::new("virt-fw-vars")
        .arg("-i")
        .arg(&vars)
        .arg("--print")
        .output()
    else {
        eprintln!("SKIPPED cross-check: virt-fw-vars not installed");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let a_line = format!(
        "Boot{:04X}            : boot entry: title=\"abkit slot A\" devpath=Partition(nr=1)/FilePath(\\EFI\\abkit\\boot-a.efi)",
        entries.slot_a
    );
    assert!(text.contains(&a_line), "{text}");
    assert!(text.contains("title=\"abkit slot B\""), "{text}");
    let order = entries
        .boot_order
        .iter()
        .map(|n| format!("{n:04X}"))
        .collect::<Vec<_>>()
        .join(", ");
    assert!(text.contains(&format!("boot order: {order}")), "{text}");
}

#[test]
fn a_broken_vars_file_is_refused_before_the_disk_is_written() {
    let fx = Fixture::new();
    let vars = fx.path("vars.fd");
    std::fs::write(&vars, vec![0u8; 4096]).unwrap();
    let out = fx.path("disk.img");
    let mut options = fx.options(&out);
    options.ovmf_vars = Some(vars);
    let err = build(&options).unwrap_err();
    assert!(matches!(err, DiskError::VarStore(_)), "{err}");
    assert!(!out.exists());
}
