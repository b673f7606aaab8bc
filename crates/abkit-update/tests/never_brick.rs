//! The hostile- and unlucky-operator findings of the never-brick review,
//! one test each: every one of them failed before its fix.

mod common;

use abkit_disk::Slot;
use abkit_efi::boot::BootManager;
use abkit_efi::{VarName, Variable};
use abkit_update::fault::PowerCut;
use abkit_update::progress::Silent;
use abkit_update::record::{SlotState, read_record, record_copy_path, record_path};
use abkit_update::{InstallOptions, Machine, UpdateError, install, mark_good, rollback, status};
use common::*;

fn install_file(rig: &Rig, running: Slot, bundle: &std::path::Path) -> Result<(), UpdateError> {
    rig.install(running, bundle, None).map(|_| ())
}

fn boot_order(rig: &Rig) -> Vec<u16> {
    BootManager::new(rig.machine(Slot::A).vars())
        .boot_order()
        .unwrap()
}

/// Y on B, booted and committed: the machine runs B.
fn on_b(rig: &Rig) {
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    install_file(rig, Slot::A, &rig.bundle("1.1.0", b'Y')).unwrap();
    assert_eq!(rig.boot().slot, Slot::B);
    mark_good(&mut rig.machine(Slot::B)).unwrap();
}

