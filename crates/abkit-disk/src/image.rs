//! Opening an abkit disk (image file or block device): its partition table,
//! the slots as byte ranges, and the ESP.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Serialize;
use uuid::Uuid;

use crate::esp::{Esp, Storage};
use crate::fat_time::{FIXED_TIME, UTC_CLOCK};
use crate::gpt_read::{self, DiskWarning, GptCopy};
use crate::layout::{DATA_TYPE, ESP_TYPE, SECTOR_SIZE, SLOT_A_TYPE, SLOT_B_TYPE};
use crate::{DiskError, Result};

/// What a partition is for, decided by its type GUID alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartitionRole {
    Esp,
    SlotA,
    SlotB,
    Data,
    Other,
}

impl PartitionRole {
    pub fn from_type(type_guid: Uuid) -> PartitionRole {
        match type_guid {
            ESP_TYPE => PartitionRole::Esp,
            SLOT_A_TYPE => PartitionRole::SlotA,
            SLOT_B_TYPE => PartitionRole::SlotB,
            DATA_TYPE => PartitionRole::Data,
            _ => PartitionRole::Other,
        }
    }

    /// Short human name of the type ("EFI system", "abkit slot A", ...).
    pub fn type_name(self) -> &'static str {
        match self {
            PartitionRole::Esp => "EFI system",
            PartitionRole::SlotA => "abkit slot A",
            PartitionRole::SlotB => "abkit slot B",
            PartitionRole::Data => "Linux filesystem",
            PartitionRole::Other => "other",
        }
    }
}

pub use abkit_loader_core::Slot;

impl PartitionRole {
    /// The role of the partition that holds `slot`.
    pub fn of_slot(slot: Slot) -> PartitionRole {
        match slot {
            Slot::A => PartitionRole::SlotA,
            Slot::B => PartitionRole::SlotB,
        }
    }
}

/// One GPT partition entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "PartitionJson")]
pub struct Partition {
    /// GPT partition number (1-based; `HD(n, ...)` in device paths).
    pub number: u32,
    pub name: String,
    pub type_guid: Uuid,
    pub role: PartitionRole,
    /// The unique partition GUID.
    pub guid: Uuid,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
}

impl Partition {
    /// Byte offset on the disk.
    pub fn start(&self) -> u64 {
        self.first_lba * SECTOR_SIZE
    }
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size_lba() * SECTOR_SIZE
    }
    /// Size in sectors.
    pub fn size_lba(&self) -> u64 {
        self.last_lba + 1 - self.first_lba
    }
    /// The byte range on the disk.
    pub fn range(&self) -> Range<u64> {
        self.start()..self.start() + self.size()
    }
}

/// JSON form of a partition: the entry plus its byte range.
#[derive(Serialize)]
struct PartitionJson {
    number: u32,
    name: String,
    type_guid: Uuid,
    #[serde(rename = "type")]
    type_name: &'static str,
    role: PartitionRole,
    guid: Uuid,
    first_lba: u64,
    last_lba: u64,
    start: u64,
    size: u64,
}

impl From<Partition> for PartitionJson {
    fn from(p: Partition) -> Self {
        PartitionJson {
            start: p.start(),
            size: p.size(),
            type_name: p.role.type_name(),
            number: p.number,
            name: p.name,
            type_guid: p.type_guid,
            role: p.role,
            guid: p.guid,
            first_lba: p.first_lba,
            last_lba: p.last_lba,
        }
    }
}

/// What a boot entry's `HD()` device path node needs to name the ESP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EspLocation {
    pub partition_number: u32,
    pub partition_guid: Uuid,
    /// In sectors of [`SECTOR_SIZE`].
    pub start_lba: u64,
    /// In sectors of [`SECTOR_SIZE`].
    pub size_lba: u64,
}

/// An abkit disk opened for reading (and writing, with [`DiskImage::open`]).
#[derive(Debug)]
pub struct DiskImage {
    path: PathBuf,
    file: File,
    size: u64,
    disk_guid: Uuid,
    partitions: Vec<Partition>,
    /// Indexes into `partitions` of the ESP and slots A and B.
    esp: usize,
    slot_a: usize,
    slot_b: usize,
    /// What was wrong but could be worked around (a damaged GPT copy).
    warnings: Vec<DiskWarning>,
}

impl DiskImage {
    /// Opens a disk image file or block device for reading and writing.
    pub fn open(path: impl AsRef<Path>) -> Result<DiskImage> {
        Self::open_with(path.as_ref(), true)
    }

