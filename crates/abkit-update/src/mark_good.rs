//! `mark_good`: the running slot passed its health checks; make it the
//! committed slot.
//!
//! Order (each step is safe to be interrupted, and a rerun completes it):
//! refuse a slot that holds nothing verified; record the slot `good` first,
//! so that BootOrder never points at a slot that was not marked good (I2),
//! keeping every field of its record; then [`boot_policy::commit`] repairs
//! our entries and BootOrder and refreshes the fallback loader. Nothing is
//! written when nothing changes.

use crate::boot_policy;
use crate::machine::Machine;
use crate::record::{SlotState, now, read_record, write_record};
use crate::{Result, Slot, UpdateError};

/// What mark-good changed (empty when everything already was right).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MarkGoodReport {
    pub slot: Option<Slot>,
    pub version: Option<String>,
    pub changes: Vec<String>,
}

pub fn mark_good(m: &mut dyn Machine) -> Result<MarkGoodReport> {
    m.lock()?;
    let running = m.running_slot();
    let other = running.other();
    let mut report = MarkGoodReport {
        slot: Some(running),
        ..Default::default()
    };
    // `auto` boot control: did the firmware honour the last BootNext?
    if let boot_policy::Observation::SwitchedToStateFile(reason) = boot_policy::observe_boot(m)? {
        report
            .changes
            .push(format!("boot control switched to the state file: {reason}"));
    }

    // 1. The running slot's record says good; a slot whose record says it
    // holds nothing verified is never committed.
    let mut record = read_record(m.esp(), running)?;
    report.version = record.version.as_ref().map(|v| v.to_string());
    if record.state == SlotState::Empty {
        return Err(UpdateError::NotCommittable {
            slot: running,
            reason: "its record says empty: it was never completely written and verified \
                     (an interrupted or failed install)"
                .into(),
        });
    }
    // Preconditions the record cannot show (loader present, an unrecorded
    // slot only when it already is the default) are the policy's: checked
    // before the record changes. Every field of the record is kept.
    let recorded = match record.state {
        SlotState::Installed => SlotState::Good,
        s => s,
    };
    boot_policy::check_committable(m, recorded)?;
    if record.state != SlotState::Good {
        record.state = SlotState::Good;
        record.good_at = Some(now());
    }
    if write_record(m.esp(), running, &record)? {
        report
            .changes
            .push(format!("slot {} recorded good", running.letter()));
    }

    crate::halt::checkpoint("mark-good:recorded-good");
    // 2. Commit: the other slot's entry stays bootable only if it passed
    // its health checks once (`good`; a slot without a record is the
    // factory's, which booted before) or its trial is still pending
    // (BootNext at it), and its loader is there. A slot whose trial failed
    // (`installed`, BootNext consumed) gets an inactive entry: firmware
    // that reorders BootOrder must not be able to start it again.
    let other_state = read_record(m.esp(), other)?.state;
    let other_bootable = match other_state {
        SlotState::Good | SlotState::Unknown => true,
        SlotState::Installed => {
            let state = boot_policy::read_state(m)?;
            state.boot_next_slot() == Some(other)
                || state.loader_state.and_then(|st| st.pending_trial()) == Some(other)
        }
        SlotState::Empty => false,
    } && m.esp().exists(other.loader_path())?;
    report
        .changes
        .extend(boot_policy::commit(m, other_bootable)?);
    crate::halt::checkpoint("mark-good:committed");
    Ok(report)
}
