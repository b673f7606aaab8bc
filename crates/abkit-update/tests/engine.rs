//! The A/B engine end to end on the offline backend, with the firmware
//! model doing the boots. Each invariant of DESIGN.md has a test named
//! after it.

mod common;

use abkit_disk::Slot;
use abkit_efi::boot::BootManager;
use abkit_efi::{DevicePath, LoadOption, VarName, VarStore, Variable};
use abkit_update::firmware::BootVia;
use abkit_update::progress::{Collect, Event, Silent, Step};
use abkit_update::record::{SlotState, read_record, record_copy_path, record_path};
use abkit_update::{InstallOptions, Machine, UpdateError, install, mark_good, rollback, status};
use common::*;

fn install_file(
    rig: &Rig,
    running: Slot,
    bundle: &std::path::Path,
) -> Result<abkit_update::InstallReport, UpdateError> {
    let mut m = rig.machine(running);
    install(
        &mut m,
        std::fs::File::open(bundle).unwrap(),
        &rig.keyring,
        &InstallOptions::default(),
        &mut Silent,
    )
}

fn slot_bytes(rig: &Rig, slot: Slot, len: usize) -> Vec<u8> {
    let m = rig.machine(slot);
    let range = m.disk().slot_range(slot);
    let disk = std::fs::read(&rig.disk).unwrap();
    disk[range.start as usize..range.start as usize + len].to_vec()
}

fn boot_order(rig: &Rig) -> Vec<u16> {
    let mut m = rig.machine(Slot::A);
    BootManager::new(m.vars()).boot_order().unwrap()
}

fn boot_next(rig: &Rig) -> Option<u16> {
    let mut m = rig.machine(Slot::A);
    BootManager::new(m.vars()).boot_next().unwrap()
}

#[test]
fn the_seeds_sequence_x_on_a_installs_y_then_y_on_b_installs_z() {
    let rig = Rig::new();
    assert_eq!(rig.boot().slot, Slot::A);
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    let order_x = boot_order(&rig);

    // X on A installs Y into B; BootNext points at B, BootOrder unchanged.
    let y = rig.bundle("1.1.0", b'Y');
    let report = install_file(&rig, Slot::A, &y).unwrap();
    assert_eq!(report.target_slot, Slot::B);
    assert_eq!(boot_next(&rig), Some(report.boot_next));
    assert_eq!(boot_order(&rig), order_x);
    assert_eq!(
        slot_bytes(&rig, Slot::B, 200 << 10),
        system_image(b'Y', 200 << 10)
    );

    // Trial boot of B, once.
    let booted = rig.boot();
    assert_eq!((booted.slot, booted.via), (Slot::B, BootVia::BootNext));
    assert_eq!(boot_next(&rig), None, "firmware consumed BootNext");
    let st = status(&mut rig.machine(Slot::B)).unwrap();
    assert!(st.on_trial && !st.trial_pending);
    assert_eq!(st.committed_slot, Slot::A);
    mark_good(&mut rig.machine(Slot::B)).unwrap();
    assert_eq!(
        status(&mut rig.machine(Slot::B)).unwrap().committed_slot,
        Slot::B
    );
    assert_eq!(rig.boot().slot, Slot::B, "Y is permanent");

    // Y on B installs Z into A; Z comes up on A and is committed.
    let z = rig.bundle("1.2.0", b'Z');
    assert_eq!(
        install_file(&rig, Slot::B, &z).unwrap().target_slot,
        Slot::A
    );
    assert_eq!(rig.boot().slot, Slot::A);
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    let st = status(&mut rig.machine(Slot::A)).unwrap();
    assert_eq!(st.committed_slot, Slot::A);
    assert_eq!(
        st.slots["A"]
            .record
            .version
            .as_ref()
            .map(|v| v.to_string())
            .as_deref(),
        Some("1.2.0")
    );
    assert_eq!(
        st.slots["B"]
            .record
            .version
            .as_ref()
            .map(|v| v.to_string())
            .as_deref(),
        Some("1.1.0")
    );
    assert_eq!(st.slots["B"].record.state, SlotState::Good);
    assert_eq!(rig.boot().slot, Slot::A);
    // The fallback loader follows slot A's committed loader, stamped A.
    let mut m = rig.machine(Slot::A);
    let fallback = m
        .esp()
        .read(abkit_disk::FALLBACK_LOADER_PATH)
        .unwrap()
        .unwrap();
    assert_eq!(
        fallback,
        abkit_uki::stamp(&loader("Z"), abkit_uki::Slot::A).unwrap(),
        "the fallback is Z's loader, stamped"
    );
    assert_eq!(
        abkit_uki::read_stamp(&fallback).unwrap(),
        Some(abkit_uki::Slot::A)
    );
}

