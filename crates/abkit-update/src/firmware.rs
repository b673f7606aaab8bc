//! A model of how UEFI firmware picks what to boot, for tests on the
//! offline backend.
//!
//! Like OVMF: `BootNext` is read and deleted, then booted if its entry can
//! be loaded (EDK2 boots a BootNext entry even when it is inactive, so the
//! model does too: the engine must never leave BootNext at a half-written
//! slot). Otherwise BootOrder is walked, skipping inactive entries,
//! application entries and entries whose loader file is missing. With
//! nothing bootable, the removable-media path `\EFI\BOOT\BOOTX64.EFI` is
//! tried. The loader that runs decides its slot with the real loader's
//! rule: its stamp, else its own file name.
//!
//! [`FirmwareModel`] adds firmware that does not follow the spec (issue
//! 18): it ignores BootNext, deletes entries whose partition it cannot
//! find, forgets every entry of ours, or reorders BootOrder. A full NVRAM
//! is a variable store that refuses writes: [`crate::fault::NvramFull`].
//! The loader that runs is modelled too: a slot's loader counts its pending
//! trial in the loader state, and the removable-media loader acts as the
//! pre-loader when there is one (state-file boot control, docs/loader.md);
//! BootCurrent is set to the entry started.
use abkit_disk::{FALLBACK_LOADER_PATH, Slot};
use abkit_efi::boot::{BootManager, entry_boots};
use abkit_efi::{LoadOption, LoadOptionAttributes, VarName, VarStore};
use uuid::Uuid;

use crate::Result;
use crate::boot_control::read_loader_state;
use crate::boot_policy::loader_slot;
use crate::machine::Machine;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootVia {
    BootNext,
    BootOrder,
    Fallback,
}

/// How the pre-loader chose, when one ran (state-file boot control).
pub use abkit_loader_core::loader_state::ChoiceReason;

/// The outcome of one simulated boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulatedBoot {
    /// The `Boot####` entry that was started (none for the fallback path).
    pub entry: Option<u16>,
    pub loader: String,
    pub slot: Slot,
    pub via: BootVia,
    /// The loader that ran first was the pre-loader (the removable-media
    /// loader, by its entry or the fallback path) and it followed the
    /// loader state: why it chose `slot`.
    pub preloader: Option<ChoiceReason>,
}

/// The loader file an entry starts, if it is on our ESP (by partition GUID).
fn loader_of(option: &LoadOption, esp_guid: Uuid) -> Option<String> {
    let path = option.boot_path()?;
    if path.hard_drive().and_then(|hd| hd.gpt_guid()) != Some(esp_guid) {
        // Another disk or a network boot: not part of this machine model.
        return None;
    }
    path.file_path()
}

/// What firmware does with `BootNext`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BootNextRule {
    /// The spec (and OVMF): delete it, then boot its entry.
    #[default]
    Honour,
    /// Never boots it, but deletes it like a conforming firmware would.
    IgnoreAndDelete,
    /// Never boots it and never deletes it: it stays set.
    IgnoreAndKeep,
}

/// How firmware rearranges BootOrder at every boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reorder {
    /// The first entry that is not abkit's moves to the front (firmware
    /// that keeps "its" operating system or network boot first).
    ForeignFirst,
    /// abkit's entries swap places among themselves (firmware that sorts
    /// BootOrder its own way): the other slot's entry comes first.
    ReverseOurs,
    /// The entry that was booted (also through BootNext) moves to the
    /// front after the boot: a one-time boot becomes the default.
    BootedFirst,
}

/// Firmware that does not follow the spec. `FirmwareModel::default()` is
/// the conforming firmware of [`simulate_boot`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirmwareModel {
    pub boot_next: BootNextRule,
    /// Deletes, at every boot, each entry whose `HD()` partition GUID is
    /// not on the machine (OVMF did: docs/efi.md), and drops it from
    /// BootOrder as EDK2 does. `Some(extra)`: the partitions the firmware
    /// finds are the ESP and `extra`.
    pub prune_missing_partitions: Option<Vec<Uuid>>,
    /// Deletes every entry of abkit (both slots' loaders on the ESP) at
    /// every boot, and drops them from BootOrder: a firmware reset.
    pub forget_our_entries: bool,
    pub reorder: Option<Reorder>,
}

