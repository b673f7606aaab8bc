//! `abkit image inspect`: what a disk holds, and what each slot holds.
//!
//! The *used part* of a slot runs from its first byte to the end of its
//! last 4 KiB block ([`USED_PART_BLOCK`]) that holds a non-zero byte; a slot
//! whose bytes are all zero is empty. For a system image whose size is a
//! multiple of 4 KiB and whose last block is not all zero (squashfs and
//! erofs images are padded so), the used part's size and SHA-256 equal the
//! image file's.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::esp::EspEntry;
use crate::gpt_read::DiskWarning;
use crate::image::{DiskImage, Partition, Slot};
use crate::{DiskError, Result, sys};

/// Granularity of the used part of a slot.
pub const USED_PART_BLOCK: u64 = 4096;

/// Read buffer: small enough to stay in the CPU cache while hashed.
const READ_CHUNK: usize = 128 << 10;

/// What a slot holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotContent {
    pub slot: Slot,
    pub partition_number: u32,
    /// False when every byte of the slot is zero.
    pub holds_data: bool,
    /// Size of the used part (0 when empty).
    pub used_bytes: u64,
    /// Lower-case hex SHA-256 of the used part (absent when empty).
    pub sha256: Option<String>,
}

/// Everything `inspect` reports about a disk. `S` is what is said about
/// each slot: its [`SlotContent`], or more where a caller knows more (the
/// update engine adds each slot's record).
#[derive(Debug, Clone, Serialize)]
pub struct DiskReport<S = SlotContent> {
    pub path: PathBuf,
    pub size: u64,
    pub disk_guid: Uuid,
    pub partitions: Vec<Partition>,
    pub esp_files: Vec<EspEntry>,
    pub slots: Vec<S>,
    /// What was wrong but worked around (a damaged GPT copy), from
    /// [`DiskImage::warnings`].
    pub warnings: Vec<DiskWarning>,
}

impl<S> DiskReport<S> {
    /// The same report with `f` applied to what it says about each slot.
    pub fn map_slots<T>(self, f: impl FnMut(S) -> T) -> DiskReport<T> {
        DiskReport {
            path: self.path,
            size: self.size,
            disk_guid: self.disk_guid,
            partitions: self.partitions,
            esp_files: self.esp_files,
            slots: self.slots.into_iter().map(f).collect(),
            warnings: self.warnings,
        }
    }
}

/// `bytes` for people: `512 B`, `33.0 MiB` (powers of 1024).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A partition table as text: a header line, then a line per partition.
pub struct PartitionTable<'a>(pub &'a [Partition]);

impl fmt::Display for PartitionTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:>2}  {:<20} {:<16} {:<36}  {:>10}  {:>10}",
            "#", "name", "type", "partition GUID", "start LBA", "size"
        )?;
        for p in self.0 {
            writeln!(
                f,
                "{:>2}  {:<20} {:<16} {:<36}  {:>10}  {:>10}",
                p.number,
                p.name,
                p.role.type_name(),
                p.guid,
                p.first_lba,
                human_size(p.size())
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for SlotContent {
    /// One line: the used part's size and hash, or `empty`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (letter, number) = (self.slot.letter(), self.partition_number);
        match &self.sha256 {
            Some(sha) if self.holds_data => write!(
                f,
                "slot {letter} (partition {number}): {} bytes used, sha256 {sha}",
                self.used_bytes
            ),
            _ => write!(f, "slot {letter} (partition {number}): empty"),
        }
    }
}

impl<S: fmt::Display> fmt::Display for DiskReport<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {}, GPT disk GUID {}",
            self.path.display(),
            human_size(self.size),
            self.disk_guid
        )?;
        for warning in &self.warnings {
            writeln!(f, "warning: {warning}")?;
        }
        write!(f, "{}", PartitionTable(&self.partitions))?;
        writeln!(f, "ESP files:")?;
        for entry in self.esp_files.iter().filter(|e| !e.is_dir) {
            writeln!(f, "  {:<40} {:>10} bytes", entry.path, entry.size)?;
        }
        for slot in &self.slots {
            writeln!(f, "{slot}")?;
        }
        Ok(())
    }
}

