//! `mark_good`: the running slot passed its health checks; make it the
//! committed slot.
//!
//! Order (each step is safe to be interrupted, and a rerun completes it):
//! refuse a slot that holds nothing verified; check the slot's written
//! system data against its signed verity root hash when its record says
//! that check is pending (issue 14: install no longer reads the slot back;
//! a mismatch records the slot `empty` and commits nothing; the check
//! writes nothing, so a cut during it is redone by a rerun); record the
//! slot `good` first,
//! so that BootOrder never points at a slot that was not marked good (I2),
//! keeping every field of its record; then [`boot_policy::commit`] repairs
//! our entries and BootOrder and refreshes the fallback loader. Nothing is
//! written when nothing changes.

use crate::boot_policy;
use crate::machine::Machine;
use crate::progress::{Reporter, Silent, Step, step};
use crate::record::{
    HealthRecord, HealthResult, SlotState, WrittenCheck, now, read_record, write_record,
};
use crate::{Result, Slot, UpdateError};

/// What mark-good changed (empty when everything already was right).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MarkGoodReport {
    pub slot: Option<Slot>,
    pub version: Option<String>,
    pub changes: Vec<String>,
}

/// [`mark_good_with`] without progress.
pub fn mark_good(m: &mut dyn Machine) -> Result<MarkGoodReport> {
    mark_good_with(m, &mut Silent)
}

/// Commits the running slot; the check of its written data (when pending)
/// reports its progress to `rep`.
pub fn mark_good_with(m: &mut dyn Machine, rep: &mut dyn Reporter) -> Result<MarkGoodReport> {
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
    // The written data, when the install left its check to the commit:
    // read back from the media against the signed verity root hash before
    // anything changes. Records without the field (older installs read the
    // slot back) are committed as before.
    if record.written_check == Some(WrittenCheck::Pending) {
        step(
            rep,
            Step::CheckSystem,
            format!(
                "checking slot {}'s written system data against its signed verity root hash",
                running.letter()
            ),
        );
        let checked = {
            let mut dev = m.slot_reader(running)?;
            crate::written_check::check(&mut *dev, &record, running, rep)
        };
        match checked {
            Ok(()) => record.written_check = Some(WrittenCheck::Passed),
            Err(e @ UpdateError::WrittenDataMismatch { .. }) => {
                // Never commit, boot or roll back to these bytes: `empty`.
                // The trial falls back as after a failed health check.
                record.state = SlotState::Empty;
                record.written_check = Some(WrittenCheck::Failed);
                record.health = Some(HealthRecord {
                    result: HealthResult::Failed,
                    at: now(),
                    failed_check: Some("written-data".into()),
                    output_tail: Some(e.to_string()),
                });
                write_record(m.esp(), running, &record)?;
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        step(
            rep,
            Step::CheckSystem,
            format!(
                "slot {} holds exactly the signed system data",
                running.letter()
            ),
        );
    }
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
