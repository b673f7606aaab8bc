//! The slot stamp: which slot a loader file boots, written where the
//! Authenticode hash does not reach.
//!
//! One loader binary serves both slots and the removable-media fallback
//! (`\EFI\BOOT\BOOTX64.EFI`). Its file name says A or B for the two slot
//! paths, but the fallback has to boot whichever slot is committed, so the
//! slot is stamped into the file itself: one extra entry in the PE
//! certificate table (data directory 4, the table of `WIN_CERTIFICATE`s that
//! holds Authenticode signatures). The Authenticode hash skips the checksum,
//! that directory entry and the table, so A-, B-stamped and unstamped copies
//! of one loader share one signature and one TPM (PCR 4) measurement.
//!
//! This module reads: it finds the certificate table, walks its entries and
//! decodes the stamp; the loader (which reads its own file at boot) and the
//! host tools (`abkit-uki`, which also writes stamps) share it. The entry
//! is a `WIN_CERTIFICATE_UEFI_GUID` with abkit's own `CertType` GUID, which
//! firmware verifiers skip (EDK2's DxeImageVerificationLib only verifies
//! `WIN_CERT_TYPE_PKCS_SIGNED_DATA` and `WIN_CERT_TYPE_EFI_GUID` entries whose
//! GUID is `EFI_CERT_TYPE_PKCS7_GUID`); see docs/loader.md for the byte table.

use core::ops::Range;

use crate::guid::SLOT_STAMP_GUID_EFI;
use crate::pe::{PeError, PeImage};
use crate::slot::Slot;

/// Byte layout of the certificate table and of the stamp entry. All integers
/// are little-endian; offsets are from the start of an entry.
pub mod layout {
    /// Every entry starts at a multiple of 8 from the table start, and the
    /// table itself starts at an 8-aligned file offset (PE/COFF spec 4.7).
    pub const CERT_ALIGN: usize = 8;

    /// `WIN_CERTIFICATE` header (8 bytes): `dwLength` (u32, the entry's
    /// length without its padding to 8), `wRevision` (u16),
    /// `wCertificateType` (u16); the certificate follows.
    pub const WIN_CERT_LENGTH: usize = 0;
    pub const WIN_CERT_REVISION: usize = 4;
    pub const WIN_CERT_TYPE: usize = 6;
    pub const WIN_CERT_HEADER_LEN: usize = 8;
    /// `WIN_CERT_REVISION_2_0`, the current revision.
    pub const WIN_CERT_REVISION_2_0: u16 = 0x0200;
    /// An Authenticode (PKCS#7 SignedData) signature, as sbsign and pesign write.
    pub const WIN_CERT_TYPE_PKCS_SIGNED_DATA: u16 = 0x0002;
    /// `WIN_CERTIFICATE_UEFI_GUID`: a 16-byte `CertType` GUID (EFI byte order)
    /// after the header says what the rest is.
    pub const WIN_CERT_TYPE_EFI_GUID: u16 = 0x0EF1;
    pub const GUID_CERT_TYPE: usize = 8;
    pub const GUID_CERT_DATA: usize = 24;

    /// The stamp: a `WIN_CERTIFICATE_UEFI_GUID` with `CertType` =
    /// [`crate::guid::SLOT_STAMP_GUID_STR`] and 8 bytes of data: magic,
    /// version, slot letter, two reserved zero bytes. 32 bytes in all, so
    /// it needs no padding.
    pub const STAMP_MAGIC: usize = 24;
    pub const STAMP_VERSION: usize = 28;
    pub const STAMP_SLOT: usize = 29;
    pub const STAMP_RESERVED: usize = 30;
    pub const STAMP_LEN: usize = 32;
    /// The magic at [`STAMP_MAGIC`].
    pub const STAMP_MAGIC_BYTES: &[u8; 4] = b"abkS";
    /// The only version so far; readers refuse others.
    pub const STAMP_VERSION_1: u8 = 1;
}

use layout::*;

