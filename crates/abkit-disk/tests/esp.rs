//! `DiskImage` and `Esp`: reading a built disk back and changing ESP files
//! without mounting, checked with fsck.vfat and mtools.

mod common;

use std::process::Command;

use abkit_disk::{
    DiskError, DiskImage, LOADER_PATH_A, LOADER_PATH_B, PartitionRole, Slot, TEMP_SUFFIX,
};
use common::*;

#[test]
fn open_finds_partitions_slots_and_the_esp_location() {
    let fx = Fixture::new();
    let (disk, report) = fx.build("disk.img");
    let image = DiskImage::open(&disk).unwrap();
    assert_eq!(image.partitions(), &report.partitions[..]);
    assert_eq!(image.size(), 106 * MIB);
    assert_eq!(image.slot_range(Slot::A), (65 * MIB)..(81 * MIB));
    assert_eq!(image.slot_range(Slot::B), (81 * MIB)..(97 * MIB));
    assert_eq!(image.slot(Slot::B).role, PartitionRole::SlotB);
    assert_eq!(image.data_partition().map(|p| p.number), Some(4));
    let esp = image.esp_location();
    assert_eq!(esp.partition_number, 1);
    assert_eq!(esp.partition_guid, report.partitions[0].guid);
    assert_eq!((esp.start_lba, esp.size_lba), (2048, 64 * MIB / 512));
}

#[test]
fn esp_files_can_be_written_renamed_removed_and_read_back() {
    let fx = Fixture::new();
    let (disk, report) = fx.build("disk.img");
    let image = DiskImage::open(&disk).unwrap();
    let esp = image.esp().unwrap();
    assert_eq!(esp.read_file(LOADER_PATH_A).unwrap(), fx.loader_bytes);
    assert_eq!(
        esp.read_file("/efi/ABKIT/BOOT-A.EFI").unwrap(),
        fx.loader_bytes,
        "case-insensitive"
    );

    let loader_b = noise(100_000, 3);
    esp.write_file(LOADER_PATH_B, &loader_b).unwrap();
    assert!(
        !esp.exists(&format!("{LOADER_PATH_B}{TEMP_SUFFIX}"))
            .unwrap()
    );
    // Replacing keeps one file with the new bytes.
    let loader_b2 = noise(5_000, 4);
    esp.write_file(LOADER_PATH_B, &loader_b2).unwrap();
    assert_eq!(esp.read_file(LOADER_PATH_B).unwrap(), loader_b2);

    esp.write_file("\\loader\\state\\abkit.txt", b"active=A\n")
        .unwrap();
    esp.rename("\\loader\\state\\abkit.txt", "\\loader\\abkit.txt")
        .unwrap();
    assert!(!esp.exists("\\loader\\state\\abkit.txt").unwrap());
    esp.remove("\\loader\\state").unwrap();
    esp.write_file("\\junk.bin", b"x").unwrap();
    esp.remove("\\junk.bin").unwrap();

    let listed: Vec<_> = esp
        .list()
        .unwrap()
        .into_iter()
        .filter(|e| !e.is_dir)
        .map(|e| (e.path, e.size))
        .collect();
    assert_eq!(
        listed,
        [
            (
                "\\EFI\\abkit\\boot-a.efi".to_string(),
                fx.loader_bytes.len() as u64
            ),
            ("\\EFI\\abkit\\boot-b.efi".to_string(), 5_000),
            (
                "\\EFI\\BOOT\\BOOTX64.EFI".to_string(),
                fx.loader_bytes.len() as u64
            ),
            ("\\loader\\abkit.txt".to_string(), 9),
        ]
    );
    esp.close().unwrap();

    // Independent tools agree.
    let esp_part = &report.partitions[0];
    let copy = fx.path("esp.fat");
    extract(&disk, esp_part.start(), esp_part.size(), &copy);
    assert_fsck_clean(&copy);
    let image_arg = mtools_image(&disk, esp_part.start());
    let b = run_bytes(Command::new("mtype").args(["-i", &image_arg, "::/EFI/abkit/boot-b.efi"]));
    assert_eq!(b, loader_b2);
    let state = run_bytes(Command::new("mtype").args(["-i", &image_arg, "::/loader/abkit.txt"]));
    assert_eq!(state, b"active=A\n");
    let listing = run(Command::new("mdir").args(["-b", "-/", "-i", &image_arg, "::/"]));
    assert!(
        !listing.contains("junk") && !listing.contains("state"),
        "{listing}"
    );
}

