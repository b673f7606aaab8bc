//! The commit-time check of the written system data (issue 14): install
//! writes the slot without reading it back and records `written_check:
//! pending`; mark-good reads the whole slot (data and hash tree) from the
//! media against the signed verity root hash before it commits. Each test
//! damages real bytes of a real disk image and asserts what the firmware
//! boots afterwards.

mod common;

use std::os::unix::fs::FileExt;

use abkit_disk::{DiskImage, Slot};
use abkit_efi::boot::BootManager;
use abkit_update::fault::PowerCut;
use abkit_update::record::{HealthResult, SlotState, WrittenCheck, read_record};
use abkit_update::{Machine, UpdateError, mark_good, status};
use common::*;

/// Bytes of the test system image: 50 verity data blocks, one tree block.
const SYSTEM: usize = 200 << 10;

fn boot_order(rig: &Rig) -> Vec<u16> {
    BootManager::new(rig.machine(Slot::A).vars())
        .boot_order()
        .unwrap()
}

/// X committed on A, Y installed into B and booted for its trial.
fn on_trial(rig: &Rig) {
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    rig.install(Slot::A, &rig.bundle("1.1.0", b'Y'), None)
        .unwrap();
    let record = read_record(rig.machine(Slot::A).esp(), Slot::B).unwrap();
    assert_eq!(record.state, SlotState::Installed);
    assert_eq!(record.written_check, Some(WrittenCheck::Pending));
    assert_eq!(rig.boot().slot, Slot::B, "the trial boot");
}

/// Flips one bit of slot B at `offset`, as a disk that lost or changed a
/// write would leave it.
fn flip(rig: &Rig, offset: u64) {
    let disk = DiskImage::open(&rig.disk).unwrap();
    let at = disk.slot_range(Slot::B).start + offset;
    drop(disk);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&rig.disk)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x10;
    f.write_all_at(&b, at).unwrap();
}

/// mark-good on the trial slot B refuses with `written-data-mismatch`
/// naming `place`; nothing is committed and the next boot is A's.
fn refused(rig: &Rig, place: &str) {
    let order = boot_order(rig);
    let vars = std::fs::read(&rig.vars).unwrap();
    let err = mark_good(&mut rig.machine(Slot::B)).unwrap_err();
    assert!(
        matches!(err, UpdateError::WrittenDataMismatch { slot: Slot::B, .. }),
        "{err}"
    );
    assert_eq!(err.code(), "written-data-mismatch");
    assert!(err.to_string().contains(place), "{err}");
    assert_eq!(boot_order(rig), order, "BootOrder changed");
    assert!(
        std::fs::read(&rig.vars).unwrap() == vars,
        "a refused commit changed a variable"
    );
    let record = read_record(rig.machine(Slot::A).esp(), Slot::B).unwrap();
    assert_eq!(record.state, SlotState::Empty);
    assert_eq!(record.written_check, Some(WrittenCheck::Failed));
    let health = record.health.expect("the record says why");
    assert_eq!(health.result, HealthResult::Failed);
    assert_eq!(health.failed_check.as_deref(), Some("written-data"));
    assert!(health.output_tail.unwrap().contains(place));
    // The trial is over: the firmware boots the committed slot again, and
    // B can be neither committed nor rolled back to.
    assert_eq!(rig.boot().slot, Slot::A);
    let st = status(&mut rig.machine(Slot::A)).unwrap();
    assert_eq!(st.committed_slot, Slot::A);
    assert!(matches!(
        mark_good(&mut rig.machine(Slot::B)).unwrap_err(),
        UpdateError::NotCommittable { slot: Slot::B, .. }
    ));
    assert!(matches!(
        abkit_update::rollback(&mut rig.machine(Slot::A)).unwrap_err(),
        UpdateError::NothingToRollBack { slot: Slot::B, .. }
    ));
    // A's next mark-good leaves B's entry inactive, and an install fixes B.
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    assert_eq!(rig.boot().slot, Slot::A);
    rig.install(Slot::A, &rig.bundle("1.1.1", b'Z'), None)
        .unwrap();
    assert_eq!(rig.boot().slot, Slot::B);
    mark_good(&mut rig.machine(Slot::B)).unwrap();
    assert_eq!(rig.boot().slot, Slot::B);
}

#[test]
fn a_good_install_is_checked_and_committed_by_mark_good() {
    let rig = Rig::new();
    on_trial(&rig);
    let st = status(&mut rig.machine(Slot::B)).unwrap();
    assert_eq!(
        serde_json::to_value(&st).unwrap()["slots"]["B"]["written_check"],
        "pending",
        "status --json shows the pending check"
    );
    let report = mark_good(&mut rig.machine(Slot::B)).unwrap();
    assert!(!report.changes.is_empty());
    let record = read_record(rig.machine(Slot::B).esp(), Slot::B).unwrap();
    assert_eq!(record.state, SlotState::Good);
    assert_eq!(record.written_check, Some(WrittenCheck::Passed));
    assert_eq!(rig.boot().slot, Slot::B, "B is committed");
    // A rerun reads nothing again and changes nothing.
    let before = rig.snapshot();
    assert!(
        mark_good(&mut rig.machine(Slot::B))
            .unwrap()
            .changes
            .is_empty()
    );
    assert!(rig.snapshot() == before);
}

