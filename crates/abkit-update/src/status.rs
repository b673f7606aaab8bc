//! `status`: which slot runs, which is committed, whether a trial boot is
//! pending, and what each slot holds.

use std::collections::BTreeMap;

use abkit_efi::boot::BootManager;
use serde::Serialize;

use crate::boot_policy;
use crate::machine::Machine;
use crate::record::{SlotRecord, read_record};
use crate::{Result, Slot};

/// One of our boot entries.
#[derive(Debug, Clone, Serialize)]
pub struct EntryStatus {
    pub number: u16,
    pub name: String,
    pub slot: Slot,
    pub active: bool,
    pub description: String,
    pub device_path: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    #[serde(flatten)]
    pub record: SlotRecord,
    /// Whether the slot's loader file is on the ESP.
    pub loader_present: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub running_slot: Slot,
    /// The slot the firmware boots by default: BootOrder's first active
    /// entry of ours, else the fallback loader's slot.
    pub committed_slot: Slot,
    /// Whether BootOrder holds an active entry of ours (else the machine
    /// boots through the removable-media fallback path).
    pub committed_by_boot_order: bool,
    /// The next boot is a trial boot of the other slot (BootNext points at it).
    pub trial_pending: bool,
    /// This boot is a trial boot: the running slot is not (yet) committed.
    pub on_trial: bool,
    pub boot_next: Option<u16>,
    pub boot_order: Vec<u16>,
    /// Problems with the boot variables (malformed BootOrder or BootNext,
    /// entries that do not decode), one line each.
    pub problems: Vec<String>,
    pub slots: BTreeMap<String, SlotStatus>,
    pub entries: Vec<EntryStatus>,
}

pub fn status(m: &mut dyn Machine) -> Result<Status> {
    let running = m.running_slot();
    let mut slots = BTreeMap::new();
    for slot in [Slot::A, Slot::B] {
        let record = read_record(m.esp(), slot)?;
        let loader_present = m.esp().exists(slot.loader_path())?;
        slots.insert(
            slot.letter().to_string(),
            SlotStatus {
                record,
                loader_present,
            },
        );
    }
    let state = boot_policy::read_state(m)?;
    let committed = boot_policy::default_boot_slot(&state);
    let bm = BootManager::new(m.vars());
    let mut entries = Vec::new();
    for slot in [Slot::A, Slot::B] {
        for &number in state.slot_entries(slot) {
            if let Some(option) = bm.entry(number)? {
                entries.push(EntryStatus {
                    number,
                    name: format!("Boot{number:04X}"),
                    slot,
                    active: option.attributes.is_active(),
                    description: option.description.clone(),
                    device_path: option
                        .boot_path()
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                });
            }
        }
    }
    Ok(Status {
        running_slot: running,
        committed_slot: committed,
        committed_by_boot_order: state.committed.is_some(),
        trial_pending: state.boot_next_slot() == Some(running.other()),
        on_trial: committed != running,
        boot_next: state.boot_next,
        boot_order: state.boot_order.clone(),
        problems: state.problems.clone(),
        slots,
        entries,
    })
}
