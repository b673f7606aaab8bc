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

use abkit_disk::{FALLBACK_LOADER_PATH, Slot};
use abkit_efi::boot::BootManager;
use abkit_efi::{LoadOption, LoadOptionAttributes, VarName};
use uuid::Uuid;

use crate::Result;
use crate::boot_policy::loader_slot;
use crate::machine::Machine;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootVia {
    BootNext,
    BootOrder,
    Fallback,
}

/// The outcome of one simulated boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulatedBoot {
    /// The `Boot####` entry that was started (none for the fallback path).
    pub entry: Option<u16>,
    pub loader: String,
    pub slot: Slot,
    pub via: BootVia,
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

/// Boots `m` once: returns what ran, or `None` if nothing was bootable.
/// Like firmware, this deletes BootNext.
pub fn simulate_boot(m: &mut dyn Machine) -> Result<Option<SimulatedBoot>> {
    let esp_guid = m.esp_location().partition_guid;
    // What the boot manager would try, in order: (entry, loader, via).
    let mut candidates: Vec<(u16, String, BootVia)> = Vec::new();
    {
        let mut bm = BootManager::new(m.vars());
        // An unreadable BootNext is deleted and ignored, as firmware does.
        let boot_next = bm.boot_next().ok().flatten();
        if bm.store_ref().get(&VarName::global("BootNext"))?.is_some() {
            bm.clear_boot_next()?;
        }
        if let Some(n) = boot_next {
            if let Some(loader) = bm
                .entry(n)
                .ok()
                .flatten()
                .and_then(|o| loader_of(&o, esp_guid))
            {
                candidates.push((n, loader, BootVia::BootNext));
            }
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
            return Ok(Some(SimulatedBoot {
                entry: Some(n),
                slot: loader_slot(&bytes, &loader),
                loader,
                via,
            }));
        }
    }
    if let Some(bytes) = m.esp().read(FALLBACK_LOADER_PATH)? {
        return Ok(Some(SimulatedBoot {
            entry: None,
            loader: FALLBACK_LOADER_PATH.to_string(),
            slot: loader_slot(&bytes, FALLBACK_LOADER_PATH),
            via: BootVia::Fallback,
        }));
    }
    Ok(None)
}