#[test]
fn a_byte_changed_in_the_data_area_is_refused_at_commit() {
    let rig = Rig::new();
    on_trial(&rig);
    flip(&rig, 4096 * 7 + 9);
    refused(&rig, "data block 7 (bytes 28672..32768)");
}

#[test]
fn a_byte_changed_in_the_last_data_block_is_refused_at_commit() {
    let rig = Rig::new();
    on_trial(&rig);
    flip(&rig, SYSTEM as u64 - 1);
    refused(&rig, "data block 49 (bytes 200704..204800)");
}

#[test]
fn a_byte_changed_in_the_hash_tree_is_refused_at_commit() {
    let rig = Rig::new();
    on_trial(&rig);
    // The hash area: a superblock block, then level 0 (the only level).
    let at = SYSTEM as u64 + 4096 + 32 * 3 + 1;
    flip(&rig, at);
    refused(&rig, &format!("damaged from byte {at}"));
}

#[test]
fn a_changed_superblock_is_refused_at_commit() {
    let rig = Rig::new();
    on_trial(&rig);
    // The data block count, in the superblock after the hash area's start.
    let at = SYSTEM as u64 + 72;
    flip(&rig, at);
    refused(&rig, &format!("damaged from byte {at}"));
}

#[test]
fn a_power_cut_right_after_the_check_is_completed_by_a_rerun() {
    // The check itself writes nothing: a cut during it leaves the machine
    // as before (the CLI test kills mark-good half-way through the check).
    // Cut at each of mark-good's first writes after it, then rerun.
    for cut in 1..=3 {
        let rig = Rig::new();
        on_trial(&rig);
        let order = boot_order(&rig);
        let err =
            mark_good(&mut rig.machine_with_power(Slot::B, Some(PowerCut::at(cut)))).unwrap_err();
        assert!(err.to_string().contains("power cut"), "cut {cut}: {err}");
        if cut == 1 {
            assert_eq!(boot_order(&rig), order, "cut {cut}");
        }
        mark_good(&mut rig.machine(Slot::B)).unwrap();
        let record = read_record(rig.machine(Slot::B).esp(), Slot::B).unwrap();
        assert_eq!(record.state, SlotState::Good, "cut {cut}");
        assert_eq!(record.written_check, Some(WrittenCheck::Passed));
        assert_eq!(rig.boot().slot, Slot::B, "cut {cut}");
    }
}

#[test]
fn a_record_without_the_field_is_committed_as_before() {
    // Records written before issue 14 (their install read the slot back)
    // have no `written_check`: mark-good does not read the slot.
    let rig = Rig::new();
    on_trial(&rig);
    let mut m = rig.machine(Slot::B);
    let mut record = read_record(m.esp(), Slot::B).unwrap();
    record.written_check = None;
    abkit_update::record::write_record(m.esp(), Slot::B, &record).unwrap();
    drop(m);
    flip(&rig, 4096 * 7 + 9);
    mark_good(&mut rig.machine(Slot::B)).unwrap();
    let record = read_record(rig.machine(Slot::B).esp(), Slot::B).unwrap();
    assert_eq!(record.state, SlotState::Good);
    assert_eq!(record.written_check, None);
}

#[test]
fn a_pending_record_without_usable_verity_parameters_is_not_committed() {
    // A record edited by hand (or damaged and restored from a bad copy):
    // the check cannot be done, so the slot is not committed and nothing
    // changes; the trial falls back at the next boot.
    for damage in ["salt", "data size", "root hash"] {
        let rig = Rig::new();
        on_trial(&rig);
        let mut m = rig.machine(Slot::B);
        let mut record = read_record(m.esp(), Slot::B).unwrap();
        match damage {
            "salt" => record.verity_salt = Some("not hex".into()),
            "data size" => record.verity_data_size = Some(4096 * 3),
            _ => record.verity_root_hash = None,
        }
        abkit_update::record::write_record(m.esp(), Slot::B, &record).unwrap();
        drop(m);
        let before = rig.snapshot();
        let err = mark_good(&mut rig.machine(Slot::B)).unwrap_err();
        assert!(
            matches!(err, UpdateError::NotCommittable { slot: Slot::B, .. }),
            "{damage}: {err}"
        );
        assert!(rig.snapshot() == before, "{damage}: changed the machine");
        assert_eq!(rig.boot().slot, Slot::A, "{damage}");
    }
}