#[test]
fn a_trial_boot_that_never_marks_good_falls_back_by_itself() {
    let rig = Rig::new();
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    let order = boot_order(&rig);
    install_file(&rig, Slot::A, &rig.bundle("1.1.0", b'Y')).unwrap();
    assert_eq!(rig.boot().slot, Slot::B);
    // No mark-good: the next boot follows BootOrder back to A.
    let again = rig.boot();
    assert_eq!((again.slot, again.via), (Slot::A, BootVia::BootOrder));
    assert_eq!(boot_order(&rig), order, "I4: BootOrder never changed");
}

#[test]
fn mark_good_writes_nothing_when_nothing_changes() {
    let rig = Rig::unrecorded();
    let first = mark_good(&mut rig.machine(Slot::A)).unwrap();
    assert!(!first.changes.is_empty());
    let before = rig.snapshot();
    let again = mark_good(&mut rig.machine(Slot::A)).unwrap();
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    assert!(rig.snapshot() == before, "a second mark-good changed bytes");
}

#[test]
fn mark_good_repairs_missing_duplicate_and_wrong_entries() {
    let rig = Rig::new();
    let mut m = rig.machine(Slot::A);
    let loc = m.esp_location();
    {
        let mut bm = BootManager::new(m.vars());
        // Lose slot A's entry and BootOrder; duplicate slot B's entry with a
        // stale partition size.
        let b = abkit_update::boot_policy::read_vars(bm.store(), &loc)
            .unwrap()
            .slot_entries(Slot::B)[0];
        let a = abkit_update::boot_policy::read_vars(bm.store(), &loc)
            .unwrap()
            .slot_entries(Slot::A)[0];
        bm.delete_entry(a).unwrap();
        let mut stale = abkit_disk::slot_load_option(&loc, Slot::B, true);
        if let Some(abkit_efi::DevicePathNode::HardDrive(hd)) =
            stale.file_paths[0].nodes.first_mut()
        {
            hd.partition_size += 8;
        }
        let dup = bm.add_entry(&stale).unwrap();
        assert_ne!(dup, b);
        bm.store().delete(&VarName::global("BootOrder")).unwrap();
    }
    let report = mark_good(&mut m).unwrap();
    drop(m);
    assert!(report.changes.len() >= 3, "{:?}", report.changes);
    let mut m = rig.machine(Slot::A);
    let state = abkit_update::boot_policy::read_vars(m.vars(), &loc).unwrap();
    let (a, b) = (state.slot_entries(Slot::A), state.slot_entries(Slot::B));
    let bm = BootManager::new(m.vars());
    assert_eq!((a.len(), b.len()), (1, 1), "one entry per slot");
    assert_eq!(bm.boot_order().unwrap(), vec![a[0], b[0]]);
    assert_eq!(
        bm.entry(b[0]).unwrap().unwrap(),
        abkit_disk::slot_load_option(&loc, Slot::B, false)
    );
}