#[test]
fn esp_errors_name_the_problem() {
    let fx = Fixture::new();
    let (disk, _) = fx.build("disk.img");
    let image = DiskImage::open(&disk).unwrap();
    let esp = image.esp().unwrap();
    assert!(
        matches!(esp.read_file("\\nope.efi"), Err(DiskError::EspFileNotFound(p)) if p == "\\nope.efi")
    );
    assert!(matches!(
        esp.read_file("\\no\\dir\\x"),
        Err(DiskError::EspFileNotFound(_))
    ));
    assert!(matches!(
        esp.remove("\\nope"),
        Err(DiskError::EspFileNotFound(_))
    ));
    assert!(matches!(
        esp.rename("\\nope", "\\x"),
        Err(DiskError::EspFileNotFound(_))
    ));
    assert!(matches!(
        esp.write_file("\\..\\x", b""),
        Err(DiskError::BadEspPath(_))
    ));
    assert!(matches!(
        esp.write_file("", b""),
        Err(DiskError::BadEspPath(_))
    ));
    assert!(!esp.exists("\\missing\\deeper").unwrap());
    // A file in the way of a directory.
    let err = esp
        .write_file("\\EFI\\abkit\\boot-a.efi\\x", b"")
        .unwrap_err();
    assert!(matches!(err, DiskError::Fat { .. }), "{err}");
}

#[test]
fn a_read_only_open_reads_but_refuses_writes() {
    let fx = Fixture::new();
    let (disk, _) = fx.build("disk.img");
    let before = std::fs::read(&disk).unwrap();
    let image = DiskImage::open_read_only(&disk).unwrap();
    let esp = image.esp().unwrap();
    assert_eq!(esp.read_file(LOADER_PATH_A).unwrap(), fx.loader_bytes);
    assert!(esp.write_file(LOADER_PATH_B, b"x").is_err());
    drop(esp);
    assert!(
        std::fs::read(&disk).unwrap() == before,
        "read-only open changed the disk"
    );
}

