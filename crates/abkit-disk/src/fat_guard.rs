//! Bounded checks of the ESP's cluster chains, run before `fatfs` touches
//! a path.
//!
//! Why this exists: `fatfs` 0.3.6 follows cluster chains without any bound
//! or loop check. A directory whose chain loops back onto a cluster full of
//! entries has no end-of-directory entry, so every lookup of a name that is
//! not in it, every create, rename and remove there, spins at 100% CPU
//! forever (seen as `status`, `install` and `mark-good` hanging). A file
//! whose chain loops or ends early reads as wrong or short bytes without an
//! error, and removing it frees whatever its chain runs into.
//!
//! So before each operation, [`Esp`](crate::Esp) walks the path itself,
//! from the root directory, reading the FAT and the directories with plain
//! bounded reads: every chain is followed at most once around (a set of
//! visited clusters stops it at the first repeat, so never more steps than
//! the volume has clusters), a directory may hold at most 65,536 entries
//! (FAT's own limit), and a file's chain must have the clusters its size
//! needs. A bad chain is refused with [`DiskError::BadClusterChain`] naming
//! the file or directory, before anything is written. Only then does
//! `fatfs` run, on chains known to end. Counting free clusters reads the
//! FAT once from start to end and walks no chain, so it needs no check.

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::fs::FileExt;

use crate::error::ChainProblem;
use crate::esp::Storage;
use crate::{DiskError, Result};

/// FAT's limit on the entries of one directory (32 bytes each).
const MAX_DIR_BYTES: u64 = 65_536 * 32;
/// FAT32 entry values: free, bad, and the first end-of-chain value.
const FREE: u32 = 0;
const BAD: u32 = 0x0fff_fff7;
const END_OF_CHAIN: u32 = 0x0fff_fff8;
/// Granularity in which FAT bytes are read and cached.
const FAT_BLOCK: u64 = 4096;

/// The FAT32 geometry of the ESP (boot sector offsets: BytesPerSector u16
/// at 11, SectorsPerCluster u8 at 13, ReservedSectors u16 at 14, NumFATs u8
/// at 16, TotalSectors16 u16 at 19, TotalSectors32 u32 at 32, FATSize32 u32
/// at 36, ExtFlags u16 at 40, RootCluster u32 at 44).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    /// Byte offset of the FAT `fatfs` reads (FAT #1 unless mirroring is off).
    pub(crate) active_fat_offset: u64,
    pub(crate) fat_bytes: u64,
    pub(crate) data_offset: u64,
    pub(crate) cluster_bytes: u64,
    pub(crate) root_cluster: u32,
    /// The highest cluster number in the volume (the first is 2).
    pub(crate) max_cluster: u32,
}

impl Geometry {
    pub(crate) fn read(storage: &Storage, esp_start: u64) -> io::Result<Geometry> {
        let mut boot = [0u8; 512];
        storage.read_exact_at(&mut boot, esp_start)?;
        let u16_at = |at: usize| u64::from(u16::from_le_bytes([boot[at], boot[at + 1]]));
        let u32_at =
            |at: usize| u32::from_le_bytes([boot[at], boot[at + 1], boot[at + 2], boot[at + 3]]);
        let sector = u16_at(11);
        let per_cluster = u64::from(boot[13]);
        let reserved = u16_at(14);
        let fats = u64::from(boot[16]);
        let total_sectors = match u16_at(19) {
            0 => u64::from(u32_at(32)),
            n => n,
        };
        let fat_sectors = u64::from(u32_at(36));
        let ext_flags = u16_at(40);
        let root_cluster = u32_at(44);
        let data_sectors = reserved + fats * fat_sectors;
        if sector == 0
            || per_cluster == 0
            || fats == 0
            || fat_sectors == 0
            || total_sectors <= data_sectors
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a FAT32 boot sector",
            ));
        }
        let clusters = (total_sectors - data_sectors) / per_cluster;
        let fat_entries = fat_sectors * sector / 4;
        let max_cluster = (clusters + 1).min(fat_entries.saturating_sub(1));
        let fat_offset = esp_start + reserved * sector;
        // Bit 7 of ExtFlags: mirroring off, bits 0-3 name the active FAT.
        let active = if ext_flags & 0x80 != 0 {
            (ext_flags & 0x0f).min(fats - 1)
        } else {
            0
        };
        Ok(Geometry {
            active_fat_offset: fat_offset + active * fat_sectors * sector,
            fat_bytes: fat_sectors * sector,
            data_offset: esp_start + data_sectors * sector,
            cluster_bytes: per_cluster * sector,
            root_cluster,
            max_cluster: u32::try_from(max_cluster).unwrap_or(u32::MAX),
        })
    }
}

/// One directory entry, as the guard needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawEntry {
    pub(crate) first_cluster: u32,
    pub(crate) size: u64,
    pub(crate) is_dir: bool,
}

/// The FAT of one ESP, read in 4 KiB blocks as chains need them.
pub(crate) struct FatGuard<'s> {
    storage: &'s Storage,
    geometry: Geometry,
    blocks: RefCell<HashMap<u64, Vec<u8>>>,
}