/// Why a certificate table or a stamp cannot be read (or written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StampError {
    #[error("not a readable PE image: {0}")]
    Pe(#[from] PeError),
    #[error("the PE image has no certificate-table directory (fewer than 5 data directories)")]
    NoSecurityDirectory,
    #[error("the certificate table at {offset:#x}+{size:#x} is not 8-byte aligned")]
    TableMisaligned { offset: u32, size: u32 },
    #[error(
        "the certificate table at {offset:#x}+{size:#x} does not end where the {len}-byte file ends"
    )]
    TableNotAtEnd { offset: u32, size: u32, len: u64 },
    #[error(
        "the certificate table at {table_start:#x} overlaps section data that ends at {sections_end:#x}"
    )]
    TableOverlapsSections { table_start: u64, sections_end: u64 },
    #[error(
        "certificate table entry at {at:#x}: its length {length} runs past the table or is shorter than a header"
    )]
    BadEntry { at: usize, length: u32 },
    #[error("the certificate table has {left} stray bytes at {at:#x}")]
    TrailingBytes { at: usize, left: usize },
    #[error("the slot stamp at {at:#x} is malformed: {why}")]
    BadStamp { at: usize, why: &'static str },
    #[error("the slot stamp at {at:#x} has version {version}; this abkit reads version 1")]
    UnknownStampVersion { at: usize, version: u8 },
    #[error("the certificate table holds more than one slot stamp")]
    DuplicateStamp,
    #[error("the loader would grow past 4 GiB")]
    TooLarge,
}

/// One `WIN_CERTIFICATE` of a certificate table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertEntry<'a> {
    /// Offset of the entry from the start of the table.
    pub offset: usize,
    /// `wRevision`.
    pub revision: u16,
    /// `wCertificateType`.
    pub cert_type: u16,
    /// The entry, `dwLength` bytes (header included, padding not).
    pub bytes: &'a [u8],
    /// The entry with its padding to 8 bytes: what a copy must keep.
    pub padded: &'a [u8],
}

impl CertEntry<'_> {
    /// True for an abkit slot stamp (well-formed or not): a
    /// `WIN_CERTIFICATE_UEFI_GUID` whose `CertType` is abkit's stamp GUID.
    pub fn is_stamp(&self) -> bool {
        self.cert_type == WIN_CERT_TYPE_EFI_GUID
            && self.bytes.get(GUID_CERT_TYPE..GUID_CERT_DATA) == Some(&SLOT_STAMP_GUID_EFI[..])
    }

    /// The slot of a stamp entry; `None` for an entry that is no stamp.
    pub fn stamp(&self) -> Option<Result<Slot, StampError>> {
        if !self.is_stamp() {
            return None;
        }
        let at = self.offset;
        let bad = |why| Some(Err(StampError::BadStamp { at, why }));
        let b = self.bytes;
        if b.len() < STAMP_LEN {
            return bad("shorter than 32 bytes");
        }
        if &b[STAMP_MAGIC..STAMP_MAGIC + 4] != STAMP_MAGIC_BYTES {
            return bad("wrong magic");
        }
        if b[STAMP_VERSION] != STAMP_VERSION_1 {
            let version = b[STAMP_VERSION];
            return Some(Err(StampError::UnknownStampVersion { at, version }));
        }
        if b.len() != STAMP_LEN || b[STAMP_RESERVED..STAMP_LEN] != [0, 0] {
            return bad("version 1 is 32 bytes with two zero bytes at the end");
        }
        match Slot::from_letter(b[STAMP_SLOT]) {
            Some(slot) => Some(Ok(slot)),
            None => bad("the slot letter is neither A nor B"),
        }
    }
}

/// The stamp entry for `slot`, ready to append to a certificate table.
pub const fn encode_stamp(slot: Slot) -> [u8; STAMP_LEN] {
    let mut e = [0u8; STAMP_LEN];
    let len = (STAMP_LEN as u32).to_le_bytes();
    let rev = WIN_CERT_REVISION_2_0.to_le_bytes();
    let kind = WIN_CERT_TYPE_EFI_GUID.to_le_bytes();
    let mut i = 0;
    while i < 4 {
        e[WIN_CERT_LENGTH + i] = len[i];
        e[STAMP_MAGIC + i] = STAMP_MAGIC_BYTES[i];
        i += 1;
    }
    e[WIN_CERT_REVISION] = rev[0];
    e[WIN_CERT_REVISION + 1] = rev[1];
    e[WIN_CERT_TYPE] = kind[0];
    e[WIN_CERT_TYPE + 1] = kind[1];
    let mut g = 0;
    while g < 16 {
        e[GUID_CERT_TYPE + g] = SLOT_STAMP_GUID_EFI[g];
        g += 1;
    }
    e[STAMP_VERSION] = STAMP_VERSION_1;
    e[STAMP_SLOT] = slot.letter_byte();
    e
}

