//! Firmware that does not follow the spec (issue 18): it ignores BootNext,
//! deletes entries whose partition it cannot find, forgets every entry of
//! ours, reorders BootOrder, or has a full NVRAM. With each, the seed's
//! sequence (updates, a manual and an automatic rollback) and a power cut
//! before every mutation of install and mark-good must end on a good slot:
//! every boot starts a slot recorded `good`, or the freshly installed slot
//! once (its trial), never a slot that failed its trial a second time.

mod common;

use abkit_disk::Slot;
use abkit_efi::boot::BootManager;
use abkit_efi::{DevicePath, HardDrive, LoadOption, PartitionSignature, StoreError};
use abkit_update::boot_control::{BootControl, Mechanism, read_control};
use abkit_update::boot_policy::read_vars;
use abkit_update::boot_policy::set_boot_control;
use abkit_update::fault::{NvramFull, NvramSpace, PowerCut};
use abkit_update::firmware::{BootVia, ChoiceReason, FirmwareModel, Reorder, SimulatedBoot};
use abkit_update::progress::Silent;
use abkit_update::record::{SlotState, read_record};
use abkit_update::{
    InstallOptions, InstallReport, Machine, UpdateError, install, mark_good, rollback, status,
};
use common::*;
use uuid::Uuid;

/// A second disk the firmware finds (another OS lives there).
const PRESENT_DISK: Uuid = Uuid::from_u128(0x5eb0_0000_0000_4000_8000_0000_0000_0001);
/// A disk that was removed: its entries point at nothing.
const REMOVED_DISK: Uuid = Uuid::from_u128(0x5eb0_0000_0000_4000_8000_0000_0000_0002);

/// Every quirk, with a name for messages.
fn quirks() -> Vec<(&'static str, FirmwareModel)> {
    vec![
        (
            "ignores BootNext, deletes it",
            FirmwareModel::ignoring_boot_next(true),
        ),
        (
            "ignores BootNext, keeps it",
            FirmwareModel::ignoring_boot_next(false),
        ),
        (
            "deletes entries of partitions it cannot find",
            FirmwareModel::pruning_missing_partitions(vec![PRESENT_DISK]),
        ),
        (
            "deletes all our entries",
            FirmwareModel::forgetting_our_entries(),
        ),
        (
            "puts a foreign entry first",
            FirmwareModel::reordering(Reorder::ForeignFirst),
        ),
        (
            "reverses our entries",
            FirmwareModel::reordering(Reorder::ReverseOurs),
        ),
        (
            "moves the booted entry first",
            FirmwareModel::reordering(Reorder::BootedFirst),
        ),
    ]
}

fn never_tries(model: &FirmwareModel) -> bool {
    model.boot_next != abkit_update::firmware::BootNextRule::Honour || model.forget_our_entries
}

fn foreign_entry(disk: Uuid) -> LoadOption {
    LoadOption::new(
        "Other OS",
        DevicePath::hard_drive_file(
            HardDrive {
                partition_number: 1,
                partition_start: 2048,
                partition_size: 2048,
                signature: PartitionSignature::Gpt(disk),
            },
            "\\EFI\\other\\grubx64.efi",
        ),
    )
}

/// Adds an entry of another OS on a removed disk (first in BootOrder) and
/// one on a second disk (last). Returns their numbers.
fn add_foreign_entries(rig: &Rig) -> (u16, u16) {
    let mut m = rig.machine(Slot::A);
    let mut bm = BootManager::new(m.vars());
    let gone = bm.add_entry(&foreign_entry(REMOVED_DISK)).unwrap();
    let kept = bm.add_entry(&foreign_entry(PRESENT_DISK)).unwrap();
    let mut order = bm.boot_order().unwrap();
    order.insert(0, gone);
    order.push(kept);
    bm.set_boot_order(&order).unwrap();
    (gone, kept)
}

fn install_from(
    rig: &Rig,
    running: Slot,
    bundle: &std::path::Path,
) -> Result<InstallReport, UpdateError> {
    rig.install(running, bundle, None)
}

