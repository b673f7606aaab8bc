//! The variable store inside an OVMF `*_VARS*.fd` firmware file.
//!
//! Lets tests and image builders read what real firmware wrote and pre-seed
//! boot entries before a VM's first boot. No crate reads this format, so it
//! is implemented here from the EDK2 layout: a firmware volume header, a
//! variable store header, then a log of variable records. A record's state
//! byte tells whether it is live; new values are appended and old ones
//! marked deleted, as the firmware does. When the log is full, it is
//! compacted to its live records. Bytes outside the variable store (the
//! fault-tolerant-write areas) are never touched.

use std::fs;
use std::path::{Path, PathBuf};

use thiserror::Error;
use uuid::Uuid;

use super::{StoreError, VarName, VarStore, Variable, check_name};
use crate::ucs2::{self, Ucs2Error};

/// Byte layout of the firmware volume, the variable store and its records
/// (EDK2 `PiFirmwareVolume.h`, `VariableFormat.h`).
mod layout {
    use uuid::Uuid;

    pub const FV_GUID_OFFSET: usize = 0x10;
    pub const FV_LENGTH_OFFSET: usize = 0x20;
    pub const FV_SIGNATURE_OFFSET: usize = 0x28;
    pub const FV_SIGNATURE: &[u8; 4] = b"_FVH";
    pub const FV_HEADER_LENGTH_OFFSET: usize = 0x30;
    pub const FV_MIN_HEADER_LENGTH: usize = 0x48;
    /// EFI_SYSTEM_NV_DATA_FV_GUID: the file system GUID of a variable FV.
    pub const NV_DATA_FV_GUID: Uuid = Uuid::from_u128(0xfff12b8d_7696_4c8b_a985_2747075b4f50);

    /// Variable store header: GUID, Size u32, Format u8, State u8, reserved.
    pub const STORE_HEADER_LEN: usize = 28;
    pub const STORE_SIZE_OFFSET: usize = 16;
    pub const STORE_FORMAT_OFFSET: usize = 20;
    pub const STORE_STATE_OFFSET: usize = 21;
    pub const STORE_FORMATTED: u8 = 0x5A;
    pub const STORE_HEALTHY: u8 = 0xFE;
    pub const AUTHENTICATED_STORE_GUID: Uuid =
        Uuid::from_u128(0xaaf32c78_947b_439a_a180_2e144ec37792);
    pub const PLAIN_STORE_GUID: Uuid = Uuid::from_u128(0xddcf3616_3275_4164_98b6_fe85707ffe7d);

    /// Record header fields common to both formats.
    pub const START_ID: u16 = 0x55AA;
    pub const STATE_OFFSET: usize = 2;
    pub const ATTRIBUTES_OFFSET: usize = 4;
    /// Authenticated header: StartId, State, Reserved, Attributes,
    /// MonotonicCount u64, TimeStamp [16], PubKeyIndex u32, NameSize,
    /// DataSize, VendorGuid.
    pub const AUTH_HEADER_LEN: usize = 60;
    pub const AUTH_NAME_SIZE_OFFSET: usize = 36;
    /// Plain header: StartId, State, Reserved, Attributes, NameSize,
    /// DataSize, VendorGuid.
    pub const PLAIN_HEADER_LEN: usize = 32;
    pub const PLAIN_NAME_SIZE_OFFSET: usize = 8;
    /// Records start on 4-byte boundaries.
    pub const ALIGNMENT: usize = 4;

    /// State byte values. Flash bits only go from 1 to 0, so a record's
    /// state is the AND of the steps it went through.
    pub const VAR_ADDED: u8 = 0x3F;
    pub const VAR_IN_DELETED_TRANSITION: u8 = 0xFE;
    pub const VAR_DELETED: u8 = 0xFD;
}

use layout::*;

/// Why a file is not a usable OVMF VARS file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OvmfFormatError {
    #[error("{0} bytes, too short for a firmware volume header")]
    TooShort(usize),
    #[error("no firmware volume signature \"_FVH\" at offset 0x28")]
    NoFvSignature,
    #[error("firmware volume is {fv_length} bytes but the file has only {file_length}")]
    FvLongerThanFile { fv_length: u64, file_length: usize },
    #[error("firmware volume header length {0} is invalid")]
    BadHeaderLength(usize),
    #[error("firmware volume header checksum does not add up to zero")]
    BadChecksum,
    #[error(
        "firmware volume {0} is not a variable store volume (expected fff12b8d-7696-4c8b-a985-2747075b4f50)"
    )]
    NotVariableVolume(Uuid),
    #[error("unknown variable store GUID {0}")]
    UnknownStoreGuid(Uuid),
    #[error("variable store of {size} bytes at 0x{offset:x} does not fit in the firmware volume")]
    StoreOutsideVolume { offset: usize, size: usize },
    #[error(
        "variable store header is not formatted and healthy (format 0x{format:02x}, state 0x{state:02x})"
    )]
    StoreNotHealthy { format: u8, state: u8 },
    #[error("variable record at 0x{offset:x} runs past the end of the store")]
    RecordOverrun { offset: usize },
    #[error("variable record at 0x{offset:x} has a bad name: {source}")]
    BadName { offset: usize, source: Ucs2Error },
}