    /// Opens a disk image file or block device for reading only.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<DiskImage> {
        Self::open_with(path.as_ref(), false)
    }

    fn open_with(path: &Path, writable: bool) -> Result<DiskImage> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(DiskError::io(format!("open {}", path.display())))?;
        // Block devices report size 0 in metadata: ask by seeking.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(DiskError::io(format!("size of {}", path.display())))?;
        if size < 3 * SECTOR_SIZE {
            return Err(DiskError::NoGpt {
                path: path.to_path_buf(),
                reason: format!("the disk is only {size} bytes"),
            });
        }
        let gpt = gpt_read::read(&file, path, size)?;
        let mut partitions = Vec::new();
        for partition in gpt.partitions {
            let end = partition
                .last_lba
                .checked_add(1)
                .and_then(|l| l.checked_mul(SECTOR_SIZE))
                .unwrap_or(u64::MAX);
            if end > size {
                return Err(DiskError::PartitionOutsideDisk {
                    number: partition.number,
                    end,
                    disk: size,
                });
            }
            partitions.push(partition);
        }
        partitions.sort_by_key(|p| p.number);
        Ok(DiskImage {
            path: path.to_path_buf(),
            file,
            size,
            disk_guid: gpt.disk_guid,
            warnings: gpt.warnings,
            esp: find_unique(&partitions, PartitionRole::Esp)?,
            slot_a: find_unique(&partitions, PartitionRole::SlotA)?,
            slot_b: find_unique(&partitions, PartitionRole::SlotB)?,
            partitions,
        })
    }
}

/// Index of the one partition with `role`'s type GUID.
fn find_unique(partitions: &[Partition], role: PartitionRole) -> Result<usize> {
    let mut found = partitions
        .iter()
        .enumerate()
        .filter(|(_, p)| p.role == role);
    let first = found.next().ok_or(DiskError::MissingPartition {
        role: role.type_name(),
        type_guid: match role {
            PartitionRole::Esp => ESP_TYPE,
            PartitionRole::SlotA => SLOT_A_TYPE,
            PartitionRole::SlotB => SLOT_B_TYPE,
            _ => DATA_TYPE,
        },
    })?;
    if let Some((_, second)) = found.next() {
        return Err(DiskError::DuplicatePartition {
            role: role.type_name(),
            first: first.1.number,
            second: second.number,
        });
    }
    Ok(first.0)
}

impl DiskImage {
    /// The path this disk was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Total size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
    /// What was wrong with the disk but could be worked around, e.g. a
    /// damaged primary or backup GPT (the other copy is used). Each was
    /// also logged with `log::warn!` when the disk was opened.
    pub fn warnings(&self) -> &[DiskWarning] {
        &self.warnings
    }

    /// Rewrites a damaged copy of the GPT from the good one (needs a disk
    /// opened with [`DiskImage::open`]); returns the copy it rewrote, or
    /// `None` when both were good. Partitions and their contents are not
    /// touched; [`DiskImage::warnings`] still tells what was found on open.
    pub fn repair_gpt(&self) -> Result<Option<GptCopy>> {
        gpt_read::repair(&self.file, &self.path, self.size)
    }

    /// The GPT disk GUID.
    pub fn disk_guid(&self) -> Uuid {
        self.disk_guid
    }
    /// Every used partition entry, by number.
    pub fn partitions(&self) -> &[Partition] {
        &self.partitions
    }
    /// The open disk file (for reading or writing a slot's byte range).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The ESP partition (there is exactly one: checked on open).
    pub fn esp_partition(&self) -> &Partition {
        &self.partitions[self.esp]
    }

    /// The partition of `slot` (exactly one per slot: checked on open).
    pub fn slot(&self, slot: Slot) -> &Partition {
        match slot {
            Slot::A => &self.partitions[self.slot_a],
            Slot::B => &self.partitions[self.slot_b],
        }
    }

    /// The byte range of `slot` on the disk.
    pub fn slot_range(&self, slot: Slot) -> Range<u64> {
        self.slot(slot).range()
    }

    /// The data partition, if there is one.
    pub fn data_partition(&self) -> Option<&Partition> {
        self.partitions
            .iter()
            .find(|p| p.role == PartitionRole::Data)
    }

    /// Number, GUID, start and size of the ESP, for boot entries.
    pub fn esp_location(&self) -> EspLocation {
        let esp = self.esp_partition();
        EspLocation {
            partition_number: esp.number,
            partition_guid: esp.guid,
            start_lba: esp.first_lba,
            size_lba: esp.size_lba(),
        }
    }

    /// Mounts the ESP's FAT file system (writable if the disk was opened
    /// with [`DiskImage::open`]). Keep one `Esp` at a time per disk.
    pub fn esp(&self) -> Result<Esp> {
        self.esp_with_clock(&UTC_CLOCK)
    }

    /// Like [`DiskImage::esp`], but files created or changed through it
    /// carry the fixed time of seeded builds (2000-01-01 00:00), so that a
    /// reproducible build stays byte-identical after later ESP writes.
    pub fn esp_fixed_time(&self) -> Result<Esp> {
        self.esp_with_clock(&FIXED_TIME)
    }

    fn esp_with_clock(&self, clock: &'static dyn fatfs::TimeProvider) -> Result<Esp> {
        let file = self
            .file
            .try_clone()
            .map(std::sync::Arc::new)
            .map_err(DiskError::io("duplicate the disk handle"))?;
        let esp = self.esp_partition();
        Esp::mount(Storage::File(file), esp.start(), esp.size(), clock)
    }
}