#[test]
fn f1_mark_good_refuses_a_slot_left_empty_by_a_killed_install() {
    let rig = Rig::new();
    on_b(&rig);
    // An install from B into A, killed half-way through the system write.
    let bundle = rig.bundle_with("1.2.0", COMPATIBLE, b'Z', 3 << 20);
    let err = rig
        .install(Slot::B, &bundle, Some(PowerCut::at(8)))
        .unwrap_err();
    assert!(err.to_string().contains("power cut"), "{err}");
    let mut m = rig.machine(Slot::A);
    assert_eq!(
        read_record(m.esp(), Slot::A).unwrap().state,
        SlotState::Empty
    );
    drop(m);
    let before = rig.snapshot();
    let err = mark_good(&mut rig.machine(Slot::A)).unwrap_err();
    assert!(
        matches!(err, UpdateError::NotCommittable { slot: Slot::A, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("empty"), "{err}");
    assert!(
        rig.snapshot() == before,
        "a refused mark-good changed bytes"
    );
    assert_eq!(rig.boot().slot, Slot::B);
}

#[test]
fn f1_mark_good_refuses_the_never_installed_slot_of_a_fresh_disk() {
    for rig in [Rig::new(), Rig::unrecorded()] {
        let before = rig.snapshot();
        let err = mark_good(&mut rig.machine(Slot::B)).unwrap_err();
        assert!(
            matches!(err, UpdateError::NotCommittable { slot: Slot::B, .. }),
            "{err}"
        );
        assert!(rig.snapshot() == before);
        assert_eq!(rig.boot().slot, Slot::A);
    }
}

#[test]
fn f2_a_second_operation_on_the_same_disk_is_refused_while_one_runs() {
    let rig = Rig::new();
    let mut first = rig.machine(Slot::A);
    first.lock().unwrap();
    let before = rig.snapshot();
    for err in [
        install_file(&rig, Slot::A, &rig.bundle("1.1.0", b'Y')).unwrap_err(),
        mark_good(&mut rig.machine(Slot::A)).unwrap_err(),
        rollback(&mut rig.machine(Slot::A)).unwrap_err(),
    ] {
        assert!(matches!(err, UpdateError::Locked { .. }), "{err}");
        assert!(
            err.to_string().contains(&format!(
                "another abkit operation (pid {})",
                std::process::id()
            )),
            "{err}"
        );
    }
    assert!(rig.snapshot() == before);
    // Reading is not an operation: status still works.
    status(&mut rig.machine(Slot::A)).unwrap();
    drop(first);
    install_file(&rig, Slot::A, &rig.bundle("1.1.0", b'Y')).unwrap();
}

#[test]
fn f3_a_stale_temporary_loader_does_not_block_the_rerun() {
    let rig = Rig::new();
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    {
        // A failed install left a big temporary loader (and one under the
        // old name); the rest is full.
        let mut m = rig.machine(Slot::A);
        let free = m.esp().free_bytes().unwrap();
        let old = vec![0x5B; 8192];
        m.esp()
            .write("\\EFI\\abkit\\boot-b.efi.new", &mut &old[..])
            .unwrap();
        let stale = vec![0x5A; (free - 4096 - 8192) as usize];
        m.esp()
            .write(
                &abkit_update::machine::temp_path(Slot::B.loader_path()),
                &mut &stale[..],
            )
            .unwrap();
    }
    install_file(&rig, Slot::A, &rig.bundle("1.1.0", b'Y')).unwrap();
    let mut m = rig.machine(Slot::A);
    assert!(!m.esp().exists("\\EFI\\abkit\\boot-b.efi.new").unwrap());
    assert!(
        !m.esp()
            .exists(&abkit_update::machine::temp_path(Slot::B.loader_path()))
            .unwrap()
    );
    assert_eq!(
        m.esp().read(Slot::B.loader_path()).unwrap().unwrap(),
        loader("Y")
    );
}

fn write_raw(rig: &Rig, path: &str, bytes: &[u8]) {
    rig.machine(Slot::A)
        .esp()
        .write(path, &mut &bytes[..])
        .unwrap();
}

#[test]
fn f6_a_truncated_running_record_keeps_product_and_version() {
    let rig = Rig::new();
    let intact = rig
        .machine(Slot::A)
        .esp()
        .read(record_path(Slot::A))
        .unwrap()
        .unwrap();
    write_raw(&rig, record_path(Slot::A), &intact[..intact.len() / 2]);
    // Another product is still refused: the copy says what runs.
    let other = rig.bundle_with("2.0.0", "other-product", b'O', 64 << 10);
    let err = install_file(&rig, Slot::A, &other).unwrap_err();
    assert!(matches!(err, UpdateError::Incompatible { .. }), "{err}");
    // mark-good writes back the full record, never a weaker one.
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    let mut m = rig.machine(Slot::A);
    let record = read_record(m.esp(), Slot::A).unwrap();
    assert_eq!(record.compatible.as_deref(), Some(COMPATIBLE));
    assert_eq!(record.version, Some(semver::Version::new(1, 0, 0)));
    assert_eq!(m.esp().read(record_path(Slot::A)).unwrap().unwrap(), intact);
}

#[test]
fn f6_a_running_slot_without_product_or_version_needs_an_explicit_flag() {
    let rig = Rig::new();
    // Both copies damaged: the product and version are unknown.
    write_raw(&rig, record_path(Slot::A), b"{");
    write_raw(&rig, record_copy_path(Slot::A), b"");
    let other = rig.bundle_with("2.0.0", "other-product", b'O', 64 << 10);
    let before = rig.snapshot();
    let err = install_file(&rig, Slot::A, &other).unwrap_err();
    assert!(matches!(err, UpdateError::UnrecordedBase { .. }), "{err}");
    assert!(err.to_string().contains("--allow-unrecorded"), "{err}");
    assert!(rig.snapshot() == before);
    // A version that is not semver counts as damage, not as "no version".
    let rig = Rig::new();
    let text = String::from_utf8(
        rig.machine(Slot::A)
            .esp()
            .read(record_path(Slot::A))
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    let bad = text.replace("\"1.0.0\"", "\"v1.1\"");
    assert_ne!(bad, text);
    write_raw(&rig, record_path(Slot::A), bad.as_bytes());
    write_raw(&rig, record_copy_path(Slot::A), bad.as_bytes());
    let older = rig.bundle("0.9.0", b'O');
    let err = install_file(&rig, Slot::A, &older).unwrap_err();
    assert!(matches!(err, UpdateError::UnrecordedBase { .. }), "{err}");
    // The operator can say so.
    install(
        &mut rig.machine(Slot::A),
        std::fs::File::open(&older).unwrap(),
        &rig.keyring,
        &InstallOptions {
            allow_unrecorded: true,
            ..Default::default()
        },
        &mut Silent,
    )
    .unwrap();
}

#[test]
fn f7_f14_an_efi_payload_that_is_not_an_efi_application_is_refused_and_removed() {
    let rig = Rig::new();
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    let bundle = rig.bundle_from("not-pe", &[0x42; 8192], &system_image(b'Y', 64 << 10), true);
    let err = install_file(&rig, Slot::A, &bundle).unwrap_err();
    assert!(
        matches!(err, UpdateError::BadPayload { payload: "efi", .. }),
        "{err}"
    );
    let mut m = rig.machine(Slot::A);
    assert!(
        !m.esp()
            .exists(&abkit_update::machine::temp_path(Slot::B.loader_path()))
            .unwrap()
    );
    assert_eq!(
        read_record(m.esp(), Slot::B).unwrap().state,
        SlotState::Empty
    );
    assert_eq!(BootManager::new(m.vars()).boot_next().unwrap(), None);
    drop(m);
    assert_eq!(rig.boot().slot, Slot::A);
}

#[test]
fn f14_a_system_payload_without_verity_is_refused_before_anything_changes() {
    let rig = Rig::new();
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    let bundle = rig.bundle_from(
        "no-verity",
        &loader("Y"),
        &system_image(b'Y', 64 << 10),
        false,
    );
    let before = rig.snapshot();
    let err = install_file(&rig, Slot::A, &bundle).unwrap_err();
    assert!(
        matches!(
            err,
            UpdateError::BadPayload {
                payload: "system",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("dm-verity"), "{err}");
    assert!(rig.snapshot() == before);
}

fn set_raw_var(rig: &Rig, name: &str, data: &[u8]) {
    rig.machine(Slot::A)
        .vars()
        .set(
            &VarName::global(name),
            &Variable {
                attributes: 7,
                data: data.to_vec(),
            },
        )
        .unwrap();
}

#[test]
fn f10_a_malformed_boot_order_and_boot_next_are_repaired_by_mark_good() {
    let rig = Rig::new();
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    let order = boot_order(&rig);
    assert!(order.len() >= 2);
    let mut odd: Vec<u8> = order.iter().rev().flat_map(|n| n.to_le_bytes()).collect();
    odd.push(0x07);
    set_raw_var(&rig, "BootOrder", &odd);
    set_raw_var(&rig, "BootNext", &[1, 2, 3]);
    let st = status(&mut rig.machine(Slot::A)).unwrap();
    assert!(
        st.problems.iter().any(|p| p.contains("BootOrder")),
        "{:?}",
        st.problems
    );
    let report = mark_good(&mut rig.machine(Slot::A)).unwrap();
    assert!(
        report.changes.iter().any(|c| c.contains("BootOrder")),
        "{report:?}"
    );
    let mut m = rig.machine(Slot::A);
    let bm = BootManager::new(m.vars());
    assert_eq!(bm.boot_next().unwrap(), None);
    let repaired = bm.boot_order().unwrap();
    let mut want = order.clone();
    want.sort();
    let mut got = repaired.clone();
    got.sort();
    assert_eq!(got, want, "every readable entry number is kept");
    drop(m);
    assert_eq!(rig.boot().slot, Slot::A);
}

#[test]
fn the_policy_refuses_to_arm_or_unboot_the_wrong_slot() {
    use abkit_update::boot_policy::{Trial, arm_trial, make_unbootable};
    let rig = Rig::new();
    let mut m = rig.machine(Slot::A);
    let before = rig.snapshot();
    for err in [
        make_unbootable(&mut m, Slot::A).unwrap_err(),
        arm_trial(&mut m, Slot::A, Trial::Rollback).unwrap_err(),
        arm_trial(&mut m, Slot::B, Trial::Install).unwrap_err(),
        arm_trial(&mut m, Slot::B, Trial::Rollback).unwrap_err(),
    ] {
        assert!(matches!(err, UpdateError::Policy(_)), "{err}");
    }
    drop(m);
    assert!(rig.snapshot() == before);
}

/// Firmware that lost every entry (and BootOrder) boots the fallback path.
fn lose_all_entries(rig: &Rig) {
    let mut m = rig.machine(Slot::A);
    let names: Vec<VarName> = m
        .vars()
        .list()
        .unwrap()
        .into_iter()
        .filter(|n| n.name.starts_with("Boot") && n.name != "BootCurrent")
        .collect();
    for name in names {
        m.vars().delete(&name).unwrap();
    }
}

#[test]
fn f11_the_fallback_path_boots_the_committed_slot_at_every_crash_point() {
    use abkit_update::firmware::BootVia;
    let rig = Rig::new();
    on_b(&rig);
    // B is committed: the fallback loader is B's, stamped B.
    let mut m = rig.machine(Slot::B);
    let fallback = m.esp().read("\\EFI\\BOOT\\BOOTX64.EFI").unwrap().unwrap();
    assert_eq!(
        abkit_uki::read_stamp(&fallback).unwrap(),
        Some(abkit_uki::Slot::B)
    );
    drop(m);
    let start = tempfile::tempdir().unwrap();
    rig.save(start.path());
    let bundle = rig.bundle_with("1.2.0", COMPATIBLE, b'Z', 3 << 20);
    let counter = PowerCut::counter();
    rig.install(Slot::B, &bundle, Some(counter.clone()))
        .unwrap();
    let points = counter.count();
    // Cut the power before every mutation of an install into A, then lose
    // every boot entry: the fallback path must boot B, never half-written A.
    for k in 1..=points + 1 {
        rig.restore(start.path());
        let _ = rig.install(Slot::B, &bundle, Some(PowerCut::at(k)));
        lose_all_entries(&rig);
        let booted = rig.boot();
        assert_eq!(booted.via, BootVia::Fallback, "cut at {k}");
        assert_eq!(booted.slot, Slot::B, "cut at {k}: the fallback booted A");
        // mark-good there recreates the entries.
        mark_good(&mut rig.machine(Slot::B)).unwrap();
        assert_eq!(rig.boot().via, BootVia::BootOrder, "cut at {k}");
    }
}

#[test]
fn f11_an_unstamped_fallback_is_pointed_away_from_the_slot_being_written() {
    let rig = Rig::new();
    on_b(&rig);
    // A fallback from before stamps existed: a plain copy, so slot A.
    {
        let mut m = rig.machine(Slot::B);
        let plain = m.esp().read(Slot::A.loader_path()).unwrap().unwrap();
        m.esp()
            .write("\\EFI\\BOOT\\BOOTX64.EFI", &mut &plain[..])
            .unwrap();
    }
    let status_before = status(&mut rig.machine(Slot::B)).unwrap();
    assert_eq!(status_before.committed_slot, Slot::B);
    install_file(&rig, Slot::B, &rig.bundle("1.2.0", b'Z')).unwrap();
    let mut m = rig.machine(Slot::B);
    let fallback = m.esp().read("\\EFI\\BOOT\\BOOTX64.EFI").unwrap().unwrap();
    assert_eq!(
        abkit_uki::read_stamp(&fallback).unwrap(),
        Some(abkit_uki::Slot::B)
    );
}

#[test]
fn f16_status_names_the_slot_the_firmware_really_boots_when_a_loader_is_gone() {
    let rig = Rig::new();
    on_b(&rig);
    assert_eq!(
        status(&mut rig.machine(Slot::B)).unwrap().committed_slot,
        Slot::B
    );
    rig.machine(Slot::B)
        .esp()
        .remove(Slot::B.loader_path())
        .unwrap();
    // Firmware skips B's entry (no loader) and boots A: status says so.
    assert_eq!(rig.boot().slot, Slot::A);
    let st = status(&mut rig.machine(Slot::A)).unwrap();
    assert_eq!(st.committed_slot, Slot::A);
    assert!(
        st.problems.iter().any(|p| p.contains("boot-b.efi")),
        "{:?}",
        st.problems
    );
}

#[test]
fn f14_a_loader_whose_root_hash_is_not_the_systems_is_refused_and_removed() {
    let rig = Rig::new();
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    let cmdline = format!("root=/dev/mapper/root roothash={}", "ab".repeat(32));
    let uki = abkit_uki::fixture::stub_with(&[(".cmdline", cmdline.as_bytes())]);
    let bundle = rig.bundle_from("wrong-root", &uki, &system_image(b'Y', 64 << 10), true);
    let err = install_file(&rig, Slot::A, &bundle).unwrap_err();
    assert_eq!(err.code(), "root-hash-mismatch", "{err}");
    let mut m = rig.machine(Slot::A);
    assert!(
        !m.esp()
            .exists(&abkit_update::machine::temp_path(Slot::B.loader_path()))
            .unwrap()
    );
    assert_eq!(
        read_record(m.esp(), Slot::B).unwrap().state,
        SlotState::Empty
    );
    assert_eq!(BootManager::new(m.vars()).boot_next().unwrap(), None);
}
