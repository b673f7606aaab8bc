//! The bytes of abkit's two boot entries. Only abkit-update's boot policy
//! writes them into a variable store.
//!
//! Entry "abkit slot A" boots `HD(n,GPT,<ESP GUID>,start,size)/\EFI\abkit\boot-a.efi`,
//! "abkit slot B" the same partition's `\EFI\abkit\boot-b.efi`. On a fresh
//! disk slot B is empty, so its entry is written inactive (the update engine
//! activates it once slot B holds a verified system); slot A goes first in
//! BootOrder, then slot B, then every other entry in its old order.

use abkit_efi::{DevicePath, HardDrive, LoadOption, PartitionSignature};
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

/// Description of the pre-loader's boot entry (state-file boot control).
pub const PRELOADER_DESCRIPTION: &str = "abkit pre-loader";

/// The load option that starts the removable-media loader
/// `\EFI\BOOT\BOOTX64.EFI` as the pre-loader (state-file boot control:
/// it reads `\EFI\abkit\loader-state` and starts the chosen slot).
pub fn preloader_load_option(esp: &EspLocation) -> LoadOption {
    let hd = HardDrive {
        partition_number: esp.partition_number,
        partition_start: esp.start_lba,
        partition_size: esp.size_lba,
        signature: PartitionSignature::Gpt(esp.partition_guid),
    };
    LoadOption::new(
        PRELOADER_DESCRIPTION,
        DevicePath::hard_drive_file(hd, crate::FALLBACK_LOADER_PATH),
    )
}

/// The entries abkit-update's factory wrote for a fresh disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstalledEntries {
    /// `Boot####` number of slot A's entry.
    pub slot_a: u16,
    /// `Boot####` number of slot B's entry.
    pub slot_b: u16,
    pub boot_order: Vec<u16>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn a_slot_entry_boots_its_loader_on_the_esp() {
        let esp = EspLocation {
            partition_number: 1,
            partition_guid: Uuid::from_u128(0x1234),
            start_lba: 2048,
            size_lba: 131072,
        };
        let b = slot_load_option(&esp, Slot::B, false);
        assert_eq!(b.description, "abkit slot B");
        assert!(!b.attributes.is_active());
        assert!(abkit_efi::boot::entry_boots(
            &b,
            esp.partition_guid,
            "\\EFI\\abkit\\boot-b.efi"
        ));
        assert!(slot_load_option(&esp, Slot::A, true).attributes.is_active());
    }
}