/// A machine under one firmware model, with an agent that marks every
/// healthy boot good (a slot holding a broken version never passes).
struct World<'a> {
    rig: &'a Rig,
    name: &'static str,
    model: FirmwareModel,
    running: Slot,
    /// The slot that holds a version failing its health checks.
    broken: Option<Slot>,
    /// The installed (never good) slot the previous boot started.
    last_trial: Option<Slot>,
    /// On a failed health check the agent arms a rollback before it
    /// reboots (needed with firmware that makes a one-time boot the
    /// default: it would start the failed slot again); otherwise it only
    /// reboots and relies on the firmware returning to BootOrder.
    rollback_on_failure: bool,
    boots: Vec<(Slot, BootVia)>,
    /// Each boot gets a new boot id (what `auto` boot control compares).
    boot_id: usize,
}

impl<'a> World<'a> {
    fn new(rig: &'a Rig, name: &'static str, model: FirmwareModel) -> World<'a> {
        let rollback_on_failure = model.reorder == Some(Reorder::BootedFirst);
        World {
            rig,
            name,
            model,
            running: Slot::A,
            broken: None,
            last_trial: None,
            rollback_on_failure,
            boots: Vec::new(),
            boot_id: 0,
        }
    }

    /// The running machine in this boot.
    fn machine(&self, running: Slot) -> abkit_update::offline::OfflineMachine {
        self.rig
            .machine(running)
            .with_boot_id(format!("boot-{}", self.boot_id))
    }

    fn state(&self, slot: Slot) -> SlotState {
        read_record(self.rig.machine(slot).esp(), slot)
            .unwrap()
            .state
    }

    /// Powers on; checks that a good slot (or a first trial) started.
    fn boot(&mut self) -> SimulatedBoot {
        let name = self.name;
        let booted = self
            .rig
            .boot_with(&self.model)
            .unwrap_or_else(|| panic!("{name}: nothing bootable"));
        let state = self.state(booted.slot);
        match state {
            SlotState::Good => self.last_trial = None,
            SlotState::Installed => {
                assert_ne!(
                    self.last_trial,
                    Some(booted.slot),
                    "{name}: slot {:?} failed its trial and booted again via {:?} (boots {:?})",
                    booted.slot,
                    booted.via,
                    self.boots
                );
                self.last_trial = Some(booted.slot);
            }
            s => panic!(
                "{name}: booted slot {:?} via {:?} is {s} (boots {:?})",
                booted.slot, booted.via, self.boots
            ),
        }
        self.running = booted.slot;
        self.boots.push((booted.slot, booted.via));
        self.boot_id += 1;
        booted
    }

    /// Boots, and the agent marks the slot good if it is healthy.
    fn boot_and_check_health(&mut self) -> SimulatedBoot {
        let booted = self.boot();
        if self.broken != Some(booted.slot) {
            mark_good(&mut self.machine(booted.slot))
                .unwrap_or_else(|e| panic!("{}: mark-good on {:?}: {e}", self.name, booted.slot));
        } else if self.rollback_on_failure {
            rollback(&mut self.machine(booted.slot))
                .unwrap_or_else(|e| panic!("{}: rollback from {:?}: {e}", self.name, booted.slot));
        }
        booted
    }

    fn version(&self, slot: Slot) -> String {
        read_record(self.rig.machine(slot).esp(), slot)
            .unwrap()
            .version
            .map(|v| v.to_string())
            .unwrap_or_default()
    }

    /// Installs `version` from the running slot and reboots three times.
    /// Returns whether the trial boot happened.
    fn update(&mut self, version: &str, tag: u8, healthy: bool) -> bool {
        let bundle = self.rig.bundle(version, tag);
        let report = install(
            &mut self.machine(self.running),
            std::fs::File::open(&bundle).unwrap(),
            &self.rig.keyring,
            &InstallOptions::default(),
            &mut Silent,
        )
        .unwrap_or_else(|e| panic!("{}: install {version}: {e}", self.name));
        let target = report.target_slot;
        self.broken = (!healthy)
            .then_some(target)
            .or(self.broken.filter(|&b| b != target));
        let first = self.boot_and_check_health();
        // The trial: by BootNext, or by the pre-loader (state file).
        let tried = first.slot == target
            && (first.via == BootVia::BootNext
                || matches!(first.preloader, Some(ChoiceReason::Trial { .. })));
        for _ in 0..3 {
            self.boot_and_check_health();
        }
        tried
    }
}