/// One record of the variable log.
#[derive(Debug, Clone)]
struct Record {
    offset: usize,
    len: usize,
    state: u8,
    attributes: u32,
    name: VarName,
    data_offset: usize,
    data_len: usize,
}

impl Record {
    fn is_live(&self) -> bool {
        self.state == VAR_ADDED || self.state == VAR_ADDED & VAR_IN_DELETED_TRANSITION
    }
}

/// An OVMF VARS file, held in memory and written back on every change.
#[derive(Debug, Clone)]
pub struct OvmfVarsFile {
    path: Option<PathBuf>,
    bytes: Vec<u8>,
    authenticated: bool,
    /// First record.
    log_start: usize,
    /// End of the variable store (exclusive).
    store_end: usize,
    records: Vec<Record>,
    /// End of the last record: free space starts here.
    log_end: usize,
}

fn align(n: usize) -> usize {
    n.div_ceil(ALIGNMENT) * ALIGNMENT
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn guid_at(b: &[u8], o: usize) -> Uuid {
    let mut g = [0u8; 16];
    g.copy_from_slice(&b[o..o + 16]);
    Uuid::from_bytes_le(g)
}

impl OvmfVarsFile {
    /// Opens a VARS file; changes are written back to it.
    pub fn open(path: impl AsRef<Path>) -> Result<OvmfVarsFile, StoreError> {
        let path = path.as_ref();
        let bytes = fs::read(path).map_err(|source| StoreError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut file =
            OvmfVarsFile::from_bytes(bytes).map_err(|source| StoreError::OvmfFormat {
                path: path.to_owned(),
                source,
            })?;
        file.path = Some(path.to_owned());
        Ok(file)
    }

    /// Parses a VARS image held in memory; changes stay in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<OvmfVarsFile, OvmfFormatError> {
        let b = &bytes;
        if b.len() < FV_MIN_HEADER_LENGTH {
            return Err(OvmfFormatError::TooShort(b.len()));
        }
        if &b[FV_SIGNATURE_OFFSET..FV_SIGNATURE_OFFSET + 4] != FV_SIGNATURE {
            return Err(OvmfFormatError::NoFvSignature);
        }
        let fv_guid = guid_at(b, FV_GUID_OFFSET);
        if fv_guid != NV_DATA_FV_GUID {
            return Err(OvmfFormatError::NotVariableVolume(fv_guid));
        }
        let fv_length = u64::from_le_bytes(
            b[FV_LENGTH_OFFSET..FV_LENGTH_OFFSET + 8]
                .try_into()
                .unwrap_or_default(),
        );
        let fv_len = usize::try_from(fv_length)
            .ok()
            .filter(|&l| l <= b.len())
            .ok_or(OvmfFormatError::FvLongerThanFile {
                fv_length,
                file_length: b.len(),
            })?;
        let header_len = usize::from(u16_at(b, FV_HEADER_LENGTH_OFFSET));
        if header_len < FV_MIN_HEADER_LENGTH
            || header_len % 2 != 0
            || header_len + STORE_HEADER_LEN > fv_len
        {
            return Err(OvmfFormatError::BadHeaderLength(header_len));
        }
        let sum = b[..header_len].chunks_exact(2).fold(0u16, |acc, c| {
            acc.wrapping_add(u16::from_le_bytes([c[0], c[1]]))
        });
        if sum != 0 {
            return Err(OvmfFormatError::BadChecksum);
        }
        let store = header_len;
        let store_guid = guid_at(b, store);
        let authenticated = match store_guid {
            AUTHENTICATED_STORE_GUID => true,
            PLAIN_STORE_GUID => false,
            other => return Err(OvmfFormatError::UnknownStoreGuid(other)),
        };
        let store_size = u32_at(b, store + STORE_SIZE_OFFSET) as usize;
        let store_end = store
            .checked_add(store_size)
            .filter(|&e| e <= fv_len && store_size >= STORE_HEADER_LEN)
            .ok_or(OvmfFormatError::StoreOutsideVolume {
                offset: store,
                size: store_size,
            })?;
        let (format, state) = (
            b[store + STORE_FORMAT_OFFSET],
            b[store + STORE_STATE_OFFSET],
        );
        if format != STORE_FORMATTED || state != STORE_HEALTHY {
            return Err(OvmfFormatError::StoreNotHealthy { format, state });
        }
        let mut file = OvmfVarsFile {
            path: None,
            bytes,
            authenticated,
            log_start: align(store + STORE_HEADER_LEN),
            store_end,
            records: Vec::new(),
            log_end: 0,
        };
        file.scan()?;
        Ok(file)
    }

    fn header_len(&self) -> usize {
        if self.authenticated {
            AUTH_HEADER_LEN
        } else {
            PLAIN_HEADER_LEN
        }
    }

    /// Reads the record log from `log_start` into `records` and `log_end`.
    fn scan(&mut self) -> Result<(), OvmfFormatError> {
        let b = &self.bytes;
        let hdr = self.header_len();
        let sizes_at = if self.authenticated {
            AUTH_NAME_SIZE_OFFSET
        } else {
            PLAIN_NAME_SIZE_OFFSET
        };
        let mut records = Vec::new();
        let mut offset = self.log_start;
        while offset + hdr <= self.store_end && u16_at(b, offset) == START_ID {
            let name_size = u32_at(b, offset + sizes_at) as usize;
            let data_size = u32_at(b, offset + sizes_at + 4) as usize;
            let vendor = guid_at(b, offset + sizes_at + 8);
            let len = hdr
                .checked_add(name_size)
                .and_then(|l| l.checked_add(data_size))
                .filter(|&l| offset + l <= self.store_end)
                .ok_or(OvmfFormatError::RecordOverrun { offset })?;
            let name_bytes = &b[offset + hdr..offset + hdr + name_size];
            let name = ucs2::decode_exact(name_bytes)
                .map_err(|source| OvmfFormatError::BadName { offset, source })?;
            records.push(Record {
                offset,
                len,
                state: b[offset + STATE_OFFSET],
                attributes: u32_at(b, offset + ATTRIBUTES_OFFSET),
                name: VarName::new(vendor, name),
                data_offset: offset + hdr + name_size,
                data_len: data_size,
            });
            offset = align(offset + len);
        }
        self.records = records;
        self.log_end = offset.min(self.store_end);
        Ok(())
    }

    /// The whole file as it would be written.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Bytes left at the end of the log for new records (before compaction).
    pub fn free_space(&self) -> usize {
        self.store_end - self.log_end
    }

    /// The live record for `name`: the newest in state ADDED, else one that
    /// was being deleted when power was lost (still the valid value).
    fn live(&self, name: &VarName) -> Option<usize> {
        let mut in_transition = None;
        for (i, r) in self.records.iter().enumerate().rev() {
            if r.name != *name || !r.is_live() {
                continue;
            }
            if r.state == VAR_ADDED {
                return Some(i);
            }
            in_transition.get_or_insert(i);
        }
        in_transition
    }

    fn mark_deleted(&mut self, index: usize) {
        let r = &mut self.records[index];
        r.state &= VAR_DELETED;
        self.bytes[r.offset + STATE_OFFSET] = r.state;
    }

    fn encode_record(&self, name: &VarName, value: &Variable, timestamp: &[u8; 16]) -> Vec<u8> {
        let name_bytes = ucs2::encode_nul_terminated(&name.name);
        let mut rec = Vec::with_capacity(self.header_len() + name_bytes.len() + value.data.len());
        rec.extend_from_slice(&START_ID.to_le_bytes());
        rec.extend_from_slice(&[VAR_ADDED, 0]);
        rec.extend_from_slice(&value.attributes.to_le_bytes());
        if self.authenticated {
            // MonotonicCount, TimeStamp, PubKeyIndex: only time-based
            // authenticated variables carry a timestamp (set_time_based).
            rec.extend_from_slice(&[0; 8]);
            rec.extend_from_slice(timestamp);
            rec.extend_from_slice(&[0; 4]);
        }
        rec.extend_from_slice(&(name_bytes.len() as u32).to_le_bytes());
        rec.extend_from_slice(&(value.data.len() as u32).to_le_bytes());
        rec.extend_from_slice(&name.vendor.to_bytes_le());
        rec.extend_from_slice(&name_bytes);
        rec.extend_from_slice(&value.data);
        rec
    }

    /// Rewrites the log with only its live records (in their order), as the
    /// firmware's reclaim does, leaving `except` out.
    fn compact(&mut self, except: Option<usize>) {
        let mut log = Vec::new();
        for (i, r) in self.records.iter().enumerate() {
            if !r.is_live() || Some(i) == except {
                continue;
            }
            let start = log.len();
            log.extend_from_slice(&self.bytes[r.offset..r.offset + r.len]);
            log[start + STATE_OFFSET] = VAR_ADDED;
            log.resize(align(log.len()), 0xFF);
        }
        let region = &mut self.bytes[self.log_start..self.store_end];
        region.fill(0xFF);
        region[..log.len()].copy_from_slice(&log);
        // The log was valid before, so it stays valid.
        let _ = self.scan();
    }

    fn persist(&self) -> Result<(), StoreError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        abkit_atomic::replace(path, &self.bytes, None).map_err(io)
    }
}