#[test]
fn manual_rollback_is_one_shot() {
    let rig = Rig::new();
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    install_file(&rig, Slot::A, &rig.bundle("1.1.0", b'Y')).unwrap();
    rig.boot();
    mark_good(&mut rig.machine(Slot::B)).unwrap();
    // On Y (B), roll back to X (A) once.
    let r = rollback(&mut rig.machine(Slot::B)).unwrap();
    assert_eq!(r.slot, Slot::A);
    assert_eq!(rig.boot().slot, Slot::A);
    // Without mark-good there, the machine returns to B.
    assert_eq!(rig.boot().slot, Slot::B);
}

#[test]
fn rollback_refuses_a_slot_that_was_never_good() {
    let rig = Rig::new();
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    let err = rollback(&mut rig.machine(Slot::A)).unwrap_err();
    assert!(
        matches!(err, UpdateError::NothingToRollBack { slot: Slot::B, .. }),
        "{err}"
    );
    // Installed but never booted is not good either.
    install_file(&rig, Slot::A, &rig.bundle("1.1.0", b'Y')).unwrap();
    let err = rollback(&mut rig.machine(Slot::A)).unwrap_err();
    assert!(err.to_string().contains("installed"), "{err}");
}

#[test]
fn i1_install_never_writes_the_running_slot_or_its_loader() {
    let rig = Rig::new();
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    let a_before = slot_bytes(&rig, Slot::A, SLOT_SIZE as usize);
    let loader_a = rig
        .machine(Slot::A)
        .esp()
        .read(Slot::A.loader_path())
        .unwrap();
    let record_a = read_record(rig.machine(Slot::A).esp(), Slot::A).unwrap();
    let mut events = Collect::default();
    install(
        &mut rig.machine(Slot::A),
        std::fs::File::open(rig.bundle("1.1.0", b'Y')).unwrap(),
        &rig.keyring,
        &InstallOptions::default(),
        &mut events,
    )
    .unwrap();
    assert_eq!(slot_bytes(&rig, Slot::A, SLOT_SIZE as usize), a_before);
    let mut m = rig.machine(Slot::A);
    assert_eq!(m.esp().read(Slot::A.loader_path()).unwrap(), loader_a);
    assert_eq!(read_record(m.esp(), Slot::A).unwrap(), record_a);
    // The steps ran in DESIGN.md's order.
    let steps: Vec<Step> = events
        .0
        .iter()
        .filter_map(|e| match e {
            Event::Step { step, .. } => Some(*step),
            _ => None,
        })
        .collect();
    let mut dedup = steps.clone();
    dedup.dedup();
    assert_eq!(
        dedup,
        vec![
            Step::Verify,
            Step::Prepare,
            Step::WriteLoader,
            Step::WriteSystem,
            Step::CheckSystem,
            Step::WriteLoader,
            Step::Record,
            Step::BootNext
        ]
    );
}

/// Every variable change of an install, in order.
struct Recording {
    inner: Box<dyn VarStore>,
    log: std::rc::Rc<std::cell::RefCell<Vec<String>>>,
}

impl VarStore for Recording {
    fn get(&self, n: &VarName) -> Result<Option<Variable>, abkit_efi::StoreError> {
        self.inner.get(n)
    }
    fn set(&mut self, n: &VarName, v: &Variable) -> Result<bool, abkit_efi::StoreError> {
        let changed = self.inner.set(n, v)?;
        if changed {
            self.log.borrow_mut().push(n.name.clone());
        }
        Ok(changed)
    }
    fn delete(&mut self, n: &VarName) -> Result<bool, abkit_efi::StoreError> {
        let changed = self.inner.delete(n)?;
        if changed {
            self.log.borrow_mut().push(format!("-{}", n.name));
        }
        Ok(changed)
    }
    fn list(&self) -> Result<Vec<VarName>, abkit_efi::StoreError> {
        self.inner.list()
    }
}