/// The seed's sequence under every quirk: X on A installs Y, Y installs Z,
/// a manual rollback, then a broken version whose trial fails.
#[test]
fn every_quirk_keeps_every_boot_of_the_seeds_sequence_on_a_good_slot() {
    for (name, model) in quirks() {
        let rig = Rig::new();
        let (gone, kept) = add_foreign_entries(&rig);
        let mut w = World::new(&rig, name, model.clone());
        w.boot_and_check_health();

        let tried_y = w.update("1.1.0", b'Y', true);
        let tried_z = w.update("1.2.0", b'Z', true);
        if never_tries(&model) {
            // Safe, and useless: the update is never tried, the machine
            // keeps running the factory version on A.
            assert!(!tried_y && !tried_z, "{name}");
            assert!(
                w.boots.iter().all(|&(s, _)| s == Slot::A),
                "{name}: {:?}",
                w.boots
            );
            assert_eq!(w.version(Slot::A), "1.0.0", "{name}");
            assert_eq!(w.state(Slot::B), SlotState::Installed, "{name}");
            let err = rollback(&mut rig.machine(Slot::A)).unwrap_err();
            assert!(
                matches!(err, UpdateError::NothingToRollBack { .. }),
                "{name}: {err}"
            );
        } else {
            assert!(tried_y && tried_z, "{name}: {:?}", w.boots);
            // Z was marked good on its trial boot; the other slot holds a
            // good version too (Y; or X with firmware that swaps our
            // entries at every boot: the machine alternates between the
            // two good slots, and Z was installed from A over Y).
            assert_eq!(w.state(Slot::A), SlotState::Good, "{name}");
            assert_eq!(w.state(Slot::B), SlotState::Good, "{name}");
            let mut versions = [w.version(Slot::A), w.version(Slot::B)];
            versions.sort();
            let expected = if model.reorder == Some(Reorder::ReverseOurs) {
                ["1.0.0", "1.2.0"]
            } else {
                ["1.1.0", "1.2.0"]
            };
            assert_eq!(versions, expected, "{name}: boots {:?}", w.boots);

            // Manual rollback: the other slot (good) boots next.
            let r = rollback(&mut rig.machine(w.running))
                .unwrap_or_else(|e| panic!("{name}: rollback: {e}"));
            let back = w.boot_and_check_health();
            assert_eq!(back.slot, r.slot, "{name}: the rollback boot");
            for _ in 0..2 {
                w.boot_and_check_health();
            }
        }

        // A broken version: its trial fails (no mark-good), the machine
        // returns to a good slot and stays off the broken one.
        let before = w.boots.len();
        w.update("1.3.0", b'W', false);
        let broken = w.broken.unwrap();
        let after: Vec<_> = w.boots[before..].to_vec();
        assert!(
            after.iter().filter(|(s, _)| *s == broken).count() <= 1,
            "{name}: the broken slot booted more than once: {after:?}"
        );
        assert_ne!(w.running, broken, "{name}: ends on the broken slot");
        assert_eq!(w.state(w.running), SlotState::Good, "{name}");

        // Entries: ours are one per slot; foreign ones are untouched unless
        // the firmware itself deleted them.
        let mut m = rig.machine(w.running);
        let loc = m.esp_location();
        let state = read_vars(m.vars(), &loc).unwrap();
        assert_eq!(state.slot_entries(Slot::A).len(), 1, "{name}");
        assert_eq!(state.slot_entries(Slot::B).len(), 1, "{name}");
        let bm = BootManager::new(m.vars());
        let pruned = model.prune_missing_partitions.is_some();
        assert_eq!(bm.entry(gone).unwrap().is_none(), pruned, "{name}");
        assert!(bm.entry(kept).unwrap().is_some(), "{name}");
        println!("{name}: boots {:?}", w.boots);
    }
}