/// Where the certificate table of a `file_len`-byte file lies, from the
/// security directory entry `(file offset, size)` (see
/// [`crate::pe::OptionalHeader::security_directory`]). `None`: no table
/// (no directory, or size 0). The table must start 8-aligned and end where
/// the file ends: firmware and signing tools hash everything before it, so a
/// table elsewhere would leave bytes out of the hash or put them in twice.
pub fn locate_table(
    security_directory: Option<(u32, u32)>,
    file_len: u64,
) -> Result<Option<Range<u64>>, StampError> {
    let Some((offset, size)) = security_directory.filter(|&(_, size)| size != 0) else {
        return Ok(None);
    };
    if !(offset as usize).is_multiple_of(CERT_ALIGN) || !(size as usize).is_multiple_of(CERT_ALIGN)
    {
        return Err(StampError::TableMisaligned { offset, size });
    }
    let end = u64::from(offset) + u64::from(size);
    if end != file_len {
        return Err(StampError::TableNotAtEnd {
            offset,
            size,
            len: file_len,
        });
    }
    Ok(Some(u64::from(offset)..end))
}

/// [`locate_table`] for a parsed image, also checking that the table lies
/// after every section's raw data (else a stamp would change hashed bytes).
/// `pe` may be the headers alone: only the section table is read.
pub fn table_of(pe: &PeImage<'_>, file_len: u64) -> Result<Option<Range<u64>>, StampError> {
    let Some(range) = locate_table(pe.optional.security_directory, file_len)? else {
        return Ok(None);
    };
    let sections_end = pe
        .sections()
        .map(|s| u64::from(s.pointer_to_raw_data) + u64::from(s.size_of_raw_data))
        .max()
        .unwrap_or(0);
    if sections_end > range.start {
        return Err(StampError::TableOverlapsSections {
            table_start: range.start,
            sections_end,
        });
    }
    Ok(Some(range))
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

/// The entries of a certificate table, in order. An entry whose length does
/// not fit (or leftover bytes too short for an entry) ends the walk with an
/// error: the same walk EDK2 does, but strict.
pub fn entries(table: &[u8]) -> Entries<'_> {
    Entries {
        table,
        at: 0,
        failed: false,
    }
}

/// Iterator returned by [`entries`].
#[derive(Debug, Clone)]
pub struct Entries<'a> {
    table: &'a [u8],
    at: usize,
    failed: bool,
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<CertEntry<'a>, StampError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.at >= self.table.len() {
            return None;
        }
        let at = self.at;
        let left = self.table.len() - at;
        self.failed = true;
        if left <= WIN_CERT_HEADER_LEN {
            return Some(Err(StampError::TrailingBytes { at, left }));
        }
        let rest = &self.table[at..];
        let (Some(length), Some(revision), Some(cert_type)) = (
            read_u32(rest, WIN_CERT_LENGTH),
            read_u16(rest, WIN_CERT_REVISION),
            read_u16(rest, WIN_CERT_TYPE),
        ) else {
            return Some(Err(StampError::TrailingBytes { at, left }));
        };
        let padded_len = (length as usize).checked_next_multiple_of(CERT_ALIGN);
        let Some(padded_len) = padded_len.filter(|&p| p <= left && length as usize >= 8) else {
            return Some(Err(StampError::BadEntry { at, length }));
        };
        self.failed = false;
        self.at = at + padded_len;
        Some(Ok(CertEntry {
            offset: at,
            revision,
            cert_type,
            bytes: &rest[..length as usize],
            padded: &rest[..padded_len],
        }))
    }
}

/// The slot stamped into a certificate table, `None` if it has no stamp.
/// A malformed table or stamp, or two stamps, are errors.
pub fn find_stamp(table: &[u8]) -> Result<Option<Slot>, StampError> {
    let mut found = None;
    for entry in entries(table) {
        if let Some(slot) = entry?.stamp() {
            if found.is_some() {
                return Err(StampError::DuplicateStamp);
            }
            found = Some(slot?);
        }
    }
    Ok(found)
}