fn chain_error(path: &str, problem: ChainProblem) -> DiskError {
    DiskError::BadClusterChain {
        path: path.to_string(),
        problem,
    }
}

impl<'s> FatGuard<'s> {
    pub(crate) fn new(storage: &'s Storage, esp_start: u64) -> Result<FatGuard<'s>> {
        let geometry = Geometry::read(storage, esp_start)
            .map_err(DiskError::fat("read the FAT32 boot sector"))?;
        Ok(FatGuard {
            storage,
            geometry,
            blocks: RefCell::new(HashMap::new()),
        })
    }

    /// FAT entry `cluster` (28 bits).
    fn entry(&self, cluster: u32) -> Result<u32> {
        let at = u64::from(cluster) * 4;
        let block = at / FAT_BLOCK;
        let mut blocks = self.blocks.borrow_mut();
        let bytes = match blocks.entry(block) {
            Entry::Occupied(cached) => cached.into_mut(),
            Entry::Vacant(slot) => {
                let start = block * FAT_BLOCK;
                let len = FAT_BLOCK.min(self.geometry.fat_bytes - start) as usize;
                let mut bytes = vec![0u8; len];
                self.storage
                    .read_exact_at(&mut bytes, self.geometry.active_fat_offset + start)
                    .map_err(DiskError::fat("read the FAT"))?;
                slot.insert(bytes)
            }
        };
        let i = (at % FAT_BLOCK) as usize;
        Ok(u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]) & 0x0fff_ffff)
    }

    /// The clusters of the chain starting at `first`, followed at most once
    /// around; `max_clusters` caps its length (directories).
    fn chain(&self, first: u32, path: &str, max_clusters: Option<u64>) -> Result<Vec<u32>> {
        let max = self.geometry.max_cluster;
        if first < 2 || first > max {
            return Err(chain_error(
                path,
                ChainProblem::OutOfRange { cluster: first },
            ));
        }
        let mut seen = HashSet::new();
        let mut clusters = Vec::new();
        let mut cluster = first;
        loop {
            seen.insert(cluster);
            clusters.push(cluster);
            if let Some(limit) = max_clusters
                && clusters.len() as u64 > limit
            {
                return Err(chain_error(
                    path,
                    ChainProblem::DirectoryTooLong {
                        clusters: clusters.len() as u64,
                    },
                ));
            }
            let next = self.entry(cluster)?;
            let problem = match next {
                n if n >= END_OF_CHAIN => return Ok(clusters),
                FREE => ChainProblem::Free { after: cluster },
                BAD => ChainProblem::Bad { after: cluster },
                n if n < 2 || n > max => ChainProblem::OutOfRange { cluster: n },
                n if seen.contains(&n) => ChainProblem::Loops { cluster: n },
                n => {
                    cluster = n;
                    continue;
                }
            };
            return Err(chain_error(path, problem));
        }
    }

    /// The root directory's clusters.
    fn root(&self) -> Result<Vec<u32>> {
        self.directory(self.geometry.root_cluster, "\\")
    }

    fn directory(&self, first: u32, path: &str) -> Result<Vec<u32>> {
        let limit = MAX_DIR_BYTES.div_ceil(self.geometry.cluster_bytes);
        self.chain(first, path, Some(limit))
    }

    /// Checks a file's chain against its size.
    fn file(&self, entry: &RawEntry, path: &str) -> Result<()> {
        let needed = entry.size.div_ceil(self.geometry.cluster_bytes);
        let clusters = if entry.first_cluster == 0 {
            0
        } else {
            self.chain(entry.first_cluster, path, None)?.len() as u64
        };
        if clusters < needed {
            return Err(chain_error(
                path,
                ChainProblem::TooShort {
                    clusters,
                    size: entry.size,
                },
            ));
        }
        Ok(())
    }

    /// The bytes of a directory whose chain was checked.
    fn read_dir(&self, clusters: &[u32]) -> Result<Vec<u8>> {
        let g = &self.geometry;
        let mut bytes = vec![0u8; clusters.len() * g.cluster_bytes as usize];
        for (chunk, &cluster) in bytes.chunks_mut(g.cluster_bytes as usize).zip(clusters) {
            let at = g.data_offset + u64::from(cluster - 2) * g.cluster_bytes;
            self.storage
                .read_exact_at(chunk, at)
                .map_err(DiskError::fat("read a directory"))?;
        }
        Ok(bytes)
    }

    /// Checks the chains along `names` from the root: the root, every
    /// directory on the way and the final entry (a file against its size,
    /// a directory against FAT's limit). Returns the final entry, or `None`
    /// where the path ends early (a missing name, a file in the way).
    pub(crate) fn check(&self, names: &[&str]) -> Result<Option<RawEntry>> {
        let mut dir = self.root()?;
        for (i, name) in names.iter().enumerate() {
            let Some(entry) = find(&self.read_dir(&dir)?, name) else {
                return Ok(None);
            };
            let path = format!("\\{}", names[..=i].join("\\"));
            let last = i + 1 == names.len();
            if entry.is_dir {
                let clusters = self.directory(entry.first_cluster, &path)?;
                if last {
                    return Ok(Some(entry));
                }
                dir = clusters;
            } else {
                self.file(&entry, &path)?;
                return Ok(last.then_some(entry));
            }
        }
        Ok(None)
    }
}