/// A power cut before every mutation of an install and of a mark-good,
/// each followed by boots with the quirky firmware (and the agent marking
/// healthy boots good), then a rerun.
#[test]
fn every_quirk_survives_a_power_cut_at_every_mutation() {
    for (name, model) in quirks() {
        let rig = Rig::new();
        add_foreign_entries(&rig);
        let mut w = World::new(&rig, name, model.clone());
        w.boot_and_check_health();
        assert_eq!(w.running, Slot::A);
        let bundle = rig.bundle_with("1.1.0", COMPATIBLE, b'Y', 2 << 20);
        let start = tempfile::tempdir().unwrap();
        rig.save(start.path());

        let counter = PowerCut::counter();
        rig.install(Slot::A, &bundle, Some(counter.clone()))
            .unwrap();
        let install_points = counter.count();
        let trial = tempfile::tempdir().unwrap();
        let trial_boot = w.boot();
        rig.save(trial.path());

        for k in 1..=install_points {
            rig.restore(start.path());
            let mut w = World::new(&rig, name, model.clone());
            let err = rig
                .install(Slot::A, &bundle, Some(PowerCut::at(k)))
                .unwrap_err();
            assert!(
                err.to_string().contains("power cut"),
                "{name}: cut at {k}: {err}"
            );
            for _ in 0..3 {
                w.boot_and_check_health();
            }
            // Rerun from whatever runs now, if it is committed.
            if w.state(w.running) == SlotState::Good && w.running == Slot::A {
                install_from(&rig, Slot::A, &bundle)
                    .unwrap_or_else(|e| panic!("{name}: rerun after cut at {k}: {e}"));
                for _ in 0..3 {
                    w.boot_and_check_health();
                }
            }
        }

        // mark-good on whatever the trial boot started.
        rig.restore(trial.path());
        let running = trial_boot.slot;
        let counter = PowerCut::counter();
        mark_good(&mut rig.machine_with_power(running, Some(counter.clone()))).unwrap();
        let mark_points = counter.count();
        for k in 1..=mark_points {
            rig.restore(trial.path());
            let mut w = World::new(&rig, name, model.clone());
            w.running = running;
            let err =
                mark_good(&mut rig.machine_with_power(running, Some(PowerCut::at(k)))).unwrap_err();
            assert!(
                err.to_string().contains("power cut"),
                "{name}: cut at {k}: {err}"
            );
            for _ in 0..3 {
                w.boot_and_check_health();
            }
        }
        println!("{name}: install {install_points} and mark-good {mark_points} crash points");
    }
}

/// Firmware that makes a one-time boot permanent: a broken trial would
/// boot again and again. Since the trial slot is not good, installing from
/// it is refused (it would overwrite the last good version), and a rollback
/// from it (what the agent or an operator does) returns to the good slot
/// for good.
#[test]
fn a_firmware_that_keeps_the_trial_first_is_recovered_by_rollback() {
    let rig = Rig::new();
    let model = FirmwareModel::reordering(Reorder::BootedFirst);
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    install_from(&rig, Slot::A, &rig.bundle("1.1.0", b'Y')).unwrap();
    let trial = rig.boot_with(&model).unwrap();
    assert_eq!((trial.slot, trial.via), (Slot::B, BootVia::BootNext));
    // No mark-good: the firmware boots B again, through BootOrder.
    let again = rig.boot_with(&model).unwrap();
    assert_eq!((again.slot, again.via), (Slot::B, BootVia::BootOrder));
    assert_eq!(
        status(&mut rig.machine(Slot::B)).unwrap().committed_slot,
        Slot::B,
        "BootOrder names B first"
    );
    // Installing from B would overwrite A, the last good version.
    let before = rig.snapshot();
    let err = install_from(&rig, Slot::B, &rig.bundle("1.2.0", b'Z')).unwrap_err();
    assert!(
        matches!(
            err,
            UpdateError::RunningSlotNotCommitted {
                running: Slot::B,
                ..
            }
        ),
        "{err}"
    );
    assert!(rig.snapshot() == before, "a refused install changed bytes");
    // Rollback from the broken B: A boots, and stays the default.
    rollback(&mut rig.machine(Slot::B)).unwrap();
    let back = rig.boot_with(&model).unwrap();
    assert_eq!((back.slot, back.via), (Slot::A, BootVia::BootNext));
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    for _ in 0..3 {
        assert_eq!(rig.boot_with(&model).unwrap().slot, Slot::A);
    }
}