#[test]
fn disks_without_our_partitions_or_gpt_are_refused() {
    let fx = Fixture::new();
    let blank = fx.path("blank.img");
    std::fs::write(&blank, vec![0u8; 4 << 20]).unwrap();
    assert!(matches!(
        DiskImage::open(&blank),
        Err(DiskError::NoGpt { .. })
    ));
    let tiny = fx.path("tiny.img");
    std::fs::write(&tiny, [0u8; 512]).unwrap();
    assert!(matches!(
        DiskImage::open(&tiny),
        Err(DiskError::NoGpt { .. })
    ));

    // A GPT made by sgdisk with an ESP but no slot partitions.
    let foreign = fx.path("foreign.img");
    std::fs::File::create(&foreign)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    run(Command::new("sgdisk")
        .args(["-n", "1:2048:+32M", "-t", "1:EF00"])
        .arg(&foreign));
    let err = DiskImage::open(&foreign).unwrap_err();
    assert!(
        matches!(
            err,
            DiskError::MissingPartition {
                role: "abkit slot A",
                ..
            }
        ),
        "{err}"
    );

    // Two partitions with the slot A type.
    let (disk, _) = fx.build("disk.img");
    run(Command::new("sgdisk")
        .arg(format!("-t=3:{}", abkit_disk::SLOT_A_TYPE))
        .arg(&disk));
    let err = DiskImage::open(&disk).unwrap_err();
    assert!(
        matches!(
            err,
            DiskError::DuplicatePartition {
                first: 2,
                second: 3,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_crafted_gpt_entry_size_is_refused_not_a_crash() {
    let fx = Fixture::new();
    let (disk, _) = fx.build("disk.img");
    let mut bytes = std::fs::read(&disk).unwrap();
    bytes[512 + 84..512 + 88].copy_from_slice(&256u32.to_le_bytes());
    // With its CRC left stale the header is just damaged: the backup is
    // used, with a warning.
    std::fs::write(&disk, &bytes).unwrap();
    let image = DiskImage::open(&disk).unwrap();
    assert_eq!(image.warnings().len(), 1, "{:?}", image.warnings());
    // A valid header claiming 256-byte entries is refused.
    fix_header_crc(&mut bytes, 512);
    std::fs::write(&disk, &bytes).unwrap();
    let err = DiskImage::open(&disk).unwrap_err();
    assert!(err.to_string().contains("256 bytes"), "{err}");
}

#[test]
fn a_directory_loop_in_a_damaged_fat_is_an_error_not_a_hang() {
    let fx = Fixture::new();
    let (disk, report) = fx.build("disk.img");
    let esp = report.partitions[0].start() as usize;
    let mut bytes = std::fs::read(&disk).unwrap();
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u32_at =
        |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) as usize;
    let boot = &bytes[esp..esp + 512];
    let sector = u16_at(boot, 11);
    let data = esp + (u16_at(boot, 14) + boot[16] as usize * u32_at(boot, 36)) * sector;
    // Root directory = cluster 2 = start of the data area. Point its
    // `EFI` entry back at the root itself.
    let root = &mut bytes[data..data + 512];
    let at = root
        .chunks(32)
        .position(|e| &e[..11] == b"EFI        ")
        .expect("EFI entry in the root directory")
        * 32;
    root[at + 20..at + 22].copy_from_slice(&0u16.to_le_bytes());
    root[at + 26..at + 28].copy_from_slice(&2u16.to_le_bytes());
    std::fs::write(&disk, bytes).unwrap();

    let image = DiskImage::open_read_only(&disk).unwrap();
    let err = image.esp().unwrap().list().unwrap_err();
    assert!(err.to_string().contains("too deep"), "{err}");
}

#[test]
fn write_file_from_streams_a_reader_into_a_file() {
    let fx = Fixture::new();
    let (disk, report) = fx.build("disk.img");
    let payload = noise(300_000, 5);
    {
        let image = DiskImage::open(&disk).unwrap();
        let esp = image.esp().unwrap();
        let n = esp
            .write_file_from("\\EFI\\abkit\\boot-b.efi.abkit-new", &mut &payload[..])
            .unwrap();
        assert_eq!(n, payload.len() as u64);
        esp.rename("\\EFI\\abkit\\boot-b.efi.abkit-new", LOADER_PATH_B)
            .unwrap();
        esp.close().unwrap();
    }
    let esp_part = &report.partitions[0];
    let copy = fx.path("esp.fat");
    extract(&disk, esp_part.start(), esp_part.size(), &copy);
    assert_fsck_clean(&copy);
    let image_arg = mtools_image(&disk, esp_part.start());
    let b = run_bytes(Command::new("mtype").args(["-i", &image_arg, "::/EFI/abkit/boot-b.efi"]));
    assert!(b == payload, "mtype sees other bytes");
}

#[test]
fn file_size_gives_sizes_and_none_for_missing_files() {
    let fx = Fixture::new();
    let (disk, _) = fx.build("disk.img");
    let image = DiskImage::open(&disk).unwrap();
    let esp = image.esp().unwrap();
    let big = noise(300_000, 6);
    esp.write_file(LOADER_PATH_B, &big).unwrap();
    esp.write_file("\\empty.txt", b"").unwrap();
    assert_eq!(
        esp.file_size(LOADER_PATH_A).unwrap(),
        Some(fx.loader_bytes.len() as u64)
    );
    assert_eq!(
        esp.file_size("/efi/ABKIT/BOOT-B.EFI").unwrap(),
        Some(300_000),
        "case-insensitive"
    );
    assert_eq!(esp.file_size("\\empty.txt").unwrap(), Some(0));
    assert_eq!(esp.file_size("\\EFI\\abkit\\nope.efi").unwrap(), None);
    assert_eq!(esp.file_size("\\no\\such\\dir.efi").unwrap(), None);
    assert_eq!(
        esp.file_size("\\EFI\\abkit\\boot-a.efi\\x").unwrap(),
        None,
        "a file in the way"
    );
    let err = esp.file_size("\\EFI\\abkit").unwrap_err();
    assert!(err.to_string().contains("is a directory"), "{err}");
    assert!(matches!(
        esp.file_size("\\..\\x"),
        Err(DiskError::BadEspPath(_))
    ));
    esp.close().unwrap();
}
