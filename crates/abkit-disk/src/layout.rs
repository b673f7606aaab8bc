//! Where the partitions of an abkit disk go, and the type GUIDs that find them.
//!
//! Layout: protective MBR and primary GPT in the first MiB, then ESP,
//! `<PREFIX>-SYSTEM-A`, `<PREFIX>-SYSTEM-B`, `<PREFIX>-DATA`, each starting and
//! ending on a 1 MiB boundary, and the backup GPT in the disk's last sectors.

use uuid::{Uuid, uuid};

use crate::{DiskError, Result};

/// Logical sector size we write and read (the GPT's LBA unit).
pub const SECTOR_SIZE: u64 = 512;
/// Every partition starts and ends on a multiple of this (1 MiB).
pub const ALIGNMENT: u64 = 1 << 20;
/// Smallest ESP we build: FAT32 needs at least 65525 clusters (512-byte
/// clusters at this size) plus its tables.
pub const MIN_ESP_SIZE: u64 = 33 << 20;
/// Smallest slot and data partition.
pub const MIN_PARTITION_SIZE: u64 = ALIGNMENT;

/// The EFI System Partition type (UEFI spec).
pub const ESP_TYPE: Uuid = uuid!("c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
/// abkit system slot A. abkit finds the slots by these two type GUIDs, never by label.
pub const SLOT_A_TYPE: Uuid = uuid!("88f61097-0cee-451e-85fd-cb2565bd26d4");
/// abkit system slot B.
pub const SLOT_B_TYPE: Uuid = uuid!("0ed95f51-9c3a-4161-b123-d25b0aa088cf");
/// The data partition: the generic "Linux filesystem data" type.
pub const DATA_TYPE: Uuid = uuid!("0fc63daf-8483-4772-8e79-3d69d8477de4");

/// Sectors the backup GPT needs at the end of the disk (header + 128 entries).
const BACKUP_GPT_SECTORS: u64 = 33;
/// Room for a partition name in a GPT entry (UTF-16 units).
const GPT_NAME_UNITS: usize = 36;

/// What a disk should hold; sizes in bytes, rounded up to [`ALIGNMENT`].
#[derive(Debug, Clone)]
pub struct LayoutOptions {
    pub esp_size: u64,
    pub system_size: u64,
    /// Size of the data partition; ignored when `disk_size` is set.
    pub data_size: u64,
    /// Total disk size: the data partition then fills what the others leave.
    pub disk_size: Option<u64>,
    /// Partition names become `<prefix>-SYSTEM-A` and so on.
    pub label_prefix: String,
}

impl Default for LayoutOptions {
    fn default() -> Self {
        LayoutOptions {
            esp_size: 128 << 20,
            system_size: 1 << 30,
            data_size: 256 << 20,
            disk_size: None,
            label_prefix: "ABKIT".into(),
        }
    }
}

/// One partition of a planned layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedPartition {
    /// GPT partition number (1-based).
    pub number: u32,
    pub name: String,
    pub type_guid: Uuid,
    pub first_lba: u64,
    /// Inclusive, as in the GPT.
    pub last_lba: u64,
}

impl PlannedPartition {
    /// Byte offset of the partition on the disk.
    pub fn start(&self) -> u64 {
        self.first_lba * SECTOR_SIZE
    }
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * SECTOR_SIZE
    }
}

/// The four partitions and the disk size they need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub disk_size: u64,
    pub esp: PlannedPartition,
    pub slot_a: PlannedPartition,
    pub slot_b: PlannedPartition,
    pub data: PlannedPartition,
}

fn round_up(size: u64) -> Result<u64> {
    size.checked_next_multiple_of(ALIGNMENT)
        .ok_or(DiskError::SizeOverflow("a partition size"))
}

fn check_min(what: &'static str, size: u64, min: u64) -> Result<()> {
    if size < min {
        return Err(DiskError::SizeTooSmall { what, size, min });
    }
    Ok(())
}

fn check_prefix(prefix: &str) -> Result<()> {
    let bad = |reason| {
        Err(DiskError::BadLabelPrefix {
            prefix: prefix.to_string(),
            reason,
        })
    };
    if prefix.is_empty() {
        return bad("it is empty");
    }
    if !prefix
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return bad("use only ASCII letters, digits, '-' and '_'");
    }
    if prefix.len() + "-SYSTEM-A".len() > GPT_NAME_UNITS {
        return bad("partition names hold at most 36 characters (prefix at most 27)");
    }
    Ok(())
}