/// Hashes the used part of `range` in one pass: zero blocks are held back
/// and hashed only when a non-zero block follows them.
struct UsedPartHasher {
    hash: Sha256,
    hashed: u64,
    pending_zeros: u64,
}

impl UsedPartHasher {
    fn zeros(&mut self, len: u64) {
        self.pending_zeros += len;
    }

    fn data(&mut self, bytes: &[u8]) {
        for block in bytes.chunks(USED_PART_BLOCK as usize) {
            if block.iter().fold(0u8, |a, &b| a | b) == 0 {
                self.pending_zeros += block.len() as u64;
                continue;
            }
            let zeros = [0u8; USED_PART_BLOCK as usize];
            while self.pending_zeros > 0 {
                let n = self.pending_zeros.min(zeros.len() as u64);
                self.hash.update(&zeros[..n as usize]);
                self.hashed += n;
                self.pending_zeros -= n;
            }
            self.hash.update(block);
            self.hashed += block.len() as u64;
        }
    }
}

fn read_into(
    file: &File,
    hasher: &mut UsedPartHasher,
    start: u64,
    end: u64,
    buf: &mut [u8],
) -> Result<()> {
    let mut pos = start;
    while pos < end {
        let n = (end - pos).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], pos)
            .map_err(DiskError::io("read a slot"))?;
        hasher.data(&buf[..n]);
        pos += n as u64;
    }
    Ok(())
}

/// Size and SHA-256 of the used part of `slot`. Holes of a sparse image
/// file are skipped without reading them.
pub fn slot_content(disk: &DiskImage, slot: Slot) -> Result<SlotContent> {
    let partition = disk.slot(slot);
    let range = partition.range();
    let file = disk.file();
    let mut hasher = UsedPartHasher {
        hash: Sha256::new(),
        hashed: 0,
        pending_zeros: 0,
    };
    let mut buf = vec![0u8; READ_CHUNK];
    let mut pos = range.start;
    while pos < range.end {
        // Find the next data extent; without hole support read everything.
        let (data_start, data_end) = match sys::next_data(file, pos) {
            Ok(None) => (range.end, range.end),
            Ok(Some(d)) => {
                let d = d.min(range.end);
                let h = sys::next_hole(file, d)
                    .unwrap_or(range.end)
                    .clamp(d, range.end);
                (d, h)
            }
            Err(_) => (pos, range.end),
        };
        // Keep block alignment relative to the slot start so that a
        // hole boundary inside a block cannot split it.
        let aligned_start = pos + (data_start - pos) / USED_PART_BLOCK * USED_PART_BLOCK;
        hasher.zeros(aligned_start - pos);
        let data_end = if data_end == range.end || data_end <= aligned_start {
            // Unknown or final extent: read to the end of the slot.
            range.end
        } else {
            (range.start + (data_end - range.start).div_ceil(USED_PART_BLOCK) * USED_PART_BLOCK)
                .min(range.end)
        };
        read_into(file, &mut hasher, aligned_start, data_end, &mut buf)?;
        pos = data_end;
    }
    let used = hasher.hashed;
    Ok(SlotContent {
        slot,
        partition_number: partition.number,
        holds_data: used > 0,
        used_bytes: used,
        sha256: (used > 0).then(|| hex::encode(hasher.hash.finalize())),
    })
}

/// Reads the partition table, the ESP's files and both slots.
pub fn inspect(disk: &DiskImage) -> Result<DiskReport> {
    let esp = disk.esp()?;
    let esp_files = esp.list()?;
    drop(esp);
    let slots = [Slot::A, Slot::B]
        .into_iter()
        .map(|slot| slot_content(disk, slot))
        .collect::<Result<Vec<_>>>()?;
    Ok(DiskReport {
        path: disk.path().to_path_buf(),
        size: disk.size(),
        disk_guid: disk.disk_guid(),
        partitions: disk.partitions().to_vec(),
        esp_files,
        slots,
        warnings: disk.warnings().to_vec(),
    })
}
