//! Reading the GPT of a disk, checking both copies, and repairing one
//! damaged copy from the other.
//!
//! Why not the `gpt` crate for reading: it checks the header CRC only, not
//! the CRC of the partition entry array, takes whichever header is valid
//! without saying that the other one is not, and asserts (stops the
//! program) on entry sizes other than 128 bytes. Here each copy, primary
//! (LBA 1, entries from LBA 2) and backup (where the primary says, else the
//! last LBA), is checked completely: signature, header size, header CRC32,
//! its own LBA, entry size, entry array CRC32. One damaged copy gives a
//! [`DiskWarning`] naming it and the good copy is used; both damaged is
//! [`DiskError::NoGpt`]. [`repair`] rewrites the damaged copy from the good
//! one (the `gpt` crate still writes the tables of new disks).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::Serialize;
use uuid::Uuid;

use crate::image::{Partition, PartitionRole};
use crate::layout::SECTOR_SIZE;
use crate::{DiskError, Result};

/// Largest entry array we read (the usual one is 16 KiB: 128 entries).
const MAX_ENTRY_BYTES: u64 = 1 << 20;

/// One of the two copies of the GPT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GptCopy {
    /// Header at LBA 1, entries usually from LBA 2.
    Primary,
    /// Header at the disk's last LBA, entries just before it.
    Backup,
}

impl std::fmt::Display for GptCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GptCopy::Primary => "primary GPT",
            GptCopy::Backup => "backup GPT",
        })
    }
}

/// What is wrong with one copy of the GPT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum GptDamage {
    /// No "EFI PART" signature where the header belongs.
    #[error("no GPT header at LBA {lba}")]
    Missing { lba: u64 },
    /// The header's CRC32 does not match its bytes.
    #[error("header CRC32 {computed:#010x} does not match the stored {stored:#010x}")]
    HeaderCrc { stored: u32, computed: u32 },
    /// The partition entry array's CRC32 does not match the header's.
    #[error(
        "partition entry array CRC32 {computed:#010x} does not match the stored {stored:#010x}"
    )]
    EntriesCrc { stored: u32, computed: u32 },
    /// A header field makes no sense (size, own LBA, entry location).
    #[error("invalid header: {reason}")]
    BadHeader { reason: String },
}

/// Something wrong with a disk that could still be opened. As JSON: its
/// fields, `kind` (`gpt-copy-damaged`) and `message` (the text form).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiskWarning {
    /// One copy of the GPT is damaged; the other one is used. Writing the
    /// disk with `abkit image build`, or [`DiskImage::repair_gpt`](crate::DiskImage::repair_gpt),
    /// makes both whole again.
    #[error("the {copy} is damaged ({damage}); using the {used}")]
    GptCopyDamaged {
        copy: GptCopy,
        used: GptCopy,
        damage: GptDamage,
    },
}

impl Serialize for DiskWarning {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Json<'a> {
            kind: &'static str,
            copy: GptCopy,
            used: GptCopy,
            damage: &'a GptDamage,
            message: String,
        }
        match self {
            DiskWarning::GptCopyDamaged { copy, used, damage } => Json {
                kind: "gpt-copy-damaged",
                copy: *copy,
                used: *used,
                damage,
                message: self.to_string(),
            }
            .serialize(serializer),
        }
    }
}

/// A checked header (its first 92 bytes are what we use and rewrite).
#[derive(Debug, Clone)]
struct Header {
    bytes: Vec<u8>,
    my_lba: u64,
    alternate_lba: u64,
    first_usable: u64,
    last_usable: u64,
    entries_lba: u64,
    entry_count: u32,
    entries_crc: u32,
}

/// A good copy: its header and its entry array.
#[derive(Debug, Clone)]
struct Copy {
    header: Header,
    entries: Vec<u8>,
}

