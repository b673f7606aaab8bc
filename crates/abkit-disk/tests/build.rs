//! `build` checked with independent tools: sgdisk, fsck.vfat and mtools.

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::Command;

use abkit_disk::{
    DiskImage, ESP_TYPE, FALLBACK_LOADER_PATH, LOADER_PATH_A, SLOT_A_TYPE, SLOT_B_TYPE, Slot,
    build, inspect,
};
use common::*;

#[test]
fn sgdisk_verifies_the_table_and_reads_back_names_types_and_guids() {
    let fx = Fixture::new();
    let (disk, report) = fx.build("disk.img");
    let verify = run(Command::new("sgdisk").arg("-v").arg(&disk));
    assert!(verify.contains("No problems found"), "{verify}");

    let expected = [
        (1, "ESP", ESP_TYPE),
        (2, "ABKIT-SYSTEM-A", SLOT_A_TYPE),
        (3, "ABKIT-SYSTEM-B", SLOT_B_TYPE),
        (4, "ABKIT-DATA", abkit_disk::DATA_TYPE),
    ];
    for (number, name, type_guid) in expected {
        let info = run(Command::new("sgdisk")
            .arg(format!("-i={number}"))
            .arg(&disk));
        let part = &report.partitions[number - 1];
        let upper = |u: uuid::Uuid| u.hyphenated().to_string().to_uppercase();
        assert!(
            info.contains(&format!("Partition name: '{name}'")),
            "{info}"
        );
        assert!(
            info.contains(&format!("Partition GUID code: {}", upper(type_guid))),
            "{info}"
        );
        assert!(
            info.contains(&format!("Partition unique GUID: {}", upper(part.guid))),
            "{info}"
        );
        assert!(
            info.contains(&format!("First sector: {} ", part.first_lba)),
            "{info}"
        );
        assert!(
            info.contains(&format!("Last sector: {} ", part.last_lba)),
            "{info}"
        );
        assert_eq!(part.first_lba % 2048, 0, "1 MiB aligned");
    }
    let table = run(Command::new("sgdisk").arg("-p").arg(&disk));
    let disk_guid = report.disk_guid.hyphenated().to_string().to_uppercase();
    assert!(
        table.contains(&format!("Disk identifier (GUID): {disk_guid}")),
        "{table}"
    );
    // 1 MiB head + 64 MiB ESP + 2 x 16 MiB + 8 MiB data + 1 MiB tail.
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 106 * MIB);
}

#[test]
fn the_esp_passes_fsck_and_mtools_sees_the_loader_files() {
    let fx = Fixture::new();
    let (disk, report) = fx.build("disk.img");
    let esp = &report.partitions[0];

    let esp_copy = fx.path("esp.fat");
    extract(&disk, esp.start(), esp.size(), &esp_copy);
    assert_fsck_clean(&esp_copy);
    let info = run(Command::new("minfo").arg("-i").arg(&esp_copy).arg("::"));
    assert!(info.contains("FAT32"), "not FAT32: {info}");

    let image = mtools_image(&disk, esp.start());
    let listing = run(Command::new("mdir").args(["-b", "-/", "-i", &image, "::/"]));
    assert!(listing.contains("::/EFI/abkit/boot-a.efi"), "{listing}");
    assert!(listing.contains("::/EFI/BOOT/BOOTX64.EFI"), "{listing}");
    assert!(
        !listing.contains("boot-b.efi"),
        "slot B is empty: no loader: {listing}"
    );
    assert!(
        !listing.contains("abkit-new"),
        "no temporary left: {listing}"
    );
    for path in [LOADER_PATH_A, FALLBACK_LOADER_PATH] {
        let mpath = format!("::{}", path.replace('\\', "/"));
        let bytes = run_bytes(Command::new("mtype").args(["-i", &image, &mpath]));
        assert_eq!(bytes, fx.loader_bytes, "{path}");
    }
}

#[test]
fn slot_a_holds_the_system_image_and_the_output_is_sparse() {
    let fx = Fixture::new();
    let (disk, report) = fx.build("disk.img");
    let bytes = std::fs::read(&disk).unwrap();
    let a = &report.partitions[1];
    let b = &report.partitions[2];
    let data = &report.partitions[3];
    let slot_a = &bytes[a.start() as usize..(a.start() + a.size()) as usize];
    assert_eq!(&slot_a[..fx.system_bytes.len()], &fx.system_bytes[..]);
    assert!(slot_a[fx.system_bytes.len()..].iter().all(|&b| b == 0));
    assert!(
        bytes[b.start() as usize..data.start() as usize]
            .iter()
            .all(|&b| b == 0)
    );
    assert!(
        bytes[data.start() as usize..]
            .iter()
            .take(data.size() as usize)
            .all(|&b| b == 0)
    );

    // 2 MiB of the system image are not zero; GPT and FAT need well under
    // 2 MiB more. The file is 106 MiB long.
    let allocated = std::fs::metadata(&disk).unwrap().blocks() * 512;
    assert!(allocated < 4 * MIB, "{allocated} bytes allocated");
    assert!(
        report.bytes_written >= 2 * MIB && report.bytes_written < 4 * MIB,
        "{report:?}"
    );
    assert_eq!(report.system_image_size, fx.system_bytes.len() as u64);
}

