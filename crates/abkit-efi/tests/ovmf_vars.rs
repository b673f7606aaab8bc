//! The OVMF VARS backend against real firmware files and an independent reader.

mod common;

use abkit_efi::boot::BootManager;
use abkit_efi::store::{OvmfFormatError, OvmfVarsFile, StoreError, VarName, VarStore, Variable};
use abkit_efi::{DevicePath, HardDrive, LoadOption, PartitionSignature};
use common::*;
use proptest::prelude::*;
use uuid::Uuid;

const ESP: Uuid = Uuid::from_u128(0x5a3e_9c1d_7b42_4e8f_a1c3_9d2e_6f4b_8a01);
/// Where the variable store of both Debian layouts starts (FV header 0x48).
const STORE_START: usize = 0x48;

fn abkit_entry(slot: char) -> LoadOption {
    LoadOption::new(
        format!("abkit slot {slot}"),
        DevicePath::hard_drive_file(
            HardDrive {
                partition_number: 1,
                partition_start: 2048,
                partition_size: 262144,
                signature: PartitionSignature::Gpt(ESP),
            },
            &format!("\\EFI\\abkit\\boot-{}.efi", slot.to_ascii_lowercase()),
        ),
    )
}

fn store_end(bytes: &[u8]) -> usize {
    STORE_START
        + u32::from_le_bytes(
            bytes[STORE_START + 16..STORE_START + 20]
                .try_into()
                .unwrap(),
        ) as usize
}

#[test]
fn debian_pristine_vars_files_hold_no_variables() {
    for name in ["OVMF_VARS_4M.fd", "OVMF_VARS.fd"] {
        let path = debian_ovmf(name);
        let store = OvmfVarsFile::open(&path).unwrap();
        assert!(store.list().unwrap().is_empty(), "{name}");
        assert_eq!(dump_virt(&path).len(), 0, "{name}");
        // The whole store is free: its size less the store header.
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(store.free_space(), store_end(&bytes) - STORE_START - 28);
    }
}

#[test]
fn files_written_by_real_firmware_read_like_virt_fw_vars_reads_them() {
    let files = [
        fixture("ovmf-vars-2m-after-boot.fd"),
        debian_ovmf("OVMF_VARS_4M.ms.fd"),
        debian_ovmf("OVMF_VARS.ms.fd"),
    ];
    for path in files {
        let ours = dump_file_ours(&path);
        assert!(
            ours.len() > 10,
            "{}: {} variables",
            path.display(),
            ours.len()
        );
        assert_eq!(ours, dump_virt(&path), "{}", path.display());
    }
}

