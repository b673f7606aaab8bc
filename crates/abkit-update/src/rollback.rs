//! `rollback`: boot the other slot once, on purpose. It must hold a version
//! that was marked good before; it becomes permanent only if it passes its
//! health checks again (mark-good), else the next boot returns here.

use crate::boot_policy::{self, Trial};
use crate::machine::Machine;
use crate::record::{SlotState, read_record};
use crate::{Result, Slot, UpdateError};

/// What a rollback set up.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RollbackReport {
    pub slot: Slot,
    pub version: Option<String>,
    pub boot_next: u16,
    /// Where a boot after that trial goes unless it is marked good: the
    /// slot the firmware boots by default.
    pub otherwise: Slot,
}

pub fn rollback(m: &mut dyn Machine) -> Result<RollbackReport> {
    m.lock()?;
    let other = m.running_slot().other();
    let record = read_record(m.esp(), other)?;
    if record.state != SlotState::Good || !m.esp().exists(other.loader_path())? {
        return Err(UpdateError::NothingToRollBack {
            slot: other,
            state: if record.state == SlotState::Good {
                "its loader is missing".to_string()
            } else {
                record.state.to_string()
            },
        });
    }
    let entry = boot_policy::arm_trial(m, other, Trial::Rollback)?;
    let otherwise = boot_policy::default_boot_slot(&boot_policy::read_state(m)?);
    Ok(RollbackReport {
        slot: other,
        version: record.version.map(|v| v.to_string()),
        boot_next: entry,
        otherwise,
    })
}