/// Offset of TimeStamp (an `EFI_TIME`) in an authenticated record header.
const AUTH_TIMESTAMP_OFFSET: usize = 16;

impl OvmfVarsFile {
    /// Whether the store keeps authenticated records (timestamps), as
    /// OVMF's `*_VARS*.fd` do: only then can it hold Secure Boot keys.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// Stores a time-based authenticated variable (`PK`, `KEK`, `db`, ...)
    /// the way the firmware keeps it after an authenticated SetVariable():
    /// the data without its `EFI_VARIABLE_AUTHENTICATION_2` descriptor, the
    /// descriptor's `EFI_TIME` in the record header. Offline enrolment: the
    /// firmware does not re-check what it finds in its own flash.
    pub fn set_time_based(
        &mut self,
        name: &VarName,
        value: &Variable,
        timestamp: &[u8; 16],
    ) -> Result<bool, StoreError> {
        if !self.authenticated {
            return Err(StoreError::NotAuthenticated {
                path: self.path.clone().unwrap_or_default(),
            });
        }
        self.write(name, value, timestamp)
    }

    /// The `EFI_TIME` stored with a live variable (all zero when it has
    /// none or the store is not authenticated).
    pub fn timestamp(&self, name: &VarName) -> Option<[u8; 16]> {
        let r = &self.records[self.live(name)?];
        let mut t = [0u8; 16];
        if self.authenticated {
            let at = r.offset + AUTH_TIMESTAMP_OFFSET;
            t.copy_from_slice(&self.bytes[at..at + 16]);
        }
        Some(t)
    }

