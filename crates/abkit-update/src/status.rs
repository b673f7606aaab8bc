//! `status`: which slot runs, which is committed, whether a trial boot is
//! pending, and what each slot holds.

use std::collections::BTreeMap;

use abkit_efi::boot::BootManager;
use serde::Serialize;

use crate::boot_control::{BootControl, Mechanism, Probe};
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
    /// How this machine asks for trial boots (issue 18).
    pub boot_control: BootControlStatus,
}

/// The boot control: chosen mode, the mechanism in use and why, the
/// loader state and the pre-loader.
#[derive(Debug, Clone, Serialize)]
pub struct BootControlStatus {
    /// `bootnext`, `state-file` or `auto` (what the operator chose).
    pub mode: BootControl,
    /// `bootnext` or `state-file` (what is in use).
    pub active: Mechanism,
    /// Why `active` is what it is (for `auto`: what the firmware did).
    pub reason: Option<String>,
    pub changed_at: Option<u64>,
    /// `auto`: a BootNext trial whose reboot is still to be checked.
    pub probe: Option<Probe>,
    /// The loader-state file, if there is one that parses.
    pub loader_state: Option<LoaderStateStatus>,
    /// The pre-loader's Boot#### entry, if any.
    pub preloader_entry: Option<u16>,
    /// `AbkitPreloader` from this boot: the pre-loader started this boot
    /// (`<slot> <why>`, e.g. `B trial`); `None` when it did not.
    pub booted_by_preloader: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoaderStateStatus {
    pub committed: Slot,
    pub trial: Option<Slot>,
    pub tries_left: u8,
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
    let state_file = state.control.active == Mechanism::StateFile;
    // With the state file, the pre-loader boots what it names.
    let committed = match state.loader_state {
        Some(st) if state_file => st.committed,
        _ => boot_policy::default_boot_slot(&state),
    };
    let pending_in_file = state.loader_state.and_then(|st| st.pending_trial());
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
        trial_pending: state.boot_next_slot() == Some(running.other())
            || pending_in_file == Some(running.other()),
        on_trial: committed != running,
        boot_next: state.boot_next,
        boot_order: state.boot_order.clone(),
        problems: state.problems.clone(),
        slots,
        entries,
        boot_control: BootControlStatus {
            mode: state.control.configured,
            active: state.control.active,
            reason: state.control.reason.clone(),
            changed_at: state.control.changed_at,
            probe: state.control.probe.clone(),
            loader_state: state.loader_state.map(|st| LoaderStateStatus {
                committed: st.committed,
                trial: st.trial,
                tries_left: st.tries_left,
            }),
            preloader_entry: state.preloader.first().copied(),
            booted_by_preloader: preloader_variable(m.vars()),
        },
    })
}

/// `AbkitPreloader`, set by the pre-loader for the slot it started.
fn preloader_variable(vars: &dyn abkit_efi::VarStore) -> Option<String> {
    let name = abkit_efi::VarName::new(
        crate::live::ABKIT_VENDOR,
        abkit_loader_core::vars::ABKIT_PRELOADER,
    );
    let var = vars.get(&name).ok()??;
    let (text, _) = abkit_efi::ucs2::decode_nul_terminated(&var.data).ok()?;
    Some(text).filter(|t| !t.is_empty())
}