/// A slot whose trial failed is never again an active entry once the good
/// slot is marked good: firmware that reorders BootOrder cannot start it.
#[test]
fn a_failed_trial_leaves_no_active_entry_for_reordering_firmware() {
    let rig = Rig::new();
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    install_from(&rig, Slot::A, &rig.bundle("1.1.0", b'Y')).unwrap();
    // Before the reboot, mark-good again (the agent's timer): the pending
    // trial is kept.
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    assert_eq!(rig.boot().slot, Slot::B);
    // The trial fails; back on A, mark-good.
    assert_eq!(rig.boot().slot, Slot::A);
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    let st = status(&mut rig.machine(Slot::A)).unwrap();
    let b = st.entries.iter().find(|e| e.slot == Slot::B).unwrap();
    assert!(!b.active, "the failed trial's entry stays active");
    let model = FirmwareModel::reordering(Reorder::ReverseOurs);
    for _ in 0..3 {
        assert_eq!(rig.boot_with(&model).unwrap().slot, Slot::A);
    }
    // A new install arms the trial again.
    install_from(&rig, Slot::A, &rig.bundle("1.2.0", b'Z')).unwrap();
    assert_eq!(rig.boot().slot, Slot::B);
}

fn nvram_full(
    space: &std::sync::Arc<NvramSpace>,
) -> impl FnOnce(Box<dyn abkit_efi::VarStore>) -> Box<dyn abkit_efi::VarStore> {
    let space = space.clone();
    move |inner| Box::new(NvramFull::new(inner, space))
}

fn assert_nvram_full(err: &UpdateError, what: &str) {
    let full = matches!(
        err,
        UpdateError::Store(StoreError::Full { .. })
            | UpdateError::Boot(abkit_efi::BootError::Store(StoreError::Full { .. }))
    );
    assert!(full, "{what}: {err}");
    assert!(
        matches!(err.code(), "variable-store" | "boot-variables"),
        "{what}: {}",
        err.code()
    );
    assert!(
        err.to_string().contains("variable store full"),
        "{what}: {err}"
    );
}

/// NVRAM full: an install or a mark-good that cannot write a variable fails
/// with the store's error, the running slot stays committed and the machine
/// boots a good slot; with room again, a rerun completes.
#[test]
fn a_full_nvram_fails_install_and_mark_good_cleanly() {
    let rig = Rig::new();
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    let bundle = rig.bundle("1.1.0", b'Y');
    let start = tempfile::tempdir().unwrap();
    rig.save(start.path());

    let space = NvramSpace::new(usize::MAX);
    install(
        &mut rig.machine_with_vars(Slot::A, nvram_full(&space)),
        std::fs::File::open(&bundle).unwrap(),
        &rig.keyring,
        &InstallOptions::default(),
        &mut Silent,
    )
    .unwrap();
    let install_writes = space.written();
    assert!(install_writes >= 2, "only {install_writes} variable writes");
    assert_eq!(rig.boot().slot, Slot::B);
    let trial = tempfile::tempdir().unwrap();
    rig.save(trial.path());

    for room in 0..install_writes {
        rig.restore(start.path());
        let space = NvramSpace::new(room);
        let err = install(
            &mut rig.machine_with_vars(Slot::A, nvram_full(&space)),
            std::fs::File::open(&bundle).unwrap(),
            &rig.keyring,
            &InstallOptions::default(),
            &mut Silent,
        )
        .unwrap_err();
        assert_nvram_full(&err, &format!("install with room for {room} writes"));
        let st = status(&mut rig.machine(Slot::A)).unwrap();
        assert_eq!(st.committed_slot, Slot::A, "room {room}");
        assert!(!st.trial_pending, "room {room}: {st:?}");
        let booted = rig.boot();
        assert_eq!(booted.slot, Slot::A, "room {room}");
        install_from(&rig, Slot::A, &bundle)
            .unwrap_or_else(|e| panic!("rerun with room after {room}: {e}"));
        assert_eq!(rig.boot().slot, Slot::B, "room {room}");
    }

    rig.restore(trial.path());
    let space = NvramSpace::new(usize::MAX);
    mark_good(&mut rig.machine_with_vars(Slot::B, nvram_full(&space))).unwrap();
    let mark_writes = space.written();
    assert!(mark_writes >= 1);
    for room in 0..mark_writes {
        rig.restore(trial.path());
        let space = NvramSpace::new(room);
        let err = mark_good(&mut rig.machine_with_vars(Slot::B, nvram_full(&space))).unwrap_err();
        assert_nvram_full(&err, &format!("mark-good with room for {room} writes"));
        let booted = rig.boot();
        let mut m = rig.machine(booted.slot);
        assert_eq!(
            read_record(m.esp(), booted.slot).unwrap().state,
            SlotState::Good,
            "room {room}: booted {:?}",
            booted.slot
        );
        drop(m);
        mark_good(&mut rig.machine(booted.slot)).unwrap();
        assert_eq!(rig.boot().slot, booted.slot, "room {room}");
    }
    println!("variable writes: install {install_writes}, mark-good {mark_writes}");
}