/// The slot stamped into a whole PE file, `None` if it has none.
pub fn stamp_of_file(file: &[u8]) -> Result<Option<Slot>, StampError> {
    let pe = PeImage::parse(file)?;
    match table_of(&pe, file.len() as u64)? {
        // In range: locate_table checked the table ends where the file does.
        Some(range) => find_stamp(&file[range.start as usize..]),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn entry(cert_type: u16, body: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(&(8 + body.len() as u32).to_le_bytes());
        e.extend_from_slice(&WIN_CERT_REVISION_2_0.to_le_bytes());
        e.extend_from_slice(&cert_type.to_le_bytes());
        e.extend_from_slice(body);
        e.resize(e.len().next_multiple_of(8), 0);
        e
    }

    #[test]
    fn encoded_stamp_has_the_documented_bytes() {
        let e = encode_stamp(Slot::B);
        assert_eq!(&e[..8], &[32, 0, 0, 0, 0x00, 0x02, 0xf1, 0x0e]);
        assert_eq!(
            &e[8..24],
            &[
                0x95, 0x09, 0x37, 0x4d, 0xb2, 0x23, 0xde, 0x49, 0xbb, 0x02, 0x15, 0xf6, 0xdb, 0x21,
                0xcf, 0x78
            ]
        );
        assert_eq!(&e[24..], b"abkS\x01B\0\0");
        assert_eq!(find_stamp(&e), Ok(Some(Slot::B)));
        assert_eq!(find_stamp(&encode_stamp(Slot::A)), Ok(Some(Slot::A)));
    }

    #[test]
    fn skips_foreign_entries_and_their_padding() {
        // A PKCS#7-like entry of odd length (padded), an unknown GUID entry,
        // then the stamp.
        let mut table = entry(WIN_CERT_TYPE_PKCS_SIGNED_DATA, &[0x30; 13]);
        assert_eq!(table.len(), 24);
        table.extend(entry(WIN_CERT_TYPE_EFI_GUID, &[0x11; 20]));
        table.extend(encode_stamp(Slot::B));
        let kinds: Vec<_> = entries(&table)
            .map(|e| e.map(|e| (e.offset, e.cert_type, e.bytes.len(), e.padded.len())))
            .collect();
        assert_eq!(
            kinds,
            [
                Ok((0, 2, 21, 24)),
                Ok((24, 0xef1, 28, 32)),
                Ok((56, 0xef1, 32, 32))
            ]
        );
        assert_eq!(find_stamp(&table), Ok(Some(Slot::B)));
        assert_eq!(find_stamp(&table[..56]), Ok(None));
        assert_eq!(find_stamp(&[]), Ok(None));
    }

    #[test]
    fn malformed_tables_and_stamps_are_errors() {
        let stamp = encode_stamp(Slot::A);
        // Trailing bytes, an entry running past the end, a too-short length.
        let mut t = stamp.to_vec();
        t.extend([0; 8]);
        assert_eq!(
            find_stamp(&t),
            Err(StampError::TrailingBytes { at: 32, left: 8 })
        );
        assert_eq!(
            find_stamp(&stamp[..24]),
            Err(StampError::BadEntry { at: 0, length: 32 })
        );
        let mut t = stamp;
        t[0] = 4;
        assert_eq!(
            find_stamp(&t),
            Err(StampError::BadEntry { at: 0, length: 4 })
        );
        // Two stamps.
        let mut t = stamp.to_vec();
        t.extend(encode_stamp(Slot::B));
        assert_eq!(find_stamp(&t), Err(StampError::DuplicateStamp));
        // A wrong slot letter, magic, version, reserved byte.
        for (at, value, want) in [
            (STAMP_SLOT, b'C', "the slot letter is neither A nor B"),
            (STAMP_MAGIC, b'x', "wrong magic"),
            (
                STAMP_RESERVED,
                1,
                "version 1 is 32 bytes with two zero bytes at the end",
            ),
        ] {
            let mut t = stamp;
            t[at] = value;
            assert_eq!(
                find_stamp(&t),
                Err(StampError::BadStamp { at: 0, why: want })
            );
        }
        let mut t = stamp;
        t[STAMP_VERSION] = 2;
        assert_eq!(
            find_stamp(&t),
            Err(StampError::UnknownStampVersion { at: 0, version: 2 })
        );
    }

    #[test]
    fn the_table_must_end_the_file() {
        assert_eq!(locate_table(None, 100), Ok(None));
        assert_eq!(locate_table(Some((0, 0)), 100), Ok(None));
        assert_eq!(
            locate_table(Some((0x400, 32)), 0x420),
            Ok(Some(0x400..0x420))
        );
        assert_eq!(
            locate_table(Some((0x400, 32)), 0x428),
            Err(StampError::TableNotAtEnd {
                offset: 0x400,
                size: 32,
                len: 0x428
            })
        );
        assert_eq!(
            locate_table(Some((0x404, 32)), 0x424),
            Err(StampError::TableMisaligned {
                offset: 0x404,
                size: 32
            })
        );
        assert!(locate_table(Some((u32::MAX - 7, 32)), 100).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_table_walks_without_panic(table in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let mut total = 0;
            for e in entries(&table).flatten() {
                proptest::prop_assert_eq!(e.offset, total);
                total += e.padded.len();
            }
            proptest::prop_assert!(total <= table.len());
            let _ = find_stamp(&table);
        }
    }
}