impl FirmwareModel {
    /// Firmware that ignores BootNext; `delete`: whether it still deletes it.
    pub fn ignoring_boot_next(delete: bool) -> FirmwareModel {
        FirmwareModel {
            boot_next: if delete {
                BootNextRule::IgnoreAndDelete
            } else {
                BootNextRule::IgnoreAndKeep
            },
            ..FirmwareModel::default()
        }
    }

    /// Firmware that deletes entries of partitions it cannot find; it
    /// finds the ESP and `extra`.
    pub fn pruning_missing_partitions(extra: Vec<Uuid>) -> FirmwareModel {
        FirmwareModel {
            prune_missing_partitions: Some(extra),
            ..FirmwareModel::default()
        }
    }

    /// Firmware that forgets every entry of ours at every boot.
    pub fn forgetting_our_entries() -> FirmwareModel {
        FirmwareModel {
            forget_our_entries: true,
            ..FirmwareModel::default()
        }
    }

    /// Firmware that reorders BootOrder by `rule`.
    pub fn reordering(rule: Reorder) -> FirmwareModel {
        FirmwareModel {
            reorder: Some(rule),
            ..FirmwareModel::default()
        }
    }

    /// Boots `m` once: returns what ran, or `None` if nothing was
    /// bootable. Changes the variables as this firmware would.
    pub fn boot(&self, m: &mut dyn Machine) -> Result<Option<SimulatedBoot>> {
        let esp_guid = m.esp_location().partition_guid;
        self.before_boot(m.vars(), esp_guid)?;
        // What the boot manager would try, in order: (entry, loader, via).
        let mut candidates: Vec<(u16, String, BootVia)> = Vec::new();
        {
            let mut bm = BootManager::new(m.vars());
            // An unreadable BootNext is deleted and ignored, as firmware does.
            let boot_next = bm.boot_next().ok().flatten();
            if self.boot_next != BootNextRule::IgnoreAndKeep
                && bm.store_ref().get(&VarName::global("BootNext"))?.is_some()
            {
                bm.clear_boot_next()?;
            }
            if let Some(n) = boot_next.filter(|_| self.boot_next == BootNextRule::Honour)
                && let Some(loader) = bm
                    .entry(n)
                    .ok()
                    .flatten()
                    .and_then(|o| loader_of(&o, esp_guid))
            {
                candidates.push((n, loader, BootVia::BootNext));
            }
            for n in bm.boot_order().unwrap_or_default() {
                let Ok(Some(option)) = bm.entry(n) else {
                    continue;
                };
                if !option.attributes.is_active()
                    || option.attributes.category() != LoadOptionAttributes::CATEGORY_BOOT
                {
                    continue;
                }
                if let Some(loader) = loader_of(&option, esp_guid) {
                    candidates.push((n, loader, BootVia::BootOrder));
                }
            }
        }
        for (n, loader, via) in candidates {
            if let Some(bytes) = m.esp().read(&loader)? {
                if self.reorder == Some(Reorder::BootedFirst) {
                    let mut bm = BootManager::new(m.vars());
                    let mut order = bm.boot_order().unwrap_or_default();
                    order.retain(|&x| x != n);
                    order.insert(0, n);
                    bm.set_boot_order(&order)?;
                }
                set_boot_current(m.vars(), Some(n))?;
                return run_loader(m, Some(n), loader, &bytes, via).map(Some);
            }
        }
        if let Some(bytes) = m.esp().read(FALLBACK_LOADER_PATH)? {
            set_boot_current(m.vars(), None)?;
            return run_loader(
                m,
                None,
                FALLBACK_LOADER_PATH.to_string(),
                &bytes,
                BootVia::Fallback,
            )
            .map(Some);
        }
        Ok(None)
    }

