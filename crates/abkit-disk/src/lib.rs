//! A/B disk images: build them, and read them back from code.
//!
//! `build` writes a sparse GPT disk (ESP, slot A, slot B, data) around a
//! loader and a system image; `DiskImage` opens a disk image or block device
//! and gives its partitions, the slots as byte ranges and the ESP's files.

mod error;
#[cfg(any(test, feature = "testing"))]
pub mod fixtures;
mod image;
mod inspect;
mod layout;
mod sparse;

mod boot_entries;
mod build;
mod esp;
mod fat_guard;
mod fat_time;
mod gpt_read;
mod sys;

pub use boot_entries::{
    InstalledEntries, PRELOADER_DESCRIPTION, entry_description, preloader_load_option,
    slot_load_option,
};
pub use build::{BuildOptions, BuildReport, EspFile, build, open_block_device_exclusive};
pub use error::{ChainProblem, DiskError};
pub use esp::{Esp, EspEntry, TEMP_SUFFIX};
pub use gpt_read::{DiskWarning, GptCopy, GptDamage};
pub use image::{DiskImage, EspLocation, Partition, PartitionRole, Slot};
pub use inspect::USED_PART_BLOCK;
pub use inspect::{DiskReport, PartitionTable, SlotContent, human_size, inspect, slot_content};
pub use layout::{
    ALIGNMENT, DATA_TYPE, ESP_TYPE, Layout, LayoutOptions, MIN_ESP_SIZE, MIN_PARTITION_SIZE,
    PlannedPartition, SECTOR_SIZE, SLOT_A_TYPE, SLOT_B_TYPE,
};

/// `Result` with this crate's error.
pub type Result<T, E = DiskError> = std::result::Result<T, E>;

/// Loader path of slot A inside the ESP (FAT paths are case-insensitive).
pub use abkit_loader_core::slot::LOADER_PATH_A;
/// Loader path of slot B inside the ESP.
pub use abkit_loader_core::slot::LOADER_PATH_B;
/// The UEFI removable-media fallback path for x86_64: firmware boots it
/// when no boot entry works, so a fresh disk boots slot A without any.
pub const FALLBACK_LOADER_PATH: &str = "\\EFI\\BOOT\\BOOTX64.EFI";