/// NVRAM full on an install from B into A, whose entry is active: the
/// first write (clearing A's ACTIVE flag) already fails; B stays committed.
#[test]
fn a_full_nvram_fails_an_install_into_an_active_slot_before_it_changes() {
    let rig = Rig::new();
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    install_from(&rig, Slot::A, &rig.bundle("1.1.0", b'Y')).unwrap();
    assert_eq!(rig.boot().slot, Slot::B);
    mark_good(&mut rig.machine(Slot::B)).unwrap();
    let bundle = rig.bundle("1.2.0", b'Z');
    let start = tempfile::tempdir().unwrap();
    rig.save(start.path());
    let space = NvramSpace::new(usize::MAX);
    install(
        &mut rig.machine_with_vars(Slot::B, nvram_full(&space)),
        std::fs::File::open(&bundle).unwrap(),
        &rig.keyring,
        &InstallOptions::default(),
        &mut Silent,
    )
    .unwrap();
    let writes = space.written();
    assert!(writes >= 3, "only {writes} variable writes");
    for room in 0..writes {
        rig.restore(start.path());
        let before = rig.snapshot();
        let err = install(
            &mut rig.machine_with_vars(Slot::B, nvram_full(&NvramSpace::new(room))),
            std::fs::File::open(&bundle).unwrap(),
            &rig.keyring,
            &InstallOptions::default(),
            &mut Silent,
        )
        .unwrap_err();
        assert_nvram_full(&err, &format!("room {room}"));
        if room == 0 {
            assert!(
                rig.snapshot() == before,
                "the first write failed: nothing changed"
            );
        }
        assert_eq!(
            status(&mut rig.machine(Slot::B)).unwrap().committed_slot,
            Slot::B
        );
        let booted = rig.boot();
        assert_eq!(booted.slot, Slot::B, "room {room}");
        install_from(&rig, Slot::B, &bundle).unwrap();
        assert_eq!(rig.boot().slot, Slot::A, "room {room}");
    }
}

/// The models under which BootNext never starts a trial.
fn trial_less_quirks() -> Vec<(&'static str, FirmwareModel)> {
    vec![
        (
            "ignores BootNext, deletes it",
            FirmwareModel::ignoring_boot_next(true),
        ),
        (
            "ignores BootNext, keeps it",
            FirmwareModel::ignoring_boot_next(false),
        ),
        (
            "deletes all our entries",
            FirmwareModel::forgetting_our_entries(),
        ),
    ]
}

/// Updates Y (healthy) and Z (healthy), then a broken W: every trial
/// happens, a good slot boots every time, the broken one at most once.
fn seed_sequence_with_trials(w: &mut World<'_>) {
    let name = w.name;
    assert!(
        w.update("1.1.0", b'Y', true),
        "{name}: Y untried {:?}",
        w.boots
    );
    assert!(
        w.update("1.2.0", b'Z', true),
        "{name}: Z untried {:?}",
        w.boots
    );
    assert_eq!(w.state(Slot::A), SlotState::Good, "{name}");
    assert_eq!(w.state(Slot::B), SlotState::Good, "{name}");
    let before = w.boots.len();
    assert!(w.update("1.3.0", b'W', false), "{name}: W untried");
    let broken = w.broken.unwrap();
    let after = &w.boots[before..];
    assert_eq!(
        after.iter().filter(|(s, _)| *s == broken).count(),
        1,
        "{name}: {after:?}"
    );
    assert_ne!(w.running, broken, "{name}");
    assert_eq!(w.state(w.running), SlotState::Good, "{name}");
    assert_eq!(w.version(w.running), "1.2.0", "{name}");
}