    /// What this firmware does to the variables before it picks an entry.
    fn before_boot(&self, vars: &mut dyn VarStore, esp_guid: Uuid) -> Result<()> {
        let mut bm = BootManager::new(vars);
        let entries = bm.entries()?.entries;
        let ours = |o: &LoadOption| {
            [
                Slot::A.loader_path(),
                Slot::B.loader_path(),
                FALLBACK_LOADER_PATH,
            ]
            .iter()
            .any(|p| entry_boots(o, esp_guid, p))
        };
        let mut doomed = Vec::new();
        for e in &entries {
            let partition = e
                .option
                .boot_path()
                .and_then(|p| p.hard_drive().and_then(|hd| hd.gpt_guid()));
            let missing = match (&self.prune_missing_partitions, partition) {
                (Some(extra), Some(guid)) => guid != esp_guid && !extra.contains(&guid),
                _ => false,
            };
            if missing || (self.forget_our_entries && ours(&e.option)) {
                doomed.push(e.number);
            }
        }
        for &n in &doomed {
            bm.delete_entry(n)?;
            bm.remove_from_boot_order(n)?;
        }
        let Some(rule) = self.reorder else {
            return Ok(());
        };
        let order = bm.boot_order().unwrap_or_default();
        let is_ours = |n: u16| {
            entries
                .iter()
                .any(|e| e.number == n && ours(&e.option) && !doomed.contains(&n))
        };
        let new = match rule {
            Reorder::ForeignFirst => match order.iter().position(|&n| !is_ours(n)) {
                Some(i) => {
                    let mut new = order.clone();
                    let foreign = new.remove(i);
                    new.insert(0, foreign);
                    new
                }
                None => order.clone(),
            },
            Reorder::ReverseOurs => {
                let mut reversed = order.iter().copied().filter(|&n| is_ours(n)).rev();
                order
                    .iter()
                    .map(|&n| {
                        if is_ours(n) {
                            reversed.next().unwrap_or(n)
                        } else {
                            n
                        }
                    })
                    .collect()
            }
            Reorder::BootedFirst => order.clone(),
        };
        if new != order {
            bm.set_boot_order(&new)?;
        }
        Ok(())
    }
}

/// Boots `m` once with conforming firmware: returns what ran, or `None` if
/// nothing was bootable. Like firmware, this deletes BootNext.
pub fn simulate_boot(m: &mut dyn Machine) -> Result<Option<SimulatedBoot>> {
    FirmwareModel::default().boot(m)
}

/// Firmware sets BootCurrent (volatile) to the entry it starts.
fn set_boot_current(vars: &mut dyn VarStore, entry: Option<u16>) -> Result<()> {
    let name = VarName::global("BootCurrent");
    match entry {
        Some(n) => {
            let var = abkit_efi::Variable {
                attributes: abkit_efi::store::attributes::BOOTSERVICE_ACCESS
                    | abkit_efi::store::attributes::RUNTIME_ACCESS,
                data: n.to_le_bytes().to_vec(),
            };
            vars.set(&name, &var)?;
        }
        None => {
            vars.delete(&name)?;
        }
    }
    Ok(())
}

/// What the loader at `loader` does, by the real loader's rules: a slot's
/// own loader file counts its pending trial in the loader state and boots
/// its slot (stamp, else file name); any other name acts as the pre-loader
/// when there is a loader state (stores the decremented state, starts the
/// chosen slot's loader, the committed one if that is missing), else boots
/// its own slot.
fn run_loader(
    m: &mut dyn Machine,
    entry: Option<u16>,
    loader: String,
    bytes: &[u8],
    via: BootVia,
) -> Result<SimulatedBoot> {
    let own = loader_slot(bytes, &loader);
    let mut boot = SimulatedBoot {
        entry,
        slot: own,
        loader: loader.clone(),
        via,
        preloader: None,
    };
    // A loader state that does not parse is ignored by the loader.
    let state = read_loader_state(m.esp()).ok().flatten();
    match Slot::of_slot_loader(&loader) {
        Some(file_slot) => {
            if file_slot == own
                && let Some(next) = state.and_then(|st| st.counted_by(own))
            {
                store_or_lose(m, &next)?;
            }
        }
        None => {
            let Some(state) = state else {
                return Ok(boot);
            };
            let choice = state.next_boot();
            if let Some(next) = choice.store {
                store_or_lose(m, &next)?;
            }
            for slot in [choice.slot, state.committed] {
                if m.esp().exists(slot.loader_path())? {
                    boot.slot = slot;
                    boot.loader = slot.loader_path().to_string();
                    boot.preloader = Some(if slot == choice.slot {
                        choice.reason
                    } else {
                        ChoiceReason::Committed
                    });
                    return Ok(boot);
                }
            }
        }
    }
    Ok(boot)
}

/// The loader's write of the state (through the same code the host uses).
fn store_or_lose(m: &mut dyn Machine, state: &abkit_loader_core::LoaderState) -> Result<()> {
    crate::boot_control::write_loader_state(m.esp(), state).map(|_| ())
}
