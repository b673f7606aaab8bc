//! Building onto a real block device (a loop device over a file filled with
//! garbage): old bytes must not survive where the disk says "empty".
//! Skipped, with a message, where loop devices cannot be set up (no root).

mod common;

use std::process::Command;

use abkit_disk::{DiskImage, Slot, build, inspect};
use common::*;

/// Detaches the loop device when the test ends, pass or fail.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn building_onto_a_block_device_overwrites_old_contents() {
    let fx = Fixture::new();
    let backing = fx.path("backing.raw");
    std::fs::write(&backing, vec![0xa5u8; 128 * MIB as usize]).unwrap();
    let attached = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&backing)
        .output();
    let device = match attached {
        Ok(out) if out.status.success() => {
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        }
        _ => {
            eprintln!("SKIPPED: cannot attach a loop device (needs root)");
            return;
        }
    };
    let _guard = Loop(device.clone());

    let mut options = fx.options(device.as_ref());
    options.force = true;
    let report = build(&options).unwrap();
    assert!(report.block_device);
    assert_eq!(
        report.disk_size,
        128 * MIB,
        "the disk takes the device's size"
    );
    let data = &report.partitions[3];
    assert_eq!(
        data.start() + data.size(),
        127 * MIB,
        "data fills the device"
    );

    let verify = run(Command::new("sgdisk").arg("-v").arg(&device));
    assert!(verify.contains("No problems found"), "{verify}");
    let image = DiskImage::open_read_only(&device).unwrap();
    let found = inspect(&image).unwrap();
    assert_eq!(found.slots[0].used_bytes, fx.system_bytes.len() as u64);
    assert_eq!(
        found.slots[0].sha256.as_deref(),
        Some(sha256_hex(&fx.system_bytes).as_str())
    );
    assert!(
        !found.slots[1].holds_data,
        "slot B was zeroed: {:?}",
        found.slots[1]
    );
    assert!(
        image
            .esp()
            .unwrap()
            .read_file(abkit_disk::LOADER_PATH_A)
            .unwrap()
            == fx.loader_bytes
    );
    drop(image);

    let esp = &report.partitions[0];
    let copy = fx.path("esp.fat");
    extract(&backing, esp.start(), esp.size(), &copy);
    assert_fsck_clean(&copy);
    let bytes = std::fs::read(&backing).unwrap();
    let slot_b = Slot::B;
    let b = &found.partitions[2];
    assert_eq!(b.role, abkit_disk::PartitionRole::of_slot(slot_b));
    assert!(
        bytes[b.start() as usize..(b.start() + b.size()) as usize]
            .iter()
            .all(|&x| x == 0)
    );
}