#[test]
fn i3_boot_next_is_the_last_change_of_an_install() {
    let rig = Rig::new();
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    let log = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let vars = Box::new(Recording {
        inner: Box::new(abkit_efi::OvmfVarsFile::open(&rig.vars).unwrap()),
        log: log.clone(),
    });
    let mut m = abkit_update::offline::OfflineMachine::open(&rig.disk, vars, Slot::A).unwrap();
    install(
        &mut m,
        std::fs::File::open(rig.bundle("1.1.0", b'Y')).unwrap(),
        &rig.keyring,
        &InstallOptions::default(),
        &mut Silent,
    )
    .unwrap();
    let log = log.borrow();
    assert_eq!(log.last().map(String::as_str), Some("BootNext"), "{log:?}");
    assert_eq!(log.iter().filter(|n| *n == "BootNext").count(), 1);
    assert!(!log.iter().any(|n| n.contains("BootOrder")), "I4: {log:?}");
}

#[test]
fn i4_install_and_rollback_never_change_boot_order() {
    let rig = Rig::new();
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    let order = boot_order(&rig);
    install_file(&rig, Slot::A, &rig.bundle("1.1.0", b'Y')).unwrap();
    assert_eq!(boot_order(&rig), order);
    rig.boot();
    mark_good(&mut rig.machine(Slot::B)).unwrap();
    let order = boot_order(&rig);
    rollback(&mut rig.machine(Slot::B)).unwrap();
    assert_eq!(boot_order(&rig), order);
}

#[test]
fn i5_rejected_bundles_change_nothing() {
    let rig = Rig::new();
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    install_file(&rig, Slot::A, &rig.bundle("2.0.0", b'Y')).unwrap();
    rig.boot();
    mark_good(&mut rig.machine(Slot::B)).unwrap();
    let good = rig.bundle("2.1.0", b'Z');
    let bytes = std::fs::read(&good).unwrap();
    let mut cases: Vec<(&str, std::path::PathBuf)> = Vec::new();
    // Signature region tampered (the header is 16 bytes; flip inside the manifest).
    let mut t = bytes.clone();
    t[40] ^= 1;
    std::fs::write(rig.path("tampered.abb"), &t).unwrap();
    cases.push(("tampered", rig.path("tampered.abb")));
    std::fs::write(rig.path("cut.abb"), &bytes[..30]).unwrap();
    cases.push(("truncated", rig.path("cut.abb")));
    cases.push((
        "other product",
        rig.bundle_with("2.1.0", "other-product", b'Q', 4096),
    ));
    cases.push(("downgrade", rig.bundle("1.0.0", b'D')));
    cases.push((
        "too big",
        rig.bundle_with("2.2.0", COMPATIBLE, b'T', (SLOT_SIZE + 4096) as usize),
    ));
    for (what, path) in cases {
        let before = rig.snapshot();
        let err = install_file(&rig, Slot::B, &path).unwrap_err();
        eprintln!("{what}: {err}");
        assert!(rig.snapshot() == before, "{what}: the machine changed");
    }
    // A wrong key.
    let before = rig.snapshot();
    let other_key = abkit_bundle::SecretKey::from_seed(&[9; 32]);
    let ring = abkit_bundle::Keyring::from_keys(vec![other_key.public_key()]);
    let err = install(
        &mut rig.machine(Slot::B),
        std::fs::File::open(&good).unwrap(),
        &ring,
        &InstallOptions::default(),
        &mut Silent,
    )
    .unwrap_err();
    assert!(matches!(err, UpdateError::Bundle(_)), "{err}");
    assert!(rig.snapshot() == before);
    // Errors name the problem.
    let err = install_file(&rig, Slot::B, &rig.bundle("1.0.0", b'D')).unwrap_err();
    assert!(
        err.to_string()
            .contains("older than the committed version 2.0.0"),
        "{err}"
    );
    let err = install_file(
        &rig,
        Slot::B,
        &rig.bundle_with("2.1.0", "other-product", b'Q', 4096),
    )
    .unwrap_err();
    assert!(err.to_string().contains("\"other-product\""), "{err}");
    // --allow-downgrade does install it.
    install(
        &mut rig.machine(Slot::B),
        std::fs::File::open(rig.bundle("1.0.0", b'D')).unwrap(),
        &rig.keyring,
        &InstallOptions {
            allow_downgrade: true,
            ..Default::default()
        },
        &mut Silent,
    )
    .unwrap();
}