impl Layout {
    /// Plans the partitions, refusing sizes that are too small or do not fit.
    pub fn plan(options: &LayoutOptions) -> Result<Layout> {
        check_prefix(&options.label_prefix)?;
        check_min("the ESP size", options.esp_size, MIN_ESP_SIZE)?;
        check_min(
            "the system slot size",
            options.system_size,
            MIN_PARTITION_SIZE,
        )?;
        let esp_size = round_up(options.esp_size)?;
        let system_size = round_up(options.system_size)?;

        let part = |number, name: String, type_guid, start: u64, size: u64| PlannedPartition {
            number,
            name,
            type_guid,
            first_lba: start / SECTOR_SIZE,
            last_lba: (start + size) / SECTOR_SIZE - 1,
        };
        let esp_start = ALIGNMENT;
        let slot_a_start = esp_start + esp_size;
        let slot_b_start = slot_a_start
            .checked_add(system_size)
            .ok_or(DiskError::SizeOverflow("slot A"))?;
        let data_start = slot_b_start
            .checked_add(system_size)
            .ok_or(DiskError::SizeOverflow("slot B"))?;
        let tail = BACKUP_GPT_SECTORS * SECTOR_SIZE;

        let (data_size, disk_size) = match options.disk_size {
            None => {
                check_min(
                    "the data partition size",
                    options.data_size,
                    MIN_PARTITION_SIZE,
                )?;
                let data_size = round_up(options.data_size)?;
                let disk = data_start
                    .checked_add(data_size)
                    .and_then(|end| end.checked_add(ALIGNMENT))
                    .ok_or(DiskError::SizeOverflow("the data partition"))?;
                (data_size, disk)
            }
            Some(disk) => {
                let needed = data_start + MIN_PARTITION_SIZE + ALIGNMENT;
                // The data partition ends on the last 1 MiB boundary that
                // leaves room for the backup GPT.
                let data_end = disk.saturating_sub(tail) / ALIGNMENT * ALIGNMENT;
                if disk % SECTOR_SIZE != 0 || data_end < data_start + MIN_PARTITION_SIZE {
                    return Err(DiskError::DiskTooSmall { disk, needed });
                }
                (data_end - data_start, disk)
            }
        };
        let prefix = &options.label_prefix;
        Ok(Layout {
            disk_size,
            esp: part(1, "ESP".into(), ESP_TYPE, esp_start, esp_size),
            slot_a: part(
                2,
                format!("{prefix}-SYSTEM-A"),
                SLOT_A_TYPE,
                slot_a_start,
                system_size,
            ),
            slot_b: part(
                3,
                format!("{prefix}-SYSTEM-B"),
                SLOT_B_TYPE,
                slot_b_start,
                system_size,
            ),
            data: part(
                4,
                format!("{prefix}-DATA"),
                DATA_TYPE,
                data_start,
                data_size,
            ),
        })
    }

    /// The partitions in table order.
    pub fn partitions(&self) -> [&PlannedPartition; 4] {
        [&self.esp, &self.slot_a, &self.slot_b, &self.data]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layout_is_aligned_and_ordered() {
        let layout = Layout::plan(&LayoutOptions::default()).unwrap();
        let parts = layout.partitions();
        assert_eq!(parts[0].start(), 1 << 20);
        assert_eq!(parts[0].size(), 128 << 20);
        for pair in parts.windows(2) {
            assert_eq!(pair[0].start() + pair[0].size(), pair[1].start());
        }
        for p in parts {
            assert_eq!(p.start() % ALIGNMENT, 0);
            assert_eq!(p.size() % ALIGNMENT, 0);
        }
        assert_eq!(layout.slot_a.size(), 1 << 30);
        assert_eq!(layout.data.size(), 256 << 20);
        assert_eq!(layout.disk_size, (1 + 128 + 2048 + 256 + 1) << 20);
        assert_eq!(layout.slot_b.name, "ABKIT-SYSTEM-B");
    }

    #[test]
    fn disk_size_makes_data_fill_the_rest() {
        let layout = Layout::plan(&LayoutOptions {
            disk_size: Some(4 << 30),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(layout.disk_size, 4 << 30);
        // 1 MiB head; the backup GPT needs the last (not quite) 1 MiB.
        assert_eq!(
            layout.data.start() + layout.data.size(),
            (4 << 30) - (1 << 20)
        );
    }

    #[test]
    fn sizes_round_up_to_alignment() {
        let layout = Layout::plan(&LayoutOptions {
            system_size: (16 << 20) + 1,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(layout.slot_a.size(), 17 << 20);
    }

    #[test]
    fn refuses_sizes_that_do_not_fit() {
        let err = Layout::plan(&LayoutOptions {
            disk_size: Some(1 << 30),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            matches!(err, DiskError::DiskTooSmall { disk, .. } if disk == 1 << 30),
            "{err}"
        );
        let err = Layout::plan(&LayoutOptions {
            esp_size: 8 << 20,
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            matches!(
                err,
                DiskError::SizeTooSmall {
                    what: "the ESP size",
                    ..
                }
            ),
            "{err}"
        );
        let err = Layout::plan(&LayoutOptions {
            system_size: 0,
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(err, DiskError::SizeTooSmall { .. }), "{err}");
        let err = Layout::plan(&LayoutOptions {
            system_size: u64::MAX - 5,
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(err, DiskError::SizeOverflow(_)), "{err}");
    }

    #[test]
    fn refuses_bad_label_prefixes() {
        for prefix in ["", "has space", "ÄBC", &"X".repeat(28)] {
            let err = Layout::plan(&LayoutOptions {
                label_prefix: prefix.into(),
                ..Default::default()
            })
            .unwrap_err();
            assert!(
                matches!(err, DiskError::BadLabelPrefix { .. }),
                "{prefix}: {err}"
            );
        }
        let ok = Layout::plan(&LayoutOptions {
            label_prefix: "X".repeat(27),
            ..Default::default()
        });
        assert!(ok.is_ok());
    }
}