#[test]
fn boot_entries_of_the_real_boot_fixture() {
    let mut store = OvmfVarsFile::open(fixture("ovmf-vars-2m-after-boot.fd")).unwrap();
    let bm = BootManager::new(&mut store);
    assert_eq!(bm.boot_order().unwrap(), vec![0, 1]);
    assert_eq!(bm.boot_next().unwrap(), None);
    assert_eq!(bm.boot_current().unwrap(), None, "BootCurrent is volatile");
    let all = bm.entries().unwrap();
    assert!(all.skipped.is_empty());
    let shown: Vec<(u16, String, String)> = all
        .entries
        .iter()
        .map(|e| {
            (
                e.number,
                e.option.description.clone(),
                e.option.boot_path().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        vec![
            (
                0,
                "UiApp".to_string(),
                "Fv(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile(462caa21-7614-4503-836e-8ab6f4662331)".to_string()
            ),
            (
                1,
                "EFI Internal Shell".to_string(),
                "Fv(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile(7c04a583-9e3e-4f1c-ad65-e05268d0b4d1)".to_string()
            ),
        ]
    );
    // Every entry re-encodes to the firmware's exact bytes.
    for e in &all.entries {
        let raw = store
            .get(&VarName::global(format!("Boot{:04X}", e.number)))
            .unwrap()
            .unwrap();
        assert_eq!(e.option.encode().unwrap(), raw.data);
    }
}

#[test]
fn entries_we_write_are_read_by_virt_fw_vars_and_headers_stay_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vars.fd");
    let original = std::fs::read(debian_ovmf("OVMF_VARS_4M.fd")).unwrap();
    std::fs::write(&path, &original).unwrap();
    {
        let mut store = OvmfVarsFile::open(&path).unwrap();
        let mut bm = BootManager::new(&mut store);
        let a = bm.add_entry(&abkit_entry('A')).unwrap();
        let b = bm.add_entry(&abkit_entry('B')).unwrap();
        bm.set_boot_order(&[a, b]).unwrap();
        bm.set_boot_next(b).unwrap();
    }
    let written = std::fs::read(&path).unwrap();
    assert_eq!(written.len(), original.len());
    // FV header and store header unchanged; nothing past the store touched.
    let end = store_end(&original);
    assert_eq!(written[..STORE_START + 28], original[..STORE_START + 28]);
    assert_eq!(written[end..], original[end..]);

    let ours = dump_file_ours(&path);
    assert_eq!(ours, dump_virt(&path));
    assert_eq!(ours.len(), 4);
    let text = print_virt(&path);
    assert!(text.contains("abkit slot A"), "{text}");
    assert!(text.contains("abkit slot B"), "{text}");
    assert!(text.contains("\\EFI\\abkit\\boot-b.efi"), "{text}");

    let mut store = OvmfVarsFile::open(&path).unwrap();
    let mut bm = BootManager::new(&mut store);
    assert_eq!(bm.boot_order().unwrap(), vec![0, 1]);
    assert_eq!(bm.boot_next().unwrap(), Some(1));
    assert_eq!(
        bm.find_entries(ESP, "\\EFI\\abkit\\boot-a.efi").unwrap(),
        vec![0]
    );
    // Deleting BootNext, the way firmware does after using it.
    assert!(bm.clear_boot_next().unwrap());
    assert_eq!(dump_file_ours(&path), dump_virt(&path));
    assert!(!dump_virt(&path).contains_key(&(
        "8be4df61-93ca-11d2-aa0d-00e098032b8c".to_string(),
        "BootNext".to_string()
    )));
}

#[test]
fn unchanged_values_leave_the_file_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vars.fd");
    std::fs::copy(fixture("ovmf-vars-2m-after-boot.fd"), &path).unwrap();
    let before = std::fs::read(&path).unwrap();
    let mut store = OvmfVarsFile::open(&path).unwrap();
    let mut bm = BootManager::new(&mut store);
    assert!(!bm.set_boot_order(&[0, 1]).unwrap());
    assert!(!bm.clear_boot_next().unwrap());
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn a_full_store_is_compacted_and_keeps_every_live_variable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vars.fd");
    std::fs::copy(fixture("ovmf-vars-2m-after-boot.fd"), &path).unwrap();
    let mut expected = dump_file_ours(&path);
    let mut store = OvmfVarsFile::open(&path).unwrap();
    let big = VarName::new(Uuid::from_u128(0xabcd), "Big");
    let mut compactions = 0;
    // Each rewrite appends ~6 KiB to a 56 KiB log: the log fills up
    // several times over.
    for round in 0..40u8 {
        let free_before = store.free_space();
        let value = Variable {
            attributes: 7,
            data: vec![round; 6000],
        };
        assert!(store.set(&big, &value).unwrap());
        if store.free_space() > free_before {
            compactions += 1;
        }
    }
    assert!(compactions >= 3, "compacted {compactions} times");
    expected.insert(
        (big.vendor.to_string(), big.name.clone()),
        (7, hex::encode(vec![39u8; 6000])),
    );
    assert_eq!(dump_file_ours(&path), expected);
    assert_eq!(dump_virt(&path), expected);
}