/// State-file boot control: where BootNext never works (ignored, or the
/// entries it names are deleted), the pre-loader still gives every update
/// its trial, and a failed trial falls back by itself.
#[test]
fn the_state_file_gives_trials_where_boot_next_does_not() {
    for (name, model) in trial_less_quirks()
        .into_iter()
        .chain([("follows the spec", FirmwareModel::default())])
    {
        let rig = Rig::new();
        let mut w = World::new(&rig, name, model);
        w.boot_and_check_health();
        set_boot_control(&mut w.machine(Slot::A), BootControl::StateFile).unwrap();
        seed_sequence_with_trials(&mut w);
        let mut m = rig.machine(w.running);
        let state = abkit_update::boot_policy::read_state(&mut m).unwrap();
        assert_eq!(state.control.active, Mechanism::StateFile, "{name}");
        let ls = state.loader_state.unwrap();
        assert_eq!(ls.committed, w.running, "{name}");
        println!("{name}: boots {:?}", w.boots);
    }
}

/// `auto`: on firmware that ignores BootNext the first trial reboot comes
/// back on the old slot; mark-good sees it (BootCurrent is not the trial
/// entry, the trial loader never counted its attempt), switches to the
/// state file, records why, and the next boot is the trial. On conforming
/// firmware (and on firmware that loses every entry: the fallback path is
/// the pre-loader, which starts the trial) it stays with BootNext.
#[test]
fn auto_switches_to_the_state_file_only_when_boot_next_is_ignored() {
    for (name, model) in trial_less_quirks()
        .into_iter()
        .chain([("follows the spec", FirmwareModel::default())])
    {
        let rig = Rig::new();
        let mut w = World::new(&rig, name, model.clone());
        w.boot_and_check_health();
        set_boot_control(&mut w.machine(Slot::A), BootControl::Auto).unwrap();
        let ignores = model.boot_next != abkit_update::firmware::BootNextRule::Honour;
        if ignores {
            // The first update costs one reboot: the detection.
            assert!(!w.update("1.1.0", b'Y', true), "{name}: {:?}", w.boots);
            let control = read_control(w.machine(Slot::A).esp()).unwrap();
            assert_eq!(control.active, Mechanism::StateFile, "{name}");
            let reason = control.reason.unwrap();
            assert!(reason.contains("ignores BootNext"), "{name}: {reason}");
            assert_eq!(w.state(Slot::B), SlotState::Good, "{name}: {:?}", w.boots);
            assert!(w.boots.iter().any(|&(s, _)| s == Slot::B), "{name}");
        } else {
            assert!(w.update("1.1.0", b'Y', true), "{name}: {:?}", w.boots);
        }
        seed_sequence_tail(&mut w);
        let control = read_control(w.machine(w.running).esp()).unwrap();
        let want = if ignores {
            Mechanism::StateFile
        } else {
            Mechanism::BootNext
        };
        assert_eq!(control.active, want, "{name}: {control:?}");
        println!("{name}: boots {:?}; {control:?}", w.boots);
    }
}

/// Z healthy, then a broken W, after Y is on B.
fn seed_sequence_tail(w: &mut World<'_>) {
    let name = w.name;
    assert!(
        w.update("1.2.0", b'Z', true),
        "{name}: Z untried {:?}",
        w.boots
    );
    assert!(
        w.update("1.3.0", b'W', false),
        "{name}: W untried {:?}",
        w.boots
    );
    assert_ne!(Some(w.running), w.broken, "{name}");
    assert_eq!(w.state(w.running), SlotState::Good, "{name}");
    assert_eq!(w.version(w.running), "1.2.0", "{name}");
}

