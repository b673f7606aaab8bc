//! `status`: which slot runs, which is committed, whether a trial boot is
//! pending, and what each slot holds.

use std::collections::BTreeMap;

use abkit_efi::boot::BootManager;
use serde::Serialize;

use crate::entries::{committed_slot, find_slot_entries};
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
    /// The slot BootOrder boots (slot A by the fallback path if BootOrder
    /// has none of ours).
    pub committed_slot: Slot,
    /// The next boot is a trial boot of the other slot (BootNext points at it).
    pub trial_pending: bool,
    /// This boot is a trial boot: the running slot is not (yet) committed.
    pub on_trial: bool,
    pub boot_next: Option<u16>,
    pub boot_order: Vec<u16>,
    pub slots: BTreeMap<String, SlotStatus>,
    pub entries: Vec<EntryStatus>,
}

pub fn status(m: &mut dyn Machine) -> Result<Status> {
    let running = m.running_slot();
    let loc = m.esp_location();
    let mut slots = BTreeMap::new();
    for slot in [Slot::A, Slot::B] {
        let record = read_record(m.esp(), slot)?;
        let loader_present = m.esp().read(slot.loader_path())?.is_some();
        slots.insert(
            slot.letter().to_string(),
            SlotStatus {
                record,
                loader_present,
            },
        );
    }
    let bm = BootManager::new(m.vars());
    let committed = committed_slot(&bm, &loc)?.unwrap_or(Slot::A);
    let boot_next = bm.boot_next()?;
    let mut entries = Vec::new();
    let mut other_entries = Vec::new();
    for slot in [Slot::A, Slot::B] {
        for number in find_slot_entries(&bm, &loc, slot)? {
            if slot != running {
                other_entries.push(number);
            }
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
        trial_pending: boot_next.is_some_and(|n| other_entries.contains(&n)),
        on_trial: committed != running,
        boot_next,
        boot_order: bm.boot_order()?,
        slots,
        entries,
    })
}
