//! `mark_good`: the running slot passed its health checks; make it the
//! committed slot.
//!
//! Order (each step is safe to be interrupted, and a rerun completes it):
//! record the slot `good` first, so that BootOrder never points at a slot
//! that was not marked good (I2); then repair our boot entries (create
//! missing ones, delete duplicates, fix wrong ones); then put the running
//! slot's entry first among ours in BootOrder, foreign entries staying where
//! they are (I6); then refresh the fallback loader when slot A is committed.
//! Nothing is written when nothing changes.

use abkit_disk::FALLBACK_LOADER_PATH;
use abkit_efi::boot::BootManager;

use crate::entries::ensure_slot_entry;
use crate::machine::{Machine, write_atomically};
use crate::record::{SlotState, now, read_record, write_record};
use crate::{Result, Slot};

/// What mark-good changed (empty when everything already was right).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MarkGoodReport {
    pub slot: Option<Slot>,
    pub version: Option<String>,
    pub changes: Vec<String>,
}

pub fn mark_good(m: &mut dyn Machine) -> Result<MarkGoodReport> {
    let running = m.running_slot();
    let other = running.other();
    let loc = m.esp_location();
    let mut report = MarkGoodReport {
        slot: Some(running),
        ..Default::default()
    };

    // 1. The running slot's record says good.
    let mut record = read_record(m.esp(), running)?;
    report.version = record.version.clone();
    if record.state != SlotState::Good {
        record.state = SlotState::Good;
        record.good_at = Some(now());
        write_record(m.esp(), running, &record)?;
        report
            .changes
            .push(format!("slot {} recorded good", running.letter()));
    }

    // 2. Self-repair of our entries. The other slot's entry stays bootable
    // unless that slot is known to be half-written (`empty`) or has no
    // loader: a slot without a record is the factory's, which booted before.
    let other_state = read_record(m.esp(), other)?.state;
    let other_bootable =
        other_state != SlotState::Empty && m.esp().read(other.loader_path())?.is_some();
    let mut bm = BootManager::new(m.vars());
    let (mine, changed) = ensure_slot_entry(&mut bm, &loc, running, true)?;
    if changed {
        report.changes.push(format!(
            "boot entry Boot{mine:04X} of slot {} repaired",
            running.letter()
        ));
    }
    let (theirs, changed) = ensure_slot_entry(&mut bm, &loc, other, other_bootable)?;
    if changed {
        report.changes.push(format!(
            "boot entry Boot{theirs:04X} of slot {} repaired ({})",
            other.letter(),
            if other_bootable { "active" } else { "inactive" }
        ));
    }
    // A BootNext at our own entry is stale; one at the other slot's entry
    // stays only while that slot is bootable (firmware would start even an
    // inactive BootNext entry).
    let next = bm.boot_next()?;
    if next == Some(mine) || (next == Some(theirs) && !other_bootable) {
        bm.clear_boot_next()?;
        report.changes.push("stale BootNext cleared".into());
    }

    // 3. Commit: ours first among ours, foreign entries untouched.
    if bm.arrange_boot_order(&[mine, theirs])? {
        report.changes.push(format!(
            "BootOrder: slot {} committed (Boot{mine:04X} first of ours)",
            running.letter()
        ));
    }

    // 4. The removable-media fallback boots slot A's loader.
    if running == Slot::A {
        if let Some(loader) = m.esp().read(running.loader_path())? {
            if m.esp().read(FALLBACK_LOADER_PATH)?.as_deref() != Some(loader.as_slice()) {
                write_atomically(m.esp(), FALLBACK_LOADER_PATH, &loader)?;
                report
                    .changes
                    .push(format!("fallback loader {FALLBACK_LOADER_PATH} refreshed"));
            }
        }
    }
    Ok(report)
}
