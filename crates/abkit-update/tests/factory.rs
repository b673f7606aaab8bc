//! Factory images built from bundles: slot A holds what an install of the
//! bundle would write, the record says so, the engine takes it from there;
//! and a bad bundle leaves no output and no temporary file behind.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use abkit_bundle::{BundleReader, Keyring, Manifest, SecretKey};
use abkit_disk::{DiskImage, LayoutOptions, Slot};
use abkit_efi::OvmfVarsFile;
use abkit_update::factory::{BundleBuildOptions, build_from_bundle};
use abkit_update::offline::{ImageEsp, OfflineMachine};
use abkit_update::progress::{Collect, Event, Silent, Step};
use abkit_update::record::{SlotState, read_record};
use abkit_update::{InstallOptions, UpdateError, install, status};
use common::*;

/// The manifest and the verified bytes of every payload of a bundle.
fn payloads(bundle: &Path, keyring: &Keyring) -> (Manifest, Vec<(String, Vec<u8>)>) {
    let mut reader = BundleReader::open(std::fs::File::open(bundle).unwrap(), keyring).unwrap();
    let manifest = reader.manifest().clone();
    let mut out = Vec::new();
    while let Some(mut p) = reader.next_payload().unwrap() {
        let mut bytes = Vec::new();
        p.read_to_end(&mut bytes).unwrap();
        out.push((p.entry().name.clone(), bytes));
        p.finish().unwrap();
    }
    (manifest, out)
}

fn payload<'a>(all: &'a [(String, Vec<u8>)], name: &str) -> &'a [u8] {
    &all.iter().find(|(n, _)| n == name).unwrap().1
}

fn options(rig: &Rig, bundle: &Path, output: &str) -> BundleBuildOptions {
    BundleBuildOptions {
        bundle: bundle.to_path_buf(),
        output: rig.path(output),
        layout: LayoutOptions {
            esp_size: abkit_disk::MIN_ESP_SIZE,
            system_size: SLOT_SIZE,
            data_size: 1 << 20,
            ..LayoutOptions::default()
        },
        seed: Some(11),
        force: false,
        ovmf_vars: None,
    }
}

fn fresh_vars(rig: &Rig, name: &str) -> PathBuf {
    let path = rig.path(name);
    std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &path).unwrap();
    path
}

fn sgdisk_verify(disk: &Path) {
    let out = Command::new("sgdisk").arg("-v").arg(disk).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("No problems found"),
        "sgdisk -v: {text}"
    );
}

