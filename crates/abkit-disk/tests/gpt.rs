//! Opening a disk whose primary or backup GPT is damaged: the good copy is
//! used with a warning naming the damaged one, `repair_gpt` rewrites it
//! (checked byte for byte and with `sgdisk -v`), and two damaged copies are
//! an error.

mod common;

use abkit_disk::{DiskError, DiskImage, DiskWarning, GptCopy, GptDamage};
use common::*;

const SECTOR: usize = 512;

/// Byte offsets of the backup header and of the backup entry array (128
/// entries of 128 bytes right before the header).
fn backup_offsets(disk: &[u8]) -> (usize, usize) {
    let header = disk.len() - SECTOR;
    (header, header - 128 * 128)
}

#[test]
fn a_damaged_gpt_copy_is_used_with_a_warning_and_repaired() {
    let fx = Fixture::new();
    let (disk, report) = fx.build("disk.img");
    let pristine = std::fs::read(&disk).unwrap();
    let (backup_header, backup_entries) = backup_offsets(&pristine);
    // (what to flip, which copy, which damage)
    type Check = fn(&GptDamage) -> bool;
    let cases: [(usize, GptCopy, Check); 5] = [
        (SECTOR + 16, GptCopy::Primary, |d| {
            matches!(d, GptDamage::HeaderCrc { .. })
        }),
        (2 * SECTOR + 100, GptCopy::Primary, |d| {
            matches!(d, GptDamage::EntriesCrc { .. })
        }),
        (SECTOR, GptCopy::Primary, |d| {
            matches!(d, GptDamage::Missing { lba: 1 })
        }),
        (backup_header + 40, GptCopy::Backup, |d| {
            matches!(d, GptDamage::HeaderCrc { .. })
        }),
        (backup_entries + 130, GptCopy::Backup, |d| {
            matches!(d, GptDamage::EntriesCrc { .. })
        }),
    ];
    for (offset, copy, is_expected) in cases {
        let mut bytes = pristine.clone();
        bytes[offset] ^= 0x55;
        std::fs::write(&disk, &bytes).unwrap();

        let image = DiskImage::open(&disk).unwrap();
        let [
            DiskWarning::GptCopyDamaged {
                copy: c,
                used,
                damage,
            },
        ] = image.warnings()
        else {
            panic!("{copy}: expected one warning, got {:?}", image.warnings());
        };
        assert_eq!(*c, copy);
        assert_ne!(*used, copy);
        assert!(is_expected(damage), "{copy}: {damage:?}");
        let message = image.warnings()[0].to_string();
        assert!(
            message.starts_with(&format!("the {copy} is damaged (")),
            "{message}"
        );
        // The good copy gives the same partitions.
        assert_eq!(image.partitions(), &report.partitions[..], "{copy}");
        let report2 = abkit_disk::inspect(&image).unwrap();
        assert_eq!(report2.warnings, image.warnings());

        assert_eq!(image.repair_gpt().unwrap(), Some(copy));
        drop(image);
        assert!(
            std::fs::read(&disk).unwrap() == pristine,
            "repairing the {copy} did not restore the bytes of the built disk"
        );
        assert_sgdisk_clean(&disk);
        let image = DiskImage::open(&disk).unwrap();
        assert!(image.warnings().is_empty());
        assert_eq!(image.repair_gpt().unwrap(), None);
    }
}

#[test]
fn both_gpt_copies_damaged_is_an_error_naming_both() {
    let fx = Fixture::new();
    let (disk, _) = fx.build("disk.img");
    let mut bytes = std::fs::read(&disk).unwrap();
    let (_, backup_entries) = backup_offsets(&bytes);
    bytes[SECTOR + 16] ^= 1;
    bytes[backup_entries] ^= 1;
    std::fs::write(&disk, &bytes).unwrap();
    let err = DiskImage::open_read_only(&disk).unwrap_err();
    let DiskError::NoGpt { reason, .. } = &err else {
        panic!("{err}");
    };
    assert!(
        reason.starts_with("primary GPT: header CRC32 ")
            && reason.contains("; backup GPT: partition entry array CRC32 "),
        "{reason}"
    );
    assert!(err.to_string().contains("no valid GPT"), "{err}");
}

#[test]
fn a_read_only_open_warns_but_does_not_repair() {
    let fx = Fixture::new();
    let (disk, _) = fx.build("disk.img");
    let mut bytes = std::fs::read(&disk).unwrap();
    bytes[SECTOR + 16] ^= 1;
    std::fs::write(&disk, &bytes).unwrap();
    let image = DiskImage::open_read_only(&disk).unwrap();
    assert_eq!(image.warnings().len(), 1);
    assert!(image.repair_gpt().is_err());
    drop(image);
    assert!(
        std::fs::read(&disk).unwrap() == bytes,
        "read-only open wrote"
    );
}