/// The entry called `name` (long or 8.3 name, case-insensitive, as `fatfs`
/// matches) in the raw directory `bytes`.
fn find(bytes: &[u8], name: &str) -> Option<RawEntry> {
    let wanted: Vec<char> = name.chars().flat_map(char::to_uppercase).collect();
    let same = |n: &str| {
        n.chars()
            .flat_map(char::to_uppercase)
            .eq(wanted.iter().copied())
    };
    // Long-name parts seen since the last short entry, in disk order, with
    // the checksum they claim.
    let mut long: Vec<u16> = Vec::new();
    let mut long_sum: Option<u8> = None;
    for e in bytes.chunks_exact(32) {
        match e[0] {
            0 => return None,
            0xe5 => {
                long.clear();
                long_sum = None;
                continue;
            }
            _ => {}
        }
        let attr = e[11];
        if attr & 0x3f == 0x0f {
            // Parts are stored last first: each goes in front.
            let part = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30]
                .map(|o| u16::from_le_bytes([e[o], e[o + 1]]));
            if e[0] & 0x40 != 0 {
                long.clear();
                long_sum = Some(e[13]);
            }
            long.splice(0..0, part);
            continue;
        }
        if attr & 0x08 != 0 {
            long.clear();
            long_sum = None;
            continue;
        }
        let short = &e[..11];
        let sum = short
            .iter()
            .fold(0u8, |s, &b| s.rotate_right(1).wrapping_add(b));
        let long_name = (long_sum == Some(sum)).then(|| {
            let end = long.iter().position(|&c| c == 0).unwrap_or(long.len());
            String::from_utf16_lossy(&long[..end])
        });
        long.clear();
        long_sum = None;
        let mut base = short[..8].to_vec();
        if base[0] == 0x05 {
            base[0] = 0xe5;
        }
        let trim = |b: &[u8]| String::from_utf8_lossy(b).trim_end().to_string();
        let (base, ext) = (trim(&base), trim(&short[8..]));
        let short_name = if ext.is_empty() {
            base
        } else {
            format!("{base}.{ext}")
        };
        if long_name.as_deref().is_some_and(same) || same(&short_name) {
            let hi = u32::from(u16::from_le_bytes([e[20], e[21]]));
            let lo = u32::from(u16::from_le_bytes([e[26], e[27]]));
            return Some(RawEntry {
                first_cluster: hi << 16 | lo,
                size: u64::from(u32::from_le_bytes([e[28], e[29], e[30], e[31]])),
                is_dir: attr & 0x10 != 0,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short(name: &[u8; 11], attr: u8, cluster: u32, size: u32) -> [u8; 32] {
        let mut e = [0u8; 32];
        e[..11].copy_from_slice(name);
        e[11] = attr;
        e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
        e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
        e[28..32].copy_from_slice(&size.to_le_bytes());
        e
    }

    fn long(order: u8, sum: u8, chars: &str) -> [u8; 32] {
        let mut units: Vec<u16> = chars.encode_utf16().collect();
        if units.len() < 13 {
            units.push(0);
        }
        units.resize(13, 0xffff);
        let mut e = [0u8; 32];
        e[0] = order;
        e[11] = 0x0f;
        e[13] = sum;
        for (o, u) in [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30]
            .into_iter()
            .zip(units)
        {
            e[o..o + 2].copy_from_slice(&u.to_le_bytes());
        }
        e
    }

    #[test]
    fn names_match_long_or_short_without_case() {
        let sfn = *b"SLOT-A~1JSO";
        let sum = sfn
            .iter()
            .fold(0u8, |s, &b| s.rotate_right(1).wrapping_add(b));
        let mut dir = Vec::new();
        dir.extend(short(b"BOOT-A  EFI", 0x20, 7, 600));
        // "slot-a.json.abkit-new" needs two long-name parts, last first.
        dir.extend(long(0x42, sum, "bkit-new"));
        dir.extend(long(0x01, sum, "slot-a.json.a"));
        dir.extend(short(&sfn, 0x20, 9, 12));
        dir.extend(short(b"SUB        ", 0x10, 11, 0));
        dir.extend([0u8; 32]);
        dir.extend(short(b"HIDDEN     ", 0x20, 13, 1));

        let file = |c, s| {
            Some(RawEntry {
                first_cluster: c,
                size: s,
                is_dir: false,
            })
        };
        assert_eq!(find(&dir, "boot-a.efi"), file(7, 600));
        assert_eq!(find(&dir, "SLOT-A.JSON.abkit-NEW"), file(9, 12));
        assert_eq!(find(&dir, "slot-a~1.jso"), file(9, 12));
        assert_eq!(
            find(&dir, "sub"),
            Some(RawEntry {
                first_cluster: 11,
                size: 0,
                is_dir: true
            })
        );
        assert_eq!(find(&dir, "slot-a.json"), None);
        assert_eq!(find(&dir, "hidden"), None, "after the end entry");
    }
}