/// The GPT as read from a disk.
#[derive(Debug)]
pub(crate) struct GptTable {
    pub(crate) disk_guid: Uuid,
    pub(crate) partitions: Vec<Partition>,
    pub(crate) warnings: Vec<DiskWarning>,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// CRC-32 (IEEE 802.3, reflected), as the UEFI specification uses.
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

fn header_crc(bytes: &[u8]) -> u32 {
    let mut copy = bytes.to_vec();
    copy[16..20].fill(0);
    crc32(&copy)
}

fn read_at(file: &File, buf: &mut [u8], offset: u64, path: &Path) -> Result<()> {
    file.read_exact_at(buf, offset)
        .map_err(DiskError::io(format!("read {}", path.display())))
}

/// Reads and checks the copy whose header is at `lba`. `Err(Ok(damage))`
/// is a damaged copy; `Err(Err(e))` a failure to read or a header we do
/// not support.
fn read_copy(
    file: &File,
    path: &Path,
    lba: u64,
    sectors: u64,
) -> Result<std::result::Result<Copy, GptDamage>> {
    let mut sector = vec![0u8; SECTOR_SIZE as usize];
    read_at(file, &mut sector, lba * SECTOR_SIZE, path)?;
    if &sector[..8] != b"EFI PART" {
        return Ok(Err(GptDamage::Missing { lba }));
    }
    let bad = |reason: String| Ok(Err(GptDamage::BadHeader { reason }));
    let size = le32(&sector, 12) as usize;
    if !(92..=SECTOR_SIZE as usize).contains(&size) {
        return bad(format!("header size {size}"));
    }
    let stored = le32(&sector, 16);
    let computed = header_crc(&sector[..size]);
    if stored != computed {
        return Ok(Err(GptDamage::HeaderCrc { stored, computed }));
    }
    let header = Header {
        bytes: sector[..92].to_vec(),
        my_lba: le64(&sector, 24),
        alternate_lba: le64(&sector, 32),
        first_usable: le64(&sector, 40),
        last_usable: le64(&sector, 48),
        entries_lba: le64(&sector, 72),
        entry_count: le32(&sector, 80),
        entries_crc: le32(&sector, 88),
    };
    if header.my_lba != lba {
        return bad(format!("it says it is at LBA {}, not {lba}", header.my_lba));
    }
    let entry_size = le32(&sector, 84);
    if entry_size != 128 {
        // A valid header with entries we cannot read: refuse the disk
        // rather than fall back to the other copy behind the user's back.
        return Err(DiskError::NoGpt {
            path: path.to_path_buf(),
            reason: format!("partition entries of {entry_size} bytes (only 128 is supported)"),
        });
    }
    let entry_bytes = u64::from(header.entry_count) * 128;
    let entry_sectors = entry_bytes.div_ceil(SECTOR_SIZE);
    if entry_bytes > MAX_ENTRY_BYTES
        || header.entries_lba < 2
        || header.entries_lba.saturating_add(entry_sectors) > sectors
    {
        return bad(format!(
            "{} entries at LBA {}",
            header.entry_count, header.entries_lba
        ));
    }
    let mut entries = vec![0u8; entry_bytes as usize];
    read_at(file, &mut entries, header.entries_lba * SECTOR_SIZE, path)?;
    let computed = crc32(&entries);
    if computed != header.entries_crc {
        return Ok(Err(GptDamage::EntriesCrc {
            stored: header.entries_crc,
            computed,
        }));
    }
    Ok(Ok(Copy { header, entries }))
}

/// Both copies, each good or damaged. The backup is looked for where the
/// primary says it is, else at the last LBA.
type Copies = (
    std::result::Result<Copy, GptDamage>,
    std::result::Result<Copy, GptDamage>,
);

fn read_copies(file: &File, path: &Path, size: u64) -> Result<Copies> {
    let sectors = size / SECTOR_SIZE;
    let primary = read_copy(file, path, 1, sectors)?;
    let last = sectors - 1;
    let backup = match &primary {
        Ok(p)
            if p.header.alternate_lba != last && (2..sectors).contains(&p.header.alternate_lba) =>
        {
            match read_copy(file, path, p.header.alternate_lba, sectors)? {
                Ok(copy) => Ok(copy),
                Err(_) => read_copy(file, path, last, sectors)?,
            }
        }
        _ => read_copy(file, path, last, sectors)?,
    };
    Ok((primary, backup))
}

/// Reads the GPT of `file` (`size` bytes), using a good copy and warning
/// about a damaged one.
pub(crate) fn read(file: &File, path: &Path, size: u64) -> Result<GptTable> {
    let (primary, backup) = read_copies(file, path, size)?;
    let (good, warnings) = match (primary, backup) {
        (Ok(p), Ok(_)) => (p, Vec::new()),
        (Ok(p), Err(damage)) => (p, vec![damaged(GptCopy::Backup, damage)]),
        (Err(damage), Ok(b)) => (b, vec![damaged(GptCopy::Primary, damage)]),
        (Err(p), Err(b)) => {
            return Err(DiskError::NoGpt {
                path: path.to_path_buf(),
                reason: format!("primary GPT: {p}; backup GPT: {b}"),
            });
        }
    };
    for warning in &warnings {
        log::warn!("{}: {warning}", path.display());
    }
    let disk_guid = Uuid::from_bytes_le(good.header.bytes[56..72].try_into().unwrap());
    let mut partitions = Vec::new();
    for (i, e) in good.entries.chunks_exact(128).enumerate() {
        let type_guid = Uuid::from_bytes_le(e[..16].try_into().unwrap());
        if type_guid.is_nil() {
            continue;
        }
        let name: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        let first_lba = le64(e, 32);
        partitions.push(Partition {
            number: i as u32 + 1,
            name: String::from_utf16_lossy(&name),
            type_guid,
            role: PartitionRole::from_type(type_guid),
            guid: Uuid::from_bytes_le(e[16..32].try_into().unwrap()),
            first_lba,
            last_lba: le64(e, 40).max(first_lba),
        });
    }
    Ok(GptTable {
        disk_guid,
        partitions,
        warnings,
    })
}

fn damaged(copy: GptCopy, damage: GptDamage) -> DiskWarning {
    let used = match copy {
        GptCopy::Primary => GptCopy::Backup,
        GptCopy::Backup => GptCopy::Primary,
    };
    DiskWarning::GptCopyDamaged { copy, used, damage }
}

/// Rewrites a damaged copy of the GPT from the good one; returns which
/// copy was rewritten (`None`: both were good). The primary goes to LBA 1
/// with its entries from LBA 2, the backup to the LBA the primary names
/// (normally the last) with its entries right before it, as `sgdisk`
/// writes them.
pub(crate) fn repair(file: &File, path: &Path, size: u64) -> Result<Option<GptCopy>> {
    let (primary, backup) = read_copies(file, path, size)?;
    let sectors = size / SECTOR_SIZE;
    let (good, copy) = match (primary, backup) {
        (Ok(_), Ok(_)) => return Ok(None),
        (Ok(p), Err(_)) => (p, GptCopy::Backup),
        (Err(_), Ok(b)) => (b, GptCopy::Primary),
        (Err(p), Err(b)) => {
            return Err(DiskError::NoGpt {
                path: path.to_path_buf(),
                reason: format!("primary GPT: {p}; backup GPT: {b}"),
            });
        }
    };
    let h = &good.header;
    let entry_sectors = (good.entries.len() as u64).div_ceil(SECTOR_SIZE);
    let (my_lba, alternate_lba, entries_lba) = match copy {
        GptCopy::Primary => (1, h.my_lba, 2),
        GptCopy::Backup => {
            let at = if h.alternate_lba < sectors && h.alternate_lba > h.last_usable {
                h.alternate_lba
            } else {
                sectors - 1
            };
            // 0 (never valid: LBA 0 is the MBR) when it does not fit.
            (at, 1, at.saturating_sub(entry_sectors))
        }
    };
    let fits = match copy {
        GptCopy::Primary => entries_lba + entry_sectors <= h.first_usable,
        GptCopy::Backup => entries_lba > h.last_usable && entries_lba >= 2,
    };
    if !fits {
        return Err(DiskError::GptRepair {
            path: path.to_path_buf(),
            reason: format!("no room for the {copy}'s entries outside the usable area"),
        });
    }
    let mut header = vec![0u8; SECTOR_SIZE as usize];
    header[..92].copy_from_slice(&h.bytes);
    header[12..16].copy_from_slice(&92u32.to_le_bytes());
    header[24..32].copy_from_slice(&my_lba.to_le_bytes());
    header[32..40].copy_from_slice(&alternate_lba.to_le_bytes());
    header[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    let crc = header_crc(&header[..92]);
    header[16..20].copy_from_slice(&crc.to_le_bytes());
    let write = |bytes: &[u8], lba: u64| {
        file.write_all_at(bytes, lba * SECTOR_SIZE)
            .map_err(DiskError::io(format!(
                "repair the {copy} of {}",
                path.display()
            )))
    };
    write(&good.entries, entries_lba)?;
    write(&header, my_lba)?;
    file.sync_data()
        .map_err(DiskError::io(format!("flush {}", path.display())))?;
    log::info!("{}: rewrote the {copy} from the other copy", path.display());
    Ok(Some(copy))
}

#[cfg(test)]
mod tests {
    use super::crc32;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }
}
