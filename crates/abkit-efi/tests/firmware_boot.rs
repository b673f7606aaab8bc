//! Real OVMF firmware boots from a VARS file that abkit wrote (and
//! compacted), honours the BootNext we set, and deletes it.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use abkit_efi::boot::BootManager;
use abkit_efi::store::{OvmfVarsFile, VarName, VarStore, Variable};
use abkit_efi::{DevicePath, HardDrive, LoadOption, PartitionSignature};
use common::*;
use uuid::Uuid;

/// Boots QEMU until `needle` appears on the serial console (or the timeout
/// passes), then stops it. Returns the console text.
fn boot_until(vars: &std::path::Path, needle: &str, timeout: Duration) -> String {
    let serial = vars.with_extension("serial.log");
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-m",
            "256",
            "-nographic",
            "-nodefaults",
        ])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            debian_ovmf("OVMF_CODE.fd").display()
        ))
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            vars.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 not found: run `make deps`");
    let start = Instant::now();
    let mut text = String::new();
    while start.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(250));
        text = String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default()).into_owned();
        if text.contains(needle) {
            // Give the firmware a moment past the line, then power off.
            std::thread::sleep(Duration::from_millis(500));
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("qemu exited early ({status}): {err}");
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    eprintln!("firmware reached {needle:?} after {:?}", start.elapsed());
    text
}

#[test]
fn ovmf_boots_from_a_store_we_wrote_and_consumes_our_boot_next() {
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("vars.fd");
    std::fs::copy(fixture("ovmf-vars-2m-after-boot.fd"), &vars).unwrap();
    let ours_entry = LoadOption::new(
        "abkit slot A",
        DevicePath::hard_drive_file(
            HardDrive {
                partition_number: 1,
                partition_start: 2048,
                partition_size: 131072,
                signature: PartitionSignature::Gpt(Uuid::from_u128(0x42)),
            },
            "\\EFI\\abkit\\boot-a.efi",
        ),
    );
    {
        let mut store = OvmfVarsFile::open(&vars).unwrap();
        // Churn a variable until our own compaction has rewritten the log
        // the firmware is about to read.
        let churn = VarName::new(Uuid::from_u128(0x77), "AbkitChurn");
        for round in 0..12u8 {
            store
                .set(
                    &churn,
                    &Variable {
                        attributes: 7,
                        data: vec![round; 6000],
                    },
                )
                .unwrap();
        }
        store.delete(&churn).unwrap();
        let mut bm = BootManager::new(&mut store);
        assert_eq!(bm.add_entry(&ours_entry).unwrap(), 2);
        // Without BootNext nothing in this order is bootable: UiApp is an
        // application entry, which the boot manager does not boot.
        bm.set_boot_order(&[0]).unwrap();
        bm.set_boot_next(1).unwrap();
    }
    let console = boot_until(&vars, "BdsDxe: loading Boot0001", Duration::from_secs(120));
    assert!(
        console.contains("BdsDxe: loading Boot0001 \"EFI Internal Shell\""),
        "firmware did not boot our BootNext; console:\n{console}"
    );
    let mut store = OvmfVarsFile::open(&vars).unwrap();
    let bm = BootManager::new(&mut store);
    assert_eq!(
        bm.boot_next().unwrap(),
        None,
        "firmware deletes BootNext once used"
    );
    // OVMF rewrote the store on this boot (it deleted our entry, whose
    // partition does not exist, and registered its shell again): we must
    // read what the firmware wrote exactly as the independent tool does.
    assert!(bm.entry(2).unwrap() != Some(ours_entry));
    assert_eq!(dump_ours(&store), dump_virt(&vars));
}