#[test]
fn i5_i7_a_payload_failing_mid_stream_leaves_the_target_empty_and_unwritten_past_the_bad_chunk() {
    let rig = Rig::new();
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    let order = boot_order(&rig);
    let good = rig.bundle("1.1.0", b'Y');
    let mut bytes = std::fs::read(&good).unwrap();
    // Corrupt one byte near the end of the bundle: inside the system
    // payload's last chunks (system is the last payload).
    let at = bytes.len() - 1000;
    bytes[at] ^= 0xFF;
    let bad = rig.path("bad.abb");
    std::fs::write(&bad, &bytes).unwrap();
    let a_before = slot_bytes(&rig, Slot::A, SLOT_SIZE as usize);
    let err = install_file(&rig, Slot::A, &bad).unwrap_err();
    assert!(err.to_string().contains("system"), "{err}");
    // The running slot, its loader, BootOrder, BootNext: untouched.
    assert_eq!(slot_bytes(&rig, Slot::A, SLOT_SIZE as usize), a_before);
    assert_eq!(boot_order(&rig), order);
    assert_eq!(boot_next(&rig), None);
    let mut m = rig.machine(Slot::A);
    assert_eq!(
        read_record(m.esp(), Slot::B).unwrap().state,
        SlotState::Empty
    );
    assert!(m.esp().read(Slot::B.loader_path()).unwrap().is_none());
    drop(m);
    assert!(rollback(&mut rig.machine(Slot::A)).is_err());
    // I7: no byte of the failed payload reached slot B. The system
    // payload is smaller than one write block, and blocks are written only
    // once every chunk in them passed its hash: the slot is still the zeros
    // of a fresh image.
    let written = slot_bytes(&rig, Slot::B, (200 << 10) + (64 << 10));
    assert!(
        written.iter().all(|&b| b == 0),
        "unverified bytes reached slot B"
    );
    // And the machine still boots A.
    assert_eq!(rig.boot().slot, Slot::A);
}

#[test]
fn i6_foreign_and_unreadable_entries_are_never_altered() {
    let rig = Rig::new();
    let foreign = LoadOption::new(
        "Other OS",
        DevicePath {
            nodes: vec![abkit_efi::DevicePathNode::FilePath(
                "\\EFI\\debian\\shimx64.efi".into(),
            )],
        },
    );
    let (f, garbage_name) = {
        let mut m = rig.machine(Slot::A);
        let mut bm = BootManager::new(m.vars());
        let f = bm.add_entry(&foreign).unwrap();
        bm.store()
            .set(
                &VarName::global("Boot0042"),
                &Variable {
                    attributes: 7,
                    data: vec![1, 0, 0],
                },
            )
            .unwrap();
        let mut order = bm.boot_order().unwrap();
        order.insert(1, f);
        order.insert(0, 0x42);
        bm.set_boot_order(&order).unwrap();
        (f, VarName::global("Boot0042"))
    };
    let raw = |rig: &Rig, n: &VarName| rig.machine(Slot::A).vars().get(n).unwrap();
    let foreign_name = VarName::global(format!("Boot{f:04X}"));
    let before = (raw(&rig, &foreign_name), raw(&rig, &garbage_name));
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    install_file(&rig, Slot::A, &rig.bundle("1.1.0", b'Y')).unwrap();
    rig.boot();
    mark_good(&mut rig.machine(Slot::B)).unwrap();
    assert_eq!((raw(&rig, &foreign_name), raw(&rig, &garbage_name)), before);
    let order = boot_order(&rig);
    assert_eq!(
        order[0], 0x42,
        "foreign entries keep their places: {order:?}"
    );
    assert_eq!(order[2], f, "{order:?}");
}

