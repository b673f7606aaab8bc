//! abkit's two boot entries, written the way an installer writes them.
//!
//! Entry "abkit slot A" boots `HD(n,GPT,<ESP GUID>,start,size)/\EFI\abkit\boot-a.efi`,
//! "abkit slot B" the same partition's `\EFI\abkit\boot-b.efi`. On a fresh
//! disk slot B is empty, so its entry is written inactive (the update engine
//! activates it once slot B holds a verified system); slot A goes first in
//! BootOrder, then slot B, then every other entry in its old order.

use abkit_efi::{
    BootError, BootManager, DevicePath, HardDrive, LoadOption, PartitionSignature, VarStore,
};
use serde::Serialize;

use crate::image::{EspLocation, Slot};

/// Description of a slot's boot entry.
pub fn entry_description(slot: Slot) -> &'static str {
    match slot {
        Slot::A => "abkit slot A",
        Slot::B => "abkit slot B",
    }
}

/// The load option that boots `slot`'s loader from the ESP at `esp`.
pub fn slot_load_option(esp: &EspLocation, slot: Slot, active: bool) -> LoadOption {
    let hd = HardDrive {
        partition_number: esp.partition_number,
        partition_start: esp.start_lba,
        partition_size: esp.size_lba,
        signature: PartitionSignature::Gpt(esp.partition_guid),
    };
    let mut option = LoadOption::new(
        entry_description(slot),
        DevicePath::hard_drive_file(hd, slot.loader_path()),
    );
    option.attributes = option.attributes.with_active(active);
    option
}

/// The entries `install_boot_entries` wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstalledEntries {
    /// `Boot####` number of slot A's entry.
    pub slot_a: u16,
    /// `Boot####` number of slot B's entry.
    pub slot_b: u16,
    pub boot_order: Vec<u16>,
}

/// Writes (or repairs) both slot entries for the ESP at `esp`, reusing an
/// entry that already boots the same loader on the same partition and
/// deleting duplicates of it, and puts A then B first in BootOrder.
pub fn install_boot_entries(
    store: &mut dyn VarStore,
    esp: &EspLocation,
    slot_b_active: bool,
) -> Result<InstalledEntries, BootError> {
    let mut manager = BootManager::new(store);
    let mut numbers = [0u16; 2];
    for (i, (slot, active)) in [(Slot::A, true), (Slot::B, slot_b_active)]
        .into_iter()
        .enumerate()
    {
        let option = slot_load_option(esp, slot, active);
        let existing = manager.find_entries(esp.partition_guid, slot.loader_path())?;
        numbers[i] = match existing.split_first() {
            Some((&first, duplicates)) => {
                for &dup in duplicates {
                    manager.delete_entry(dup)?;
                    manager.remove_from_boot_order(dup)?;
                }
                manager.set_entry(first, &option)?;
                first
            }
            None => manager.add_entry(&option)?,
        };
    }
    let old_order = manager.boot_order()?;
    let mut order = numbers.to_vec();
    order.extend(old_order.into_iter().filter(|n| !numbers.contains(n)));
    manager.set_boot_order(&order)?;
    Ok(InstalledEntries {
        slot_a: numbers[0],
        slot_b: numbers[1],
        boot_order: order,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use abkit_efi::MemoryStore;
    use uuid::Uuid;

    fn esp() -> EspLocation {
        EspLocation {
            partition_number: 1,
            partition_guid: Uuid::from_u128(0x1234),
            start_lba: 2048,
            size_lba: 131072,
        }
    }

    #[test]
    fn writes_both_entries_a_first_and_b_inactive() {
        let mut store = MemoryStore::default();
        {
            let mut m = BootManager::new(&mut store);
            let foreign = LoadOption::new(
                "other OS",
                DevicePath::hard_drive_file(
                    HardDrive {
                        partition_number: 1,
                        partition_start: 2048,
                        partition_size: 100,
                        signature: PartitionSignature::Gpt(Uuid::from_u128(9)),
                    },
                    "\\EFI\\other\\grub.efi",
                ),
            );
            let n = m.add_entry(&foreign).unwrap();
            m.set_boot_order(&[n]).unwrap();
        }
        let got = install_boot_entries(&mut store, &esp(), false).unwrap();
        assert_eq!(
            got,
            InstalledEntries {
                slot_a: 1,
                slot_b: 2,
                boot_order: vec![1, 2, 0]
            }
        );
        let m = BootManager::new(&mut store);
        let a = m.entry(1).unwrap().unwrap();
        assert_eq!(a.description, "abkit slot A");
        assert!(a.attributes.is_active());
        let b = m.entry(2).unwrap().unwrap();
        assert_eq!(b.description, "abkit slot B");
        assert!(!b.attributes.is_active());
        assert_eq!(
            m.find_entries(esp().partition_guid, "\\EFI\\abkit\\boot-b.efi")
                .unwrap(),
            [2]
        );
        assert_eq!(m.entry(0).unwrap().unwrap().description, "other OS");
    }

    #[test]
    fn a_second_run_reuses_entries_and_removes_duplicates() {
        let mut store = MemoryStore::default();
        let first = install_boot_entries(&mut store, &esp(), false).unwrap();
        {
            let mut m = BootManager::new(&mut store);
            let dup = m
                .add_entry(&slot_load_option(&esp(), Slot::A, true))
                .unwrap();
            let mut order = m.boot_order().unwrap();
            order.push(dup);
            m.set_boot_order(&order).unwrap();
        }
        let second = install_boot_entries(&mut store, &esp(), true).unwrap();
        assert_eq!(second, first);
        let m = BootManager::new(&mut store);
        assert_eq!(m.entry_numbers().unwrap(), [first.slot_a, first.slot_b]);
        assert!(
            m.entry(first.slot_b)
                .unwrap()
                .unwrap()
                .attributes
                .is_active()
        );
    }
}