#[test]
fn a_value_that_cannot_fit_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vars.fd");
    std::fs::copy(fixture("ovmf-vars-2m-after-boot.fd"), &path).unwrap();
    let before = std::fs::read(&path).unwrap();
    let mut store = OvmfVarsFile::open(&path).unwrap();
    let err = store
        .set(
            &VarName::global("Huge"),
            &Variable {
                attributes: 7,
                data: vec![0; 60_000],
            },
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::Full { .. }), "{err}");
    assert!(err.to_string().contains("variable store full"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    // The in-memory view is unchanged as well and still writable.
    assert_eq!(dump_ours(&store), dump_virt(&path));
    assert!(
        store
            .set(
                &VarName::global("Small"),
                &Variable {
                    attributes: 7,
                    data: vec![1]
                }
            )
            .unwrap()
    );
}

#[test]
fn a_record_caught_mid_delete_is_still_the_live_value() {
    let mut store =
        OvmfVarsFile::from_bytes(std::fs::read(fixture("ovmf-vars-2m-after-boot.fd")).unwrap())
            .unwrap();
    let name = VarName::global("BootOrder");
    let mut bytes = store.as_bytes().to_vec();
    // Find the live BootOrder record and put it in "in deleted transition"
    // (0x3E), as firmware leaves it when power fails mid-update.
    let name_utf16: Vec<u8> = "BootOrder\0"
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    let pos = bytes
        .windows(name_utf16.len())
        .rposition(|w| w == name_utf16.as_slice())
        .unwrap();
    let record = pos - 60;
    assert_eq!(bytes[record + 2], 0x3F);
    bytes[record + 2] = 0x3E;
    store = OvmfVarsFile::from_bytes(bytes).unwrap();
    assert_eq!(store.get(&name).unwrap().unwrap().data, vec![0, 0, 1, 0]);
    store
        .set(
            &name,
            &Variable {
                attributes: 7,
                data: vec![1, 0, 0, 0],
            },
        )
        .unwrap();
    assert_eq!(store.get(&name).unwrap().unwrap().data, vec![1, 0, 0, 0]);
    assert_eq!(store.as_bytes()[record + 2], 0x3C, "old record now deleted");
}

#[test]
fn malformed_files_are_typed_errors() {
    let good = std::fs::read(debian_ovmf("OVMF_VARS.fd")).unwrap();
    let err = |bytes: Vec<u8>| OvmfVarsFile::from_bytes(bytes).unwrap_err();
    assert_eq!(err(good[..0x40].to_vec()), OvmfFormatError::TooShort(0x40));
    let mut b = good.clone();
    b[0x28] = b'X';
    assert_eq!(err(b), OvmfFormatError::NoFvSignature);
    let mut b = good.clone();
    b[0x10] ^= 1;
    assert!(matches!(err(b), OvmfFormatError::NotVariableVolume(_)));
    assert!(matches!(
        err(good[..0x10000].to_vec()),
        OvmfFormatError::FvLongerThanFile { .. }
    ));
    let mut b = good.clone();
    b[0x2c] ^= 0x80; // an attribute bit: breaks the header checksum
    assert_eq!(err(b), OvmfFormatError::BadChecksum);
    let mut b = good.clone();
    b[0x48] ^= 1;
    assert!(matches!(err(b), OvmfFormatError::UnknownStoreGuid(_)));
    let mut b = good.clone();
    b[0x48 + 19] = 0x7f; // store size far beyond the volume
    assert!(matches!(err(b), OvmfFormatError::StoreOutsideVolume { .. }));
    let mut b = good.clone();
    b[0x48 + 21] = 0xFF;
    assert_eq!(
        err(b),
        OvmfFormatError::StoreNotHealthy {
            format: 0x5A,
            state: 0xFF
        }
    );
    // A record whose sizes run past the store.
    let fixture_bytes = std::fs::read(fixture("ovmf-vars-2m-after-boot.fd")).unwrap();
    let mut b = fixture_bytes.clone();
    b[0x64 + 40..0x64 + 44].copy_from_slice(&0x0100_0000u32.to_le_bytes());
    assert_eq!(err(b), OvmfFormatError::RecordOverrun { offset: 0x64 });
    // A record name with an unpaired surrogate.
    let mut b = fixture_bytes;
    b[0x64 + 60..0x64 + 62].copy_from_slice(&[0x00, 0xD8]);
    assert!(matches!(
        err(b),
        OvmfFormatError::BadName { offset: 0x64, .. }
    ));
    // Errors name the file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.fd");
    std::fs::write(&path, vec![0u8; 4096]).unwrap();
    let msg = OvmfVarsFile::open(&path).unwrap_err().to_string();
    assert!(msg.contains("garbage.fd") && msg.contains("_FVH"), "{msg}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn damaged_files_never_panic(
        flips in proptest::collection::vec((0usize..0x3000, any::<u8>()), 1..8)
    ) {
        let mut bytes = std::fs::read(fixture("ovmf-vars-2m-after-boot.fd")).unwrap();
        for (i, v) in flips {
            bytes[i] = v;
        }
        if let Ok(mut store) = OvmfVarsFile::from_bytes(bytes) {
            for name in store.list().unwrap() {
                store.get(&name).unwrap();
            }
            let _ = store.set(&VarName::global("BootNext"), &Variable { attributes: 7, data: vec![1, 0] });
            let _ = BootManager::new(&mut store).entries();
        }
    }
}

mod secure_boot {
    use super::*;
    use abkit_efi::secure_boot::{self, Certificate, EfiTime, Keys};

    fn keys() -> Keys {
        let cert = |der: &[u8], year| Certificate {
            owner: Uuid::from_u128(0x1234),
            der: der.to_vec(),
            not_before: EfiTime {
                year,
                month: 3,
                day: 4,
                hour: 5,
                minute: 6,
                second: 7,
            },
        };
        Keys {
            pk: cert(b"pk-der", 2024),
            kek: vec![cert(b"kek-der", 2025)],
            db: vec![cert(b"db-one", 2023), cert(b"db-two", 2026)],
        }
    }

    #[test]
    fn enrolled_keys_are_time_based_records_and_turn_enforcement_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vars.fd");
        std::fs::copy(debian_ovmf("OVMF_VARS_4M.fd"), &path).unwrap();
        let mut vars = OvmfVarsFile::open(&path).unwrap();
        assert!(!secure_boot::will_enforce(&vars).unwrap());
        secure_boot::enroll(&mut vars, &keys()).unwrap();
        let vars = OvmfVarsFile::open(&path).unwrap();
        assert!(secure_boot::will_enforce(&vars).unwrap());
        let db = VarName::new(secure_boot::IMAGE_SECURITY_DATABASE, "db");
        let value = vars.get(&db).unwrap().unwrap();
        assert_eq!(value.attributes, 0x27);
        assert_eq!(
            value.data,
            secure_boot::x509_signature_lists(&keys().db),
            "two certificates, two lists"
        );
        // The newest notBefore of the list is the record's timestamp.
        let t = vars.timestamp(&db).unwrap();
        assert_eq!(&t[..7], &[0xea, 0x07, 3, 4, 5, 6, 7]);
        // virt-fw-vars reads what we wrote.
        let theirs = dump_virt(&path);
        assert!(theirs.keys().any(|(_, name)| name == "PK"), "{theirs:?}");
        // Enrolling again changes nothing on disk.
        let before = std::fs::read(&path).unwrap();
        let mut vars = OvmfVarsFile::open(&path).unwrap();
        secure_boot::enroll(&mut vars, &keys()).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn a_store_without_timestamps_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain.fd");
        let mut bytes = std::fs::read(debian_ovmf("OVMF_VARS_4M.fd")).unwrap();
        // The store GUID of a plain (not authenticated) variable store.
        let plain = Uuid::from_u128(0xddcf3616_3275_4164_98b6_fe85707ffe7d);
        bytes[STORE_START..STORE_START + 16].copy_from_slice(&plain.to_bytes_le());
        std::fs::write(&path, &bytes).unwrap();
        let mut vars = OvmfVarsFile::open(&path).unwrap();
        assert!(!vars.is_authenticated());
        let err = secure_boot::enroll(&mut vars, &keys()).unwrap_err();
        assert!(matches!(err, StoreError::NotAuthenticated { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }
}