/// State-file boot control on firmware that ignores BootNext: a power cut
/// before every mutation of an install and of a mark-good (the loader
/// state's new file, the removal of the old one, the rename, and all the
/// rest) leaves a machine that boots a good slot, or the new one once.
#[test]
fn the_state_file_survives_a_power_cut_at_every_mutation() {
    let model = FirmwareModel::ignoring_boot_next(true);
    let name = "state file, ignores BootNext";
    let rig = Rig::new();
    let mut w = World::new(&rig, name, model.clone());
    w.boot_and_check_health();
    set_boot_control(&mut w.machine(Slot::A), BootControl::StateFile).unwrap();
    let bundle = rig.bundle_with("1.1.0", COMPATIBLE, b'Y', 2 << 20);
    let start = tempfile::tempdir().unwrap();
    rig.save(start.path());

    let counter = PowerCut::counter();
    rig.install(Slot::A, &bundle, Some(counter.clone()))
        .unwrap();
    let install_points = counter.count();
    let trial = tempfile::tempdir().unwrap();
    let trial_boot = w.boot();
    assert_eq!(trial_boot.slot, Slot::B, "the pre-loader starts the trial");
    rig.save(trial.path());

    for k in 1..=install_points {
        rig.restore(start.path());
        let mut w = World::new(&rig, name, model.clone());
        let err = rig
            .install(Slot::A, &bundle, Some(PowerCut::at(k)))
            .unwrap_err();
        assert!(err.to_string().contains("power cut"), "cut at {k}: {err}");
        for _ in 0..2 {
            w.boot_and_check_health();
        }
        if w.state(w.running) == SlotState::Good && w.running == Slot::A {
            install_from(&rig, Slot::A, &bundle)
                .unwrap_or_else(|e| panic!("rerun after cut at {k}: {e}"));
            let b = w.boot_and_check_health();
            assert_eq!(b.slot, Slot::B, "cut at {k}: the rerun's trial");
        }
    }

    rig.restore(trial.path());
    let counter = PowerCut::counter();
    mark_good(&mut rig.machine_with_power(Slot::B, Some(counter.clone()))).unwrap();
    let mark_points = counter.count();
    for k in 1..=mark_points {
        rig.restore(trial.path());
        let mut w = World::new(&rig, name, model.clone());
        w.running = Slot::B;
        w.last_trial = Some(Slot::B);
        let err =
            mark_good(&mut rig.machine_with_power(Slot::B, Some(PowerCut::at(k)))).unwrap_err();
        assert!(err.to_string().contains("power cut"), "cut at {k}: {err}");
        for _ in 0..2 {
            w.boot_and_check_health();
        }
    }
    println!("state file: install {install_points} and mark-good {mark_points} crash points");
}

/// A damaged loader state (garbage, torn, another version) is never
/// followed: the pre-loader boots its own slot (the committed one, by its
/// stamp), `status` names the problem, and mark-good rewrites the file. A
/// damaged boot-control record is refused by name before anything changes.
#[test]
fn damaged_boot_control_files_are_named_and_never_followed() {
    use abkit_loader_core::loader_state::STATE_PATH;
    let rig = Rig::new();
    let model = FirmwareModel::ignoring_boot_next(true);
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    set_boot_control(&mut rig.machine(Slot::A), BootControl::StateFile).unwrap();
    install_from(&rig, Slot::A, &rig.bundle("1.1.0", b'Y')).unwrap();
    for garbage in [&b"abkL"[..], &[0xff; 16][..], b"not a state file at all"] {
        rig.machine(Slot::A)
            .esp()
            .write(STATE_PATH, &mut &garbage[..])
            .unwrap();
        let booted = rig.boot_with(&model).unwrap();
        assert_eq!(booted.slot, Slot::A, "{garbage:?}");
        assert_eq!(booted.preloader, None, "{garbage:?}");
        let st = status(&mut rig.machine(Slot::A)).unwrap();
        assert!(
            st.problems.iter().any(|p| p.contains("loader-state")),
            "{:?}",
            st.problems
        );
        mark_good(&mut rig.machine(Slot::A)).unwrap();
        let st = status(&mut rig.machine(Slot::A)).unwrap();
        assert_eq!(st.boot_control.loader_state.unwrap().committed, Slot::A);
    }
    // The trial was lost with the damaged file: installing again arms it.
    install_from(&rig, Slot::A, &rig.bundle("1.1.0", b'Y')).unwrap();
    assert_eq!(rig.boot_with(&model).unwrap().slot, Slot::B);

    let mut m = rig.machine(Slot::B);
    m.esp()
        .write(abkit_update::boot_control::CONTROL_PATH, &mut &b"{oops"[..])
        .unwrap();
    drop(m);
    let before = rig.snapshot();
    let err = mark_good(&mut rig.machine(Slot::B)).unwrap_err();
    assert_eq!(err.code(), "boot-control", "{err}");
    assert!(err.to_string().contains("boot-control.json"), "{err}");
    assert!(
        rig.snapshot() == before,
        "a refused mark-good changed bytes"
    );
}
