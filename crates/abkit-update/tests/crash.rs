//! Crash consistency (invariant I2): cut the power before every single
//! mutation of install and mark-good (every variable change, ESP write,
//! rename and remove, slot write and flush), boot with the firmware model,
//! check that the machine boots a slot that was marked good, then rerun the
//! interrupted command and check that it completes.

mod common;

use abkit_disk::Slot;
use abkit_update::fault::PowerCut;
use abkit_update::record::{SlotState, read_record};
use abkit_update::{Machine, mark_good};
use common::*;

fn booted_slot_was_good(rig: &Rig) -> Slot {
    let booted = rig.boot();
    let mut m = rig.machine(booted.slot);
    let state = read_record(m.esp(), booted.slot).unwrap().state;
    assert_eq!(
        state,
        SlotState::Good,
        "I2: booted slot {:?} via {:?} is {state}",
        booted.slot,
        booted.via
    );
    booted.slot
}

#[test]
fn i2_power_cut_at_every_mutation_of_install_and_mark_good() {
    let rig = Rig::new();
    mark_good(&mut rig.machine(Slot::A)).unwrap();
    // 3 MiB: the slot is written in several blocks, each a crash point.
    let bundle = rig.bundle_with("1.1.0", COMPATIBLE, b'Y', 3 << 20);
    let start = tempfile::tempdir().unwrap();
    rig.save(start.path());

    // Count the mutations of a clean install.
    let counter = PowerCut::counter();
    rig.install(Slot::A, &bundle, Some(counter.clone()))
        .unwrap();
    let install_points = counter.count();
    assert!(
        install_points >= 10,
        "only {install_points} mutations counted"
    );
    let trial = tempfile::tempdir().unwrap();
    rig.boot();
    rig.save(trial.path());

    for k in 1..=install_points {
        rig.restore(start.path());
        let err = rig
            .install(Slot::A, &bundle, Some(PowerCut::at(k)))
            .unwrap_err();
        assert!(err.to_string().contains("power cut"), "cut at {k}: {err}");
        assert_eq!(booted_slot_was_good(&rig), Slot::A, "cut at {k}");
        // After that boot (on A), rerunning the install completes and the
        // trial boot goes to B.
        rig.install(Slot::A, &bundle, None)
            .unwrap_or_else(|e| panic!("rerun after cut at {k}: {e}"));
        assert_eq!(rig.boot().slot, Slot::B, "cut at {k}");
    }

    // mark-good on the trial boot of B.
    rig.restore(trial.path());
    let counter = PowerCut::counter();
    mark_good(&mut rig.machine_with_power(Slot::B, Some(counter.clone()))).unwrap();
    let mark_points = counter.count();
    assert!(mark_points >= 2, "only {mark_points} mutations counted");
    for k in 1..=mark_points {
        rig.restore(trial.path());
        let err =
            mark_good(&mut rig.machine_with_power(Slot::B, Some(PowerCut::at(k)))).unwrap_err();
        assert!(err.to_string().contains("power cut"), "cut at {k}: {err}");
        let slot = booted_slot_was_good(&rig);
        // Rerun mark-good on whatever booted (only B may commit B).
        mark_good(&mut rig.machine(slot)).unwrap();
        if slot == Slot::A {
            // The trial never completed: A stays committed.
            assert_eq!(booted_slot_was_good(&rig), Slot::A);
        } else {
            assert_eq!(booted_slot_was_good(&rig), Slot::B);
        }
    }
    println!(
        "crash points tested: install {install_points}, mark-good {mark_points}, total {}",
        install_points + mark_points
    );
}