#[test]
fn the_same_seed_builds_the_same_bytes_and_no_seed_random_guids() {
    let fx = Fixture::new();
    let (first, r1) = fx.build("one.img");
    std::thread::sleep(std::time::Duration::from_millis(2100)); // FAT time has 2 s steps
    let (second, r2) = fx.build("two.img");
    assert_eq!(r1.disk_guid, r2.disk_guid);
    assert!(
        std::fs::read(&first).unwrap() == std::fs::read(&second).unwrap(),
        "images differ"
    );

    let mut other = fx.options(&fx.path("three.img"));
    other.seed = Some(43);
    let r3 = build(&other).unwrap();
    assert_ne!(r3.disk_guid, r1.disk_guid);
    let mut random = fx.options(&fx.path("four.img"));
    random.seed = None;
    let r4 = build(&random).unwrap();
    let r5 = build(&random).unwrap();
    assert_ne!(r4.disk_guid, r5.disk_guid);
    assert_ne!(r4.partitions[0].guid, r5.partitions[0].guid);
    let guids: std::collections::HashSet<_> = r4.partitions.iter().map(|p| p.guid).collect();
    assert_eq!(guids.len(), 4, "partition GUIDs are distinct");
}

#[test]
fn inspect_reports_partitions_esp_files_and_slot_identity() {
    let fx = Fixture::new();
    let (disk, report) = fx.build("disk.img");
    let image = DiskImage::open_read_only(&disk).unwrap();
    let found = inspect(&image).unwrap();
    assert_eq!(found.partitions, report.partitions);
    assert_eq!(found.disk_guid, report.disk_guid);
    let files: Vec<_> = found
        .esp_files
        .iter()
        .filter(|f| !f.is_dir)
        .map(|f| (f.path.to_lowercase(), f.size))
        .collect();
    let len = fx.loader_bytes.len() as u64;
    assert_eq!(
        files,
        [
            ("\\efi\\abkit\\boot-a.efi".to_string(), len),
            ("\\efi\\boot\\bootx64.efi".to_string(), len)
        ]
    );
    let a = &found.slots[0];
    assert_eq!(a.slot, Slot::A);
    assert!(a.holds_data);
    assert_eq!(a.used_bytes, fx.system_bytes.len() as u64);
    assert_eq!(
        a.sha256.as_deref(),
        Some(sha256_hex(&fx.system_bytes).as_str())
    );
    let b = &found.slots[1];
    assert!(!b.holds_data);
    assert_eq!((b.used_bytes, b.sha256.as_deref()), (0, None));
}

#[test]
fn used_part_ends_at_the_last_non_zero_block_even_inside_a_hole_free_tail() {
    let fx = Fixture::new();
    // An image whose tail is zeros: the used part stops before them.
    let mut image = fx.system_bytes.clone();
    image.extend(std::iter::repeat_n(0u8, 3 * 4096));
    image[fx.system_bytes.len() - 1] = 0; // last block still has non-zero bytes
    std::fs::write(&fx.system, &image).unwrap();
    let (disk, _) = fx.build("disk.img");
    let content =
        abkit_disk::slot_content(&DiskImage::open_read_only(&disk).unwrap(), Slot::A).unwrap();
    assert_eq!(content.used_bytes, fx.system_bytes.len() as u64);
    assert_eq!(
        content.sha256.unwrap(),
        sha256_hex(&image[..fx.system_bytes.len()])
    );
}

#[test]
fn a_full_size_disk_fills_the_data_partition_to_the_end() {
    let fx = Fixture::new();
    let out = fx.path("disk.img");
    let mut options = fx.options(&out);
    options.layout.disk_size = Some(200 * MIB);
    let report = build(&options).unwrap();
    let data = &report.partitions[3];
    assert_eq!(data.start() + data.size(), 199 * MIB);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 200 * MIB);
    let verify = run(Command::new("sgdisk").arg("-v").arg(&out));
    assert!(verify.contains("No problems found"), "{verify}");
}