    fn write(
        &mut self,
        name: &VarName,
        value: &Variable,
        timestamp: &[u8; 16],
    ) -> Result<bool, StoreError> {
        check_name(name)?;
        let old = self.live(name);
        if old.is_some()
            && self.get(name)?.as_ref() == Some(value)
            && self.timestamp(name).as_ref() == Some(timestamp)
        {
            return Ok(false);
        }
        let record = self.encode_record(name, value, timestamp);
        let mut old = old;
        if align(record.len()) > self.free_space() {
            let before = self.bytes.clone();
            self.compact(old);
            old = None;
            if align(record.len()) > self.free_space() {
                let free = self.free_space();
                self.bytes = before;
                let _ = self.scan();
                return Err(StoreError::Full {
                    name: name.to_string(),
                    needed: record.len(),
                    free,
                });
            }
        }
        let at = self.log_end;
        self.bytes[at..at + record.len()].copy_from_slice(&record);
        if let Some(i) = old {
            self.mark_deleted(i);
        }
        // The old record's state changed in place; re-reading the log picks
        // up the new record.
        let _ = self.scan();
        self.persist()?;
        Ok(true)
    }
}

impl VarStore for OvmfVarsFile {
    fn get(&self, name: &VarName) -> Result<Option<Variable>, StoreError> {
        Ok(self.live(name).map(|i| {
            let r = &self.records[i];
            Variable {
                attributes: r.attributes,
                data: self.bytes[r.data_offset..r.data_offset + r.data_len].to_vec(),
            }
        }))
    }

    fn set(&mut self, name: &VarName, value: &Variable) -> Result<bool, StoreError> {
        self.write(name, value, &[0; 16])
    }

    fn delete(&mut self, name: &VarName) -> Result<bool, StoreError> {
        let mut found = false;
        while let Some(i) = self.live(name) {
            self.mark_deleted(i);
            found = true;
        }
        if found {
            self.persist()?;
        }
        Ok(found)
    }

    fn list(&self) -> Result<Vec<VarName>, StoreError> {
        let mut names: Vec<VarName> = self
            .records
            .iter()
            .filter(|r| r.is_live())
            .map(|r| r.name.clone())
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }
}
