//! abkit's own boot entries: one per slot, found by the ESP's partition
//! GUID and the loader path, repaired when wrong, deduplicated.
//!
//! Foreign entries (other operating systems, firmware apps) are never
//! changed (invariant I6); entries that fail to decode are skipped.

use abkit_disk::{EspLocation, Slot, slot_load_option};
use abkit_efi::boot::{BootManager, entry_boots};

use crate::Result;

/// Entry numbers of a slot's entries, lowest first.
pub fn find_slot_entries(bm: &BootManager<'_>, esp: &EspLocation, slot: Slot) -> Result<Vec<u16>> {
    Ok(bm
        .entries()?
        .entries
        .into_iter()
        .filter(|e| entry_boots(&e.option, esp.partition_guid, slot.loader_path()))
        .map(|e| e.number)
        .collect())
}

/// The one entry of `slot`, if any (the lowest-numbered when duplicated).
pub fn slot_entry(bm: &BootManager<'_>, esp: &EspLocation, slot: Slot) -> Result<Option<u16>> {
    Ok(find_slot_entries(bm, esp, slot)?.first().copied())
}

/// Makes sure `slot` has exactly one entry, right in every byte, with the
/// ACTIVE attribute as asked. Duplicates are deleted (and dropped from
/// BootOrder). Returns the entry number and whether anything was written.
pub fn ensure_slot_entry(
    bm: &mut BootManager<'_>,
    esp: &EspLocation,
    slot: Slot,
    active: bool,
) -> Result<(u16, bool)> {
    let wanted = slot_load_option(esp, slot, active);
    let found = find_slot_entries(bm, esp, slot)?;
    let mut changed = false;
    let number = match found.first() {
        Some(&n) => {
            changed |= bm.set_entry(n, &wanted)?;
            n
        }
        None => {
            changed = true;
            bm.add_entry(&wanted)?
        }
    };
    for &dup in found.iter().skip(1) {
        log::info!(
            "deleting duplicate boot entry Boot{dup:04X} of slot {}",
            slot.letter()
        );
        changed |= bm.remove_from_boot_order(dup)?;
        changed |= bm.delete_entry(dup)?;
    }
    Ok((number, changed))
}

/// Clears the ACTIVE attribute of every entry of `slot` (so firmware never
/// boots a half-written slot), keeping the entries otherwise unchanged.
pub fn deactivate_slot(
    bm: &mut BootManager<'_>,
    esp: &EspLocation,
    slot: Slot,
) -> Result<Vec<u16>> {
    let found = find_slot_entries(bm, esp, slot)?;
    for &n in &found {
        bm.set_entry_active(n, false)?;
    }
    Ok(found)
}

/// The committed slot: the slot of the first of our active entries in
/// BootOrder, or `None` when BootOrder holds none of ours.
pub fn committed_slot(bm: &BootManager<'_>, esp: &EspLocation) -> Result<Option<Slot>> {
    let a = find_slot_entries(bm, esp, Slot::A)?;
    let b = find_slot_entries(bm, esp, Slot::B)?;
    for n in bm.boot_order()? {
        let active = || -> Result<bool> {
            Ok(bm
                .entry(n)
                .ok()
                .flatten()
                .is_some_and(|o| o.attributes.is_active()))
        };
        if a.contains(&n) && active()? {
            return Ok(Some(Slot::A));
        }
        if b.contains(&n) && active()? {
            return Ok(Some(Slot::B));
        }
    }
    Ok(None)
}