#[test]
fn installing_from_a_slot_on_trial_is_refused() {
    let rig = Rig::new();
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    install_file(&rig, Slot::A, &rig.bundle("1.1.0", b'Y')).unwrap();
    rig.boot();
    let before = rig.snapshot();
    let err = install_file(&rig, Slot::B, &rig.bundle("1.2.0", b'Z')).unwrap_err();
    assert!(
        matches!(err, UpdateError::RunningSlotNotCommitted { .. }),
        "{err}"
    );
    assert!(rig.snapshot() == before);
}

#[test]
fn a_full_esp_is_refused_before_anything_changes() {
    let rig = Rig::new();
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    {
        let mut m = rig.machine(Slot::A);
        let free = m.esp().free_bytes().unwrap();
        let filler = vec![0xAB; (free - 2048) as usize];
        m.esp().write("\\filler", &mut &filler[..]).unwrap();
    }
    let before = rig.snapshot();
    let err = install_file(&rig, Slot::A, &rig.bundle("1.1.0", b'Y')).unwrap_err();
    assert!(matches!(err, UpdateError::EspFull { .. }), "{err}");
    assert!(err.to_string().contains("bytes free"), "{err}");
    assert!(rig.snapshot() == before);
}

#[test]
fn the_factory_slot_stays_a_fallback_after_the_first_update() {
    // Slot A came from raw files and was never marked good (no record).
    let rig = Rig::new();
    install_file(&rig, Slot::A, &rig.bundle("1.1.0", b'Y')).unwrap();
    assert_eq!(rig.boot().slot, Slot::B);
    mark_good(&mut rig.machine(Slot::B)).unwrap();
    let st = status(&mut rig.machine(Slot::B)).unwrap();
    let a = st.entries.iter().find(|e| e.slot == Slot::A).unwrap();
    assert!(
        a.active,
        "slot A's entry must stay bootable as the fallback"
    );
    assert_eq!(st.boot_order[1], a.number);
}

#[test]
fn a_damaged_slot_record_makes_the_slot_unbootable_not_a_failure() {
    let rig = Rig::new();
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    install_file(&rig, Slot::A, &rig.bundle("1.1.0", b'Y')).unwrap();
    {
        // As a power cut on vfat once left it: the record renamed but
        // empty; here its copy too.
        let mut m = rig.machine(Slot::A);
        for path in [record_path(Slot::B), record_copy_path(Slot::B)] {
            m.esp().write(path, &mut &b""[..]).unwrap();
        }
    }
    let report = mark_good(&mut rig.machine(Slot::A)).unwrap();
    assert!(
        report.changes.iter().any(|c| c.contains("inactive")),
        "{report:?}"
    );
    let st = status(&mut rig.machine(Slot::A)).unwrap();
    assert_eq!(st.slots["B"].record.state, SlotState::Empty);
    assert_eq!(st.boot_next, None, "no BootNext may point at it");
    assert!(rollback(&mut rig.machine(Slot::A)).is_err());
    assert_eq!(rig.boot().slot, Slot::A);
}

#[test]
fn a_damaged_record_is_recovered_from_its_copy() {
    let rig = Rig::new();
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    install_file(&rig, Slot::A, &rig.bundle("1.1.0", b'Y')).unwrap();
    let mut m = rig.machine(Slot::A);
    let intact = read_record(m.esp(), Slot::B).unwrap();
    assert_eq!(intact.state, SlotState::Installed);
    m.esp()
        .write(record_path(Slot::B), &mut &b"{\"state\": \"go"[..])
        .unwrap();
    assert_eq!(read_record(m.esp(), Slot::B).unwrap(), intact);
}
