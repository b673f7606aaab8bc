//! `rollback`: boot the other slot once, on purpose. It must hold a version
//! that was marked good before; it becomes permanent only if it passes its
//! health checks again (mark-good), else the next boot returns here.

use abkit_efi::boot::BootManager;

use crate::entries::ensure_slot_entry;
use crate::machine::Machine;
use crate::record::read_record;
use crate::{Result, Slot, UpdateError};

/// What a rollback set up.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RollbackReport {
    pub slot: Slot,
    pub version: Option<String>,
    pub boot_next: u16,
}

pub fn rollback(m: &mut dyn Machine) -> Result<RollbackReport> {
    let other = m.running_slot().other();
    let loc = m.esp_location();
    let record = read_record(m.esp(), other)?;
    if !record.was_good() || m.esp().read(other.loader_path())?.is_none() {
        return Err(UpdateError::NothingToRollBack {
            slot: other,
            state: record.state.to_string(),
        });
    }
    let mut bm = BootManager::new(m.vars());
    let (entry, _) = ensure_slot_entry(&mut bm, &loc, other, true)?;
    bm.set_boot_next(entry)?;
    Ok(RollbackReport {
        slot: other,
        version: record.version,
        boot_next: entry,
    })
}