/// Copies the ESP out of the disk and runs `fsck.vfat -n` on it.
fn fsck_esp(disk: &Path, scratch: &Path) {
    let image = DiskImage::open_read_only(disk).unwrap();
    let range = image.esp_partition().range();
    let bytes = std::fs::read(disk).unwrap();
    std::fs::write(scratch, &bytes[range.start as usize..range.end as usize]).unwrap();
    let out = Command::new("fsck.vfat")
        .arg("-n")
        .arg(scratch)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fsck.vfat -n: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn slot_a_holds_what_an_install_of_the_bundle_writes_and_says_so() {
    let rig = Rig::new();
    let bundle = rig.bundle("1.4.0", b'F');
    let (manifest, all) = payloads(&bundle, &rig.keyring);
    let system = payload(&all, "system");
    let efi = payload(&all, "efi");
    assert!(
        system.len() > 200 << 10,
        "the system payload carries its verity tree"
    );
    let vars = fresh_vars(&rig, "factory-vars.fd");
    let mut opts = options(&rig, &bundle, "factory.img");
    opts.ovmf_vars = Some(vars.clone());
    let mut events = Collect::default();
    let report = build_from_bundle(&opts, &rig.keyring, &mut events).unwrap();

    // The disk is sound and holds the payloads byte for byte.
    let disk = rig.path("factory.img");
    sgdisk_verify(&disk);
    fsck_esp(&disk, &rig.path("esp.fat"));
    let image = DiskImage::open_read_only(&disk).unwrap();
    let range = image.slot_range(Slot::A);
    let bytes = std::fs::read(&disk).unwrap();
    let slot_a = &bytes[range.start as usize..range.end as usize];
    assert_eq!(&slot_a[..system.len()], system);
    assert!(slot_a[system.len()..].iter().all(|&b| b == 0));
    let range_b = image.slot_range(Slot::B);
    assert!(
        bytes[range_b.start as usize..range_b.end as usize]
            .iter()
            .all(|&b| b == 0)
    );
    let esp = image.esp().unwrap();
    assert_eq!(esp.read_file("\\EFI\\abkit\\boot-a.efi").unwrap(), efi);
    assert_eq!(esp.read_file("\\EFI\\BOOT\\BOOTX64.EFI").unwrap(), efi);
    drop(esp);

    // The record names the bundle exactly, as an install's would.
    let mut esp = ImageEsp(image.esp().unwrap());
    let record = read_record(&mut esp, Slot::A).unwrap();
    assert_eq!(record.state, SlotState::Installed);
    assert_eq!(record.compatible.as_deref(), Some(COMPATIBLE));
    assert_eq!(
        record.version.as_ref().map(|v| v.to_string()).as_deref(),
        Some("1.4.0")
    );
    let signed = BundleReader::open(std::fs::File::open(&bundle).unwrap(), &rig.keyring)
        .unwrap()
        .signed_sha256();
    assert_eq!(record.bundle_sha256, Some(hex::encode(signed)));
    assert_eq!(record.system_size, Some(system.len() as u64));
    assert_eq!(
        record.system_blake3,
        Some(blake3::hash(system).to_hex().to_string())
    );
    assert_eq!(
        record.efi_blake3,
        Some(blake3::hash(efi).to_hex().to_string())
    );
    assert_eq!((&record.system_sha256, &record.efi_sha256), (&None, &None));
    assert!(record.verity_root_hash.is_some());
    assert_eq!(record.installed_at, Some(manifest.created), "seeded build");
    assert_eq!(
        read_record(&mut esp, Slot::B).unwrap().state,
        SlotState::Unknown
    );
    drop(esp);
    drop(image);
    assert_eq!(report.slot_a, record);
    assert_eq!(report.disk.output, disk);
    let listed: Vec<&str> = report
        .disk
        .esp_files
        .iter()
        .map(|f| f.path.as_str())
        .collect();
    assert!(listed.contains(&"\\EFI\\abkit\\slot-a.json"), "{listed:?}");
    assert_eq!(
        report.signer,
        rig.key.public_key().key_id().to_string(),
        "the report names the signer"
    );
    let steps: Vec<Step> = events
        .0
        .iter()
        .filter_map(|e| match e {
            Event::Step { step, .. } => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(steps.first(), Some(&Step::Verify));
    assert!(steps.contains(&Step::Record));
    assert_eq!(steps.last(), Some(&Step::BootEntry));

    // The engine takes over: slot A installed and committed, an update of
    // another product refused, one of the same product accepted.
    let open = || {
        OfflineMachine::open(&disk, Box::new(OvmfVarsFile::open(&vars).unwrap()), Slot::A).unwrap()
    };
    let st = status(&mut open()).unwrap();
    assert_eq!(st.committed_slot, Slot::A);
    assert_eq!(st.slots["A"].record.state, SlotState::Installed);
    assert_eq!(
        st.slots["A"]
            .record
            .version
            .as_ref()
            .map(|v| v.to_string())
            .as_deref(),
        Some("1.4.0")
    );
    assert!(st.slots["A"].loader_present);
    let foreign = rig.bundle_with("2.0.0", "other-product", b'Q', 4096);
    let err = install(
        &mut open(),
        std::fs::File::open(&foreign).unwrap(),
        &rig.keyring,
        &InstallOptions::default(),
        &mut Silent,
    )
    .unwrap_err();
    assert!(matches!(err, UpdateError::Incompatible { .. }), "{err}");
    let older = rig.bundle("1.3.0", b'O');
    let err = install(
        &mut open(),
        std::fs::File::open(&older).unwrap(),
        &rig.keyring,
        &InstallOptions::default(),
        &mut Silent,
    )
    .unwrap_err();
    assert!(matches!(err, UpdateError::Downgrade { .. }), "{err}");
    let newer = rig.bundle("1.5.0", b'N');
    let done = install(
        &mut open(),
        std::fs::File::open(&newer).unwrap(),
        &rig.keyring,
        &InstallOptions::default(),
        &mut Silent,
    )
    .unwrap();
    assert_eq!(done.target_slot, Slot::B);
    assert_eq!(done.version, "1.5.0");
}

#[test]
fn the_same_bundle_and_seed_give_a_byte_identical_disk() {
    let rig = Rig::new();
    let bundle = rig.bundle("1.0.0", b'R');
    build_from_bundle(
        &options(&rig, &bundle, "one.img"),
        &rig.keyring,
        &mut Silent,
    )
    .unwrap();
    build_from_bundle(
        &options(&rig, &bundle, "two.img"),
        &rig.keyring,
        &mut Silent,
    )
    .unwrap();
    assert!(
        std::fs::read(rig.path("one.img")).unwrap() == std::fs::read(rig.path("two.img")).unwrap()
    );
    let mut unseeded = options(&rig, &bundle, "three.img");
    unseeded.seed = None;
    let report = build_from_bundle(&unseeded, &rig.keyring, &mut Silent).unwrap();
    let now = abkit_update::record::now();
    let at = report.slot_a.installed_at.unwrap();
    assert!(now - at < 600, "installed_at {at} is the build time");
}

#[test]
fn an_existing_output_file_is_replaced_whole() {
    let rig = Rig::new();
    let bundle = rig.bundle("1.0.0", b'W');
    let out = rig.path("old.img");
    std::fs::write(&out, vec![0xEE; 3 << 20]).unwrap();
    build_from_bundle(
        &options(&rig, &bundle, "old.img"),
        &rig.keyring,
        &mut Silent,
    )
    .unwrap();
    sgdisk_verify(&out);
    let image = DiskImage::open_read_only(&out).unwrap();
    let b = image.slot_range(Slot::B);
    let bytes = std::fs::read(&out).unwrap();
    assert!(
        bytes[b.start as usize..b.end as usize]
            .iter()
            .all(|&x| x == 0),
        "no byte of the old file survives"
    );
}

#[test]
fn bad_bundles_fail_with_a_named_error_before_the_output_exists() {
    let rig = Rig::new();
    let good = rig.bundle("1.0.0", b'G');
    let bytes = std::fs::read(&good).unwrap();
    let (manifest, _) = payloads(&good, &rig.keyring);
    // The system payload is the last one: its stored bytes end the file.
    let system = manifest.payload("system").unwrap();
    let system_start = bytes.len() - system.stored_size as usize;

    let mut flipped = bytes.clone();
    flipped[system_start + system.stored_size as usize / 2] ^= 0x40;
    std::fs::write(rig.path("flipped.abb"), &flipped).unwrap();
    std::fs::write(rig.path("truncated.abb"), &bytes[..bytes.len() - 1000]).unwrap();
    std::fs::write(rig.path("head-only.abb"), &bytes[..30]).unwrap();
    let too_big = rig.bundle_with("1.0.1", COMPATIBLE, b'T', (SLOT_SIZE + 4096) as usize);
    let other_ring = Keyring::from_keys(vec![SecretKey::from_seed(&[9; 32]).public_key()]);

    let cases: Vec<(&str, PathBuf, &Keyring, &str)> = vec![
        (
            "wrong keyring",
            good.clone(),
            &other_ring,
            "no signature from a key in the keyring",
        ),
        (
            "flipped byte",
            rig.path("flipped.abb"),
            &rig.keyring,
            "payload `system` chunk",
        ),
        (
            "truncated",
            rig.path("truncated.abb"),
            &rig.keyring,
            "truncated",
        ),
        (
            "truncated head",
            rig.path("head-only.abb"),
            &rig.keyring,
            "truncated",
        ),
        ("too big", too_big, &rig.keyring, "slot A holds only"),
    ];
    for (what, bundle, keyring, message) in cases {
        let before = entries(rig.dir.path());
        let opts = options(&rig, &bundle, "bad.img");
        let err = build_from_bundle(&opts, keyring, &mut Silent).unwrap_err();
        eprintln!("{what}: {err}");
        assert!(err.to_string().contains(message), "{what}: {err}");
        assert!(!rig.path("bad.img").exists(), "{what}: output created");
        assert_eq!(entries(rig.dir.path()), before, "{what}: files left behind");
    }

    // An existing output stays as it was; so does the VARS file.
    std::fs::write(rig.path("keep.img"), b"precious").unwrap();
    let vars = fresh_vars(&rig, "keep-vars.fd");
    let vars_before = std::fs::read(&vars).unwrap();
    let mut opts = options(&rig, &rig.path("flipped.abb"), "keep.img");
    opts.ovmf_vars = Some(vars.clone());
    let err = build_from_bundle(&opts, &rig.keyring, &mut Silent).unwrap_err();
    assert!(
        matches!(
            err,
            UpdateError::Bundle(abkit_bundle::Error::ChunkHashMismatch { .. })
        ),
        "{err}"
    );
    assert_eq!(std::fs::read(rig.path("keep.img")).unwrap(), b"precious");
    assert_eq!(std::fs::read(&vars).unwrap(), vars_before);

    // The bundle as its own output is refused before it is read.
    let opts = BundleBuildOptions {
        output: good.clone(),
        ..options(&rig, &good, "unused.img")
    };
    let err = build_from_bundle(&opts, &rig.keyring, &mut Silent).unwrap_err();
    assert!(err.to_string().contains("also an input"), "{err}");
    assert_eq!(std::fs::read(&good).unwrap(), bytes);
}

/// Detaches the loop device when the test ends, pass or fail.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn a_block_device_is_written_only_with_force_and_only_from_a_good_bundle() {
    let rig = Rig::new();
    let backing = rig.path("backing.raw");
    std::fs::write(&backing, vec![0xa5u8; 64 << 20]).unwrap();
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
    let good = rig.bundle("1.0.0", b'D');
    let mut flipped = std::fs::read(&good).unwrap();
    let at = flipped.len() - 1000;
    flipped[at] ^= 1;
    std::fs::write(rig.path("flipped.abb"), &flipped).unwrap();
    let device_bytes = || {
        let out = Command::new("cmp")
            .arg(&device)
            .arg(&backing)
            .status()
            .unwrap();
        assert!(out.success(), "device and backing file agree");
        std::fs::read(&backing).unwrap()
    };
    let untouched = device_bytes();

    let mut opts = options(&rig, &good, "unused");
    opts.output = PathBuf::from(&device);
    let err = build_from_bundle(&opts, &rig.keyring, &mut Silent).unwrap_err();
    assert!(err.to_string().contains("without --force"), "{err}");
    opts.force = true;
    opts.bundle = rig.path("flipped.abb");
    let err = build_from_bundle(&opts, &rig.keyring, &mut Silent).unwrap_err();
    assert!(err.to_string().contains("payload `system`"), "{err}");
    assert!(
        device_bytes() == untouched,
        "a bad bundle touched the device"
    );

    opts.bundle = good.clone();
    let report = build_from_bundle(&opts, &rig.keyring, &mut Silent).unwrap();
    assert!(report.disk.block_device);
    assert_eq!(report.disk.disk_size, 64 << 20);
    sgdisk_verify(Path::new(&device));
    let (_, all) = payloads(&good, &rig.keyring);
    let system = payload(&all, "system");
    let image = DiskImage::open_read_only(&device).unwrap();
    let a = image.slot_range(Slot::A);
    let bytes = device_bytes();
    assert_eq!(
        &bytes[a.start as usize..a.start as usize + system.len()],
        system
    );
    let mut esp = ImageEsp(image.esp().unwrap());
    let record = read_record(&mut esp, Slot::A).unwrap();
    assert_eq!(record, report.slot_a);
    assert_eq!(record.state, SlotState::Installed);
}
