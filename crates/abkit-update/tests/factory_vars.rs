//! Raw-file factory images with `--ovmf-vars`: the two slot entries land
//! in a real OVMF VARS file through the boot policy, as read back by
//! abkit-efi and by the independent virt-fw-vars.

use std::process::Command;

use abkit_disk::{BuildOptions, LayoutOptions};
use abkit_efi::{BootManager, OvmfVarsFile};
use abkit_update::factory::build_raw;
use abkit_update::{Slot, UpdateError};

const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

fn options(dir: &std::path::Path) -> BuildOptions {
    std::fs::write(dir.join("x.img"), vec![b'X'; 1 << 20]).unwrap();
    std::fs::write(
        dir.join("x.efi"),
        abkit_disk::fixtures::tiny_efi_application(b"X"),
    )
    .unwrap();
    BuildOptions {
        loader: dir.join("x.efi"),
        system: dir.join("x.img"),
        output: dir.join("disk.img"),
        layout: LayoutOptions {
            esp_size: abkit_disk::MIN_ESP_SIZE,
            system_size: 4 << 20,
            data_size: 1 << 20,
            ..LayoutOptions::default()
        },
        seed: Some(1),
        force: false,
    }
}

#[test]
fn build_raw_writes_both_entries_and_boot_order_into_ovmf_vars() {
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("vars.fd");
    std::fs::copy(OVMF_VARS, &vars).expect("Debian's OVMF is needed: run `make deps`");
    let opts = options(dir.path());
    let report = build_raw(&opts, Some(&vars)).unwrap();
    let entries = report.boot_entries.clone().unwrap();
    assert_eq!(entries.boot_order[..2], [entries.slot_a, entries.slot_b]);
    let esp = report.esp_location();
    let mut store = OvmfVarsFile::open(&vars).unwrap();
    let state = abkit_update::boot_policy::read_vars(&mut store, &esp).unwrap();
    assert_eq!(state.slot_entries(Slot::A), [entries.slot_a]);
    assert_eq!(state.slot_entries(Slot::B), [entries.slot_b]);
    assert_eq!(state.committed, Some(Slot::A));
    let manager = BootManager::new(&mut store);
    assert_eq!(manager.boot_order().unwrap(), entries.boot_order);
    let a = manager.entry(entries.slot_a).unwrap().unwrap();
    assert_eq!(a.description, "abkit slot A");
    assert!(a.attributes.is_active());
    let b = manager.entry(entries.slot_b).unwrap().unwrap();
    assert!(!b.attributes.is_active(), "slot B is empty: inactive");

    // Cross-check with virt-fw-vars (installed by `make deps`).
    let out = Command::new("virt-fw-vars")
        .arg("-i")
        .arg(&vars)
        .arg("--print")
        .output()
        .expect("virt-fw-vars is needed: run `make deps`");
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
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("vars.fd");
    std::fs::write(&vars, vec![0u8; 4096]).unwrap();
    let opts = options(dir.path());
    let err = build_raw(&opts, Some(&vars)).unwrap_err();
    assert!(matches!(err, UpdateError::Store(_)), "{err}");
    assert!(!opts.output.exists());
}
